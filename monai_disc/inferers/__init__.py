"""Sampling: mask-conditioned DDIM (SD) and, built on it, separated conditions (SD-SC)."""

from __future__ import annotations

from .mask_ldm import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler, latent_shape_for

__all__ = ["LDM_SCHEDULE", "MaskLDMSampler", "ddim_scheduler", "latent_shape_for"]
