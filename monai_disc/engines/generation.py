"""Mask-to-tile generation as a MONAI evaluator: which masks are pending, how they are seeded, how tiles are saved.

A tile's noise seed comes from its mask's file name, so a tile is the same whatever the batch it was drawn
in and whether the run was interrupted; a mask whose tile already exists is skipped, so a killed run
resumes without redoing finished tiles.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from torch import nn

from monai_disc.visualize import overlay, save_picture, to_uint8

__all__ = ["pending_masks", "mask_seed", "tile_size_multiple", "MaskBatch", "MaskLDMInferer", "SaveTilesHandler"]

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TILE_SUFFIX = "_tile.png"
OVERLAY_SUFFIX = "_overlay.png"


def pending_masks(input_dir: str | Path, output_dir: str | Path, key: str = "mask") -> list[dict]:
    """Data list of the mask files in `input_dir` whose tile is not yet in `output_dir`.

    Raises:
        FileNotFoundError: when `input_dir` does not exist.
        ValueError: when it holds no mask file.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"mask folder {folder} does not exist")
    masks = sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not masks:
        raise ValueError(f"mask folder {folder} holds no mask file ({', '.join(MASK_SUFFIXES)})")
    done = {p.name for p in Path(output_dir).glob(f"*{TILE_SUFFIX}")} if Path(output_dir).is_dir() else set()
    return [{key: str(p)} for p in masks if f"{p.stem}{TILE_SUFFIX}" not in done]


def tile_size_multiple(autoencoder: nn.Module, denoiser: nn.Module) -> int:
    """Masks (and tiles) must have sides that are a positive multiple of this: the autoencoder's downsampling
    factor times the denoiser U-Net's (2 per level below the first)."""
    factor = int(getattr(autoencoder, "downsample_factor", 1))
    levels = len(getattr(getattr(denoiser, "unet", None), "block_out_channels", ()) or (1,))
    return factor * 2 ** (levels - 1)


def mask_seed(path: str | os.PathLike, seed: int = 0) -> int:
    """Noise seed of one mask: the base seed plus a stable hash of its file name."""
    return (seed + zlib.crc32(Path(path).name.encode())) % (2**31)


class MaskBatch:
    """``prepare_batch`` for generation: the masks are the inputs, their file names give the seeds."""

    def __init__(self, mask_key: str = "mask", seed: int = 0) -> None:
        self.mask_key = mask_key
        self.seed = seed

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, None, tuple, dict]:
        masks = batchdata[self.mask_key]
        names = masks.meta["filename_or_obj"]
        seeds = [mask_seed(name, self.seed) for name in names]
        return masks.to(device, non_blocking=non_blocking), None, (), {"seeds": seeds}


class MaskLDMInferer(Inferer):
    """MONAI ``Inferer`` over :class:`MaskLDMSampler`: masks in, tiles out, the denoiser passed as the network.

    Args:
        sampler: a :class:`monai_disc.inferers.MaskLDMSampler`.
        autoencoder: the first stage that decodes latents.
    """

    def __init__(self, sampler: Any, autoencoder: nn.Module) -> None:
        super().__init__()
        self.sampler = sampler
        self.autoencoder = autoencoder

    def __call__(self, inputs: torch.Tensor, network: nn.Module, seeds: Sequence[int] | None = None, **kwargs):
        masks = inputs.as_subclass(torch.Tensor).long()
        return self.sampler.sample(masks[:, 0] if masks.ndim == 4 else masks, self.autoencoder, network, seeds=seeds)


class SaveTilesHandler:
    """After each iteration, write every generated tile and its mask overlay as PNG (temp file, then rename).

    Files are ``<mask stem>_tile.png`` and ``<mask stem>_overlay.png`` in `output_dir`. MONAI's evaluator keeps
    its inputs, the masks here, under "image" in ``engine.state.output``.
    """

    def __init__(self, output_dir: str | Path, mask_key: str = "image", pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.mask_key = mask_key
        self.pred_key = pred_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for item in engine.state.output:
            mask = item[self.mask_key]
            stem = Path(mask.meta["filename_or_obj"]).stem
            labels = np.asarray(mask.as_subclass(torch.Tensor).cpu()).reshape(mask.shape[-2:])
            tile = to_uint8(item[self.pred_key])
            save_picture(tile, self.output_dir / f"{stem}{TILE_SUFFIX}")
            save_picture(overlay(tile, labels), self.output_dir / f"{stem}{OVERLAY_SUFFIX}")
