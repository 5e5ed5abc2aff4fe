"""Ignite workflows: MONAI trainers and the pieces that adapt them to latent diffusion and mixing."""

from __future__ import annotations

from .autoencoder import ScaleFactorHandler, VQAutoencoderTrainer, loss_terms
from .batching import fit_batch_size
from .bundle import FolderScan, bundle_settings, exit_on_failures, load_weights_or_exit, scan_images
from .checkpoint import ResumableCheckpoint, latest_checkpoint
from .disc import DISCPrepareBatch
from .distill import DistillationSet, distill_seed, write_distillation_set
from .generation import MaskBatch, MaskLDMInferer, SaveTilesHandler, mask_seed, pending_masks
from .guidance import GuidanceDistillPrepareBatch
from .ldm import (
    LatentDiffusionPrepareBatch,
    SampleGridHandler,
    draw_timesteps,
    mask_tile_grid,
    preview_masks,
)
from .mil import evaluate_transmil, train_transmil
from .mixed import LOSS_REAL, LOSS_SYNTH, MixedSupervisedTrainer, loss_parts, mix_losses
from .segmentation import SegmentationLoss, carcinonet_train_transforms
from .slide_writer import SlideProbabilityWriter, slide_prediction_rows
from .step_distill import FewStepInferer, SamplerDistillPrepareBatch
from .time_limit import TimeLimitHandler

__all__ = [
    "fit_batch_size",
    "SlideProbabilityWriter",
    "slide_prediction_rows",
    "FolderScan",
    "bundle_settings",
    "exit_on_failures",
    "load_weights_or_exit",
    "scan_images",
    "evaluate_transmil",
    "train_transmil",
    "DISCPrepareBatch",
    "GuidanceDistillPrepareBatch",
    "FewStepInferer",
    "SamplerDistillPrepareBatch",
    "DistillationSet",
    "distill_seed",
    "write_distillation_set",
    "MaskBatch",
    "MaskLDMInferer",
    "SaveTilesHandler",
    "mask_seed",
    "pending_masks",
    "LOSS_REAL",
    "LOSS_SYNTH",
    "MixedSupervisedTrainer",
    "SegmentationLoss",
    "carcinonet_train_transforms",
    "loss_parts",
    "mix_losses",
    "LatentDiffusionPrepareBatch",
    "draw_timesteps",
    "ResumableCheckpoint",
    "ScaleFactorHandler",
    "TimeLimitHandler",
    "VQAutoencoderTrainer",
    "SampleGridHandler",
    "latest_checkpoint",
    "loss_terms",
    "mask_tile_grid",
    "preview_masks",
]
