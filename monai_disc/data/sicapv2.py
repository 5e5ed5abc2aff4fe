"""SICAPv2 on disk -> MONAI data lists of tiles (image, mask, slide, tile labels) and slide labels.

Expected layout (Silva-Rodriguez et al. 2020)::

    root/
      images/<tile>.jpg                         RGB tiles
      masks/<tile>.jpg                          grayscale masks, 0 = NC, 3/4/5 = Gleason 3/4/5
      partition/Test/{Train,Test}.xlsx          columns image_name, NC, G3, G4, G5, G4C
      partition/Validation/Val1..Val4/{Train,Test}.xlsx
      wsi_labels.xlsx                           slide_id, patient_id, Gleason_primary, Gleason_secondary

`image_name` may lack the `.jpg` extension; the slide id is the tile name up to its first underscore.
Cribriform G4 (`G4C`) counts as GG4. Only file names are checked here (one directory listing each, so
18k tiles cost two `os.listdir` calls); pixel values are checked when tiles are loaded
(:class:`monai_disc.transforms.SnapMaskToLabels`). No torch import: listing a data set stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_disc.io import read_table
from monai_disc.labels import GLEASON_PATTERN_TO_LABEL, LABEL_NAMES, NUM_CLASSES, multi_hot

__all__ = [
    "SICAPV2_PARTITIONS",
    "SICAPV2_SHEET_COLUMNS",
    "SICAPV2_SLIDE_COLUMNS",
    "SICAPV2_SPLITS",
    "format_summary",
    "load_sicapv2",
    "load_sicapv2_slide_labels",
    "load_sicapv2_slides",
    "sicapv2_sheet_path",
    "summarize_sicapv2",
]

SICAPV2_PARTITIONS: tuple[str, ...] = ("Test", "Val1", "Val2", "Val3", "Val4")
SICAPV2_SPLITS: tuple[str, ...] = ("Train", "Test")
SICAPV2_SHEET_COLUMNS: tuple[str, ...] = ("image_name", "NC", "G3", "G4", "G5", "G4C")
SICAPV2_SLIDE_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "Gleason_primary", "Gleason_secondary")

# Sheet column -> label index; G4C (cribriform) is a Gleason 4 pattern.
_COLUMN_TO_LABEL: dict[str, int] = {"NC": 0, "G3": 1, "G4": 2, "G5": 3, "G4C": 2}
_MAX_LISTED = 5  # how many offending names an error message lists


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"SICAPv2 root directory not found: {path}")
    return path


def _excel_row(index: int) -> int:
    """Spreadsheet row number of a data row (row 1 holds the header)."""
    return int(index) + 2


def _list_names(directory: Path) -> set[str]:
    if not directory.is_dir():
        raise FileNotFoundError(f"SICAPv2 directory not found: {directory}")
    return set(os.listdir(directory))


def _missing_error(kind: str, directory: Path, names: list[str], sheet: Path) -> FileNotFoundError:
    shown = ", ".join(str(directory / n) for n in names[:_MAX_LISTED])
    more = f" (and {len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return FileNotFoundError(f"{len(names)} {kind} file(s) listed in {sheet} not found: {shown}{more}")


def sicapv2_sheet_path(root: str | os.PathLike, partition: str = "Test", split: str = "Train") -> Path:
    """Path of the partition sheet for `partition` ("Test", "Val1".."Val4") and `split` ("Train", "Test").

    Raises:
        ValueError: when `partition` or `split` is not one of the valid names.
    """
    if partition not in SICAPV2_PARTITIONS:
        raise ValueError(f"invalid SICAPv2 partition {partition!r}; valid partitions: {list(SICAPV2_PARTITIONS)}")
    if split not in SICAPV2_SPLITS:
        raise ValueError(f"invalid SICAPv2 split {split!r}; valid splits: {list(SICAPV2_SPLITS)}")
    base = Path(root).expanduser() / "partition"
    folder = base / "Test" if partition == "Test" else base / "Validation" / partition
    return folder / f"{split}.xlsx"


def _tile_labels(frame: Any, sheet: Path) -> np.ndarray:
    """Multi-hot (N, 4) float32 from the one-hot sheet columns; a non-numeric or negative cell is an error."""
    import pandas as pd

    out = np.zeros((len(frame), NUM_CLASSES), dtype=np.float32)
    for column, label in _COLUMN_TO_LABEL.items():
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            rows = [_excel_row(frame.index[i]) for i in bad[:_MAX_LISTED]]
            cells = [frame[column].iloc[i] for i in bad[:_MAX_LISTED]]
            raise ValueError(
                f"{sheet}: column {column!r} must hold non-negative numbers; "
                f"bad value(s) {cells} at row(s) {rows} ({bad.size} in all)"
            )
        out[values > 0, label] = 1.0
    return out


def load_sicapv2(root: str | os.PathLike, partition: str = "Test", split: str = "Train") -> list[dict]:
    """MONAI data list of the tiles of one SICAPv2 partition sheet.

    Args:
        root: SICAPv2 directory (holding `images/`, `masks/`, `partition/`).
        partition: "Test" (the official test partition) or "Val1".."Val4" (cross-validation folds).
        split: "Train" or "Test" sheet of that partition.

    Returns:
        One dict per sheet row, in sheet order: `image` and `mask` (str paths), `slide_id` (str) and
        `label` (float32 multi-hot [NC, GG3, GG4, GG5] of the tile; G4C counts as GG4).

    Raises:
        ValueError: invalid partition/split, unreadable sheet, missing columns, bad cells.
        FileNotFoundError: missing root, sheet, image or mask (the message names the path).
    """
    root_path = _check_root(root)
    sheet = sicapv2_sheet_path(root_path, partition, split)
    frame = read_table(sheet, SICAPV2_SHEET_COLUMNS, "SICAPv2 partition sheet")

    names = frame["image_name"]
    empty = np.flatnonzero(names.isna().to_numpy() | (names.astype(str).str.strip() == "").to_numpy())
    if empty.size:
        rows = [_excel_row(frame.index[i]) for i in empty[:_MAX_LISTED]]
        raise ValueError(f"{sheet}: empty image_name at row(s) {rows}")
    stems = [n[:-4] if n.lower().endswith(".jpg") else n for n in names.astype(str).str.strip()]
    files = [f"{s}.jpg" for s in stems]
    labels = _tile_labels(frame, sheet)

    image_dir, mask_dir = root_path / "images", root_path / "masks"
    present_images = _list_names(image_dir)
    missing = [f for f in files if f not in present_images]
    if missing:
        raise _missing_error("image", image_dir, missing, sheet)
    present_masks = _list_names(mask_dir)
    missing = [f for f in files if f not in present_masks]
    if missing:
        raise _missing_error("mask", mask_dir, missing, sheet)

    return [
        {
            "image": str(image_dir / f),
            "mask": str(mask_dir / f),
            "slide_id": s.split("_", 1)[0],
            "label": labels[i],
        }
        for i, (s, f) in enumerate(zip(stems, files))
    ]


def _pattern(value: Any) -> int | None:
    """A Gleason pattern cell (0/3/4/5, possibly read as float) as int, or None when invalid."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number) or number != int(number) or int(number) not in GLEASON_PATTERN_TO_LABEL:
        return None
    return int(number)


