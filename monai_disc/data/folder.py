"""A plain folder of the user's own tiles -> MONAI data list, in the same shape as the SICAPv2 list.

Layout::

    root/
      images/<name>.png|.jpg|.jpeg|.tif|.tiff   tiles (RGB; any size, tiles and masks must match)
      masks/<name>.png                          optional: 8-bit grayscale label maps, values 0..3 directly
                                                (0 = NC, 1 = GG3, 2 = GG4, 3 = GG5); lossless PNG only
      labels.csv                                optional: one row per tile

`labels.csv` columns: `image` (required: the file name in `images/`, with or without extension),
`slide_id` (optional, default: the image name without extension) and `label` (optional: the tile's
grades, separated by `;` or spaces, each a name NC/GG3/GG4/GG5 or an index 0..3, e.g. `GG3;GG4`).
With `labels.csv` only its rows are listed, in its order; without it every image in `images/` is listed,
sorted by name. When `masks/` exists every listed image needs a mask of the same name (`.png`);
without `masks/` each item's `mask` is None. Items get a `label` key (float32 multi-hot
[NC, GG3, GG4, GG5]) only when `labels.csv` has a `label` column. Load tiles with
:func:`monai_disc.transforms.folder_tile_transforms`, which checks that mask values lie in 0..3.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from monai_disc.labels import LABEL_NAMES, NUM_CLASSES, multi_hot

__all__ = ["FOLDER_IMAGE_EXTENSIONS", "load_folder", "parse_tile_labels"]

FOLDER_IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_MAX_LISTED = 5


def parse_tile_labels(text: str) -> list[int]:
    """Labels of a `label` cell ("GG3;GG4", "1 2", "NC") as indices; raises ValueError when unknown or empty."""
    tokens = [t for t in re.split(r"[;\s]+", str(text).strip()) if t]
    if not tokens:
        raise ValueError("empty label")
    names = {name.lower(): i for i, name in enumerate(LABEL_NAMES)}
    out = []
    for token in tokens:
        key = token.lower()
        if key in names:
            out.append(names[key])
        elif key.isdigit() and int(key) < NUM_CLASSES:
            out.append(int(key))
        else:
            raise ValueError(f"unknown label {token!r}; use {list(LABEL_NAMES)} or 0..{NUM_CLASSES - 1}")
    return out


def load_folder(root: str | os.PathLike) -> list[dict]:
    """MONAI data list of a user tile folder (layout in the module docstring).

    Args:
        root: the folder holding `images/` (and optionally `masks/`, `labels.csv`).

    Returns:
        Dicts with `image` (str path), `mask` (str path or None), `slide_id` and, when `labels.csv`
        has a `label` column, `label` (float32 multi-hot).

    Raises:
        FileNotFoundError: missing root, `images/`, a listed image or a mask (the message names it).
        ValueError: two images with one name, a csv without `image` column, empty or unknown labels,
            an image listed twice (the message names the csv line).
    """
    import pandas as pd

    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"tile folder not found: {root_path}")
    image_dir, mask_dir, csv = root_path / "images", root_path / "masks", root_path / "labels.csv"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"tile folder has no images/ directory: {image_dir}")

    by_stem: dict[str, str] = {}
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in FOLDER_IMAGE_EXTENSIONS:
            continue
        if stem in by_stem:
            raise ValueError(f"two images named {stem!r} in {image_dir}: {by_stem[stem]} and {name}")
        by_stem[stem] = name
    masks = set(os.listdir(mask_dir)) if mask_dir.is_dir() else None

    rows: list[dict] = []
    if csv.is_file():
        try:
            frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except Exception as err:
            raise ValueError(f"cannot read {csv}: {err}") from err
        frame.columns = [c.strip() for c in frame.columns]
        if "image" not in frame.columns:
            raise ValueError(f"{csv} lacks the required column 'image'; found columns {list(frame.columns)}")
        seen: set[str] = set()
        for index, record in enumerate(frame.to_dict("records")):
            line = index + 2
            name = record["image"].strip()
            stem, ext = os.path.splitext(name)
            if ext.lower() not in FOLDER_IMAGE_EXTENSIONS:
                stem = name
            elif by_stem.get(stem) != name:  # an explicit extension must match the file exactly
                stem = ""
            if stem not in by_stem:
                raise FileNotFoundError(f"{csv} line {line}: image {name!r} not found in {image_dir}")
            if stem in seen:
                raise ValueError(f"{csv} line {line}: image {name!r} listed twice")
            seen.add(stem)
            row = {"stem": stem, "slide_id": record.get("slide_id", "").strip() or stem}
            if "label" in frame.columns:
                try:
                    row["label"] = multi_hot(parse_tile_labels(record["label"]))
                except ValueError as err:
                    raise ValueError(f"{csv} line {line}: {err}") from None
            rows.append(row)
    else:
        rows = [{"stem": stem, "slide_id": stem} for stem in by_stem]

    items = []
    missing_masks = []
    for row in rows:
        stem = row.pop("stem")
        mask = None
        if masks is not None:
            if f"{stem}.png" in masks:
                mask = str(mask_dir / f"{stem}.png")
            else:
                missing_masks.append(str(mask_dir / f"{stem}.png"))
        items.append({"image": str(image_dir / by_stem[stem]), "mask": mask, **row})
    if missing_masks:
        more = f" (and {len(missing_masks) - _MAX_LISTED} more)" if len(missing_masks) > _MAX_LISTED else ""
        raise FileNotFoundError(
            f"{len(missing_masks)} mask(s) missing in {mask_dir}: {', '.join(missing_masks[:_MAX_LISTED])}{more}"
        )
    return items
