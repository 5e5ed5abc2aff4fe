"""Synthetic whole slides: a slide mask -> one continuous region -> a pyramidal TIFF and its radboud mask TIFF.

:func:`generate_region` draws one region with :class:`monai_disc.inferers.RegionSampler` from any generator of
the registry and writes ``OUT.tiff`` (RGB, glass painted white) and ``OUT_mask.tiff`` (PANDA radboud values in
the first channel), both pyramidal and tiled, both with the mpp in their resolution tags.

Resumable: while it works, ``.OUT.tiff.partial/`` beside the output holds

- ``settings.json``: what the region depends on (mask, seed, generator weights and settings); a folder left by
  other settings is discarded, never reused;
- ``latent.pt``: the DDIM state after the last checkpointed step (atomically replaced, at most every
  ``checkpoint_seconds``), then the final latent;
- ``image.u8`` and ``bands.json``: the decoded picture (raw RGB rows) and how many bands of rows are in it.

A killed run restarts from the last saved step, or from the first band not yet decoded, and writes the same
bytes as an uninterrupted run. The TIFFs are written through temp files and renamed, the mask first: a slide
whose ``OUT.tiff`` exists is complete, and the partial folder is then removed.

:func:`generate_wsi_slides` writes planned synthetic slides (:mod:`monai_disc.masks.plans`) as slide files in the
PANDA layout, rank-sharded across slides (rank r of W takes slides r, r + W, ...), skipping finished ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_disc.data.panda import PANDA_COLUMNS
from monai_disc.data.slide_tiff import raw_bands, write_pyramid_tiff
from monai_disc.data.synthetic import manifest_text
from monai_disc.distributed import resolve_rank
from monai_disc.inferers.region import RegionSampler
from monai_disc.io import atomic_torch_save, atomic_write_text, csv_text
from monai_disc.labels import ISUP_GRADE
from monai_disc.masks import ShapeBank, SlidePlan
from monai_disc.masks.slide_masks import BACKGROUND, labels_to_radboud, plan_slide_mask

__all__ = [
    "PANDA_IMAGES_DIR",
    "PANDA_MASKS_DIR",
    "check_slide_mask",
    "generate_region",
    "generate_wsi_slides",
    "mask_path_for",
]

PANDA_IMAGES_DIR = "train_images"
PANDA_MASKS_DIR = "train_label_masks"

logger = logging.getLogger(__name__)

_BAND_ROWS = 256  # rows of the slide handled at a time where a whole-slide array is not needed


def mask_path_for(out: str | os.PathLike) -> Path:
    """The label mask TIFF written beside a slide: ``X.tiff`` -> ``X_mask.tiff`` (PANDA's naming)."""
    out = Path(out)
    return out.with_name(f"{out.stem}_mask{out.suffix or '.tiff'}")


def check_slide_mask(mask: np.ndarray, region: RegionSampler, factor: int, source: str = "mask") -> None:
    """Refuse a slide mask the networks cannot take, naming ``source``.

    Raises:
        ValueError: for values other than 0..3 and :data:`BACKGROUND`, no tissue, or a size that is not a
            multiple of the autoencoder's factor or smaller than one window.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{source}: a slide mask is a label map (H, W), got shape {mask.shape}")
    values: set[int] = set()
    for y in range(0, mask.shape[0], _BAND_ROWS):  # np.unique sorts a copy: a band at a time
        values.update(np.unique(mask[y : y + _BAND_ROWS]).tolist())
    bad = sorted(values - {0, 1, 2, 3, BACKGROUND})
    if bad:
        raise ValueError(f"{source}: values {bad[:8]} map to no label (0..3 on tissue, {BACKGROUND} glass)")
    if values <= {BACKGROUND}:
        raise ValueError(f"{source}: the mask holds no tissue (every pixel is glass, {BACKGROUND})")
    try:
        region.check_size(mask.shape, factor)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def _weights_digest(*modules: nn.Module) -> str:
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _settings(mask: np.ndarray, seed: int, mpp: float, generator: Any, region: RegionSampler) -> dict[str, Any]:
    return {
        "format": 1,
        "mask_sha256": hashlib.sha256(np.ascontiguousarray(mask)).hexdigest(),
        "shape": list(mask.shape),
        "seed": int(seed),
        "generator": str(getattr(generator, "name", type(generator).__name__)),
        "weights": _weights_digest(generator.autoencoder, generator.denoiser),
        "region": region.settings(),
    }


def _open_partial(partial: Path, settings: dict[str, Any]) -> None:
    """Keep ``partial`` only when it was started with the same settings; otherwise start it afresh."""
    path = partial / "settings.json"
    if partial.exists():
        try:
            same = json.loads(path.read_text()) == json.loads(json.dumps(settings))
        except (OSError, ValueError):
            same = False
        if same:
            return
        logger.info("discarding %s: left by other settings", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    atomic_write_text(path, json.dumps(settings))


def _radboud_bands(mask: np.ndarray) -> Iterator[np.ndarray]:
    """The mask TIFF's level 0 a band of rows at a time: radboud values in the first of three channels."""
    for y in range(0, mask.shape[0], _BAND_ROWS):
        rgb = np.zeros((*mask[y : y + _BAND_ROWS].shape, 3), dtype=np.uint8)
        rgb[..., 0] = labels_to_radboud(mask[y : y + _BAND_ROWS])
        yield rgb


def _bands_done(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["bands"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


@torch.no_grad()
def generate_region(
    mask: np.ndarray,
    out: str | os.PathLike,
    generator: Any,
    seed: int = 0,
    mpp: float = 2.0,
    region: RegionSampler | None = None,
    level_factor: int = 2,
    checkpoint_seconds: float = 60.0,
    source: str | None = None,
    progress: bool = True,
    mask_out: str | os.PathLike | None = None,
) -> Path:
    """Draw a region for a slide mask and write it as a pyramidal TIFF with its radboud mask TIFF.

    Args:
        mask: slide mask (H, W) uint8: 0..3 on tissue, :data:`BACKGROUND` on glass (see
            :mod:`monai_disc.masks.slide_masks`). Glass is conditioned as NC, not denoised where a whole window
            is glass, and painted white.
        out: the slide's ``.tiff``; the mask goes to :func:`mask_path_for` (``OUT_mask.tiff``).
        generator: an :class:`monai_disc.inferers.LDMGenerator` (``sampler``, ``autoencoder``,
            ``denoiser``, ``name``), e.g. from :func:`monai_disc.inferers.load_generator`.
        seed: the region's noise seed.
        mpp: microns per pixel of level 0, written into the resolution tags.
        region: the window rule; None wraps the generator's sampler in a default :class:`RegionSampler`.
        level_factor: downsampling between pyramid levels (2 or 4).
        checkpoint_seconds: save the sampling state (latent and solver history) at most this often (0: after every
            network evaluation).
        source: how errors name the mask (its file); defaults to "mask".
        progress: show tqdm bars.
        mask_out: where the mask TIFF goes; None: :func:`mask_path_for` ``out``.

    Returns:
        the path of the slide TIFF (an existing one is replaced once the new one is complete).

    Raises:
        ValueError: for a mask the networks cannot take (naming ``source``).
    """
    out = Path(out)
    region = region if region is not None else RegionSampler(generator.sampler, progress=progress)
    autoencoder, denoiser = generator.autoencoder.eval(), generator.denoiser.eval()
    factor = int(getattr(autoencoder, "downsample_factor", 4))
    check_slide_mask(mask, region, factor, source or "mask")
    mask = np.asarray(mask).astype(np.uint8, copy=False)  # the one slide-size array held (16 MB at 4096 px)
    settings = _settings(mask, seed, mpp, generator, region)
    partial = out.with_name(f".{out.name}.partial")
    _open_partial(partial, settings)

    state_path = partial / "latent.pt"
    start, state, history = 0, None, None
    if state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        start, state, history = int(saved["step"]), saved["latent"], saved.get("solver")
    last_save = [time.monotonic()]
    evaluations = region.num_evaluations  # entries of the solver's grid: the loop's steps

    def checkpoint(step: int, latent: torch.Tensor) -> None:
        now = time.monotonic()
        if step == evaluations or now - last_save[0] < checkpoint_seconds:
            return  # the final latent is saved once, below
        # a multistep solver's history goes with the latent, so the resumed steps are the same
        atomic_torch_save({"step": step, "latent": latent.detach().cpu(), "solver": region.solver_state()}, state_path)
        last_save[0] = now

    t0 = time.perf_counter()
    latent = region.sample_latent(
        torch.from_numpy(mask),
        autoencoder,
        denoiser,
        seed,
        background=BACKGROUND,
        start_step=start,
        latent=state,
        callback=checkpoint,
        solver_state=history if start < evaluations else None,
    )
    if start < evaluations or (state is not None and state.shape[0] != 1):
        atomic_torch_save({"step": evaluations, "latent": latent[None].cpu()}, state_path)
    t1 = time.perf_counter()

    h, w = mask.shape
    image_path, bands_path = partial / "image.u8", partial / "bands.json"
    done = _bands_done(bands_path) if image_path.is_file() else 0
    # written and read back with file calls, not mapped: the picture's pages never count in this process
    with open(image_path, "r+b" if done else "wb") as image:
        for band, y0, y1, rows in region.decode_bands(latent, autoencoder, start_band=done):
            image.seek(y0 * w * 3)
            image.write(np.where(mask[y0:y1, :, None] != BACKGROUND, rows, np.uint8(255)).data)
            image.flush()
            atomic_write_text(bands_path, json.dumps({"bands": band + 1}))
    t2 = time.perf_counter()

    mask_out = mask_path_for(out) if mask_out is None else mask_out
    write_pyramid_tiff(mask_out, _radboud_bands(mask), mpp, factor=level_factor, nearest=True, shape=(h, w, 3))
    write_pyramid_tiff(out, raw_bands(image_path, (h, w, 3)), mpp, factor=level_factor, shape=(h, w, 3))
    shutil.rmtree(partial, ignore_errors=True)
    logger.info(
        "%s: %dx%d px, sampling %.1f s, decoding %.1f s, writing %.1f s",
        out,
        w,
        h,
        t1 - t0,
        t2 - t1,
        time.perf_counter() - t2,
    )
    return out


def _gleason_score(plan: SlidePlan) -> tuple[str, int]:
    if plan.primary == 0:
        return "negative", 0
    p, s = plan.primary + 2, (plan.secondary if plan.secondary else plan.primary) + 2
    return f"{p}+{s}", ISUP_GRADE[(p, s)]


def generate_wsi_slides(
    plans: Sequence[SlidePlan],
    out_dir: str | os.PathLike,
    generator: Any,
    bank: ShapeBank,
    size: Sequence[int] = (512, 2048),
    cell: int | None = None,
    mpp: float = 2.0,
    region: RegionSampler | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
) -> Path | None:
    """Write planned synthetic slides as slide files, in the PANDA layout (``load_panda`` reads the folder)::

        out_dir/
          train_images/<slide_id>.tiff             pyramidal RGB slide
          train_label_masks/<slide_id>_mask.tiff   radboud values in the first channel
          train.csv                                image_id, data_provider ("radboud"), isup_grade, gleason_score
          manifest.csv                             the synthetic-slide rows (:mod:`monai_disc.data.synthetic`)

    A slide's mask TIFF is written before its image, so a slide whose image exists is complete. Each slide's mask is :func:`monai_disc.masks.plan_slide_mask` of its plan; its noise seed is the plan's
    first tile seed. Finished slides are skipped, an unfinished one resumes (:func:`generate_region`); whichever
    call finds every slide finished writes the two tables.

    Args:
        plans: the slide plans (the same for every generator).
        out_dir: output folder.
        generator: an :class:`monai_disc.inferers.LDMGenerator`.
        bank: the shape bank of the plans.
        size: (H, W) of every slide in pixels.
        cell: side of one Gleason shape on the slide, in pixels (None: half the short side).
        mpp: microns per pixel of level 0.
        region: the window rule (None: the default :class:`RegionSampler` of the generator's sampler).
        rank, world_size: this process's shard; None reads torch.distributed or torchrun's environment.
        checkpoint_seconds: how often a slide's DDIM state is saved.
        progress: show progress bars.

    Returns:
        the path of ``train.csv`` when this call wrote it (every slide finished), else None.
    """
    rank, world_size = resolve_rank(rank, world_size)
    out = Path(out_dir)
    (out / PANDA_IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    plans = list(plans)
    mine = plans[rank::world_size]
    for plan in mine:
        path = out / PANDA_IMAGES_DIR / f"{plan.slide_id}.tiff"
        if path.exists():
            continue
        mask = plan_slide_mask(plan, bank, size, cell)
        generate_region(
            mask,
            path,
            generator,
            seed=plan.tiles[0].seed,
            mpp=mpp,
            region=region,
            checkpoint_seconds=checkpoint_seconds,
            source=f"slide {plan.slide_id}",
            progress=progress,
            mask_out=out / PANDA_MASKS_DIR / mask_path_for(path).name,
        )
    if not all((out / PANDA_IMAGES_DIR / f"{p.slide_id}.tiff").exists() for p in plans):
        return None
    rows = []
    for plan in plans:
        score, isup = _gleason_score(plan)
        rows.append({"image_id": plan.slide_id, "data_provider": "radboud", "isup_grade": isup, "gleason_score": score})
    atomic_write_text(out / "manifest.csv", manifest_text(plans, getattr(generator, "name", "")))
    return atomic_write_text(out / "train.csv", csv_text(PANDA_COLUMNS, rows))
