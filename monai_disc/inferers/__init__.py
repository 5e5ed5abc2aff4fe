"""Sampling: mask-conditioned DDIM or PLMS (SD), separated conditions (SD-SC), regions of any size, the generator registry."""

from __future__ import annotations

from .generators import DEFAULT_GENERATOR, GENERATORS, GeneratorEntry, LDMGenerator, TileGenerator, load_generator
from .mask_ldm import (
    DEFAULT_NUM_INFERENCE_STEPS,
    LDM_SCHEDULE,
    MaskLDMSampler,
    ddim_scheduler,
    latent_shape_for,
    tile_size_multiple,
)
from .region import REGION_MODES, RegionSampler, window_starts
from .schedulers import PLMSScheduler, plms_scheduler
from .separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks

__all__ = [
    "DEFAULT_GENERATOR",
    "DEFAULT_NUM_INFERENCE_STEPS",
    "GENERATORS",
    "LDM_SCHEDULE",
    "GeneratorEntry",
    "LDMGenerator",
    "MaskLDMSampler",
    "PLMSScheduler",
    "REGION_MODES",
    "RegionSampler",
    "SeparatedConditionInferer",
    "TileGenerator",
    "ddim_scheduler",
    "fuse_latents",
    "latent_shape_for",
    "load_generator",
    "plms_scheduler",
    "present_labels",
    "tile_size_multiple",
    "uniform_masks",
    "window_starts",
]
