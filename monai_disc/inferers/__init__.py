"""Sampling: mask-conditioned DDIM (SD) and, built on it, separated conditions (SD-SC)."""

from __future__ import annotations

from .mask_ldm import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler, latent_shape_for
from .separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks

__all__ = [
    "LDM_SCHEDULE",
    "MaskLDMSampler",
    "SeparatedConditionInferer",
    "ddim_scheduler",
    "fuse_latents",
    "latent_shape_for",
    "present_labels",
    "uniform_masks",
]
