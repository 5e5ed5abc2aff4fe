"""Sampling: mask-conditioned DDIM or PLMS (SD) and, built on it, separated conditions (SD-SC)."""

from __future__ import annotations

from .mask_ldm import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler, latent_shape_for
from .schedulers import PLMSScheduler, plms_scheduler
from .separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks

__all__ = [
    "LDM_SCHEDULE",
    "MaskLDMSampler",
    "PLMSScheduler",
    "SeparatedConditionInferer",
    "ddim_scheduler",
    "fuse_latents",
    "latent_shape_for",
    "plms_scheduler",
    "present_labels",
    "uniform_masks",
]
