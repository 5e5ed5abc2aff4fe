"""Toy whole slides in the PANDA layout: pyramidal TIFF slides and radboud/karolinska masks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_disc.io import atomic_path, atomic_write_bytes
from monai_disc.labels import ISUP_GRADE, NUM_CLASSES

from .plan import _rng
from .render import draw_tissue
from .shapes import _smooth_noise, draw_mask
from .stain import random_stain

__all__ = ["make_toy_panda"]

# ----------------------------------------------------------------------------------------------
# whole slides in the PANDA layout
# ----------------------------------------------------------------------------------------------
_PANDA_SCORES = ((0, 0), (1, 2), (2, 3), (2, 1), (1, 1), (3, 2))  # label pairs of the toy PANDA slides


def _tissue_cores(shape: tuple[int, int], rng: np.random.Generator, n_cores: int) -> np.ndarray:
    """Needle-biopsy-like tissue: a few long, wavy, ragged bands on glass."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tissue = np.zeros(shape, dtype=bool)
    ragged = _smooth_noise(shape, 0.02 * max(h, w), rng)
    for k in range(n_cores):
        yc = h * (k + 0.5) / n_cores + rng.normal(0, 0.04 * h)
        amp, period, phase = rng.uniform(0.02, 0.06) * h, rng.uniform(0.6, 1.4) * w, rng.uniform(0, 2 * np.pi)
        centre = yc + amp * np.sin(2 * np.pi * xx / period + phase)
        half = (0.5 * h / n_cores) * rng.uniform(0.45, 0.7) * (1 + 0.15 * np.sin(xx / (0.1 * w) + phase))
        x0, x1 = rng.uniform(0.03, 0.15) * w, rng.uniform(0.85, 0.97) * w
        ends = np.minimum(xx - x0, x1 - xx) / (0.05 * w)
        tissue |= (np.abs(yy - centre) < half * (1 + 0.12 * ragged) * np.clip(ends, 0, 1) ** 0.5) & (ends > 0)
    return tissue


