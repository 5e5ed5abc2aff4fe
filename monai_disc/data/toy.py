"""Procedural Gleason-like prostate tissue: the embedded default data set.

No real slides can be downloaded where this package is developed and tested, so every code path
(loaders, tiling, training, sampling, grading) runs on tissue drawn here. The four labels differ
by *structure* under one H&E palette, as in real slides:

* NC (0): pink fibrous stroma with spindle nuclei and a few large benign glands whose wide,
  undulating lumens are lined by two cell layers (flat basal + taller luminal cells).
* GG3 (1): many small, separate, round glands with small lumens and one layer of nuclei.
* GG4 (2): large epithelial nests, either cribriform (punched by many small round lumens) or
  fused, poorly formed glands with tiny lumens.
* GG5 (3): solid sheets of crowded, dark, pleomorphic nuclei without lumens; single cells and
  cords in the thin stroma between sheets.

Tissue is drawn as hematoxylin and eosin optical densities and turned into RGB with per-slide
stain vectors (Beer-Lambert), so stain variation is realistic and shared by all patterns. One
toy pixel is about 2 um (a 128 px tile shows about a quarter of a 512 px SICAPv2 tile's field).

:func:`make_toy_sicapv2` writes the SICAPv2 layout (tiles, annotator-like masks, partition
sheets, slide labels) plus a few small pyramidal TIFF slides in the PANDA layout under
``<root>/panda``. :func:`save_contact_sheet` shows tiles beside their masks.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from monai_disc.io import atomic_path, atomic_write_bytes, compare_settings, remove_orphan_temps, settings_error
from monai_disc.labels import ISUP_GRADE, LABEL_NAMES, NUM_CLASSES, colorize

__all__ = [
    "DEFAULT_STAIN",
    "GLEASON_PAIRS",
    "TOY_VERSION",
    "Stain",
    "draw_mask",
    "draw_tile",
    "draw_tissue",
    "is_complete",
    "make_toy_panda",
    "make_toy_sicapv2",
    "random_stain",
    "save_contact_sheet",
]

#: Bumped whenever the drawing changes, so cached builds of an older drawing are rebuilt.
TOY_VERSION = 1

_MARKER = ".toy_complete.json"
_SICAP_VALUES = np.array([0, 3, 4, 5], dtype=np.uint8)  # label -> SICAPv2 mask value
_RADBOUD_VALUES = np.array([1, 3, 4, 5], dtype=np.uint8)  # label -> radboud value (NC stroma = 1)
_JPEG_QUALITY = 92

#: Slide Gleason scores (primary, secondary) as labels, with their share of toy slides. The
#: shares give SICAPv2-like labelled areas (about NC 40 %, GG3 20 %, GG4 30 %, GG5 10 %).
GLEASON_PAIRS: tuple[tuple[tuple[int, int], float], ...] = (
    ((0, 0), 0.14),
    ((1, 1), 0.16),
    ((1, 2), 0.16),
    ((2, 1), 0.14),
    ((2, 2), 0.14),
    ((2, 3), 0.11),
    ((3, 2), 0.07),
    ((1, 3), 0.03),
    ((3, 3), 0.05),
)


# ----------------------------------------------------------------------------------------------
# stain
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stain:
    """H&E stain of one slide: optical-density colour vectors, stain amounts and the glass white.

    Attributes:
        hematoxylin: unit RGB optical-density vector of hematoxylin (blue-purple).
        eosin: unit RGB optical-density vector of eosin (pink).
        h_scale: multiplier of all hematoxylin densities (staining strength).
        e_scale: multiplier of all eosin densities.
        background: RGB (0-255) of unstained glass as the scanner sees it.
    """

    hematoxylin: tuple[float, float, float] = (0.60, 0.75, 0.28)
    eosin: tuple[float, float, float] = (0.16, 0.90, 0.40)
    h_scale: float = 1.0
    e_scale: float = 1.0
    background: tuple[float, float, float] = (244.0, 241.0, 245.0)


DEFAULT_STAIN = Stain()


def _unit(v: np.ndarray) -> tuple[float, float, float]:
    v = np.clip(v, 0.01, None)
    v = v / np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def random_stain(rng: np.random.Generator) -> Stain:
    """Draw a slide's stain around :data:`DEFAULT_STAIN` (lab-to-lab and batch variation).

    Args:
        rng: numpy random generator.

    Returns:
        A :class:`Stain`.
    """
    h = np.array(DEFAULT_STAIN.hematoxylin) + rng.normal(0.0, 0.05, 3)
    e = np.array(DEFAULT_STAIN.eosin) + rng.normal(0.0, 0.06, 3)
    bg = np.array(DEFAULT_STAIN.background) + rng.normal(0.0, 3.0) + rng.normal(0.0, 2.0, 3)
    return Stain(
        hematoxylin=_unit(h),
        eosin=_unit(e),
        h_scale=float(rng.uniform(0.8, 1.2)),
        e_scale=float(rng.uniform(0.75, 1.25)),
        background=tuple(float(x) for x in np.clip(bg, 225.0, 254.0)),
    )


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


# ----------------------------------------------------------------------------------------------
# tissue structures
# ----------------------------------------------------------------------------------------------
class _Layer:
    """Structures drawn for one canvas: epithelium, lumina and nucleus seeds."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.epi = np.zeros(shape, dtype=bool)  # epithelial cells (cytoplasm + their nuclei)
        self.lum = np.zeros(shape, dtype=bool)  # gland lumina (white)
        self.benign = np.zeros(shape, dtype=bool)  # benign glands (radboud 2): epithelium + lumen
        self.cyto = np.zeros(shape, dtype=np.float32)  # cytoplasm tone (0 pale .. 1 dense)
        self.secretion = np.zeros(shape, dtype=np.float32)  # pink material in lumina (eosin OD)
        self.necrosis = np.zeros(shape, dtype=bool)  # comedonecrosis in GG5 sheets
        self.nuclei: list[np.ndarray] = []  # rows: y, x, theta, a, b, darkness, vesicular

    def add_nuclei(self, y, x, theta, a, b, dark, vesicular=0.0) -> None:
        arrs = np.broadcast_arrays(*(np.asarray(v, dtype=np.float32) for v in (y, x, theta, a, b, dark, vesicular)))
        if arrs[0].size:
            self.nuclei.append(np.stack([np.ravel(v) for v in arrs], axis=1))


