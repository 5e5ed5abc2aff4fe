"""`monai-disc tile-slides`: many whole slides -> tile coordinates, thumbnails and a manifest (the job around
:func:`monai_disc.data.wsi.plan_slide_tiles`).

Output layout: see :mod:`monai_disc.data.wsi`. Every slide is tried; one that cannot be opened or read is recorded
as ``error`` with the file and the reason, and the others are still done. Each finished slide leaves a record
(``records/<slide_id>.json``, written last and atomically), so a rerun skips the slides already ``ok`` or ``empty``
and retries the failed ones. Under torchrun rank ``r`` of ``W`` takes slides r, r + W, ...; whichever rank sees
every record present writes ``manifest.csv`` (no collective, as feature extraction). The settings are kept in
``tiling.json`` (:func:`monai_disc.io.job_settings`); a rerun with other settings into the same folder is
refused, naming them, and ``--overwrite`` starts over.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from monai_disc.data.panda import load_panda, parse_gleason_score
from monai_disc.data.wsi import (
    COORDS_DIR,
    MANIFEST_COLUMNS,
    SLIDE_EXTENSIONS,
    THUMBNAILS_DIR,
    TILING_SETTINGS,
    WSI_MANIFEST,
    SlideTiling,
    close_slide,
    open_slide,
    plan_slide_tiles,
    read_tile,
    write_coords,
)
from monai_disc.io import atomic_path, atomic_write_text, csv_text, job_settings
from monai_disc.labels import GLEASON_PATTERN_TO_LABEL, LABEL_NAMES, multi_hot

__all__ = [
    "RECORDS_DIR",
    "TileSlidesResult",
    "list_slides",
    "panda_slides",
    "read_slide_labels",
    "save_thumbnail",
    "tile_slides",
]

RECORDS_DIR = "records"
TISSUE_COLOUR = (0, 170, 0)
TILE_COLOUR = (30, 90, 255)


def _label_cells(score: str) -> dict[str, str]:
    patterns = parse_gleason_score(score)
    if patterns is None:
        return {name: "" for name in LABEL_NAMES}
    hot = multi_hot(GLEASON_PATTERN_TO_LABEL[p] for p in patterns)
    return {name: str(int(v)) for name, v in zip(LABEL_NAMES, hot)}


def read_slide_labels(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Slide labels of a csv with ``slide_id`` and ``gleason_score`` (PANDA's spelling; optional ``provider``).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: missing columns or an unparseable ``gleason_score`` (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide label table not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("slide_id", "gleason_score") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; found {reader.fieldnames}")
        labels = {}
        for line, row in enumerate(reader, start=2):
            if parse_gleason_score(row["gleason_score"]) is None:
                raise ValueError(
                    f"{path} line {line}: cannot parse gleason_score {row['gleason_score']!r}; "
                    "expected 'A+B' with A, B in 3..5, '0+0' or 'negative'"
                )
            labels[row["slide_id"].strip()] = {
                "gleason_score": row["gleason_score"].strip(),
                "provider": (row.get("provider") or "").strip().lower(),
            }
    return labels


def list_slides(
    paths: Sequence[str | os.PathLike], labels: Mapping[str, Mapping[str, str]] | None = None
) -> list[dict]:
    """Slide files (and the slide files of folders, by extension) as job items; ``slide_id`` is the file stem.

    Args:
        paths: slide files or folders of them (:data:`monai_disc.data.wsi.SLIDE_EXTENSIONS`).
        labels: optional ``slide_id -> {"gleason_score", "provider"}`` (see :func:`read_slide_labels`).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: no slide at all, or two slides with the same stem.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in SLIDE_EXTENSIONS)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"slide not found: {path}")
    if not files:
        raise ValueError(f"no slide files ({', '.join(SLIDE_EXTENSIONS)}) in {[str(p) for p in paths]}")
    seen: dict[str, Path] = {}
    items = []
    for f in files:
        if f.stem in seen:
            raise ValueError(f"two slides share the id {f.stem!r}: {seen[f.stem]} and {f}")
        seen[f.stem] = f
        known = (labels or {}).get(f.stem, {})
        items.append(
            {
                "slide_id": f.stem,
                "image": str(f),
                "mask": None,
                "provider": known.get("provider", ""),
                "gleason_score": known.get("gleason_score", ""),
            }
        )
    return items