def _id_text(value: Any) -> str:
    """Identifier cell as text: 12.0 read by pandas becomes "12", strings are stripped."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def load_sicapv2_slides(root: str | os.PathLike) -> list[dict]:
    """Slides of `wsi_labels.xlsx`, one dict each, in sheet order.

    Args:
        root: SICAPv2 directory.

    Returns:
        Dicts with `slide_id`, `patient_id` (str), `primary`, `secondary` (Gleason patterns 0/3/4/5)
        and `label` (float32 multi-hot of both patterns, 0 meaning NC).

    Raises:
        FileNotFoundError: root or sheet missing.
        ValueError: missing columns, a pattern outside 0/3/4/5, an empty or conflicting slide id
            (the message names the file and the spreadsheet row).
    """
    sheet = _check_root(root) / "wsi_labels.xlsx"
    frame = read_table(sheet, SICAPV2_SLIDE_COLUMNS, "SICAPv2 slide label sheet")
    slides: list[dict] = []
    seen: dict[str, int] = {}
    for index, row in frame.iterrows():
        excel_row = _excel_row(index)
        if row["slide_id"] is None or (isinstance(row["slide_id"], float) and np.isnan(row["slide_id"])):
            raise ValueError(f"{sheet}: empty slide_id at row {excel_row}")
        slide_id = _id_text(row["slide_id"])
        primary, secondary = _pattern(row["Gleason_primary"]), _pattern(row["Gleason_secondary"])
        if primary is None or secondary is None:
            raise ValueError(
                f"{sheet}: row {excel_row} (slide {slide_id}) has Gleason_primary={row['Gleason_primary']!r}, "
                f"Gleason_secondary={row['Gleason_secondary']!r}; each must be one of "
                f"{sorted(GLEASON_PATTERN_TO_LABEL)}"
            )
        entry = {
            "slide_id": slide_id,
            "patient_id": _id_text(row["patient_id"]),
            "primary": primary,
            "secondary": secondary,
            "label": multi_hot([GLEASON_PATTERN_TO_LABEL[primary], GLEASON_PATTERN_TO_LABEL[secondary]]),
        }
        if slide_id in seen:
            first = slides[seen[slide_id]]
            if (first["primary"], first["secondary"]) != (primary, secondary):
                raise ValueError(f"{sheet}: slide {slide_id} at row {excel_row} conflicts with an earlier row")
            continue
        seen[slide_id] = len(slides)
        slides.append(entry)
    return slides


def load_sicapv2_slide_labels(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Slide id -> float32 multi-hot [NC, GG3, GG4, GG5] of its primary and secondary Gleason patterns.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_sicapv2_slides`.
    """
    return {s["slide_id"]: s["label"] for s in load_sicapv2_slides(root)}


