"""Sampling: mask-conditioned DDIM or PLMS (SD), separated conditions (SD-SC), regions of any size, the generator registry."""

from __future__ import annotations

from .generators import (
    DEFAULT_GENERATOR,
    GENERATORS,
    GeneratorEntry,
    LDMGenerator,
    TileGenerator,
    entry_sampler,
    load_generator,
    sampler_options,
    split_generator_spec,
)
from .mask_ldm import (
    DEFAULT_NUM_INFERENCE_STEPS,
    LDM_SCHEDULE,
    MaskLDMSampler,
    ddim_scheduler,
    latent_shape_for,
    tile_size_multiple,
)
from .region import REGION_MODES, RegionSampler, window_starts
from .schedulers import (
    DEFAULT_SOLVER,
    SOLVERS,
    DiffusersSolver,
    PLMSScheduler,
    SpacedDDIMScheduler,
    diffusers_scheduler,
    dpm_solver_scheduler,
    is_stateless,
    make_scheduler,
    plms_scheduler,
    unipc_scheduler,
)
from .separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks

__all__ = [
    "DEFAULT_GENERATOR",
    "DEFAULT_NUM_INFERENCE_STEPS",
    "DEFAULT_SOLVER",
    "DiffusersSolver",
    "GENERATORS",
    "LDM_SCHEDULE",
    "GeneratorEntry",
    "LDMGenerator",
    "MaskLDMSampler",
    "PLMSScheduler",
    "REGION_MODES",
    "RegionSampler",
    "SOLVERS",
    "SpacedDDIMScheduler",
    "SeparatedConditionInferer",
    "TileGenerator",
    "ddim_scheduler",
    "diffusers_scheduler",
    "dpm_solver_scheduler",
    "entry_sampler",
    "fuse_latents",
    "is_stateless",
    "latent_shape_for",
    "load_generator",
    "make_scheduler",
    "plms_scheduler",
    "present_labels",
    "sampler_options",
    "split_generator_spec",
    "tile_size_multiple",
    "uniform_masks",
    "unipc_scheduler",
    "window_starts",
]
