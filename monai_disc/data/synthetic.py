"""Synthetic slides on disk: the layout and manifest that slide generation writes, defined once, and its reader.

Layout of a generation output folder (each slide folder is a plain tile folder, which
:func:`monai_disc.data.load_folder` reads as it is)::

    out_dir/
      manifest.csv                   one row per slide: MANIFEST_COLUMNS
      <slide_id>/images/0000.png     tile t of the slide (RGB)
      <slide_id>/masks/0000.png      its generation mask (uint8 labels 0..3)
      <slide_id>/labels.csv          one row per tile: image, slide_id, label (present labels), source_id, seed
      <slide_id>/slide.json          the slide's plan and generator (marks a finished slide)

The writer is :func:`monai_disc.apps.generate_slides.generate_slides`; this module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from monai_disc.io import csv_text, read_table
from monai_disc.labels import LABEL_NAMES, multi_hot

__all__ = [
    "IMAGES_DIR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MANIFEST_REQUIRED",
    "MASKS_DIR",
    "SLIDE_INFO_NAME",
    "TILE_LABELS_NAME",
    "load_synthetic_bags",
    "manifest_text",
]

MANIFEST_NAME = "manifest.csv"
#: Columns of ``manifest.csv``: labels by name, NC..GG5 the multi-hot slide label (0/1).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "slide_id",
    "primary",
    "secondary",
    *LABEL_NAMES,
    "n_tiles",
    "generator",
    "seed",
    "index",
)
#: The columns a reader needs (the others are provenance).
MANIFEST_REQUIRED: tuple[str, ...] = MANIFEST_COLUMNS[:-3]
IMAGES_DIR = "images"
MASKS_DIR = "masks"
SLIDE_INFO_NAME = "slide.json"
TILE_LABELS_NAME = "labels.csv"


def manifest_text(plans: Iterable[Any], generator: str) -> str:
    """The CSV text of ``manifest.csv`` for slide plans (:class:`monai_disc.masks.SlidePlan`) drawn by ``generator``."""
    rows = []
    for p in plans:
        row: dict[str, Any] = {
            "slide_id": p.slide_id,
            "primary": LABEL_NAMES[p.primary],
            "secondary": LABEL_NAMES[p.secondary],
        }
        row.update({name: int(v) for name, v in zip(LABEL_NAMES, p.label)})
        row.update({"n_tiles": p.n_tiles, "generator": generator, "seed": p.seed, "index": p.index})
        rows.append(row)
    return csv_text(MANIFEST_COLUMNS, rows)


def _label_index(value: str, path: Path, line: int, column: str) -> int:
    if value in LABEL_NAMES:
        return LABEL_NAMES.index(value)
    raise ValueError(f"{path} line {line}: {column} must be one of {list(LABEL_NAMES)}, got {value!r}")


def _flag(value: str, path: Path, line: int, column: str) -> float:
    if value not in ("0", "1", "0.0", "1.0"):
        raise ValueError(f"{path} line {line}: column {column} must be 0 or 1, got {value!r}")
    return float(value)


def _pngs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"synthetic slide folder not found: {folder}")
    return [str(folder / n) for n in sorted(os.listdir(folder)) if n.endswith(".png") and not n.startswith(".")]


def load_synthetic_bags(out_dir: str | os.PathLike) -> list[dict]:
    """Synthetic slides written by :func:`monai_disc.apps.generate_slides.generate_slides`, as bags.

    Only slides in `manifest.csv` are listed (it is written once every planned slide is finished), in its order.

    Args:
        out_dir: the generation output folder.

    Returns:
        Bags (module docstring) with `source` "synthetic" and `generator`.

    Raises:
        FileNotFoundError: no manifest, or a listed slide's `images/` or `masks/` folder missing.
        ValueError: a manifest without the required columns, a bad cell, or a slide whose tile or mask count
            differs from its `n_tiles` (the message names the file and line or folder).
    """
    root = Path(out_dir).expanduser()
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"synthetic slide manifest not found: {path} (is the generation finished?)")
    frame = read_table(path, MANIFEST_REQUIRED, "synthetic slide manifest")
    bags = []
    for index, row in enumerate(frame.to_dict("records")):
        line = index + 2
        sid = row["slide_id"].strip()
        primary = _label_index(row["primary"].strip(), path, line, "primary")
        secondary = _label_index(row["secondary"].strip(), path, line, "secondary")
        label = np.array([_flag(row[c].strip(), path, line, c) for c in LABEL_NAMES], dtype=np.float32)
        if not np.array_equal(label, multi_hot((primary, secondary))):
            raise ValueError(
                f"{path} line {line}: label columns {label.tolist()} disagree with {row['primary']}+{row['secondary']}"
            )
        try:
            n_tiles = int(row["n_tiles"])
        except ValueError:
            raise ValueError(f"{path} line {line}: n_tiles must be an integer, got {row['n_tiles']!r}") from None
        tiles, masks = _pngs(root / sid / IMAGES_DIR), _pngs(root / sid / MASKS_DIR)
        if len(tiles) != n_tiles or len(masks) != n_tiles:
            raise ValueError(
                f"{root / sid}: {len(tiles)} tiles and {len(masks)} masks, but {path} line {line} says {n_tiles}"
            )
        bags.append(
            {
                "slide_id": sid,
                "tiles": tiles,
                "masks": masks,
                "label": label,
                "primary": primary,
                "secondary": secondary,
                "source": "synthetic",
                "generator": row.get("generator", ""),
            }
        )
    return bags
