"""Whole slides: tissue found on a thumbnail, a tile grid at a target resolution, tiles read at their coordinates.

A slide is opened through MONAI's ``WSIReader`` (the OpenSlide backend; tifffile for files OpenSlide cannot open,
such as untiled TIFFs). Tissue is found on one coarse pyramid level only (CLAM's recipe, :func:`detect_tissue`),
never on level 0, so tiling a 40,000 px slide reads a few hundred thousand pixels. Tiles lie on a regular grid at
the target resolution: a tile of ``tile_size`` px at ``mpp`` um/px covers ``tile_size * mpp / base_mpp`` level-0
pixels, and is read from the coarsest level that is still at least as fine as ``mpp``, then resized to
``tile_size`` (:func:`read_tile`).

A tiling output folder (written by ``monai-disc tile-slides``) holds::

    DIR/tiling.json               the settings it was made with (tile_size, mpp, min_tissue, ...)
    DIR/manifest.csv              slide_id, path, status (ok, empty, error), n_tiles, mpp, level, message,
                                  provider, gleason_score, NC, GG3, GG4, GG5 (labels empty when unknown)
    DIR/coords/<slide_id>.csv     x, y, level, size, tissue (+ nc, gg3, gg4, gg5 with a radboud mask)
    DIR/thumbnails/<slide_id>.png the thumbnail, tissue outline and tile grid drawn on it

:func:`load_wsi_bags` lists such a folder as slide bags whose tiles are coordinates, and :class:`SlideTileLoader`
reads them for :func:`monai_disc.networks.extract_bag_features` (DataLoader workers, no JPEG written).
Importing this module imports neither torch nor MONAI (they are imported where slides are read).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from monai_disc.data.panda import panda_mask_to_labels
from monai_disc.labels import LABEL_NAMES

__all__ = [
    "COORDS_DIR",
    "LABEL_FRACTIONS",
    "MANIFEST_COLUMNS",
    "REF_PATCH_UM",
    "SCANNER_MPP_RANGE",
    "SCREEN_DPI",
    "SLIDE_EXTENSIONS",
    "THUMBNAILS_DIR",
    "TILING_SETTINGS",
    "TISSUE_PRESETS",
    "WSI_MANIFEST",
    "SlideTileLoader",
    "SlideTiling",
    "close_slide",
    "detect_tissue",
    "failed_slides",
    "load_wsi_bags",
    "open_slide",
    "plan_slide_tiles",
    "read_coords",
    "read_tile",
    "read_tiling_settings",
    "resolution_tags",
    "slide_mpp",
    "slide_mpp_check",
    "slide_resolution",
    "tile_slide",
    "write_coords",
]

WSI_MANIFEST = "manifest.csv"
TILING_SETTINGS = "tiling.json"
COORDS_DIR = "coords"
THUMBNAILS_DIR = "thumbnails"
LABEL_FRACTIONS: tuple[str, ...] = tuple(name.lower() for name in LABEL_NAMES)  # nc, gg3, gg4, gg5
COORD_COLUMNS: tuple[str, ...] = ("x", "y", "level", "size", "tissue")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "slide_id", "path", "status", "n_tiles", "mpp", "level", "message", "provider", "gleason_score", *LABEL_NAMES,
)  # fmt: skip
SLIDE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")

# CLAM (Lu et al. 2021) segmentation parameters: saturation threshold, median kernel, closing kernel, minimum tissue
# and hole areas in 512 x 512 level-0 patches, and the largest holes kept per tissue piece.
TISSUE_PRESETS: dict[str, dict[str, Any]] = {
    "clam": {"sthresh": 8, "mthresh": 7, "close": 4, "a_t": 100.0, "a_h": 16.0, "max_n_holes": 8},
    "biopsy": {"sthresh": 15, "mthresh": 11, "close": 2, "a_t": 1.0, "a_h": 1.0, "max_n_holes": 2},
}
# CLAM's reference patch is 512 level-0 pixels of a 40x slide (0.25 um/px): 128 um, so area filters mean the same
# tissue area on slides of any resolution
REF_PATCH_UM = 128.0
#: level-0 resolutions scanners produce, um/px (100x oil about 0.1; a 1.25x overview about 8)
SCANNER_MPP_RANGE: tuple[float, float] = (0.05, 10.0)
#: resolution tags image editors and screen captures write by default, dots per inch
SCREEN_DPI: tuple[float, ...] = (72.0, 96.0)
_MPP_RTOL = 0.05  # a level within 5 % of the target counts as the target (as MONAI's mpp_rtol)
_MAX_THUMB_DOWNSAMPLE = 64.0  # CLAM segments at the level nearest 64x
_MIN_THUMB_PX_PER_TILE = 8.0  # a tile spans at least this many thumbnail pixels


# ----------------------------------------------------------------------------------------------
# tissue
# ----------------------------------------------------------------------------------------------
def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..255 as OpenCV computes it: 255 * (max - min) / max."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, 255.0 * (high - low) / np.maximum(high, 1e-6), 0.0)


def detect_tissue(
    thumbnail: np.ndarray,
    sthresh: float = 8,
    mthresh: int = 7,
    close: int = 4,
    use_otsu: bool = False,
    a_t: float = 100.0,
    a_h: float = 16.0,
    max_n_holes: int = 8,
    downsample: float = 1.0,
    ref_patch_size: int = 512,
) -> np.ndarray:
    """Tissue mask of a slide thumbnail, by CLAM's recipe (defaults: CLAM's; ``TISSUE_PRESETS["biopsy"]`` too).

    HSV saturation, median blur, a threshold (fixed or Otsu), a morphological closing; then every tissue piece
    keeps its ``max_n_holes`` largest holes above ``a_h`` (smaller holes are filled), and pieces whose area less
    their holes is under ``a_t`` are dropped. Areas count 512 x 512 level-0 patches (CLAM's reference patch), so
    the filters mean the same on any thumbnail level given its ``downsample``.

    Args:
        thumbnail: (H, W, 3) uint8 RGB picture of the whole slide (a coarse pyramid level, not level 0).
        sthresh: saturation threshold (0..255); pixels above it are tissue.
        mthresh: median filter size in thumbnail pixels (odd; an even size is rounded up). With a fixed
            threshold the median is not computed: a pixel is tissue when most of its window is above
            ``sthresh``, which is the same thing and costs a box filter.
        close: closing kernel size in thumbnail pixels (0 for none).
        use_otsu: threshold the saturation by Otsu's method instead of ``sthresh``.
        a_t: smallest tissue piece, in reference patches.
        a_h: smallest hole kept, in reference patches.
        max_n_holes: holes kept per piece (the largest).
        downsample: level-0 pixels per thumbnail pixel.
        ref_patch_size: side of the reference patch in level-0 pixels (CLAM: 512; :func:`tile_slide` uses
            :data:`REF_PATCH_UM` over the slide's resolution, the same 128 um at any magnification).

    Returns:
        (H, W) bool mask, True on tissue.

    Raises:
        ValueError: a thumbnail that is not (H, W, 3) or (H, W, 4), or a non-positive ``downsample``.
    """
    image = np.asarray(thumbnail)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"detect_tissue expects an (H, W, 3) RGB thumbnail, got shape {image.shape}")
    if downsample <= 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    rgb = image[..., :3]
    k = int(mthresh) if int(mthresh) % 2 else int(mthresh) + 1  # an odd window, as OpenCV's medianBlur needs
    if use_otsu:
        from monai.utils import optional_import

        threshold_otsu, _ = optional_import("skimage.filters", name="threshold_otsu")  # scikit-image, optional
        sat = _saturation(rgb)
        if k > 1:
            sat = ndimage.median_filter(sat, size=k, mode="nearest")
        tissue = sat > (float(threshold_otsu(sat)) if sat.max() > sat.min() else float(sthresh))
    else:
        # median(window) > t exactly when most of the window is > t: a box count instead of a median filter
        high, low = rgb.max(axis=-1).astype(np.int32), rgb.min(axis=-1).astype(np.int32)
        above = 255 * (high - low) > float(sthresh) * high  # saturation > sthresh, without a division
        if k > 1:
            votes = ndimage.uniform_filter(above.astype(np.float32), size=k, mode="nearest") * (k * k)
            above = votes > (k * k) / 2
        tissue = above
    if close > 1:  # pad so the closing does not erode the border
        pad = int(close)
        padded = np.pad(tissue, pad, mode="edge")
        tissue = ndimage.binary_closing(padded, structure=np.ones((pad, pad), bool))[pad:-pad, pad:-pad]
    if not tissue.any():
        return tissue
    patch_area = (ref_patch_size / downsample) ** 2  # thumbnail pixels per reference patch
    filled = ndimage.binary_fill_holes(tissue)
    pieces, n_pieces = ndimage.label(filled)
    holes, n_holes = ndimage.label(filled & ~tissue)
    keep_hole = np.zeros(n_holes + 1, dtype=bool)
    hole_area = np.zeros(n_pieces + 1)
    if n_holes:
        sizes = np.bincount(holes.ravel(), minlength=n_holes + 1).astype(np.float64)
        owner = np.zeros(n_holes + 1, dtype=np.int64)
        owner[holes.ravel()] = pieces.ravel()  # the piece around each hole
        hole_area = np.bincount(owner[1:], weights=sizes[1:], minlength=n_pieces + 1)
        for piece in np.unique(owner[1:]):
            ids = np.flatnonzero(owner == piece)
            ids = ids[ids > 0]
            ids = ids[sizes[ids] > a_h * patch_area]
            keep_hole[ids[np.argsort(-sizes[ids], kind="stable")][: int(max_n_holes)]] = True
    piece_area = np.bincount(pieces.ravel(), minlength=n_pieces + 1).astype(np.float64) - hole_area
    keep_piece = piece_area > a_t * patch_area
    keep_piece[0] = False
    return keep_piece[pieces] & ~keep_hole[holes]


# ----------------------------------------------------------------------------------------------
# opening slides
# ----------------------------------------------------------------------------------------------
def open_slide(path: str | os.PathLike, backend: str = "auto") -> tuple[Any, Any]:
    """Open a slide through MONAI's ``WSIReader``.

    Args:
        path: the slide file.
        backend: ``"openslide"``, ``"tifffile"`` or ``"auto"`` (OpenSlide, else tifffile).

    Returns:
        ``(reader, wsi)``: the ``WSIReader`` and the backend's slide object (close it with :func:`close_slide`).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: a file no backend can open (the message names the file and each backend's reason).
    """
    from monai.data import WSIReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide not found: {path}")
    backends = ("openslide", "tifffile") if backend == "auto" else (backend,)
    reasons = []
    for name in backends:
        reader = WSIReader(backend=name)
        try:
            return reader, reader.read(str(path))
        except Exception as err:  # each backend raises its own error types
            reasons.append(f"{name}: {type(err).__name__}: {str(err).strip() or 'unsupported'}")
    raise ValueError(f"{path}: cannot be opened as a slide ({'; '.join(reasons)})")


def close_slide(wsi: Any) -> None:
    """Close a slide object of :func:`open_slide` (OpenSlide or tifffile)."""
    close = getattr(wsi, "close", None)
    if close is not None:
        close()


def _tag_resolution(unit: Any, xres: Any, source: str) -> dict[str, Any]:
    """um/px of a TIFF ``XResolution`` in ``unit`` ("inch"/"centimeter", or TIFF codes 2/3), with the tag text."""
    unit = {2: "inch", 3: "centimeter", "2": "inch", "3": "centimeter"}.get(unit, unit)
    unit = str(unit).lower() if unit is not None else None
    tag = f"{source}XResolution={xres} {source}ResolutionUnit={unit}"
    try:
        dots = float(xres)
    except (TypeError, ValueError):
        return {"mpp": None, "tag": tag, "screen": False}
    per_um = {"inch": 1.0 / 25400.0, "centimeter": 1e-4}.get(unit or "")  # dots per um
    if per_um is None or not dots > 0 or not math.isfinite(dots):
        return {"mpp": None, "tag": tag, "screen": False}
    screen = unit == "inch" and any(abs(dots - d) < 0.5 for d in SCREEN_DPI)
    return {"mpp": 1.0 / (dots * per_um), "tag": tag, "screen": screen}


def resolution_tags(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The level-0 resolution OpenSlide properties state, where it comes from, and whether it is a screen default.

    A scanner's own metadata (``openslide.mpp-x`` of a vendor format) is what it states; a generic TIFF's comes
    from its ``tiff.XResolution`` and ``tiff.ResolutionUnit`` tags, which image editors fill with 72 or 96 dpi.

    Returns:
        ``{"mpp": um/px or None, "tag": the tag text, "screen": True for 72/96 dpi in inches}``.
    """
    if properties.get("openslide.vendor") in (None, "generic-tiff") and "tiff.XResolution" in properties:
        return _tag_resolution(properties.get("tiff.ResolutionUnit"), properties["tiff.XResolution"], "tiff.")
    value = properties.get("openslide.mpp-x")
    try:
        mpp = float(value) if value else None
    except ValueError:
        mpp = None
    mpp = mpp if mpp and math.isfinite(mpp) and mpp > 0 else None
    return {"mpp": mpp, "tag": f"openslide.mpp-x={value}", "screen": False}


def slide_mpp_check(
    properties: Mapping[str, Any], name: str | os.PathLike, base_mpp: float | None = None, key: str = "--base-mpp"
) -> float:
    """The level-0 um/px to use for a slide: its trusted metadata, else the user's ``base_mpp``.

    Metadata is not trusted when it is a screen default (72 or 96 dpi in inches, no scanner's mpp) or lies outside
    :data:`SCANNER_MPP_RANGE`; such a slide, or one without any, needs ``base_mpp``.

    Args:
        properties: OpenSlide-style properties (:func:`resolution_tags`), or ``{"mpp", "tag", "screen"}``.
        name: the slide, for the message.
        base_mpp: the user's level-0 um/px (used only where the metadata is missing or not trusted).
        key: how the user gives ``base_mpp`` (named in the message).

    Raises:
        ValueError: no trusted resolution and no ``base_mpp`` (names the slide and the tag).
    """
    found = properties if "screen" in properties else resolution_tags(properties)
    mpp, tag = found["mpp"], found["tag"]
    low, high = SCANNER_MPP_RANGE
    if mpp is not None and not found["screen"] and low <= mpp <= high:
        return float(mpp)
    if base_mpp is not None:
        return float(base_mpp)
    if mpp is None:
        raise ValueError(
            f"{name}: no resolution in its metadata (openslide.mpp-x or TIFF resolution tags); give {key} "
            "(level-0 um/px)"
        )
    why = "a screen default" if found["screen"] else f"outside the {low:g}-{high:g} um/px scanners produce"
    raise ValueError(f"{name}: resolution tag {tag} ({mpp:.4g} um/px) is {why}; give {key} (level-0 um/px)")


def slide_resolution(reader: Any, wsi: Any) -> dict[str, Any]:
    """:func:`resolution_tags` of an opened slide (OpenSlide properties, or the first TIFF page's tags)."""
    if reader.backend == "openslide":
        return resolution_tags(wsi.properties)
    tags = wsi.pages[0].tags
    unit, res = tags.get("ResolutionUnit"), tags.get("XResolution")
    if res is None:
        return {"mpp": None, "tag": "no XResolution tag", "screen": False}
    num, den = res.value
    dots = num / den if den else None
    return _tag_resolution(int(unit.value) if unit is not None else None, dots, "")


def slide_mpp(reader: Any, wsi: Any) -> float | None:
    """Level-0 resolution in um/px that the slide's metadata states (trusted or not), or None when it has none.

    OpenSlide's ``openslide.mpp-x`` (a generic TIFF's from its resolution tags in centimetres or inches); for
    tifffile, the first page's resolution tags. :func:`slide_mpp_check` decides whether to trust it.
    """
    return slide_resolution(reader, wsi)["mpp"]


def _level_info(reader: Any, wsi: Any) -> tuple[list[tuple[int, int]], list[float]]:
    """(height, width) and downsample of each level, coarser levels after finer ones."""
    n = reader.get_level_count(wsi)
    sizes = [tuple(int(v) for v in reader.get_size(wsi, level)) for level in range(n)]
    downsamples = [float(reader.get_downsample_ratio(wsi, level)) for level in range(n)]
    return sizes, downsamples  # type: ignore[return-value]


def _read_level(reader: Any, wsi: Any, level: int) -> np.ndarray:
    """A whole level as an (H, W, 3) uint8 array."""
    data, _ = reader.get_data(wsi, level=level)
    return np.ascontiguousarray(np.moveaxis(np.asarray(data), 0, -1)[..., :3])


def read_tile(reader: Any, wsi: Any, tile: Mapping[str, Any], tile_size: int) -> np.ndarray:
    """One tile at its coordinates, resized to ``tile_size``.

    Args:
        reader, wsi: from :func:`open_slide`.
        tile: a dict of :func:`tile_slide` (``x``, ``y`` level-0 top-left, ``level``, ``size``).
        tile_size: output side in pixels (area averaging when shrinking, bilinear when enlarging).

    Returns:
        (tile_size, tile_size, 3) uint8 RGB.
    """
    size = int(tile["size"])
    data, _ = reader.get_data(
        wsi, location=(int(tile["y"]), int(tile["x"])), size=(size, size), level=int(tile["level"])
    )
    rgb = np.ascontiguousarray(np.moveaxis(np.asarray(data), 0, -1)[..., :3]).astype(np.uint8, copy=False)
    if size != tile_size:
        resample = Image.Resampling.BOX if size > tile_size else Image.Resampling.BILINEAR
        rgb = np.asarray(Image.fromarray(rgb).resize((tile_size, tile_size), resample))
    return rgb


# ----------------------------------------------------------------------------------------------
# tiling
# ----------------------------------------------------------------------------------------------
@dataclass
class SlideTiling:
    """A slide's tile grid and what it was found on.

    Attributes:
        path: the slide file.
        base_mpp: level-0 resolution (um/px).
        slide_size: level-0 (height, width) in pixels.
        mpp: target resolution of the tiles (um/px).
        tile_size: tile side after resizing, in pixels.
        level: pyramid level the tiles are read from.
        size: tile side read at ``level``, in pixels.
        step: tile side at level 0 (grid spacing), in pixels.
        thumbnail: (h, w, 3) uint8 picture of the slide the tissue was found on.
        thumbnail_level: the level it was read from.
        tissue_mask: (h, w) bool tissue of the thumbnail.
        thumbnail_downsample: level-0 pixels per thumbnail pixel, (y, x).
        tiles: dicts ``x``, ``y``, ``level``, ``size``, ``tissue`` (+ ``nc``, ``gg3``, ``gg4``, ``gg5``).
    """

    path: str
    base_mpp: float
    slide_size: tuple[int, int]
    mpp: float
    tile_size: int
    level: int
    size: int
    step: int
    thumbnail: np.ndarray
    thumbnail_level: int
    tissue_mask: np.ndarray
    thumbnail_downsample: tuple[float, float]
    tiles: list[dict] = field(default_factory=list)


def _box_means(values: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    """Mean of ``values`` (h, w[, c]) over boxes [y0, y1) x [x0, x1) (integer arrays), by an integral image."""
    ii = np.zeros((values.shape[0] + 1, values.shape[1] + 1, *values.shape[2:]), dtype=np.float64)
    ii[1:, 1:] = values.astype(np.float64).cumsum(0).cumsum(1)
    total = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    area = ((y1 - y0) * (x1 - x0)).astype(np.float64)
    return total / (area[:, None] if total.ndim == 2 else area)


def _boxes(starts: np.ndarray, step: int, scale: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(np.floor(starts / scale + 1e-6).astype(np.int64), 0, limit - 1)
    hi = np.clip(np.ceil((starts + step) / scale - 1e-6).astype(np.int64), 0, limit)
    return lo, np.maximum(hi, lo + 1)


def _mask_labels(mask_path: str | os.PathLike, provider: str, shape0: tuple[int, int], ds: float) -> np.ndarray:
    """Per-pixel label fractions source: an (h, w, 4) one-hot of the radboud mask near ``ds``, background zero."""
    reader, wsi = open_slide(mask_path)
    try:
        sizes, downsamples = _level_info(reader, wsi)
        level = int(np.argmin([abs(d - ds) for d in downsamples]))
        values = _read_level(reader, wsi, level)[..., 0]
        if sizes[0] != tuple(shape0):
            raise ValueError(f"{mask_path}: mask level 0 is {sizes[0][::-1]} px, the slide's is {shape0[::-1]} px")
    finally:
        close_slide(wsi)
    labels = panda_mask_to_labels(values, provider)
    onehot = np.zeros((*labels.shape, len(LABEL_NAMES)), dtype=np.float32)
    annotated = values > 0  # radboud 0 is background: not NC tissue
    for k in range(len(LABEL_NAMES)):
        onehot[..., k] = (labels == k) & annotated
    return onehot


def plan_slide_tiles(
    path: str | os.PathLike,
    tile_size: int = 512,
    mpp: float = 1.0,
    min_tissue: float = 0.5,
    *,
    base_mpp: float | None = None,
    mask: str | os.PathLike | None = None,
    provider: str = "radboud",
    tissue: str | Mapping[str, Any] = "biopsy",
    backend: str = "auto",
) -> SlideTiling:
    """The tile grid of one slide at ``mpp``, with the thumbnail and tissue mask it was planned on.

    See :func:`tile_slide` for the arguments; ``tissue`` is a :data:`TISSUE_PRESETS` name or keyword arguments
    of :func:`detect_tissue`.

    Raises:
        FileNotFoundError: a missing slide or mask.
        ValueError: a file no backend opens, a slide without trusted resolution metadata (see
            :func:`slide_mpp_check`) and no ``base_mpp``, bad
            arguments, a karolinska mask, or a mask of another size than the slide.
    """
    if tile_size < 1 or mpp <= 0 or not 0 <= min_tissue <= 1:
        raise ValueError(f"need tile_size >= 1, mpp > 0, 0 <= min_tissue <= 1; got {tile_size}, {mpp}, {min_tissue}")
    if isinstance(tissue, str) and tissue not in TISSUE_PRESETS:
        raise ValueError(f"unknown tissue preset {tissue!r}; choose one of {sorted(TISSUE_PRESETS)}")
    params = dict(TISSUE_PRESETS[tissue]) if isinstance(tissue, str) else dict(tissue)
    if mask is not None:  # refuse karolinska (and unknown providers) before reading anything
        panda_mask_to_labels(np.zeros((1, 1), np.uint8), provider)
    reader, wsi = open_slide(path, backend)
    try:
        base = slide_mpp_check(slide_resolution(reader, wsi), path, base_mpp)
        sizes, downsamples = _level_info(reader, wsi)
        height, width = sizes[0]
        step = max(1, int(round(tile_size * mpp / base)))
        finer = [lv for lv, d in enumerate(downsamples) if base * d <= mpp * (1 + _MPP_RTOL)]
        level = max(finer, key=lambda lv: downsamples[lv]) if finer else 0
        size = max(1, int(round(step / downsamples[level])))
        limit = min(_MAX_THUMB_DOWNSAMPLE, step / _MIN_THUMB_PX_PER_TILE)
        coarse = [lv for lv, d in enumerate(downsamples) if d <= limit * (1 + _MPP_RTOL)]  # 64.05x counts as 64x
        thumb_level = max(coarse, key=lambda lv: downsamples[lv]) if coarse else 0
        thumbnail = _read_level(reader, wsi, thumb_level)
    finally:
        close_slide(wsi)
    sy, sx = height / thumbnail.shape[0], width / thumbnail.shape[1]
    params.setdefault("ref_patch_size", REF_PATCH_UM / base)
    tissue_mask = detect_tissue(thumbnail, downsample=math.sqrt(sx * sy), **params)
    plan = SlideTiling(
        str(path),
        base,
        (height, width),
        float(mpp),
        int(tile_size),
        level,
        size,
        step,
        thumbnail,
        thumb_level,
        tissue_mask,
        (sy, sx),
    )

    ny, nx = height // step, width // step
    if ny == 0 or nx == 0:
        return plan
    gy, gx = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    ys, xs = gy.ravel(), gx.ravel()
    y0, y1 = _boxes(ys, step, sy, thumbnail.shape[0])
    x0, x1 = _boxes(xs, step, sx, thumbnail.shape[1])
    fraction = _box_means(tissue_mask, y0, x0, y1, x1)
    keep = np.flatnonzero(fraction >= min_tissue) if min_tissue > 0 else np.flatnonzero(fraction > 0)
    labels = None
    if mask is not None and keep.size:
        onehot = _mask_labels(mask, provider, (height, width), math.sqrt(sx * sy))
        my, mx = height / onehot.shape[0], width / onehot.shape[1]
        ly0, ly1 = _boxes(ys[keep], step, my, onehot.shape[0])
        lx0, lx1 = _boxes(xs[keep], step, mx, onehot.shape[1])
        labels = _box_means(onehot, ly0, lx0, ly1, lx1)
    for j, i in enumerate(keep):
        tile = {"x": int(xs[i]), "y": int(ys[i]), "level": level, "size": size, "tissue": round(float(fraction[i]), 4)}
        if labels is not None:
            tile.update({name: round(float(v), 4) for name, v in zip(LABEL_FRACTIONS, labels[j])})
        plan.tiles.append(tile)
    return plan


def tile_slide(
    path: str | os.PathLike,
    tile_size: int = 512,
    mpp: float = 1.0,
    min_tissue: float = 0.5,
    *,
    base_mpp: float | None = None,
    mask: str | os.PathLike | None = None,
    provider: str = "radboud",
    tissue: str | Mapping[str, Any] = "biopsy",
    backend: str = "auto",
) -> list[dict]:
    """The tissue tiles of a slide at a target resolution, found on a thumbnail (level 0 is never read).

    Args:
        path: the slide (any format OpenSlide opens; TIFFs it cannot open are read by tifffile).
        tile_size: tile side after resizing, in pixels.
        mpp: target resolution in um/px (default 1.0: SICAPv2's 10x).
        min_tissue: smallest tissue fraction of a kept tile (0 keeps every tile touching tissue).
        base_mpp: level-0 resolution for slides whose metadata has none or one not trusted (a screen default of
            72/96 dpi, or outside :data:`SCANNER_MPP_RANGE`); trusted metadata wins.
        mask: a PANDA radboud label mask of the slide (labels in its first channel); adds label fractions.
        provider: the mask's provider; ``"karolinska"`` masks are refused (not grade-resolved).
        tissue: a :data:`TISSUE_PRESETS` name (default ``"biopsy"``: PANDA and SICAPv2 are needle biopsies) or
            keyword arguments of :func:`detect_tissue`.
        backend: ``"auto"``, ``"openslide"`` or ``"tifffile"``.

    Returns:
        One dict per tile, row by row: ``x``, ``y`` (level-0 pixels of the top-left corner), ``level`` (read
        level), ``size`` (pixels read at that level), ``tissue`` (fraction); with a mask also ``nc``, ``gg3``,
        ``gg4``, ``gg5``, the share of the tile's pixels annotated with each label (background in none).
        A slide smaller than one tile, or without tissue, gives an empty list.

    Raises:
        FileNotFoundError, ValueError: see :func:`plan_slide_tiles`.
    """
    return plan_slide_tiles(
        path, tile_size, mpp, min_tissue, base_mpp=base_mpp, mask=mask, provider=provider, tissue=tissue,
        backend=backend,
    ).tiles  # fmt: skip


# ----------------------------------------------------------------------------------------------
# tiling folders
# ----------------------------------------------------------------------------------------------
def write_coords(tiles: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write tile dicts as a coords csv atomically (columns x, y, level, size, tissue[, nc, gg3, gg4, gg5])."""
    import io as _io

    from monai_disc.io import atomic_write_text

    columns = list(COORD_COLUMNS)
    if tiles and all(name in tiles[0] for name in LABEL_FRACTIONS):
        columns += list(LABEL_FRACTIONS)
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(tiles)
    return atomic_write_text(path, buffer.getvalue())


def read_coords(path: str | os.PathLike) -> list[dict]:
    """Tile dicts from a coords csv (:func:`write_coords`).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: missing columns or a cell that is not a number (names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tile coordinates not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COORD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; found {reader.fieldnames}")
        tiles = []
        for line, row in enumerate(reader, start=2):
            try:
                tile: dict[str, Any] = {k: int(row[k]) for k in ("x", "y", "level", "size")}
                tile.update({k: float(row[k]) for k in row if k not in tile and row[k] not in (None, "")})
            except ValueError:
                raise ValueError(f"{path} line {line}: expected numbers, got {row}") from None
            tiles.append(tile)
    return tiles


def read_tiling_settings(tiles_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a tiling folder was made with (``tiling.json``).

    Raises:
        FileNotFoundError: a folder without ``tiling.json``.
        ValueError: a file that is not a JSON object.
    """
    path = Path(tiles_dir) / TILING_SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"tiling settings not found: {path} (is it a tile-slides output folder?)")
    try:
        settings = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return settings


def load_wsi_bags(tiles_dir: str | os.PathLike) -> list[dict]:
    """The ``ok`` slides of a tiling folder as bags whose tiles are coordinates (for feature extraction).

    Args:
        tiles_dir: a ``monai-disc tile-slides`` output folder (module docstring).

    Returns:
        Bags ``{"slide_id", "tiles": [{"image", "x", "y", "level", "size"}], "label", "source": "real",
        "provider", "gleason_score"}`` in manifest order; slides ``empty`` or ``error`` are left out.

    Raises:
        FileNotFoundError: no manifest (tiling unfinished) or a missing coords file.
        ValueError: a manifest without the required columns, or slides without labels (the message lists them).
    """
    root = Path(tiles_dir).expanduser()
    path = root / WSI_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"slide manifest not found: {path} (is tile-slides finished?)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows:
        missing = [c for c in ("slide_id", "path", "status", *LABEL_NAMES) if c not in rows[0]]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}")
    bags, unlabelled = [], []
    for row in rows:
        if row["status"] != "ok":
            continue
        if any(row[c] == "" for c in LABEL_NAMES):
            unlabelled.append(row["slide_id"])
            continue
        tiles = [
            {"image": row["path"], **{k: t[k] for k in ("x", "y", "level", "size")}}
            for t in read_coords(root / COORDS_DIR / f"{row['slide_id']}.csv")
        ]
        bags.append(
            {
                "slide_id": row["slide_id"],
                "tiles": tiles,
                "label": np.array([float(row[c]) for c in LABEL_NAMES], dtype=np.float32),
                "source": "real",
                "provider": row.get("provider", ""),
                "gleason_score": row.get("gleason_score", ""),
            }
        )
    if unlabelled:
        raise ValueError(
            f"{path}: {len(unlabelled)} slide(s) without labels ({unlabelled[:5]}); tile them with --panda ROOT "
            "or --labels CSV (slide_id, gleason_score) so their bags can be graded"
        )
    return bags


def failed_slides(tiles_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(slide_id, message)`` of the slides a tiling folder recorded as ``error`` (such as a slide whose resolution
    tags are not trusted), which :func:`load_wsi_bags` leaves out."""
    path = Path(tiles_dir).expanduser() / WSI_MANIFEST
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [(row["slide_id"], row.get("message", "")) for row in csv.DictReader(f) if row.get("status") == "error"]


class SlideTileLoader:
    """A tile dict (``image`` slide path, ``x``, ``y``, ``level``, ``size``) -> (3, T, T) float tensor in [-1, 1].

    The loader of :func:`monai_disc.networks.extract_bag_features` for :func:`load_wsi_bags`: each DataLoader
    worker opens a slide once and keeps up to ``max_open`` slides open (a pickled loader starts with none).

    Args:
        tile_size: output side T (the tiling's ``tile_size``).
        backend: ``"auto"``, ``"openslide"`` or ``"tifffile"`` (see :func:`open_slide`).
        max_open: slides kept open per process.
    """

    def __init__(self, tile_size: int, backend: str = "auto", max_open: int = 4) -> None:
        self.tile_size = int(tile_size)
        self.backend = backend
        self.max_open = int(max_open)
        self._open: dict[str, tuple[Any, Any]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def _slide(self, path: str) -> tuple[Any, Any]:
        if path not in self._open:
            if len(self._open) >= self.max_open:
                old = next(iter(self._open))
                close_slide(self._open.pop(old)[1])
            self._open[path] = open_slide(path, self.backend)
        return self._open[path]

    def __call__(self, tile: Mapping[str, Any]) -> Any:
        import torch

        path = str(tile["image"])
        reader, wsi = self._slide(path)
        try:
            rgb = read_tile(reader, wsi, tile, self.tile_size)
        except Exception as err:
            raise ValueError(
                f"{path}: cannot read the tile at x={tile['x']}, y={tile['y']} (level {tile['level']}): {err}"
            ) from err
        rgb = np.require(rgb, dtype=np.uint8, requirements=["C", "W"])  # PIL arrays are read-only
        return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def close(self) -> None:
        """Close every slide this process holds open."""
        for _, wsi in self._open.values():
            close_slide(wsi)
        self._open.clear()
