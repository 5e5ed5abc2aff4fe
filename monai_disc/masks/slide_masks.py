"""Slide-level Gleason masks: read from a user's file or drawn from a slide plan, with glass marked.

A slide mask is a uint8 label map (H, W): 0 NC, 1 GG3, 2 GG4, 3 GG5 (:class:`monai_disc.labels.GleasonLabel`) on
tissue, and :data:`BACKGROUND` (255) on glass, where nothing is generated and the slide is painted white. It
comes from

- a PNG label map with values 0..3 (and optionally 255 for glass; without 255 the whole picture is tissue);
- a PANDA radboud mask TIFF read at a chosen pyramid level (labels in the first channel: 0 glass, 1 stroma and
  2 benign epithelium -> NC, 3/4/5 -> GG3/GG4/GG5);
- a slide plan (:func:`plan_slide_mask`): biopsy-core tissue strips on glass, filled with the plan's Gleason
  shapes from the shape bank, so a planned slide has the grades the planner balanced.

Written out, a slide mask becomes radboud values again (:func:`labels_to_radboud`), so the synthetic slide's
mask reads like PANDA's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.utils import optional_import
from scipy import ndimage

from monai_disc.labels import NUM_CLASSES, PANDA_RADBOUD_VALUE_TO_LABEL
from monai_disc.masks.bank import ShapeBank, resize_nearest
from monai_disc.masks.plans import SlidePlan

openslide, _has_openslide = optional_import("openslide")

__all__ = [
    "BACKGROUND",
    "RADBOUD_TO_SLIDE_LABEL",
    "biopsy_cores",
    "labels_to_radboud",
    "load_slide_mask",
    "plan_slide_mask",
]

BACKGROUND = 255
# PANDA radboud value -> slide-mask value (glass stays glass; stroma and benign epithelium are NC)
RADBOUD_TO_SLIDE_LABEL: dict[int, int] = {**PANDA_RADBOUD_VALUE_TO_LABEL, 0: BACKGROUND}  # radboud 0 is glass
_SLIDE_LABEL_TO_RADBOUD: dict[int, int] = {BACKGROUND: 0, 0: 1, 1: 3, 2: 4, 3: 5}
_PNG_VALUES = (*range(NUM_CLASSES), BACKGROUND)


def _lut(mapping: dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, dtype=np.int16)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def labels_to_radboud(mask: np.ndarray) -> np.ndarray:
    """PANDA radboud values of a slide mask: glass 0, NC 1 (stroma), GG3/4/5 -> 3/4/5 (uint8)."""
    return _lut(_SLIDE_LABEL_TO_RADBOUD, 0).astype(np.uint8)[np.asarray(mask, dtype=np.uint8)]


def _bad_values(values: np.ndarray, allowed: Sequence[int]) -> list[int]:
    return sorted(int(v) for v in np.setdiff1d(np.unique(values), np.asarray(allowed)))


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: a slide mask PNG must be a one-channel label map, got mode {im.mode}")
        a = np.asarray(im)
    bad = _bad_values(a, _PNG_VALUES)
    if bad:
        raise ValueError(
            f"{path}: values {bad[:8]} map to no label (a slide mask holds 0 NC, 1 GG3, 2 GG4, 3 GG5, "
            f"{BACKGROUND} glass)"
        )
    return a.astype(np.uint8)


def _read_radboud(path: Path, level: int) -> np.ndarray:
    if not _has_openslide:
        raise RuntimeError(f"{path}: reading a mask TIFF needs openslide-python (pip install openslide-python)")
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as err:  # OpenSlideUnsupportedFormatError, OpenSlideError
        raise ValueError(f"{path}: not a slide OpenSlide can read ({type(err).__name__}: {err})") from None
    with slide:
        if not 0 <= level < slide.level_count:
            raise ValueError(f"{path}: level {level} does not exist (the mask has {slide.level_count} levels)")
        w, h = slide.level_dimensions[level]
        region = np.asarray(slide.read_region((0, 0), level, (w, h)))[..., 0]
    bad = _bad_values(region, tuple(RADBOUD_TO_SLIDE_LABEL))
    if bad:
        raise ValueError(f"{path}: values {bad[:8]} are not PANDA radboud values (0..5)")
    return _lut(RADBOUD_TO_SLIDE_LABEL, BACKGROUND)[region].astype(np.uint8)


def load_slide_mask(path: str | os.PathLike, level: int = 0) -> np.ndarray:
    """A slide mask (H, W) uint8 (0..3 on tissue, :data:`BACKGROUND` on glass) from a PNG or radboud TIFF.

    Args:
        path: a PNG label map (0..3, 255 glass) or a PANDA radboud mask (``.tif``/``.tiff``, labels in the first
            channel).
        level: the pyramid level to read a TIFF at (0 = full resolution); ignored for PNGs.

    Returns:
        the slide mask.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: for values that map to no label, a missing level, or another format; the message names the
            file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide mask {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return _read_png(path)
    if suffix in (".tif", ".tiff"):
        return _read_radboud(path, int(level))
    raise ValueError(f"{path}: a slide mask is a PNG label map or a PANDA radboud mask TIFF, not {suffix!r}")


def biopsy_cores(shape: Sequence[int], rng: np.random.Generator, n_cores: int = 3) -> np.ndarray:
    """Needle-biopsy tissue: ``n_cores`` long, wavy, ragged horizontal strips on glass (bool (H, W)).

    Args:
        shape: (H, W).
        rng: the random generator (the strips are a function of it).
        n_cores: strips, stacked top to bottom.

    Returns:
        True on tissue.
    """
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ragged = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.02 * max(h, w))
    ragged /= max(float(np.abs(ragged).max()), 1e-6)
    tissue = np.zeros((h, w), dtype=bool)
    for k in range(n_cores):
        centre = h * (k + 0.5) / n_cores + rng.normal(0, 0.03 * h)
        amp, period, phase = rng.uniform(0.01, 0.04) * h, rng.uniform(0.7, 1.4) * w, rng.uniform(0, 2 * np.pi)
        centre = centre + amp * np.sin(2 * np.pi * xx / period + phase)
        half = (0.5 * h / n_cores) * rng.uniform(0.55, 0.8)
        x0, x1 = rng.uniform(0.02, 0.1) * w, rng.uniform(0.9, 0.98) * w
        ends = np.clip(np.minimum(xx - x0, x1 - xx) / (0.04 * w), 0, 1) ** 0.5
        tissue |= np.abs(yy - centre) < half * (1 + 0.25 * ragged) * ends
    return tissue


