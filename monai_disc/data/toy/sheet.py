"""Contact sheets of toy (or any SICAPv2-layout) tiles beside their colour-coded masks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from monai_disc.io import atomic_path
from monai_disc.labels import LABEL_NAMES, colorize

from .writers import _SICAP_VALUES

__all__ = ["save_contact_sheet"]


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
