"""Sampling: mask-conditioned DDIM (SD), separated conditions (SD-SC) built on it, and the generator registry."""

from __future__ import annotations

from .generators import GENERATORS, GeneratorEntry, LDMGenerator, TileGenerator, load_generator, load_weights
from .mask_ldm import (
    DEFAULT_NUM_INFERENCE_STEPS,
    LDM_SCHEDULE,
    MaskLDMSampler,
    ddim_scheduler,
    decode_latents,
    latent_shape_for,
    tile_size_multiple,
)
from .separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks

__all__ = [
    "DEFAULT_NUM_INFERENCE_STEPS",
    "GENERATORS",
    "LDM_SCHEDULE",
    "GeneratorEntry",
    "LDMGenerator",
    "MaskLDMSampler",
    "SeparatedConditionInferer",
    "TileGenerator",
    "ddim_scheduler",
    "decode_latents",
    "fuse_latents",
    "latent_shape_for",
    "load_generator",
    "load_weights",
    "present_labels",
    "tile_size_multiple",
    "uniform_masks",
]
