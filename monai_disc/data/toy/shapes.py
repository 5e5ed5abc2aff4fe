"""Smooth noise and annotator-like label maps (masks) of toy tissue."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from monai_disc.labels import NUM_CLASSES

__all__ = ["draw_mask"]


# ----------------------------------------------------------------------------------------------
# noise helpers
# ----------------------------------------------------------------------------------------------
def _interp_axis(n_out: int, n_in: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Left indices and weights that upsample a 1-D signal of ``n_in`` samples by ``factor``."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) / factor
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    return i0, (pos - i0).astype(np.float32)


def _upsample(small: np.ndarray, shape: tuple[int, int], factor: float) -> np.ndarray:
    """Separable bilinear upsampling of ``small`` by ``factor`` to ``shape`` (cropping the excess)."""
    iy, fy = _interp_axis(shape[0], small.shape[0], factor)
    ix, fx = _interp_axis(shape[1], small.shape[1], factor)
    rows = small[iy] * (1.0 - fy[:, None]) + small[iy + 1] * fy[:, None]
    return (rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx).astype(np.float32)


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise with unit variance; large sigmas are drawn at low resolution."""
    h, w = shape
    if sigma <= 3.0:
        n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    else:
        factor = sigma / 2.0
        sh, sw = int(np.ceil(h / factor)) + 2, int(np.ceil(w / factor)) + 2
        small = ndimage.gaussian_filter(rng.standard_normal((sh, sw), dtype=np.float32), 2.0, mode="wrap")
        n = _upsample(small, shape, factor)
    n -= n.mean()
    return n / (n.std() + 1e-6)


def _as_shape(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
def draw_mask(
    size: int | Sequence[int],
    labels: Iterable[int],
    rng: np.random.Generator,
    smoothness: float = 0.22,
    min_fraction: float = 0.08,
) -> np.ndarray:
    """Draw a label map that looks like an annotator's drawing: a few smooth blobs.

    Each label gets a smooth random field; every pixel takes the label of the highest field, so
    borders are smooth curves like hand-drawn outlines.

    Args:
        size: tile size ``S`` or ``(H, W)``.
        labels: the labels (0..3) to place; the first is the background (largest on average).
        rng: numpy random generator.
        smoothness: blob scale as a fraction of the tile side.
        min_fraction: each label covers at least this fraction of the tile (when possible).

    Returns:
        ``uint8`` label map (H, W) holding exactly the given labels.

    Raises:
        ValueError: when no label or a label outside 0..3 is given.
    """
    labels = list(dict.fromkeys(int(v) for v in labels))
    if not labels or any(v < 0 or v >= NUM_CLASSES for v in labels):
        raise ValueError(f"draw_mask needs 1..4 labels in 0..{NUM_CLASSES - 1}, got {labels}.")
    shape = _as_shape(size)
    if len(labels) == 1:
        return np.full(shape, labels[0], dtype=np.uint8)
    sigma = max(2.0, smoothness * min(shape))
    best = None
    for _ in range(12):
        fields = np.stack([_smooth_noise(shape, sigma, rng) for _ in labels])
        bias = rng.normal(0.0, 0.35, len(labels)).astype(np.float32)
        bias[0] += 0.25  # the first label (usually NC or the slide's primary) is the background
        idx = np.argmax(fields + bias[:, None, None], axis=0)
        fractions = np.bincount(idx.ravel(), minlength=len(labels)) / idx.size
        if best is None or fractions.min() > best[0]:
            best = (fractions.min(), idx)
        if fractions.min() >= min_fraction:
            break
    idx = best[1]
    return np.asarray(labels, dtype=np.uint8)[idx]
