"""Rendering: stroma, nuclei and stains turned into an H&E picture that follows a label map."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from monai_disc.labels import NUM_CLASSES

from .patterns import _draw_gg3, _draw_gg4, _draw_gg5, _draw_nc, _Layer, _thin_points
from .shapes import _smooth_noise
from .stain import Stain, random_stain

__all__ = ["draw_tile", "draw_tissue"]

_RADBOUD_VALUES = np.array([1, 3, 4, 5], dtype=np.uint8)  # label -> radboud value (NC stroma = 1)


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


def _draw_pattern(
    label: int, region: np.ndarray, layer: _Layer, rng: np.random.Generator, s: float, crib: float
) -> None:
    if label == 0:
        _draw_nc(region, layer, rng, s)
    elif label == 1:
        _draw_gg3(region, layer, rng, s)
    elif label == 2:
        _draw_gg4(region, layer, rng, s, crib)
    else:
        _draw_gg5(region, layer, rng, s)


def _structures(mask: np.ndarray, rng: np.random.Generator, s: float, cribriform: float, gg45_mix: float) -> _Layer:
    """The structures of every labelled region; with ``gg45_mix > 0`` that share of each GG4 region is drawn as
    GG5 and of each GG5 region as GG4 (smooth patches), so the two grades look closer."""
    layer = _Layer(mask.shape)
    for label in np.unique(mask):
        region = mask == label
        if gg45_mix > 0.0 and label in (2, 3):
            field = _smooth_noise(mask.shape, 8.0 * s, rng)
            swap = region & (field < np.quantile(field[region], gg45_mix))
            _draw_pattern(int(label), region & ~swap, layer, rng, s, cribriform)
            _draw_pattern(5 - int(label), swap, layer, rng, s, cribriform)
        else:
            _draw_pattern(int(label), region, layer, rng, s, cribriform)
    return layer


def draw_tissue(
    mask: np.ndarray,
    rng: np.random.Generator,
    stain: Stain | None = None,
    tissue: np.ndarray | None = None,
    scale: float = 1.0,
    cribriform: float | None = None,
    gg45_mix: float = 0.0,
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
        gg45_mix: share of each GG4 region drawn like GG5 and of each GG5 region drawn like GG4, in
            [0, 0.5] (0: the patterns as described; 0.5: the two grades cannot be told apart).

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
    if not 0.0 <= gg45_mix <= 0.5:
        raise ValueError(f"gg45_mix must lie in [0, 0.5], got {gg45_mix}.")
    mask = mask.astype(np.uint8)
    if stain is None:
        stain = random_stain(rng)
    if cribriform is None:
        cribriform = float(rng.uniform(0.2, 0.9))
    shape = mask.shape
    layer = _structures(mask, rng, scale, cribriform, gg45_mix)
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
    gg45_mix: float = 0.0,
) -> np.ndarray:
    """Draw an H&E tile whose Gleason patterns follow ``mask`` (see :func:`draw_tissue`).

    Args:
        mask: integer label map (H, W) with values 0..3.
        rng: numpy random generator.
        stain: slide stain; ``None`` draws one from ``rng``.
        scale: structure size relative to the toy default.
        cribriform: chance that a GG4 nest is cribriform; ``None`` draws it.
        gg45_mix: share of GG4 drawn like GG5 and of GG5 like GG4 (see :func:`draw_tissue`).

    Returns:
        uint8 RGB tile (H, W, 3).
    """
    return draw_tissue(mask, rng, stain=stain, scale=scale, cribriform=cribriform, gg45_mix=gg45_mix)[0]