def panda_slides(root: str | os.PathLike) -> list[dict]:
    """The slides of a PANDA root as job items (masks of radboud slides give label fractions)."""
    return [
        {k: item[k] for k in ("slide_id", "image", "mask", "provider", "gleason_score")} for item in load_panda(root)
    ]


def save_thumbnail(plan: SlideTiling, path: str | os.PathLike, max_side: int = 1024, min_side: int = 512) -> Path:
    """The slide thumbnail with its tissue outline and kept tiles drawn on it, and a colour legend, as PNG.

    The picture's long side is brought within [``min_side``, ``max_side``] (small thumbnails are enlarged by
    whole factors, pixel for pixel), so tiles stay visible.
    """
    from scipy import ndimage

    thumb, mask = plan.thumbnail, plan.tissue_mask
    long_side = max(thumb.shape[:2])
    scale = max_side / long_side if long_side > max_side else float(max(1, min_side // long_side))
    size = (max(1, round(thumb.shape[1] * scale)), max(1, round(thumb.shape[0] * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST
    picture = Image.fromarray(thumb).resize(size, resample)
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    outline = small & ~ndimage.binary_erosion(small, border_value=0)
    outline = ndimage.binary_dilation(outline) if max(size) >= 400 else outline
    rgb = np.array(picture)
    rgb[outline] = TISSUE_COLOUR
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    sy, sx = plan.thumbnail_downsample
    for tile in plan.tiles:
        x0, y0 = tile["x"] / sx * scale, tile["y"] / sy * scale
        x1, y1 = (tile["x"] + plan.step) / sx * scale, (tile["y"] + plan.step) / sy * scale
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=TILE_COLOUR)
    legend = Image.new("RGB", (max(size[0], 360), size[1] + 22), "white")
    legend.paste(picture, (0, 0))
    draw = ImageDraw.Draw(legend)
    y = size[1] + 5
    draw.rectangle((4, y, 16, y + 12), outline=TISSUE_COLOUR, width=2)
    draw.text((20, y), "tissue", fill="black")
    draw.rectangle((80, y, 92, y + 12), outline=TILE_COLOUR)
    draw.text((96, y), f"{len(plan.tiles)} tiles of {plan.tile_size} px at {plan.mpp:g} um/px", fill="black")
    with atomic_path(path) as tmp:
        legend.save(tmp, format="PNG")
    return Path(path)


@dataclass
class TileSlidesResult:
    """What one rank of :func:`tile_slides` did.

    Attributes:
        rows: manifest rows of this rank's slides (status ``ok``, ``empty`` or ``error``), those skipped included.
        manifest: ``manifest.csv`` when this rank wrote it (every slide done), else None.
    """

    rows: list[dict]
    manifest: Path | None

    @property
    def failed(self) -> list[dict]:
        """This rank's rows with status ``error``."""
        return [r for r in self.rows if r["status"] == "error"]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if text.startswith(("/", ".")) else f"{type(err).__name__}: {text}"


def _verify_first_tile(plan: SlideTiling, backend: str) -> None:
    """Read one tile at its level: a slide whose tiles cannot be decoded fails here, not in feature extraction."""
    reader, wsi = open_slide(plan.path, backend)
    try:
        read_tile(reader, wsi, plan.tiles[0], plan.tile_size)
    except Exception as err:
        raise ValueError(f"{plan.path}: cannot decode its tiles at level {plan.level} ({_one_line(err)})") from err
    finally:
        close_slide(wsi)


def _tile_one(slide: Mapping[str, Any], out: Path, settings: Mapping[str, Any]) -> dict:
    row: dict[str, Any] = {
        "slide_id": slide["slide_id"], "path": slide["image"], "status": "error", "n_tiles": 0, "mpp": "",
        "level": "", "message": "", "provider": slide.get("provider") or "",
        "gleason_score": slide.get("gleason_score") or "", **_label_cells(slide.get("gleason_score") or ""),
    }  # fmt: skip
    mask = slide.get("mask") if row["provider"] == "radboud" else None  # karolinska masks are not grade-resolved
    try:
        plan = plan_slide_tiles(
            slide["image"], settings["tile_size"], settings["mpp"], settings["min_tissue"],
            base_mpp=settings["base_mpp"], mask=mask, provider=row["provider"] or "radboud",
            tissue=settings["tissue"], backend=settings["backend"],
        )  # fmt: skip
        if plan.tiles:
            _verify_first_tile(plan, settings["backend"])
        write_coords(plan.tiles, out / COORDS_DIR / f"{slide['slide_id']}.csv")
        save_thumbnail(plan, out / THUMBNAILS_DIR / f"{slide['slide_id']}.png")
    except Exception as err:  # any failure of one slide is recorded; the others go on
        row["message"] = _one_line(err)
        if str(slide["image"]) not in row["message"]:
            row["message"] = f"{slide['image']}: {row['message']}"
        return row
    row.update(status="ok" if plan.tiles else "empty", n_tiles=len(plan.tiles), mpp=round(plan.base_mpp, 6))
    row["level"] = plan.level
    if not plan.tiles:
        small = plan.step > min(plan.slide_size)
        row["message"] = (
            f"smaller than one tile ({plan.slide_size[1]} x {plan.slide_size[0]} px; a tile is {plan.step} px)"
            if small
            else f"no tile with a tissue fraction >= {settings['min_tissue']:g}"
        )
    return row


def _write_manifest(out: Path, rows: list[dict]) -> Path:
    return atomic_write_text(out / WSI_MANIFEST, csv_text(MANIFEST_COLUMNS, rows))


def tile_slides(
    slides: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    tile_size: int = 512,
    mpp: float = 1.0,
    min_tissue: float = 0.5,
    base_mpp: float | None = None,
    tissue: str = "biopsy",
    backend: str = "auto",
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TileSlidesResult:
    """Tile every slide into ``out_dir`` (layout in :mod:`monai_disc.data.wsi`): resumable and rank-sharded.

    Args:
        slides: items of :func:`list_slides` or :func:`panda_slides` (``slide_id``, ``image``, ``mask``,
            ``provider``, ``gleason_score``).
        out_dir: the output folder.
        tile_size, mpp, min_tissue, base_mpp, tissue, backend: see :func:`monai_disc.data.wsi.tile_slide`.
        rank, world_size: this process's shard; None reads torchrun's environment
            (:func:`monai_disc.distributed.resolve_rank`).
        progress: show a tqdm bar over this rank's slides.
        overwrite: start over in a folder tiled with other settings (see :func:`monai_disc.io.job_settings`).

    Returns:
        This rank's rows and, when every slide is done, the manifest path.

    Raises:
        ValueError: duplicate slide ids, or a folder tiled with other settings.
    """
    from tqdm.auto import tqdm

    from monai_disc.distributed import resolve_rank

    ids = [str(s["slide_id"]) for s in slides]
    if len(set(ids)) != len(ids):
        raise ValueError(f"slide ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    rank, world_size = resolve_rank(rank, world_size)
    out = Path(out_dir).expanduser()
    settings = {
        "tile_size": int(tile_size), "mpp": float(mpp), "min_tissue": float(min_tissue),
        "base_mpp": None if base_mpp is None else float(base_mpp), "tissue": tissue, "backend": backend,
    }  # fmt: skip
    job_settings(out, settings, overwrite=overwrite, name=TILING_SETTINGS)  # the one settings record
    records = out / RECORDS_DIR

    def record(sid: str) -> dict | None:
        path = records / f"{sid}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    rows = []
    mine = list(slides)[rank::world_size]
    for slide in tqdm(mine, desc=f"tile-slides rank {rank}/{world_size}", unit="slide", disable=not progress):
        done = record(str(slide["slide_id"]))
        if done is not None and done["status"] in ("ok", "empty"):
            rows.append(done)
            continue
        row = _tile_one(slide, out, settings)
        atomic_write_text(records / f"{slide['slide_id']}.json", json.dumps(row) + "\n")
        rows.append(row)
    mine_rows = {str(r["slide_id"]): r for r in rows}  # this rank's records, just read or written
    every = [mine_rows.get(sid) or record(sid) for sid in ids]
    manifest = _write_manifest(out, every) if all(r is not None for r in every) else None  # type: ignore[arg-type]
    return TileSlidesResult(rows, manifest)
