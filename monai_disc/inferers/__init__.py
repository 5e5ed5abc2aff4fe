"""Sampling: mask-conditioned DDIM (SD), separated conditions (SD-SC), and regions of any size from both."""

from __future__ import annotations

from .mask_ldm import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler, latent_shape_for
from .region import REGION_MODES, RegionSampler, window_starts
from .separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks

__all__ = [
    "LDM_SCHEDULE",
    "MaskLDMSampler",
    "REGION_MODES",
    "RegionSampler",
    "SeparatedConditionInferer",
    "ddim_scheduler",
    "fuse_latents",
    "latent_shape_for",
    "present_labels",
    "uniform_masks",
    "window_starts",
]
