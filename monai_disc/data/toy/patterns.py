"""Tissue structures of each Gleason pattern: glands, nests, sheets and their nucleus seeds."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shapes import _smooth_noise

__all__: list[str] = []


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