def _harmonics(rng: np.random.Generator, amp: float, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random low-order polar harmonics: a round shape's wobble."""
    k = np.arange(2, 2 + n)
    return rng.normal(0.0, amp, n) / np.sqrt(k - 1), rng.uniform(0, 2 * np.pi, n)


def _polar_radius(phi: np.ndarray, radius: float, harm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    amps, phases = harm
    k = np.arange(2, 2 + len(amps))
    return radius * (1.0 + np.sum(amps[:, None] * np.cos(k[:, None] * phi.ravel()[None] + phases[:, None]), 0)).reshape(
        phi.shape
    )


def _bbox(cy: float, cx: float, r: float, shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of the box around a circle, and the pixel offsets (dy, dx) from its centre."""
    y0, y1 = max(0, int(cy - r - 1)), min(shape[0], int(cy + r + 2))
    x0, x1 = max(0, int(cx - r - 1)), min(shape[1], int(cx + r + 2))
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    return slice(y0, y1), slice(x0, x1), dy, dx


def _region_points(region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random pixel positions (float y, x) inside ``region`` (with sub-pixel jitter)."""
    idx = np.flatnonzero(region)
    if idx.size == 0 or n <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    pick = idx[rng.integers(0, idx.size, n)]
    ys, xs = np.divmod(pick, region.shape[1])
    return np.stack([ys, xs], 1).astype(np.float32) + rng.uniform(0, 1, (n, 2)).astype(np.float32)


def _dart_throw(
    region: np.ndarray, rng: np.random.Generator, radius_fn, gap: float, fill: float, max_tries: int | None = None
) -> list[tuple[float, float, float]]:
    """Place non-overlapping discs (centre in ``region``) until ``fill`` of its area is covered.

    Candidates are tried in random order and kept when they keep ``gap`` to every kept disc
    (a negative gap lets discs overlap); a grid hash keeps each test local.
    """
    area = float(region.sum())
    if area == 0:
        return []
    target = fill * area
    tries = max_tries or int(30 + area / 18)
    pts = _region_points(region, tries, rng).tolist()
    radii = np.asarray(radius_fn(tries), dtype=np.float64).tolist()
    cell = 2.0 * max(radii) + max(gap, 0.0)
    grid: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    placed: list[tuple[float, float, float]] = []
    covered = 0.0
    for (y, x), r in zip(pts, radii):
        gy, gx = int(y // cell), int(x // cell)
        ok = True
        for key in ((gy + i, gx + j) for i in (-1, 0, 1) for j in (-1, 0, 1)):
            for py, px, pr in grid.get(key, ()):
                lim = pr + r + gap
                if (py - y) ** 2 + (px - x) ** 2 < lim * lim:
                    ok = False
                    break
            if not ok:
                break
        if not ok:
            continue
        disc = (y, x, r)
        placed.append(disc)
        grid.setdefault((gy, gx), []).append(disc)
        covered += np.pi * r * r
        if covered >= target:
            break
    return placed


def _grid_points(allowed: np.ndarray, spacing: float, rng: np.random.Generator, jitter: float = 0.35) -> np.ndarray:
    """Jittered-grid points (y, x) with about ``spacing`` between neighbours, kept inside ``allowed``."""
    h, w = allowed.shape
    ys, xs = np.where(allowed)
    if ys.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    gy = np.arange(y0 + rng.uniform(0, spacing), y1, spacing * 0.866, dtype=np.float32)
    pts = []
    for i, yy in enumerate(gy):
        off = (spacing / 2) * (i % 2) + rng.uniform(0, spacing * 0.2)
        gx = np.arange(x0 + off, x1, spacing, dtype=np.float32)
        pts.append(np.stack([np.full_like(gx, yy), gx], 1))
    if not pts:
        return np.zeros((0, 2), dtype=np.float32)
    p = np.concatenate(pts) + rng.uniform(-jitter, jitter, (sum(len(q) for q in pts), 2)).astype(np.float32) * spacing
    iy = np.clip(p[:, 0].astype(np.int64), 0, h - 1)
    ix = np.clip(p[:, 1].astype(np.int64), 0, w - 1)
    return p[allowed[iy, ix]]


def _thin_points(p: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Keep at most one point per ``spacing`` cell (random one): a cheap Poisson-disc thinning."""
    if p.shape[0] == 0:
        return p
    p = p[rng.permutation(p.shape[0])]
    cells = np.floor(p / spacing).astype(np.int64)
    key = cells[:, 0] * 1_000_003 + cells[:, 1]
    _, first = np.unique(key, return_index=True)
    return p[np.sort(first)]


def _draw_nc(region: np.ndarray, layer: _Layer, rng: np.random.Generator, s: float) -> None:
    """Benign glands: wide, undulating lumina lined by basal + luminal cells, in stroma."""
    shape = region.shape
    area = float(region.sum())
    n = rng.poisson(area / (3400.0 * s * s) * rng.uniform(0.5, 1.3))
    lumen = np.zeros(shape, dtype=bool)
    for cy, cx in _region_points(region, n, rng):
        ry, rx = rng.uniform(12, 30) * s, rng.uniform(12, 30) * s
        ang = rng.uniform(0, np.pi)
        sy, sx, dy, dx = _bbox(cy, cx, max(ry, rx) + 2, shape)
        if dy.size == 0 or dx.size == 0:
            continue
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        env = 1.0 - (u / rx) ** 2 - (v / ry) ** 2
        wob = _smooth_noise((dy.shape[0], dx.shape[1]), 3.5 * s, rng)
        lumen[sy, sx] |= (env + 0.28 * wob) > 0.3
    lumen = ndimage.binary_opening(lumen, iterations=2) & region
    if not lumen.any():
        return
    band = rng.uniform(7.0, 9.0) * s
    ys_, xs_ = np.where(lumen)
    box = (
        slice(max(0, ys_.min() - int(band) - 2), ys_.max() + int(band) + 3),
        slice(max(0, xs_.min() - int(band) - 2), xs_.max() + int(band) + 3),
    )
    d_out = np.full(shape, np.inf, dtype=np.float32)
    d_out[box] = ndimage.distance_transform_edt(~lumen[box])
    gland = (d_out <= band) & region
    wall = gland & ~lumen
    layer.lum |= lumen
    layer.epi |= wall
    layer.benign |= gland
    layer.cyto[wall] = 0.1
    gy, gx = np.gradient(np.where(np.isfinite(d_out), d_out, 0.0))

    def ring(lo: float, hi: float, spacing: float) -> tuple[np.ndarray, np.ndarray]:
        p = _thin_points(np.argwhere(wall & (d_out > lo) & (d_out < hi)).astype(np.float32), spacing, rng)
        iy, ix = p[:, 0].astype(int), p[:, 1].astype(int)
        return p + 0.5, np.arctan2(gy[iy, ix], gx[iy, ix])

    # luminal (secretory) cells: nuclei in the basal half, elongated across the wall
    p, th = ring(band - 3.4 * s, band - 2.4 * s, 3.8 * s)
    k = len(p)
    layer.add_nuclei(
        p[:, 0], p[:, 1], th, rng.uniform(1.5, 1.9, k) * s, rng.uniform(1.1, 1.3, k) * s, rng.uniform(0.65, 0.85, k)
    )
    # basal cells: flat nuclei along the outer edge, every few cells
    p, th = ring(band - 1.1 * s, band - 0.3 * s, 6.0 * s)
    k = len(p)
    layer.add_nuclei(
        p[:, 0],
        p[:, 1],
        th + np.pi / 2,
        rng.uniform(1.9, 2.5, k) * s,
        rng.uniform(0.8, 1.0, k) * s,
        rng.uniform(0.85, 1.05, k),
    )
    # corpora amylacea: laminated pink bodies in a few lumina
    comps, n = ndimage.label(lumen)
    inner = ndimage.distance_transform_edt(lumen[box])
    for c in range(1, n + 1):
        if rng.random() >= 0.15:
            continue
        rr = rng.uniform(3.0, 5.5) * s
        ok = np.argwhere((comps[box] == c) & (inner > rr + 1.5))
        if len(ok) == 0:
            continue
        py, px = ok[rng.integers(len(ok))] + np.array([box[0].start, box[1].start])
        sy, sx, dy, dx = _bbox(float(py), float(px), rr, shape)
        d = np.hypot(dy, dx)
        body = (d < rr) * (0.32 + 0.1 * np.cos(d * 2.4 / s))
        layer.secretion[sy, sx] = np.maximum(layer.secretion[sy, sx], body.astype(np.float32))


def _paint_gland(
    epi: np.ndarray,
    lum: np.ndarray,
    region: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    wall: float,
    rng: np.random.Generator,
    s: float,
    nuc_dark: float,
) -> np.ndarray:
    """Paint one small round gland (a cell layer around a small lumen); return its nucleus seeds.

    The nuclei sit on a ring at the base of the cells (rows: y, x, theta, a, b, darkness, vesicular).
    """
    harm = _harmonics(rng, 0.09)
    sy, sx, dy, dx = _bbox(cy, cx, radius * 1.35, epi.shape)
    if dy.size == 0 or dx.size == 0:
        return np.zeros((0, 7), dtype=np.float32)
    phi = np.arctan2(dy, dx) + np.zeros_like(dx)
    d = np.hypot(dy, dx)
    r_out = _polar_radius(phi, radius, harm)
    r_lum = np.maximum(r_out - wall, 0.0) * (1.0 + 0.12 * np.cos(2 * phi + rng.uniform(0, 6)))
    sub = region[sy, sx]
    epi[sy, sx] |= (d <= r_out) & sub
    lum[sy, sx] |= (d <= r_lum) & sub
    r_mid = radius - 1.7 * s
    k = max(3, round(2 * np.pi * r_mid / (3.9 * s)))
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.08, k)
    rr = _polar_radius(t, radius, harm) - 1.7 * s + rng.normal(0, 0.2 * s, k)
    return np.stack(
        [
            cy + rr * np.sin(t),
            cx + rr * np.cos(t),
            t,
            rng.uniform(1.45, 1.8, k) * s,
            rng.uniform(1.2, 1.45, k) * s,
            nuc_dark * rng.uniform(0.85, 1.1, k),
            np.zeros(k),
        ],
        1,
    ).astype(np.float32)


def _seeds_outside(seeds: list[np.ndarray], forbidden: np.ndarray) -> np.ndarray:
    """Concatenate nucleus seeds and drop those that fall on ``forbidden`` pixels."""
    if not seeds:
        return np.zeros((0, 7), dtype=np.float32)
    p = np.concatenate(seeds)
    iy = np.clip(p[:, 0].astype(np.int64), 0, forbidden.shape[0] - 1)
    ix = np.clip(p[:, 1].astype(np.int64), 0, forbidden.shape[1] - 1)
    return p[~forbidden[iy, ix]]


def _draw_gg3(region: np.ndarray, layer: _Layer, rng: np.random.Generator, s: float) -> None:
    """Many small, separate, well-formed glands with small lumina."""
    shape = region.shape
    glands = _dart_throw(
        region,
        rng,
        lambda n: rng.uniform(6.0, 10.0, n) * s,
        gap=rng.uniform(1.4, 2.4) * s,
        fill=0.62,
        max_tries=int(60 + region.sum() / 4),
    )
    epi = np.zeros(shape, dtype=bool)
    lum = np.zeros(shape, dtype=bool)
    seeds = [_paint_gland(epi, lum, region, cy, cx, r, rng.uniform(4.3, 5.2) * s, rng, s, 0.85) for cy, cx, r in glands]
    layer.epi |= epi & ~lum
    layer.lum |= lum
    layer.cyto[epi] = 0.45
    layer.nuclei.append(_seeds_outside(seeds, lum))
    if lum.any():  # pink secretions in a few lumina
        comps, n = ndimage.label(lum)
        amount = np.where(rng.random(n + 1) < 0.15, rng.uniform(0.1, 0.35, n + 1), 0.0).astype(np.float32)
        amount[0] = 0.0
        layer.secretion = np.maximum(layer.secretion, amount[comps])


def _nest_nuclei(
    layer: _Layer,
    allowed: np.ndarray,
    rng: np.random.Generator,
    s: float,
    spacing: float,
    size: tuple[float, float],
    dark: float,
    pleo: float,
    vesicular: float = 0.0,
) -> None:
    p = _grid_points(allowed, spacing * s, rng)
    k = len(p)
    if k:
        a = rng.uniform(size[0], size[1], k) * s * (1 + pleo * rng.standard_normal(k).clip(-1, 2))
        layer.add_nuclei(
            p[:, 0],
            p[:, 1],
            rng.uniform(0, np.pi, k),
            a,
            a * rng.uniform(0.72, 0.95, k),
            dark * rng.uniform(0.85, 1.15, k),
            vesicular * rng.uniform(0.5, 1.0, k),
        )


def _punch_lumina(
    lum: np.ndarray,
    inner: np.ndarray,
    rng: np.random.Generator,
    radii: tuple[float, float],
    gap: float,
    fill: float,
    elongation: float,
) -> None:
    """Cut small lumina (ellipses of the given radii and elongation) out of epithelium in place."""
    for cy, cx, r in _dart_throw(inner, rng, lambda n: rng.uniform(radii[0], radii[1], n), gap=gap, fill=fill):
        sy, sx, dy, dx = _bbox(cy, cx, r * elongation + 1, lum.shape)
        t = rng.uniform(0, np.pi)
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        lum[sy, sx] |= (u / (r * elongation)) ** 2 + (v / (r / elongation)) ** 2 <= 1.0


def _draw_gg4(region: np.ndarray, layer: _Layer, rng: np.random.Generator, s: float, cribriform: float) -> None:
    """Large epithelial masses: cribriform (punched by round lumina) or fused, crowded small glands."""
    shape = region.shape
    field = _smooth_noise(shape, 10.0 * s, rng)
    vals = field[region]
    if vals.size == 0:
        return
    thr = np.quantile(vals, rng.uniform(0.22, 0.32))
    masses = ndimage.binary_opening(region & (field > thr), iterations=1)
    comps, n = ndimage.label(masses)
    crib = np.concatenate([[False], rng.random(n) < cribriform])[comps]
    epi = masses & crib
    lum = np.zeros(shape, dtype=bool)
    depth = ndimage.distance_transform_edt(epi)
    _punch_lumina(lum, epi & (depth > 4.5 * s), rng, (2.4 * s, 4.4 * s), gap=3.6 * s, fill=0.3, elongation=1.1)
    # fused glands: overlapping small glands whose walls merge
    fused = masses & ~crib
    seeds = []
    for cy, cx, r in _dart_throw(fused, rng, lambda k: rng.uniform(5.0, 7.5, k) * s, gap=-4.5 * s, fill=1.4):
        seeds.append(_paint_gland(epi, lum, fused, cy, cx, r, rng.uniform(3.6, 4.6) * s, rng, s, 0.9))
    lum &= epi
    layer.epi |= epi & ~lum
    layer.lum |= lum
    layer.cyto[epi] = 0.55
    near_lumen = ndimage.binary_dilation(lum, iterations=2)
    layer.nuclei.append(_seeds_outside(seeds, near_lumen))
    _nest_nuclei(layer, epi & crib & ~near_lumen, rng, s, spacing=5.0, size=(1.45, 1.85), dark=0.9, pleo=0.08)
    _nest_nuclei(layer, epi & ~crib & ~near_lumen, rng, s, spacing=6.5, size=(1.45, 1.85), dark=0.9, pleo=0.08)


def _draw_gg5(region: np.ndarray, layer: _Layer, rng: np.random.Generator, s: float) -> None:
    """Solid sheets of crowded, pleomorphic tumour cells without lumina; cords in thin stroma."""
    shape = region.shape
    net = np.abs(_smooth_noise(shape, 12.0 * s, rng))
    strands = net < rng.uniform(0.14, 0.24)
    sheet = region & ~strands
    layer.epi |= sheet
    layer.cyto[sheet] = 0.7
    cells = sheet
    if rng.random() < 0.35:  # comedonecrosis: pink necrotic centres with nuclear dust
        depth = ndimage.distance_transform_edt(sheet)
        necro = np.zeros(shape, dtype=bool)
        for cy, cx, r in _dart_throw(
            depth > 7.0 * s, rng, lambda k: rng.uniform(3.5, 6.5, k) * s, gap=8.0 * s, fill=0.12
        ):
            sy, sx, dy, dx = _bbox(cy, cx, r * 1.3, shape)
            necro[sy, sx] |= np.hypot(dy, dx) <= _polar_radius(np.arctan2(dy, dx) + 0 * dx, r, _harmonics(rng, 0.15))
        necro &= sheet
        layer.necrosis |= necro
        cells = sheet & ~ndimage.binary_dilation(necro, iterations=1)
        dust = _grid_points(necro, 3.0 * s, rng, jitter=0.5)
        dust = dust[rng.random(len(dust)) < 0.5]
        k = len(dust)
        layer.add_nuclei(
            dust[:, 0],
            dust[:, 1],
            0.0,
            rng.uniform(0.5, 0.9, k) * s,
            rng.uniform(0.5, 0.8, k) * s,
            rng.uniform(0.9, 1.3, k),
        )
    _nest_nuclei(layer, cells, rng, s, spacing=4.9, size=(1.75, 2.4), dark=1.0, pleo=0.18, vesicular=0.8)
    # single cells and cords in the stroma strands
    p = _thin_points(np.argwhere(strands & region).astype(np.float32), 5.0 * s, rng)
    if len(p):
        p = p[rng.random(len(p)) < 0.5] + 0.5
        k = len(p)
        layer.add_nuclei(
            p[:, 0],
            p[:, 1],
            rng.uniform(0, np.pi, k),
            rng.uniform(1.8, 2.4, k) * s,
            rng.uniform(1.4, 1.9, k) * s,
            rng.uniform(1.0, 1.25, k),
        )


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------
def _fibre_texture(rng: np.random.Generator, s: float, size: int = 192) -> np.ndarray:
    """Periodic noise stretched along x: broken collagen fibres before they are bent into place."""
    n = rng.standard_normal((size, size), dtype=np.float32)
    n = ndimage.gaussian_filter(n, (0.7 * s, 5.0 * s), mode="wrap")
    n -= n.mean()
    return n / (n.std() + 1e-6)


def _stroma(shape: tuple[int, int], rng: np.random.Generator, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eosin density of wavy collagen fibres, hematoxylin haze, and the local fibre angle."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, np.pi)
    bend = _smooth_noise(shape, 20.0 * s, rng)
    u = xx * np.cos(base) + yy * np.sin(base)
    v = -xx * np.sin(base) + yy * np.cos(base)
    amp = rng.uniform(4.0, 9.0) * s
    warp = bend * amp + _smooth_noise(shape, 6.0 * s, rng) * 1.5 * s
    gy, gx = np.gradient(warp)
    theta = base + np.arctan(gx * np.cos(base) + gy * np.sin(base))  # d(warp)/du bends the fibres
    tex = _fibre_texture(rng, s)
    fib = ndimage.map_coordinates(tex, [v + warp, u], order=1, mode="grid-wrap")
    density = 0.36 + 0.05 * _smooth_noise(shape, 8.0 * s, rng)
    eos = density * (1.0 + 0.32 * np.tanh(fib))
    gaps = fib < -1.6  # retraction gaps between fibres
    eos = np.where(gaps, eos * 0.55, eos)
    hema = 0.06 + 0.015 * _smooth_noise(shape, 3.0 * s, rng)
    return eos.astype(np.float32), hema.astype(np.float32), theta.astype(np.float32)


def _render_nuclei(
    shape: tuple[int, int], seeds: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (0..1) and hematoxylin density of elliptic nuclei, one nucleus per nearest seed."""
    alpha = np.zeros(shape, dtype=np.float32)
    dens = np.zeros(shape, dtype=np.float32)
    if seeds.shape[0] == 0:
        return alpha, dens
    h, w = shape
    iy = np.clip(np.round(seeds[:, 0]).astype(np.int64), 0, h - 1)
    ix = np.clip(np.round(seeds[:, 1]).astype(np.int64), 0, w - 1)
    idmap = np.full(shape, -1, dtype=np.int64)
    idmap[iy, ix] = np.arange(seeds.shape[0])
    empty = idmap < 0
    dist, (ny, nx) = ndimage.distance_transform_edt(empty, return_indices=True)
    near = dist <= (seeds[:, 3].max() + 1.5)
    sid = idmap[ny[near], nx[near]]
    pys, pxs = np.nonzero(near)
    sd = seeds[sid]
    dy = pys.astype(np.float32) + 0.5 - sd[:, 0]
    dx = pxs.astype(np.float32) + 0.5 - sd[:, 1]
    c, s_ = np.cos(sd[:, 2]), np.sin(sd[:, 2])
    u = dx * c + dy * s_
    v = -dx * s_ + dy * c
    r = np.sqrt((u / sd[:, 3]) ** 2 + (v / sd[:, 4]) ** 2)
    a = np.clip((1.0 - r) * sd[:, 4] * 1.4 + 0.5, 0.0, 1.0)
    chrom = 0.85 + 0.25 * rng.random(r.shape[0], dtype=np.float32) + 0.12 * (r > 0.65)
    ves = sd[:, 6]
    chrom = chrom * (1.0 - 0.45 * ves * (r < 0.7)) + 0.9 * ves * (r < 0.3)  # open chromatin + nucleolus
    alpha[pys, pxs] = a
    dens[pys, pxs] = sd[:, 5] * chrom
    return alpha, dens


def _structures(mask: np.ndarray, rng: np.random.Generator, s: float, cribriform: float) -> _Layer:
    layer = _Layer(mask.shape)
    for label in np.unique(mask):
        region = mask == label
        if label == 0:
            _draw_nc(region, layer, rng, s)
        elif label == 1:
            _draw_gg3(region, layer, rng, s)
        elif label == 2:
            _draw_gg4(region, layer, rng, s, cribriform)
        else:
            _draw_gg5(region, layer, rng, s)
    return layer


def draw_tissue(
    mask: np.ndarray,
    rng: np.random.Generator,
    stain: Stain | None = None,
    tissue: np.ndarray | None = None,
    scale: float = 1.0,
    cribriform: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw H&E tissue following a label map; also return what each pixel is (radboud style).

    Args:
        mask: integer label map (H, W) with values 0..3 (NC, GG3, GG4, GG5).
        rng: numpy random generator (the drawing is a pure function of it).
        stain: the slide's stain; ``None`` draws one from ``rng`` (a new slide).
        tissue: optional boolean map of tissue; elsewhere is empty glass (whole slides).
        scale: size of all structures in pixels relative to the toy tiles (2 = twice as large).
        cribriform: chance that a GG4 nest is cribriform rather than fused glands; ``None``
            draws it from ``rng``.

    Returns:
        ``(rgb, radboud)``: uint8 RGB picture (H, W, 3) and uint8 map (H, W) with radboud values
        (0 glass, 1 stroma, 2 benign glands, 3/4/5 Gleason pattern regions).

    Raises:
        ValueError: when ``mask`` is not 2-D or holds values outside 0..3.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D label map, got shape {mask.shape}.")
    if mask.min() < 0 or mask.max() >= NUM_CLASSES:
        raise ValueError(f"mask values must be in 0..{NUM_CLASSES - 1}, got {mask.min()}..{mask.max()}.")
    mask = mask.astype(np.uint8)
    if stain is None:
        stain = random_stain(rng)
    if cribriform is None:
        cribriform = float(rng.uniform(0.2, 0.9))
    shape = mask.shape
    layer = _structures(mask, rng, scale, cribriform)
    eos, hema, theta = _stroma(shape, rng, scale)
    stroma = ~(layer.epi | layer.lum)
    if tissue is not None:
        stroma &= tissue

    # stromal (fibroblast) nuclei along the fibres, a few lymphocytes
    p = _thin_points(np.argwhere(stroma).astype(np.float32), 9.0 * scale, rng)
    p = p[rng.random(len(p)) < 0.55] + 0.5
    k = len(p)
    if k:
        th = theta[p[:, 0].astype(int), p[:, 1].astype(int)]
        layer.add_nuclei(
            p[:, 0],
            p[:, 1],
            th,
            rng.uniform(2.2, 3.4, k) * scale,
            rng.uniform(0.7, 1.0, k) * scale,
            rng.uniform(0.75, 1.0, k),
        )
    p = _thin_points(np.argwhere(stroma).astype(np.float32), 14.0 * scale, rng)
    p = p[rng.random(len(p)) < 0.12] + 0.5
    if len(p):
        k = len(p)
        layer.add_nuclei(
            p[:, 0],
            p[:, 1],
            0.0,
            rng.uniform(1.2, 1.5, k) * scale,
            rng.uniform(1.1, 1.4, k) * scale,
            rng.uniform(1.2, 1.4, k),
        )

    # cytoplasm and lumina
    fine = _smooth_noise(shape, 0.8 * scale, rng)
    cyto = np.clip(layer.cyto, 0.0, 1.0)
    cyto_e = (0.20 + 0.06 * cyto) * (1.0 + 0.18 * fine)
    cyto_h = (0.05 + 0.22 * cyto) * (1.0 + 0.15 * fine)
    epi = layer.epi & ~layer.lum
    eos = np.where(epi, cyto_e, eos)
    hema = np.where(epi, cyto_h, hema)
    eos = np.where(layer.necrosis, 0.42 * (1.0 + 0.25 * fine), eos)
    hema = np.where(layer.necrosis, 0.10 * (1.0 + 0.3 * fine), hema)
    lum_e = 0.025 + 0.015 * fine + layer.secretion
    eos = np.where(layer.lum, lum_e, eos)
    hema = np.where(layer.lum, 0.015 + 0.05 * layer.secretion, hema)

    # nuclei
    seeds = np.concatenate(layer.nuclei) if layer.nuclei else np.zeros((0, 7), dtype=np.float32)
    if tissue is not None and len(seeds):
        keep = tissue[
            np.clip(seeds[:, 0].astype(int), 0, shape[0] - 1), np.clip(seeds[:, 1].astype(int), 0, shape[1] - 1)
        ]
        seeds = seeds[keep]
    alpha, dens = _render_nuclei(shape, seeds, rng)
    hema = hema * (1 - alpha) + dens * alpha
    eos = eos * (1 - alpha) + 0.10 * alpha

    if tissue is not None:
        soft = ndimage.gaussian_filter(tissue.astype(np.float32), 1.5 * scale)
        eos *= soft
        hema *= soft

    # optics: slight defocus, stain mixing, sensor noise
    hema = ndimage.gaussian_filter(hema, 0.55 * scale) * stain.h_scale
    eos = ndimage.gaussian_filter(eos, 0.55 * scale) * stain.e_scale
    od = hema[..., None] * np.asarray(stain.hematoxylin, np.float32) + eos[..., None] * np.asarray(
        stain.eosin, np.float32
    )
    rgb = np.asarray(stain.background, np.float32) * np.exp(-od * 1.6)
    rgb += rng.normal(0.0, 2.2, rgb.shape).astype(np.float32)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    radboud = _RADBOUD_VALUES[mask]
    radboud = np.where((mask == 0) & layer.benign, np.uint8(2), radboud).astype(np.uint8)
    if tissue is not None:
        radboud = np.where(tissue, radboud, np.uint8(0)).astype(np.uint8)
    return rgb, radboud


def draw_tile(
    mask: np.ndarray,
    rng: np.random.Generator,
    stain: Stain | None = None,
    scale: float = 1.0,
    cribriform: float | None = None,
) -> np.ndarray:
    """Draw an H&E tile whose Gleason patterns follow ``mask`` (see :func:`draw_tissue`).

    Args:
        mask: integer label map (H, W) with values 0..3.
        rng: numpy random generator.
        stain: slide stain; ``None`` draws one from ``rng``.
        scale: structure size relative to the toy default.
        cribriform: chance that a GG4 nest is cribriform; ``None`` draws it.

    Returns:
        uint8 RGB tile (H, W, 3).
    """
    return draw_tissue(mask, rng, stain=stain, scale=scale, cribriform=cribriform)[0]


# ----------------------------------------------------------------------------------------------
# slide plan (which slides, patients, grades and tiles a toy data set holds)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ToyTile:
    name: str
    labels: tuple[int, ...]  # labels to place, background first
    cribriform: float


@dataclass(frozen=True)
class _ToySlide:
    index: int
    slide_id: str
    patient_id: int
    primary: int  # label 0..3
    secondary: int
    cribriform: float
    tiles: tuple[_ToyTile, ...]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, keys): results do not depend on the order of work."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def _tile_labels(primary: int, secondary: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Labels of one tile of a slide: from {NC, primary, secondary}, often one only."""
    if primary == 0:
        return (0,)
    cands = [0, primary] + ([secondary] if secondary != primary else [])
    weights = np.array([0.25, 0.52, 0.23][: len(cands)])
    weights /= weights.sum()
    n = 1 if rng.random() < 0.55 else int(rng.integers(2, len(cands) + 1))
    picked = rng.choice(len(cands), size=n, replace=False, p=weights)
    return tuple(int(cands[i]) for i in picked)


def _plan_slides(n_slides: int, seed: int, tiles_per_slide: tuple[int, int], tile_size: int) -> list[_ToySlide]:
    """Slides (ids, patients, Gleason scores) and the names and label sets of their tiles."""
    rng = _rng(seed, 0)
    pairs = [p for p, _ in GLEASON_PAIRS]
    weights = np.array([w for _, w in GLEASON_PAIRS])
    must = [(0, 0), (1, 1), (1, 2), (2, 3), (2, 2), (2, 1)][: min(n_slides, 6)]
    rest = [pairs[i] for i in rng.choice(len(pairs), size=n_slides - len(must), p=weights / weights.sum())]
    scores = must + rest
    order = rng.permutation(n_slides)
    scores = [scores[i] for i in order]

    # patients own 1-2 slides; keep at least 6 patients so every split and fold has one
    n_pairs = min(int(0.3 * n_slides), max(0, n_slides - 6))
    n_patients = n_slides - n_pairs
    owners = np.concatenate([np.arange(n_patients), rng.choice(n_patients, n_pairs, replace=False)])
    owners = np.sort(owners)
    patient_ids = rng.choice(np.arange(100, 1000), n_patients, replace=False)

    numbers = rng.choice(np.arange(1_000, 9_999_999), n_slides, replace=False)
    years = rng.choice([16, 17, 18], n_slides)
    stride = 4 * tile_size  # tile origins in level-0 (40x) pixels, as in SICAPv2 names
    slides = []
    for i in range(n_slides):
        primary, secondary = scores[i]
        slide_id = f"{years[i]}B{numbers[i]:07d}"
        srng = _rng(seed, 1, i)
        n_tiles = int(srng.integers(tiles_per_slide[0], tiles_per_slide[1] + 1))
        crib = float(srng.uniform(0.0, 1.0))
        tiles = []
        region, row, col = 1, 0, 0
        x0, y0 = int(srng.integers(2_000, 20_000)), int(srng.integers(2_000, 80_000))
        cols = int(srng.integers(4, 9))
        for _ in range(n_tiles):
            if col == cols:
                col, row = 0, row + 1
            if row == 4 or (row > 1 and srng.random() < 0.08):  # next annotated region of the slide
                region, row, col = region + 1, 0, 0
                x0, y0 = int(srng.integers(2_000, 20_000)), int(srng.integers(2_000, 80_000))
            name = f"{slide_id}_Block_Region_{region}_{row}_{col}_xini_{x0 + col * stride}_yini_{y0 + row * stride}"
            labels = _tile_labels(primary, secondary, srng)
            tiles.append(_ToyTile(name, labels, float(np.clip(crib + srng.normal(0, 0.2), 0.05, 0.95))))
            col += 1
        # the slide's grades must show in its tiles
        present = {v for t in tiles for v in t.labels}
        for j, need in enumerate(sorted({primary, secondary} - present)):
            t = tiles[-1 - j]
            tiles[-1 - j] = _ToyTile(t.name, (need,), t.cribriform)
        slides.append(_ToySlide(i, slide_id, int(patient_ids[owners[i]]), primary, secondary, crib, tuple(tiles)))
    return slides


def _split_patients(
    patients: list[int],
    grades: dict[int, int],
    seed: int,
    n_groups: int,
    first: float | None,
) -> list[list[int]]:
    """Stratified patient groups: sort by grade, deal out in turn (a share ``first`` to group 0 if given)."""
    rng = _rng(seed, 2, n_groups)
    order = sorted(patients, key=lambda p: (grades[p], rng.random()))
    if first is not None:
        n_test = max(1, round(first * len(order)))
        step = len(order) / n_test
        start = rng.uniform(0, step)
        test_idx = {min(len(order) - 1, int(start + k * step)) for k in range(n_test)}
        return [
            [p for i, p in enumerate(order) if i in test_idx],
            [p for i, p in enumerate(order) if i not in test_idx],
        ]
    offset = int(rng.integers(n_groups))
    return [[p for i, p in enumerate(order) if (i + offset) % n_groups == g] for g in range(n_groups)]


# ----------------------------------------------------------------------------------------------
# writers (atomic, byte-deterministic)
# ----------------------------------------------------------------------------------------------
def _jpeg_bytes(array: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_XLSX_TIME = re.compile(rb"(<dcterms:(created|modified)[^>]*>)[^<]*(</dcterms:\2>)")


def _xlsx_bytes(frame: pd.DataFrame) -> bytes:
    """An .xlsx of ``frame`` whose bytes depend only on its content (fixed times inside the zip)."""
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        frame.to_excel(writer, index=False)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = _XLSX_TIME.sub(rb"\g<1>2020-01-01T00:00:00Z\g<3>", data)
            fixed = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, data)
    return out.getvalue()


def _render_tile(
    seed: int, slide: _ToySlide, tile_index: int, tile_size: int, stain: Stain
) -> tuple[np.ndarray, np.ndarray]:
    tile = slide.tiles[tile_index]
    rng = _rng(seed, 3, slide.index, tile_index)
    mask = draw_mask(tile_size, tile.labels, rng)
    rgb = draw_tile(mask, rng, stain=stain, cribriform=tile.cribriform)
    return rgb, mask


def _write_slide_tiles(work: Path, seed: int, slide: _ToySlide, tile_size: int) -> dict[str, dict[str, Any]]:
    """Draw and write one slide's tiles (skipping those a killed build already wrote); return sheet rows."""
    stain = random_stain(_rng(seed, 5, slide.index))
    rows = {}
    for t, tile in enumerate(slide.tiles):
        img_path = work / "images" / f"{tile.name}.jpg"
        mask_path = work / "masks" / f"{tile.name}.jpg"
        if img_path.exists() and mask_path.exists():  # both written atomically, mask last
            mask = draw_mask(tile_size, tile.labels, _rng(seed, 3, slide.index, t))
        else:
            rgb, mask = _render_tile(seed, slide, t, tile_size, stain)
            atomic_write_bytes(img_path, _jpeg_bytes(rgb, _JPEG_QUALITY))
            atomic_write_bytes(mask_path, _jpeg_bytes(_SICAP_VALUES[mask], 100))
        rows[tile.name] = _sheet_row(tile.name, mask, tile.cribriform, _rng(seed, 6, slide.index, t))
    return rows


def _sheet_row(name: str, mask: np.ndarray, cribriform: float, rng: np.random.Generator) -> dict[str, Any]:
    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
    top = int(np.argmax(counts))
    row = {"image_name": name if rng.random() < 0.1 else f"{name}.jpg", "NC": 0, "G3": 0, "G4": 0, "G5": 0, "G4C": 0}
    key = ["NC", "G3", "G4", "G5"][top]
    if top == 2 and cribriform > 0.6:
        key = "G4C"
    row[key] = 1
    return row


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


# ----------------------------------------------------------------------------------------------
# the SICAPv2-layout data set
# ----------------------------------------------------------------------------------------------
_LAYOUT = ("images", "masks", "partition", "wsi_labels.xlsx", "panda", _MARKER)
_MOVING = ".toy_moving"  # present while a build replaces an older toy build in place


def _end_with_parent(parent: int) -> None:
    """Worker initializer: a drawing process ends when the build that started it ends, however it ends.

    A killed parent cannot shut its pool down, and spawned workers would go on drawing (hundreds of MB each).
    Linux delivers SIGKILL to the worker when the parent dies (``PR_SET_PDEATHSIG``); elsewhere a watchdog
    thread notices the parent is gone within a second.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: the watchdog remains
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="end-with-parent").start()


def _build_args(
    n_slides: int, tile_size: int, seed: int, tiles_per_slide: tuple[int, int], n_wsi: int, wsi_size: tuple[int, int]
) -> dict[str, Any]:
    return {
        "toy_version": TOY_VERSION,
        "n_slides": int(n_slides),
        "tile_size": int(tile_size),
        "seed": int(seed),
        "tiles_per_slide": [int(tiles_per_slide[0]), int(tiles_per_slide[1])],
        "n_wsi": int(n_wsi),
        "wsi_size": [int(wsi_size[0]), int(wsi_size[1])],
    }


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: str | os.PathLike, **build_args: Any) -> bool:
    """Whether ``root`` holds a finished toy build (made with these arguments, when given).

    A build writes its completion marker last, so a killed build never looks complete.

    Args:
        root: the data set folder.
        build_args: any of ``n_slides, tile_size, seed, tiles_per_slide, n_wsi, wsi_size`` to
            compare with the finished build's.

    Returns:
        True when the marker exists, matches the current drawing version and the given arguments.
    """
    marker = _read_marker(Path(root) / _MARKER)
    if marker is None or marker.get("toy_version") != TOY_VERSION:
        return False
    for key, value in build_args.items():
        if isinstance(value, tuple):
            value = list(value)
        if marker.get(key) != value:
            return False
    return True


def make_toy_sicapv2(
    root: str | os.PathLike,
    n_slides: int = 40,
    tile_size: int = 128,
    seed: int = 0,
    tiles_per_slide: tuple[int, int] = (20, 55),
    n_wsi: int = 3,
    wsi_size: tuple[int, int] = (2048, 1536),
    overwrite: bool = False,
    num_workers: int | None = None,
) -> Path:
    """Write a procedural Gleason data set in the exact SICAPv2 layout (and PANDA-style slides).

    Layout: ``images/<name>.jpg`` (RGB), ``masks/<name>.jpg`` (grayscale, 0 NC, 3/4/5 Gleason,
    with JPEG noise), ``partition/Test/{Train,Test}.xlsx`` (patients 75 % / 25 %),
    ``partition/Validation/Val1..Val4/{Train,Test}.xlsx`` (4 patient folds of the Test
    partition's Train), ``wsi_labels.xlsx`` and, when ``n_wsi > 0``, ``panda/`` (see
    :func:`make_toy_panda`). The build is made in a sibling folder and moved into place with a
    completion marker written last; calling again with the same arguments returns at once, and a
    killed build resumes where it stopped. The same arguments give the same bytes.

    Args:
        root: output folder.
        n_slides: number of slides (at least 5); patients own one or two.
        tile_size: tile side in pixels (structures keep their size; larger tiles show more).
        seed: random seed.
        tiles_per_slide: inclusive range of tiles drawn per slide.
        n_wsi: number of PANDA-layout whole slides (0 for none).
        wsi_size: their level-0 width and height.
        overwrite: replace a toy build (finished or killed) of other settings, or the toy files in a folder that
            holds others. Without it, a build of other settings stops with an error naming the settings.
        num_workers: processes drawing slides in parallel (``None``: one per CPU, up to 8, for
            builds worth it); the output does not depend on it.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for fewer than 5 slides, a tile under 32 px, a bad tile range or slides under 256 px; a toy
            build of other settings in ``root`` (or its partial folder) without ``overwrite``, naming them.
        FileExistsError: when ``root`` holds other files and ``overwrite`` is False.
    """
    if n_slides < 5:
        raise ValueError(f"make_toy_sicapv2 needs n_slides >= 5 (train, test and 4 folds), got {n_slides}.")
    if tile_size < 32:
        raise ValueError(f"tile_size must be at least 32 px, got {tile_size}.")
    lo, hi = (int(v) for v in tiles_per_slide)
    if lo < 1 or hi < lo:
        raise ValueError(f"tiles_per_slide must be (min, max) with 1 <= min <= max, got {tiles_per_slide}.")
    if n_wsi > 0 and min(wsi_size) < 256:
        raise ValueError(f"wsi_size must be at least 256 px a side, got {wsi_size}.")
    root = Path(root)
    args = _build_args(n_slides, tile_size, seed, (lo, hi), n_wsi, wsi_size)
    finished = compare_settings(root / _MARKER, args)
    if finished == []:
        return root
    if finished and not overwrite:
        raise settings_error(root, finished)
    if root.exists() and any(root.iterdir()):
        ours = (root / _MARKER).exists() or (root / _MOVING).exists()  # never touch real data sets
        if not (ours or overwrite):
            raise FileExistsError(
                f"{root} is not empty and holds no toy data set; pass overwrite=True to replace "
                f"{', '.join(_LAYOUT[:5])} in it with toy data."
            )

    work = root.parent / f".{root.name}.toy-partial"
    partial = compare_settings(work / "build_args.json", args)
    if partial and not overwrite:  # a killed build of other settings: stop rather than discard it silently
        raise settings_error(work, partial)
    if partial or (partial is None and work.exists()):  # another or an unknown partial build
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(work)
    atomic_write_bytes(work / "build_args.json", json.dumps(args, sort_keys=True).encode())
    for sub in ("images", "masks", "partition/Test", *(f"partition/Validation/Val{k}" for k in range(1, 5))):
        (work / sub).mkdir(parents=True, exist_ok=True)

    slides = _plan_slides(n_slides, seed, (lo, hi), tile_size)
    sheet_rows: dict[str, dict[str, Any]] = {}
    jobs = [(work, seed, slide, tile_size) for slide in slides]
    panda_jobs = _panda_jobs(work / "panda", n_wsi, seed, wsi_size, 3) if n_wsi > 0 else []
    if num_workers is None:  # processes pay off only for larger builds
        work_px = sum(len(slide.tiles) for slide in slides) * tile_size**2 + n_wsi * wsi_size[0] * wsi_size[1]
        num_workers = min(os.cpu_count() or 1, 8) if work_px > 400 * 128**2 else 1
    if num_workers > 1:
        with ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_end_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            panda_futures = [pool.submit(_write_panda_slide, *job) for job in panda_jobs]  # longest first
            tile_futures = [pool.submit(_write_slide_tiles, *job) for job in jobs]
            panda_rows = [f.result() for f in panda_futures]
            for future in tile_futures:
                sheet_rows.update(future.result())
    else:
        panda_rows = [_write_panda_slide(*job) for job in panda_jobs]
        for job in jobs:
            sheet_rows.update(_write_slide_tiles(*job))
    if panda_rows:
        _write_panda_table(work / "panda", panda_rows)

    # partitions by patient
    values = [0, 3, 4, 5]
    grade_of = {}
    for slide in slides:
        grade_of[slide.patient_id] = max(grade_of.get(slide.patient_id, 0), slide.primary, slide.secondary)
    patients = sorted(grade_of)
    test_p, train_p = _split_patients(patients, grade_of, seed, 2, first=0.25)
    folds = _split_patients(train_p, grade_of, seed, 4, first=None)

    def sheet(pats: Iterable[int]) -> pd.DataFrame:
        pats = set(pats)
        rows = [sheet_rows[t.name] for s in slides if s.patient_id in pats for t in s.tiles]
        return pd.DataFrame(rows, columns=["image_name", "NC", "G3", "G4", "G5", "G4C"])

    part = work / "partition"
    atomic_write_bytes(part / "Test" / "Train.xlsx", _xlsx_bytes(sheet(train_p)))
    atomic_write_bytes(part / "Test" / "Test.xlsx", _xlsx_bytes(sheet(test_p)))
    for k, fold in enumerate(folds, start=1):
        rest = [p for p in train_p if p not in set(fold)]
        atomic_write_bytes(part / "Validation" / f"Val{k}" / "Train.xlsx", _xlsx_bytes(sheet(rest)))
        atomic_write_bytes(part / "Validation" / f"Val{k}" / "Test.xlsx", _xlsx_bytes(sheet(fold)))
    labels_df = pd.DataFrame(
        [
            {
                "slide_id": s.slide_id,
                "patient_id": s.patient_id,
                "Gleason_primary": values[s.primary],
                "Gleason_secondary": values[s.secondary],
            }
            for s in slides
        ]
    )
    atomic_write_bytes(work / "wsi_labels.xlsx", _xlsx_bytes(labels_df))

    # move into place; the marker goes last
    (work / "build_args.json").unlink()
    marker = json.dumps(args, sort_keys=True, indent=1).encode()
    if not root.exists() or not any(root.iterdir()):
        if root.exists():
            root.rmdir()
        atomic_write_bytes(work / _MARKER, marker)
        os.replace(work, root)
        return root
    (root / _MOVING).touch()
    (root / _MARKER).unlink(missing_ok=True)
    for name in _LAYOUT:
        old = root / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (work / name).exists():
            os.replace(work / name, old)
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_bytes(root / _MARKER, marker)
    (root / _MOVING).unlink()
    return root


# ----------------------------------------------------------------------------------------------
# contact sheet
# ----------------------------------------------------------------------------------------------
def _snap_sicap_mask(values: np.ndarray) -> np.ndarray:
    """Grayscale SICAPv2 mask values (with JPEG noise) -> labels 0..3, by the nearest valid value."""
    valid = _SICAP_VALUES.astype(np.int16)
    return np.abs(values.astype(np.int16)[..., None] - valid).argmin(-1).astype(np.uint8)


def _load_pair(item: Any) -> tuple[np.ndarray, np.ndarray, str]:
    image, mask = item["image"], item["mask"]
    name = Path(image).stem if isinstance(image, (str, os.PathLike)) else str(item.get("name", ""))
    if isinstance(image, (str, os.PathLike)):
        image = np.asarray(Image.open(image).convert("RGB"))
    if isinstance(mask, (str, os.PathLike)):
        mask = _snap_sicap_mask(np.asarray(Image.open(mask).convert("L")))
    return np.asarray(image, dtype=np.uint8), np.asarray(mask).astype(np.uint8), name


def save_contact_sheet(
    root_or_items: str | os.PathLike | Sequence[dict[str, Any]],
    path: str | os.PathLike,
    n: int = 6,
    zoom: int = 2,
) -> Path:
    """Save a PNG of tiles beside their colour-coded masks: one row per pattern, then mixed tiles.

    Args:
        root_or_items: a SICAPv2-layout folder, or items with ``image`` and ``mask`` (paths, or
            arrays with label masks 0..3 and an optional ``name``).
        path: PNG file to write.
        n: tiles per row.
        zoom: integer magnification of each tile.

    Returns:
        The PNG path.

    Raises:
        FileNotFoundError: when the folder has no ``images/`` or ``masks/``.
        ValueError: when no tile is given.
    """
    if isinstance(root_or_items, (str, os.PathLike)):
        root = Path(root_or_items)
        if not (root / "images").is_dir() or not (root / "masks").is_dir():
            raise FileNotFoundError(f"{root} has no images/ and masks/ folders (SICAPv2 layout expected).")
        items = [{"image": p, "mask": root / "masks" / p.name} for p in sorted((root / "images").glob("*.jpg"))]
        items = [it for it in items if Path(it["mask"]).exists()]
    else:
        items = list(root_or_items)
    if not items:
        raise ValueError("save_contact_sheet got no tiles.")

    rows: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = {name: [] for name in (*LABEL_NAMES, "mixed")}
    # walk the items in a spread-out order so rows do not all come from one slide
    order = np.argsort(np.array([hashlib.md5(str(i).encode()).hexdigest() for i in range(len(items))]))
    for i in order:
        if all(len(v) >= n for v in rows.values()):
            break
        image, mask, name = _load_pair(items[i])
        present = np.unique(mask)
        key = LABEL_NAMES[int(present[0])] if len(present) == 1 else "mixed"
        if len(rows[key]) < n:
            rows[key].append((image, mask, name))
    rows = {k: v for k, v in rows.items() if v}

    tile = max(im.shape[0] for v in rows.values() for im, _, _ in v) * zoom
    gap = 4
    size = int(min(48, max(14, tile // 6)))  # text readable at the sheet's size (a sheet is ~3000 px wide)
    font = ImageFont.load_default(size=size)
    label_w, head = int(font.getlength("mixed")) + 2 * size, int(1.8 * size)
    cell_w = 2 * tile + gap
    width = label_w + n * (cell_w + 3 * gap)
    height = head + len(rows) * (tile + 2 * gap) + 2 * size
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, size // 4), "tile | its mask, one row per pattern (colours below)", fill=(0, 0, 0), font=font)
    y = head
    for key, entries in rows.items():
        draw.text((size // 2, y + tile // 2 - size // 2), key, fill=(0, 0, 0), font=font)
        x = label_w
        for image, mask, _ in entries:
            im = Image.fromarray(image).resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST)
            mk = Image.fromarray(colorize(mask)).resize((mask.shape[1] * zoom, mask.shape[0] * zoom), Image.NEAREST)
            sheet.paste(im, (x, y))
            sheet.paste(mk, (x + im.width + gap, y))
            x += cell_w + 3 * gap
        y += tile + 2 * gap
    x = label_w
    for k, name in enumerate(LABEL_NAMES):
        colour = tuple(int(c) for c in colorize(np.array([[k]]))[0, 0])
        draw.rectangle([x, y + size // 4, x + size, y + size + size // 4], fill=colour, outline=(0, 0, 0))
        draw.text((x + int(1.4 * size), y + size // 8), name, fill=(0, 0, 0), font=font)
        x += int(font.getlength(name)) + 3 * size
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