def plan_slide_mask(
    plan: SlidePlan,
    bank: ShapeBank,
    size: Sequence[int] = (512, 2048),
    cell: int | None = None,
    n_cores: int | None = None,
) -> np.ndarray:
    """A slide mask drawn from a slide plan: biopsy cores filled with the plan's Gleason shapes.

    The tissue is :func:`biopsy_cores` (2-3 strips, from the plan's seed and index); the slide is cut into
    ``cell`` px cells and the cells that touch tissue take the plan's tile masks in order (cycling if there are
    more cells than tiles), each a bank shape with its planned grades resized to the cell, so the slide holds
    the grades the planner balanced (NC only for an NC slide).

    Args:
        plan: the slide plan (:func:`monai_disc.masks.plan_synthetic_slides`).
        bank: the shape bank the plan was made with.
        size: (H, W) of the slide mask in pixels.
        cell: side of a Gleason shape on the slide, in pixels; None: half the slide's short side.
        n_cores: tissue strips; None draws 2 or 3.

    Returns:
        uint8 (H, W): 0..3 on tissue, :data:`BACKGROUND` on glass.

    Raises:
        ValueError: for a plan with no tile or a cell that does not fit the slide.
    """
    h, w = int(size[0]), int(size[1])
    if plan.n_tiles == 0:
        raise ValueError(f"slide {plan.slide_id} is planned with no tile")
    cell = max(1, min(h, w) // 2) if cell is None else int(cell)
    if not 1 <= cell <= min(h, w):
        raise ValueError(f"cell {cell} must lie in 1..{min(h, w)} (the slide's short side)")
    rng = np.random.default_rng([int(plan.seed) & 0xFFFFFFFF, int(plan.index), 7])
    tissue = biopsy_cores((h, w), rng, int(rng.integers(2, 4)) if n_cores is None else int(n_cores))
    out = np.full((h, w), BACKGROUND, dtype=np.uint8)
    t = 0
    for y in range(0, h, cell):
        for x in range(0, w, cell):
            here = tissue[y : y + cell, x : x + cell]
            if not here.any():
                continue
            shape = resize_nearest(plan.tiles[t % plan.n_tiles].mask(bank), cell)[: here.shape[0], : here.shape[1]]
            out[y : y + cell, x : x + cell] = np.where(here, shape, BACKGROUND)
            t += 1
    return out
