"""The toy data set in the SICAPv2 layout: a resumable, byte-deterministic build."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_disc.io import atomic_write_bytes, compare_settings, remove_orphan_temps, settings_error
from monai_disc.labels import NUM_CLASSES

from .panda import _panda_jobs, _write_panda_slide, _write_panda_table
from .plan import GLEASON_PAIRS, _check_config, _pairs_list, _plan_slides, _rng, _split_patients, _ToySlide
from .render import draw_tile
from .shapes import draw_mask
from .stain import Stain, random_stain
from .writers import _JPEG_QUALITY, _SICAP_VALUES, _jpeg_bytes, _xlsx_bytes

__all__ = ["TOY_VERSION", "is_complete", "make_toy_sicapv2"]

#: Bumped whenever the drawing changes, so cached builds of an older drawing are rebuilt.
TOY_VERSION = 1

_MARKER = ".toy_complete.json"


# ----------------------------------------------------------------------------------------------
# the SICAPv2-layout data set
# ----------------------------------------------------------------------------------------------
def _render_tile(
    seed: int, slide: _ToySlide, tile_index: int, tile_size: int, stain: Stain, gg45_mix: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    tile = slide.tiles[tile_index]
    rng = _rng(seed, 3, slide.index, tile_index)
    mask = draw_mask(tile_size, tile.labels, rng)
    rgb = draw_tile(mask, rng, stain=stain, cribriform=tile.cribriform, gg45_mix=gg45_mix)
    return rgb, mask


def _write_slide_tiles(
    work: Path, seed: int, slide: _ToySlide, tile_size: int, gg45_mix: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Draw and write one slide's tiles (skipping those a killed build already wrote); return sheet rows."""
    stain = random_stain(_rng(seed, 5, slide.index))
    rows = {}
    for t, tile in enumerate(slide.tiles):
        img_path = work / "images" / f"{tile.name}.jpg"
        mask_path = work / "masks" / f"{tile.name}.jpg"
        if img_path.exists() and mask_path.exists():  # both written atomically, mask last
            mask = draw_mask(tile_size, tile.labels, _rng(seed, 3, slide.index, t))
        else:
            rgb, mask = _render_tile(seed, slide, t, tile_size, stain, gg45_mix)
            atomic_write_bytes(img_path, _jpeg_bytes(rgb, _JPEG_QUALITY))
            atomic_write_bytes(mask_path, _jpeg_bytes(_SICAP_VALUES[mask], 100))
        rows[tile.name] = _sheet_row(tile.name, mask, tile.cribriform, _rng(seed, 6, slide.index, t))
    return rows


def _sheet_row(name: str, mask: np.ndarray, cribriform: float, rng: np.random.Generator) -> dict[str, Any]:
    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
    top = int(np.argmax(counts))
    row = {"image_name": name if rng.random() < 0.1 else f"{name}.jpg", "NC": 0, "G3": 0, "G4": 0, "G5": 0, "G4C": 0}
    key = ["NC", "G3", "G4", "G5"][top]
    if top == 2 and cribriform > 0.6:
        key = "G4C"
    row[key] = 1
    return row


_LAYOUT = ("images", "masks", "partition", "wsi_labels.xlsx", "panda", _MARKER)
_MOVING = ".toy_moving"  # present while a build replaces an older toy build in place