def _pyramid(level0: np.ndarray, n_levels: int, factor: int, nearest: bool) -> list[np.ndarray]:
    levels = [level0]
    for _ in range(n_levels - 1):
        prev = levels[-1]
        h, w = prev.shape[0] // factor, prev.shape[1] // factor
        if h < 1 or w < 1:
            break
        crop = prev[: h * factor, : w * factor]
        if nearest:
            levels.append(np.ascontiguousarray(crop[factor // 2 :: factor, factor // 2 :: factor]))
        else:
            blocks = crop.reshape(h, factor, w, factor, -1).astype(np.float32).mean(axis=(1, 3))
            levels.append(np.clip(np.round(blocks), 0, 255).astype(np.uint8))
    return levels


def _write_pyramid_tiff(path: Path, levels: list[np.ndarray], mpp: float) -> None:
    """A tiled, deflate-compressed pyramidal RGB TIFF (one directory per level), as OpenSlide reads it."""
    import tifffile

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tw:
        for i, level in enumerate(levels):
            ds = levels[0].shape[1] / level.shape[1]
            px_per_cm = 1e4 / (mpp * ds)
            tw.write(
                level,
                photometric="rgb",
                tile=(256, 256),
                compression="zlib",
                subfiletype=0 if i == 0 else 1,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )


def _write_panda_slide(
    root: Path, seed: int, index: int, size: tuple[int, int], n_levels: int, provider: str = "radboud"
) -> dict[str, Any]:
    """Draw and write one PANDA-layout slide and its mask (radboud or karolinska values); return its csv row."""
    rng = _rng(seed, 4, index)
    values = np.array([0, 3, 4, 5])
    primary, secondary = _PANDA_SCORES[index % len(_PANDA_SCORES)]
    image_id = hashlib.md5(f"toy-panda-{seed}-{index}".encode()).hexdigest()
    shape = (int(size[1]), int(size[0]))
    tissue = _tissue_cores(shape, rng, int(rng.integers(2, 4)))
    labels = [0] if primary == 0 else list(dict.fromkeys([0, primary, secondary]))
    mask = draw_mask(shape, labels, rng, smoothness=0.06, min_fraction=0.1)
    areas = np.bincount(mask[tissue], minlength=NUM_CLASSES)
    if primary != secondary and areas[secondary] > areas[primary]:  # primary is the larger pattern
        swap = np.array([0, 1, 2, 3])
        swap[primary], swap[secondary] = secondary, primary
        mask = swap[mask].astype(np.uint8)
    rgb, radboud = draw_tissue(mask, rng, stain=random_stain(rng), tissue=tissue)
    _write_pyramid_tiff(root / "train_images" / f"{image_id}.tiff", _pyramid(rgb, n_levels, 4, False), 2.0)
    label_rgb = np.zeros(rgb.shape, dtype=np.uint8)
    if provider == "karolinska":  # 1 benign tissue, 2 cancer of any grade
        label_rgb[..., 0] = np.where(radboud >= 3, 2, np.minimum(radboud, 1))
    else:
        label_rgb[..., 0] = radboud
    _write_pyramid_tiff(
        root / "train_label_masks" / f"{image_id}_mask.tiff", _pyramid(label_rgb, n_levels, 4, True), 2.0
    )
    negative = "0+0" if provider == "karolinska" else "negative"
    score = negative if primary == 0 else f"{values[primary]}+{values[secondary]}"
    isup = ISUP_GRADE[(int(values[primary]), int(values[secondary]))]
    return {"image_id": image_id, "data_provider": provider, "isup_grade": isup, "gleason_score": score}


def _panda_jobs(
    root: Path, n_slides: int, seed: int, size: tuple[int, int], n_levels: int, providers: Sequence[str] = ("radboud",)
) -> list[tuple]:
    width, height = int(size[0]), int(size[1])
    if width < 256 or height < 256 or n_slides < 1:
        raise ValueError(f"make_toy_panda needs n_slides >= 1 and size >= 256 px, got {n_slides}, {size}.")
    unknown = [p for p in providers if p not in ("radboud", "karolinska")]
    if unknown or not providers:
        raise ValueError(f"providers must be 'radboud' and/or 'karolinska', got {list(providers)}.")
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    (root / "train_label_masks").mkdir(parents=True, exist_ok=True)
    return [(root, seed, i, (width, height), n_levels, providers[i % len(providers)]) for i in range(n_slides)]


def _write_panda_table(root: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(root / "train.csv", pd.DataFrame(rows).to_csv(index=False, lineterminator="\n").encode())


def make_toy_panda(
    root: str | os.PathLike,
    n_slides: int = 3,
    seed: int = 0,
    size: tuple[int, int] = (2048, 1536),
    n_levels: int = 3,
    providers: Sequence[str] = ("radboud",),
) -> Path:
    """Write small pyramidal TIFF slides with radboud (or karolinska) masks in the PANDA layout.

    ``train_images/<id>.tiff`` (RGB), ``train_label_masks/<id>_mask.tiff`` (labels in the R
    channel: 0 glass, 1 stroma, 2 benign epithelium, 3/4/5 Gleason) and ``train.csv``. Tissue
    is a few biopsy cores on white glass, drawn at the toy scale (about 2 um per level-0 pixel,
    written into the resolution tags); levels shrink by 4 as in PANDA.

    Args:
        root: output folder (created).
        n_slides: number of slides; the first ones are ``negative``, ``3+4``, ``4+5``, ``4+3``.
        seed: random seed (same seed, same bytes).
        size: level-0 width and height in pixels.
        n_levels: pyramid levels.
        providers: data providers assigned to the slides in turn; karolinska masks hold 1 (benign) and 2
            (cancer) and karolinska negatives are written ``0+0``, as in PANDA.

    Returns:
        The output folder.

    Raises:
        ValueError: for a size under 256 px, fewer than one slide, or an unknown provider.
    """
    root = Path(root)
    rows = [_write_panda_slide(*job) for job in _panda_jobs(root, n_slides, seed, size, n_levels, tuple(providers))]
    _write_panda_table(root, rows)
    return root
