"""Pyramidal tiled TIFF slides that OpenSlide ("generic tiled TIFF"), QuPath and MONAI's WSI readers open.

One tiled directory per level, each level ``factor`` times smaller than the one before down to a thumbnail no
larger than one tile, the resolution tags holding the microns per pixel of each level (pixels per centimetre),
so OpenSlide reports ``openslide.mpp-x``/``mpp-y``. Levels are reduced from the level above by block means (RGB
pictures) or by nearest neighbour (label masks, whose values must stay labels), a band of rows at a time, so a
level-0 picture stored as a ``numpy.memmap`` is never loaded whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monai_disc.io import atomic_path

__all__ = ["pyramid_shapes", "write_pyramid_tiff"]


def pyramid_shapes(height: int, width: int, factor: int = 2, tile: int = 256) -> list[tuple[int, int]]:
    """(H, W) of every level: level 0, then divided by ``factor`` until both sides fit in one ``tile``."""
    shapes = [(int(height), int(width))]
    while max(shapes[-1]) > tile and min(shapes[-1]) >= factor:
        h, w = shapes[-1]
        shapes.append((h // factor, w // factor))
    return shapes


def _reduce(image: np.ndarray, factor: int, nearest: bool, rows: int = 1024) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    out = np.empty((h, w, *image.shape[2:]), dtype=image.dtype)
    step = max(1, rows // factor)
    for y in range(0, h, step):
        y1 = min(h, y + step)
        block = np.asarray(image[y * factor : y1 * factor, : w * factor])
        if nearest:
            out[y:y1] = block[factor // 2 :: factor, factor // 2 :: factor]
        else:
            b = block.reshape(y1 - y, factor, w, factor, -1).astype(np.float32).mean(axis=(1, 3))
            out[y:y1] = np.clip(np.rint(b), 0, 255).astype(image.dtype).reshape(out[y:y1].shape)
    return out


def write_pyramid_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float,
    factor: int = 2,
    tile: int = 256,
    nearest: bool = False,
    compression: str = "zlib",
) -> Path:
    """Write ``image`` as a pyramidal tiled TIFF, atomically (an existing file at ``path`` is complete).

    Args:
        path: the ``.tiff`` to write.
        image: uint8 (H, W, 3) RGB or (H, W) labels; a ``numpy.memmap`` is read a band at a time.
        mpp: microns per pixel of level 0 (written into every level's resolution tags, scaled by its factor).
        factor: downsampling between levels (2 or 4).
        tile: TIFF tile side (a multiple of 16).
        nearest: reduce levels by nearest neighbour (label masks) instead of block means.
        compression: TIFF compression ("zlib" is lossless and needs no extra codec).

    Returns:
        ``path``.

    Raises:
        ValueError: for a picture that is not uint8 (H, W) / (H, W, 3), a factor other than 2 or 4, or mpp <= 0.
    """
    import tifffile  # here: the data listers import without it

    if image.dtype != np.uint8 or not (image.ndim == 2 or image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    if factor not in (2, 4):
        raise ValueError(f"factor must be 2 or 4, got {factor}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    shapes = pyramid_shapes(image.shape[0], image.shape[1], factor, tile)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
        level = image
        for i in range(len(shapes)):
            if i:
                level = _reduce(level, factor, nearest)
            px_per_cm = 1e4 / (mpp * factor**i)
            tw.write(
                level,
                photometric="rgb" if level.ndim == 3 else "minisblack",
                tile=(tile, tile),
                compression=compression,
                subfiletype=0 if i == 0 else 1,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return Path(path)