def summarize_sicapv2(root: str | os.PathLike) -> dict:
    """Counts to judge a SICAPv2 copy at a glance (every present sheet is loaded, so files are checked too).

    Returns:
        `{"root": str, "sheets": [{"partition", "split", "tiles", "slides", "NC", "GG3", "GG4", "GG5"}, ...],
        "slides": {"total": int, "primary": {"NC": n, "GG3": n, "GG4": n, "GG5": n}} or None}`;
        sheets absent on disk are left out, `slides` is None without `wsi_labels.xlsx`. Tile counts per
        grade count tiles whose label holds that grade (a tile can count under several).
    """
    root_path = _check_root(root)
    sheets = []
    for partition in SICAPV2_PARTITIONS:
        for split in SICAPV2_SPLITS:
            if not sicapv2_sheet_path(root_path, partition, split).is_file():
                continue
            items = load_sicapv2(root_path, partition, split)
            counts = np.sum([d["label"] for d in items], axis=0) if items else np.zeros(NUM_CLASSES)
            row = {"partition": partition, "split": split, "tiles": len(items)}
            row["slides"] = len({d["slide_id"] for d in items})
            row.update({name: int(counts[i]) for i, name in enumerate(LABEL_NAMES)})
            sheets.append(row)
    slides = None
    if (root_path / "wsi_labels.xlsx").is_file():
        records = load_sicapv2_slides(root_path)
        primary = {name: 0 for name in LABEL_NAMES}
        for record in records:
            primary[LABEL_NAMES[GLEASON_PATTERN_TO_LABEL[record["primary"]]]] += 1
        slides = {"total": len(records), "primary": primary}
    return {"root": str(root_path), "sheets": sheets, "slides": slides}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    # text columns left-aligned, numbers right-aligned
    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if c.isdigit() else c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return [fmt(r) for r in cells]


def format_summary(summary: dict) -> str:
    """Plain-text tables of :func:`summarize_sicapv2` output, for the CLI."""
    lines = [f"SICAPv2 at {summary['root']}"]
    if summary["sheets"]:
        header = ["partition", "split", "tiles", "slides", *LABEL_NAMES]
        rows = [[s[h] for h in header] for s in summary["sheets"]]
        lines += ["", "tiles per sheet (a tile counts under every grade it holds):", *_table(header, rows)]
    else:
        lines += ["", "no partition sheets found"]
    slides = summary.get("slides")
    if slides is not None:
        header = ["slides", *LABEL_NAMES, "total"]
        row = ["primary grade", *[slides["primary"][n] for n in LABEL_NAMES], slides["total"]]
        lines += ["", *_table(header, [row])]
    else:
        lines += ["", "no wsi_labels.xlsx found"]
    return "\n".join(lines)
