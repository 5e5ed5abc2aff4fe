"""Unlabelled slide bags for inference: one item per slide, from a folder of feature files or of tile folders.

No labels are read or needed. A folder holding ``<slide_id>.pt`` feature files (as
``monai_disc.networks.extract_bag_features`` writes them) gives one bag per file; a folder holding one
subfolder of tiles per slide (``<slide_id>/*.png``, or ``<slide_id>/images/*.png`` as ``generate-slides``
writes) gives one bag per subfolder, whose tiles an extractor embeds first.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_disc.data.folder import FOLDER_IMAGE_EXTENSIONS

__all__ = ["list_slide_bags"]

FEATURE_SUFFIX = ".pt"


def _tiles(folder: Path) -> list[str]:
    if (folder / "images").is_dir():
        folder = folder / "images"
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_IMAGE_EXTENSIONS)


def list_slide_bags(root: str | os.PathLike, key: str = "image") -> list[dict]:
    """Data list of the slides in ``root``, sorted by slide id.

    Args:
        root: a folder of feature files ``<slide_id>.pt``, or a folder of per-slide tile folders.
        key: the key that holds the bag: a feature file path, or the list of the slide's tile paths.

    Returns:
        ``[{key: path or [tile paths], "slide_id": str}, ...]``.

    Raises:
        FileNotFoundError: when ``root`` is not a folder.
        ValueError: when it holds neither feature files nor tile folders, or a tile folder holds no tile.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"slide folder not found: {folder}")
    features = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == FEATURE_SUFFIX)
    if features:
        return [{key: str(p), "slide_id": p.stem} for p in features]
    slides = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not slides:
        raise ValueError(f"{folder}: no feature files (<slide_id>.pt) and no tile folders (<slide_id>/*.png) found")
    bags = []
    for slide in slides:
        tiles = _tiles(slide)
        if not tiles:
            raise ValueError(f"{slide}: a slide folder without tiles ({', '.join(FOLDER_IMAGE_EXTENSIONS)})")
        bags.append({key: tiles, "slide_id": slide.name})
    return bags
