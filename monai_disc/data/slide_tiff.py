"""Pyramidal tiled TIFF slides that OpenSlide ("generic tiled TIFF"), QuPath and MONAI's WSI readers open.

One tiled directory per level, each level ``factor`` times smaller than the one before down to a thumbnail no
larger than one tile, the resolution tags holding the microns per pixel of each level (pixels per centimetre),
so OpenSlide reports ``openslide.mpp-x``/``mpp-y``. Levels are reduced from the level above by block means (RGB
pictures) or by nearest neighbour (label masks, whose values must stay labels).

The writing streams: each level goes to tifffile one band of tile rows at a time, and is reduced band by band
into a raw file on disk that the next level is read from. Given its level 0 as row bands (:func:`raw_bands`
reads them from a raw file), a slide of any size is written in memory of a few bands.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from monai_disc.io import atomic_path

__all__ = ["pyramid_shapes", "raw_bands", "write_pyramid_tiff"]


def pyramid_shapes(height: int, width: int, factor: int = 2, tile: int = 256) -> list[tuple[int, int]]:
    """(H, W) of every level: level 0, then divided by ``factor`` until both sides fit in one ``tile``."""
    shapes = [(int(height), int(width))]
    while max(shapes[-1]) > tile and min(shapes[-1]) >= factor:
        h, w = shapes[-1]
        shapes.append((h // factor, w // factor))
    return shapes


def raw_bands(path: str | os.PathLike, shape: Sequence[int], rows: int = 256) -> Iterator[np.ndarray]:
    """Bands of ``rows`` rows of a raw uint8 picture file (row-major ``shape``), read without mapping the file.

    Args:
        path: the raw file (e.g. a ``numpy.memmap``'s file, or ``ndarray.tofile``).
        shape: (H, W) or (H, W, C) of the picture.
        rows: rows per band (the last band may be shorter).

    Yields:
        uint8 arrays (rows, W[, C]), top to bottom.
    """
    shape = tuple(int(s) for s in shape)
    row = int(np.prod(shape[1:]))
    for y in range(0, shape[0], rows):
        n = min(rows, shape[0] - y)
        yield np.fromfile(path, dtype=np.uint8, count=n * row, offset=y * row).reshape(n, *shape[1:])


def _rebanded(bands: Iterable[np.ndarray], shape: tuple[int, ...], rows: int) -> Iterator[np.ndarray]:
    """Bands of exactly ``rows`` rows (the last may be shorter) from bands of any heights, checked."""
    pending: list[np.ndarray] = []
    held = seen = 0
    for band in bands:
        band = np.asarray(band)
        if band.dtype != np.uint8 or band.shape[1:] != shape[1:]:
            raise ValueError(f"a band must be uint8 (rows, {shape[1:]}), got {band.dtype} {band.shape}")
        seen += band.shape[0]
        if seen > shape[0]:
            raise ValueError(f"the bands hold more than the {shape[0]} rows of the picture")
        while band.shape[0]:
            take = min(rows - held, band.shape[0])
            pending.append(band[:take])
            held, band = held + take, band[take:]
            if held == rows:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, held = [], 0
    if seen != shape[0]:
        raise ValueError(f"the bands hold {seen} rows, the picture {shape[0]}")
    if pending:
        yield np.concatenate(pending)


def _reduce(band: np.ndarray, factor: int, nearest: bool, width: int) -> np.ndarray:
    """A band of the next level: ``band``'s whole ``factor`` x ``factor`` blocks of its first ``width`` columns."""
    h = band.shape[0] // factor
    block = band[: h * factor, : width * factor]
    if nearest:
        return block[factor // 2 :: factor, factor // 2 :: factor]
    # sums of at most 16 bytes are exact in uint16 and dividing by 4 or 16 is exact: a float block mean, rounded
    sums = block.reshape(h, factor, width, factor, *band.shape[2:]).sum(axis=(1, 3), dtype=np.uint16)
    return np.rint(sums / factor**2).astype(np.uint8)


def _tiles(
    bands: Iterable[np.ndarray], width: int, tile: int, reduced: BinaryIO | None, factor: int, nearest: bool
) -> Iterator[np.ndarray]:
    """The tiles of a level, row by row, writing each band's reduction to ``reduced`` (the next level's file)."""
    for band in bands:
        if reduced is not None:  # before the band's tiles: tifffile stops drawing at the level's last tile
            reduced.write(_reduce(band, factor, nearest, width // factor).tobytes())
        for x in range(0, width, tile):
            yield band[:, x : x + tile]


def write_pyramid_tiff(
    path: str | os.PathLike,
    image: np.ndarray | Iterable[np.ndarray],
    mpp: float,
    factor: int = 2,
    tile: int = 256,
    nearest: bool = False,
    compression: str = "zlib",
    shape: Sequence[int] | None = None,
) -> Path:
    """Write ``image`` as a pyramidal tiled TIFF, atomically (an existing file at ``path`` is complete).

    Args:
        path: the ``.tiff`` to write; the levels below 0 pass through temp files beside it.
        image: uint8 (H, W, 3) RGB or (H, W) labels, or its row bands top to bottom (any heights, e.g.
            :func:`raw_bands`), so that level 0 need not be in memory. Slicing an array that is a
            ``numpy.memmap`` maps the pages it reads into this process: pass a memmap's file as :func:`raw_bands`.
        mpp: microns per pixel of level 0 (written into every level's resolution tags, scaled by its factor).
        factor: downsampling between levels (2 or 4).
        tile: TIFF tile side (a multiple of 16).
        nearest: reduce levels by nearest neighbour (label masks) instead of block means.
        compression: TIFF compression ("zlib" is lossless and needs no extra codec).
        shape: (H, W) or (H, W, 3) of the picture; needed when ``image`` is bands.

    Returns:
        ``path``.

    Raises:
        ValueError: for a picture that is not uint8 (H, W) / (H, W, 3), bands that do not make up ``shape``, a
            factor other than 2 or 4, a tile that is not a multiple of 16, or mpp <= 0.
    """
    import tifffile  # here: the data listers import without it

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
        shape = image.shape
        image = [image]  # one band, cut into bands of tile rows (views)
    elif shape is None:
        raise ValueError("writing a picture given as bands needs its shape")
    shape = tuple(int(s) for s in shape)
    if not (len(shape) == 2 or len(shape) == 3 and shape[2] == 3):
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got shape {shape}")
    if factor not in (2, 4):
        raise ValueError(f"factor must be 2 or 4, got {factor}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    channels = shape[2:]
    samples = shape[2] if channels else 1
    shapes = pyramid_shapes(shape[0], shape[1], factor, tile)
    bands = _rebanded(image, shape, tile)
    path = Path(path)
    with (
        atomic_path(path) as tmp,
        tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.levels") as levels,
        tifffile.TiffWriter(tmp, bigtiff=int(np.prod(shape)) > 2**31) as tw,
    ):
        for i, (h, w) in enumerate(shapes):
            below = Path(levels) / f"{i + 1}.u8" if i + 1 < len(shapes) else None
            with open(below, "wb") if below else contextlib.nullcontext() as reduced:
                tw.write(
                    _tiles(bands, w, tile, reduced, factor, nearest),
                    shape=(h, w, *channels),
                    dtype=np.uint8,
                    photometric="rgb" if channels else "minisblack",
                    tile=(tile, tile),
                    compression=compression,
                    subfiletype=0 if i == 0 else 1,
                    resolution=(1e4 / (mpp * factor**i),) * 2,
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    buffersize=tile * w * samples,  # threads encode one band of tiles at a time
                )
            if i == 0:
                next(bands, None)  # ends the bands' check: rows beyond the picture are refused
            if below:
                bands = raw_bands(below, (*shapes[i + 1], *channels), tile)
    return path