def _end_with_parent(parent: int) -> None:
    """Worker initializer: a drawing process ends when the build that started it ends, however it ends.

    A killed parent cannot shut its pool down, and spawned workers would go on drawing (hundreds of MB each).
    Linux delivers SIGKILL to the worker when the parent dies (``PR_SET_PDEATHSIG``); elsewhere a watchdog
    thread notices the parent is gone within a second.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: the watchdog remains
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="end-with-parent").start()


def _build_args(
    n_slides: int,
    tile_size: int,
    seed: int,
    tiles_per_slide: tuple[int, int],
    n_wsi: int,
    wsi_size: tuple[int, int],
    gleason_pairs: Sequence[tuple[tuple[int, int], float]] = GLEASON_PAIRS,
    gg45_mix: float = 0.0,
    test_share: float = 0.25,
) -> dict[str, Any]:
    """The settings a build records; the grade knobs only where they differ from the default toy set, so a
    default build records (and reuses) exactly what it did before they existed."""
    args: dict[str, Any] = {
        "toy_version": TOY_VERSION,
        "n_slides": int(n_slides),
        "tile_size": int(tile_size),
        "seed": int(seed),
        "tiles_per_slide": [int(tiles_per_slide[0]), int(tiles_per_slide[1])],
        "n_wsi": int(n_wsi),
        "wsi_size": [int(wsi_size[0]), int(wsi_size[1])],
    }
    pairs = _pairs_list(gleason_pairs)
    if pairs != _pairs_list(GLEASON_PAIRS):
        args["gleason_pairs"] = pairs
    if float(gg45_mix) != 0.0:
        args["gg45_mix"] = float(gg45_mix)
    if float(test_share) != 0.25:
        args["test_share"] = float(test_share)
    return args


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: str | os.PathLike, **build_args: Any) -> bool:
    """Whether ``root`` holds a finished toy build (made with these arguments, when given).

    A build writes its completion marker last, so a killed build never looks complete.

    Args:
        root: the data set folder.
        build_args: any of ``n_slides, tile_size, seed, tiles_per_slide, n_wsi, wsi_size`` (and of
            ``gleason_pairs, gg45_mix, test_share`` where they differ from the default) to compare with the
            finished build's.

    Returns:
        True when the marker exists, matches the current drawing version and the given arguments.
    """
    marker = _read_marker(Path(root) / _MARKER)
    if marker is None or marker.get("toy_version") != TOY_VERSION:
        return False
    for key, value in build_args.items():
        if key == "gleason_pairs":
            value = _pairs_list(value)
        elif isinstance(value, tuple):
            value = list(value)
        if marker.get(key) != value:
            return False
    return True


def make_toy_sicapv2(
    root: str | os.PathLike,
    n_slides: int = 40,
    tile_size: int = 128,
    seed: int = 0,
    tiles_per_slide: tuple[int, int] = (20, 55),
    n_wsi: int = 3,
    wsi_size: tuple[int, int] = (2048, 1536),
    overwrite: bool = False,
    num_workers: int | None = None,
    gleason_pairs: Sequence[tuple[tuple[int, int], float]] = GLEASON_PAIRS,
    gg45_mix: float = 0.0,
    test_share: float = 0.25,
) -> Path:
    """Write a procedural Gleason data set in the exact SICAPv2 layout (and PANDA-style slides).

    Layout: ``images/<name>.jpg`` (RGB), ``masks/<name>.jpg`` (grayscale, 0 NC, 3/4/5 Gleason,
    with JPEG noise), ``partition/Test/{Train,Test}.xlsx`` (patients 75 % / 25 %),
    ``partition/Validation/Val1..Val4/{Train,Test}.xlsx`` (4 patient folds of the Test
    partition's Train), ``wsi_labels.xlsx`` and, when ``n_wsi > 0``, ``panda/`` (see
    :func:`make_toy_panda`). The build is made in a sibling folder and moved into place with a
    completion marker written last; calling again with the same arguments returns at once, and a
    killed build resumes where it stopped. The same arguments give the same bytes.

    Args:
        root: output folder.
        n_slides: number of slides (at least 5); patients own one or two.
        tile_size: tile side in pixels (structures keep their size; larger tiles show more).
        seed: random seed.
        tiles_per_slide: inclusive range of tiles drawn per slide.
        n_wsi: number of PANDA-layout whole slides (0 for none).
        wsi_size: their level-0 width and height.
        overwrite: replace a toy build (finished or killed) of other settings, or the toy files in a folder that
            holds others. Without it, a build of other settings stops with an error naming the settings.
        num_workers: processes drawing slides in parallel (``None``: one per CPU, up to 8, for
            builds worth it); the output does not depend on it.
        gleason_pairs: slide Gleason scores (primary, secondary labels) with their shares.
        gg45_mix: share of each GG4 region drawn like GG5 and of each GG5 region like GG4 (0 to 0.5).
        test_share: share of patients in the Test partition's test split.

    A named setting of all these arguments is a :class:`ToyConfig` (``TOY_CONFIGS["hard"]``: the downstream
    benchmark); pass ``**config.build_kwargs()``.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for fewer than 5 slides, a tile under 32 px, a bad tile range or slides under 256 px; a toy
            build of other settings in ``root`` (or its partial folder) without ``overwrite``, naming them.
        FileExistsError: when ``root`` holds other files and ``overwrite`` is False.
    """
    if n_slides < 5:
        raise ValueError(f"make_toy_sicapv2 needs n_slides >= 5 (train, test and 4 folds), got {n_slides}.")
    if tile_size < 32:
        raise ValueError(f"tile_size must be at least 32 px, got {tile_size}.")
    lo, hi = (int(v) for v in tiles_per_slide)
    if lo < 1 or hi < lo:
        raise ValueError(f"tiles_per_slide must be (min, max) with 1 <= min <= max, got {tiles_per_slide}.")
    if n_wsi > 0 and min(wsi_size) < 256:
        raise ValueError(f"wsi_size must be at least 256 px a side, got {wsi_size}.")
    _check_config(gleason_pairs, gg45_mix, test_share)
    root = Path(root)
    args = _build_args(n_slides, tile_size, seed, (lo, hi), n_wsi, wsi_size, gleason_pairs, gg45_mix, test_share)
    finished = compare_settings(root / _MARKER, args)
    if finished == []:
        return root
    if finished and not overwrite:
        raise settings_error(root, finished)
    if root.exists() and any(root.iterdir()):
        ours = (root / _MARKER).exists() or (root / _MOVING).exists()  # never touch real data sets
        if not (ours or overwrite):
            raise FileExistsError(
                f"{root} is not empty and holds no toy data set; pass overwrite=True to replace "
                f"{', '.join(_LAYOUT[:5])} in it with toy data."
            )

    work = root.parent / f".{root.name}.toy-partial"
    partial = compare_settings(work / "build_args.json", args)
    if partial and not overwrite:  # a killed build of other settings: stop rather than discard it silently
        raise settings_error(work, partial)
    if partial or (partial is None and work.exists()):  # another or an unknown partial build
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(work)
    atomic_write_bytes(work / "build_args.json", json.dumps(args, sort_keys=True).encode())
    for sub in ("images", "masks", "partition/Test", *(f"partition/Validation/Val{k}" for k in range(1, 5))):
        (work / sub).mkdir(parents=True, exist_ok=True)

    slides = _plan_slides(n_slides, seed, (lo, hi), tile_size, gleason_pairs)
    sheet_rows: dict[str, dict[str, Any]] = {}
    jobs = [(work, seed, slide, tile_size, float(gg45_mix)) for slide in slides]
    panda_jobs = _panda_jobs(work / "panda", n_wsi, seed, wsi_size, 3) if n_wsi > 0 else []
    if num_workers is None:  # processes pay off only for larger builds
        work_px = sum(len(slide.tiles) for slide in slides) * tile_size**2 + n_wsi * wsi_size[0] * wsi_size[1]
        num_workers = min(os.cpu_count() or 1, 8) if work_px > 400 * 128**2 else 1
    if num_workers > 1:
        with ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_end_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            panda_futures = [pool.submit(_write_panda_slide, *job) for job in panda_jobs]  # longest first
            tile_futures = [pool.submit(_write_slide_tiles, *job) for job in jobs]
            panda_rows = [f.result() for f in panda_futures]
            for future in tile_futures:
                sheet_rows.update(future.result())
    else:
        panda_rows = [_write_panda_slide(*job) for job in panda_jobs]
        for job in jobs:
            sheet_rows.update(_write_slide_tiles(*job))
    if panda_rows:
        _write_panda_table(work / "panda", panda_rows)

    # partitions by patient
    values = [0, 3, 4, 5]
    grade_of = {}
    for slide in slides:
        grade_of[slide.patient_id] = max(grade_of.get(slide.patient_id, 0), slide.primary, slide.secondary)
    patients = sorted(grade_of)
    test_p, train_p = _split_patients(patients, grade_of, seed, 2, first=float(test_share))
    folds = _split_patients(train_p, grade_of, seed, 4, first=None)

    def sheet(pats: Iterable[int]) -> pd.DataFrame:
        pats = set(pats)
        rows = [sheet_rows[t.name] for s in slides if s.patient_id in pats for t in s.tiles]
        return pd.DataFrame(rows, columns=["image_name", "NC", "G3", "G4", "G5", "G4C"])

    part = work / "partition"
    atomic_write_bytes(part / "Test" / "Train.xlsx", _xlsx_bytes(sheet(train_p)))
    atomic_write_bytes(part / "Test" / "Test.xlsx", _xlsx_bytes(sheet(test_p)))
    for k, fold in enumerate(folds, start=1):
        rest = [p for p in train_p if p not in set(fold)]
        atomic_write_bytes(part / "Validation" / f"Val{k}" / "Train.xlsx", _xlsx_bytes(sheet(rest)))
        atomic_write_bytes(part / "Validation" / f"Val{k}" / "Test.xlsx", _xlsx_bytes(sheet(fold)))
    labels_df = pd.DataFrame(
        [
            {
                "slide_id": s.slide_id,
                "patient_id": s.patient_id,
                "Gleason_primary": values[s.primary],
                "Gleason_secondary": values[s.secondary],
            }
            for s in slides
        ]
    )
    atomic_write_bytes(work / "wsi_labels.xlsx", _xlsx_bytes(labels_df))

    # move into place; the marker goes last
    (work / "build_args.json").unlink()
    marker = json.dumps(args, sort_keys=True, indent=1).encode()
    if not root.exists() or not any(root.iterdir()):
        if root.exists():
            root.rmdir()
        atomic_write_bytes(work / _MARKER, marker)
        os.replace(work, root)
        return root
    (root / _MOVING).touch()
    (root / _MARKER).unlink(missing_ok=True)
    for name in _LAYOUT:
        old = root / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (work / name).exists():
            os.replace(work / name, old)
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_bytes(root / _MARKER, marker)
    (root / _MOVING).unlink()
    return root
