"""Slide plans -> synthetic slide bags on disk, with any mask-to-tile generator.

Every generator (SD, SD-SC, SD-DISC, SD-DISC-CoTrain) draws the same slides from the same plans
(:mod:`monai_disc.masks.plans`): tile `t` of a slide is drawn from the plan's mask and the plan's noise seed,
so the comparison between generators is fair and a slide can be regenerated on its own.

The layout written under `out_dir` is :mod:`monai_disc.data.synthetic`'s (defined there once, with its reader);
a slide being written lives in `.<slide_id>.partial/` (removed and redone after a kill). A slide is written into its `.partial` folder and renamed when complete, so a finished slide is never half
there: a job killed at any point resumes by skipping finished slides and redoing only the unfinished one. The
tiles of a slide are drawn in batches that depend only on the slide and `batch_size`, so a resumed or sharded
run writes the same bytes as an uninterrupted one.

Under torchrun, rank `r` of `W` takes slides r, r + W, ... No collective is used: whichever call finishes
the last slide (every slide's folder present) writes `manifest.csv` from the plans, so unequal shards cannot
time out a barrier and no process group is needed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from monai_disc.bundles import AUTOENCODER_WEIGHTS, bundle_file
from monai_disc.data.synthetic import (
    IMAGES_DIR,
    MANIFEST_NAME,
    MASKS_DIR,
    SLIDE_INFO_NAME,
    TILE_LABELS_NAME,
    manifest_text,
)
from monai_disc.distributed import resolve_rank
from monai_disc.inferers import DEFAULT_GENERATOR, TileGenerator
from monai_disc.io import atomic_write_text, csv_text
from monai_disc.labels import LABEL_NAMES
from monai_disc.masks import ShapeBank, SlidePlan
from monai_disc.visualize import save_picture, to_uint8

__all__ = ["generate_slides", "generator_name", "run_generate_slides", "shape_bank", "shard_plans", "tile_name"]

_PARTIAL_SUFFIX = ".partial"
_INFO_FORMAT = 1

logger = logging.getLogger(__name__)


def generator_name(generator: Any) -> str:
    """The generator's `name` attribute, else its class name: what the manifest's `generator` column says."""
    name = getattr(generator, "name", None)
    return str(name) if name else type(generator).__name__


def tile_name(index: int) -> str:
    """File name of tile `index` of a slide (zero-padded, so name order is plan order)."""
    return f"{int(index):04d}.png"


def shard_plans(plans: Sequence[SlidePlan], rank: int, world_size: int) -> list[SlidePlan]:
    """The slides rank `rank` of `world_size` generates: r, r + W, r + 2W, ... in plan order."""
    return list(plans[rank::world_size])


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------
def _check_plans(plans: Sequence[SlidePlan], bank: ShapeBank) -> None:
    """Fail before any work: bad slide ids, duplicates, empty slides, tiles not from `bank`."""
    seen: set[str] = set()
    for plan in plans:
        sid = plan.slide_id
        if not sid or sid != sid.strip() or sid.startswith(".") or any(c in sid for c in '/\\:*?"<>|'):
            raise ValueError(f"slide id {sid!r} is not a plain folder name (no separators, no leading dot)")
        if sid == MANIFEST_NAME:
            raise ValueError(f"slide id {sid!r} clashes with the manifest file")
        if sid in seen:
            raise ValueError(f"slide id {sid!r} is planned twice")
        seen.add(sid)
        if plan.n_tiles == 0:
            raise ValueError(f"slide {sid} is planned with no tile")
        for t, tile in enumerate(plan.tiles):
            if not 0 <= tile.shape_index < len(bank) or bank.source_ids[tile.shape_index] != tile.source_id:
                raise ValueError(
                    f"slide {sid}, tile {t}: shape {tile.shape_index} ({tile.source_id}) is not in this shape bank; "
                    "the plans were made with another bank"
                )


def _slide_info(plan: SlidePlan, generator: str) -> dict[str, Any]:
    return {"format": _INFO_FORMAT, "generator": generator, "plan": plan.to_dict()}


def _is_finished(slide_dir: Path, plan: SlidePlan, generator: str) -> bool:
    """True when `slide_dir` holds this plan's slide from this generator; False when it does not exist.

    Raises:
        ValueError: the folder exists but holds something else (another plan, another generator, or not a
            generated slide), so the run would mix slides; the message names the folder.
    """
    if not slide_dir.exists():
        return False
    info_path = slide_dir / SLIDE_INFO_NAME
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{slide_dir} exists but is not a generated slide ({info_path}: {type(err).__name__}); "
            "remove it or choose another output folder"
        ) from None
    if info.get("generator") != generator:
        raise ValueError(
            f"{slide_dir} was generated by {info.get('generator')!r}, not {generator!r}; "
            "write each generator's slides to their own output folder"
        )
    if info.get("plan") != json.loads(json.dumps(plan.to_dict())):
        raise ValueError(f"{slide_dir} holds another plan of slide {plan.slide_id}; use a new output folder")
    return True


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def _tile_label_rows(plan: SlidePlan, masks: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for t, (tile, mask) in enumerate(zip(plan.tiles, masks)):
        present = np.unique(mask)
        rows.append(
            {
                "image": tile_name(t),
                "slide_id": plan.slide_id,
                "label": ";".join(LABEL_NAMES[int(v)] for v in present),
                "source_id": tile.source_id,
                "seed": tile.seed,
            }
        )
    return rows


def _batches(n: int, batch_size: int) -> Iterator[range]:
    for start in range(0, n, batch_size):
        yield range(start, min(n, start + batch_size))


def _write_slide(
    plan: SlidePlan,
    out_dir: Path,
    generator: Any,
    name: str,
    bank: ShapeBank,
    tile_size: int | Sequence[int] | None,
    batch_size: int,
    bar: tqdm,
) -> Path:
    """Generate one slide into its partial folder, then rename it into place."""
    final = out_dir / plan.slide_id
    partial = out_dir / f".{plan.slide_id}{_PARTIAL_SUFFIX}"
    if partial.exists():  # left by a killed run: its tiles are redone, not trusted
        shutil.rmtree(partial)
    (partial / IMAGES_DIR).mkdir(parents=True)
    (partial / MASKS_DIR).mkdir()
    masks = [m.astype(np.uint8) for m in plan.masks(bank, tile_size)]
    for batch in _batches(plan.n_tiles, batch_size):
        labels = torch.from_numpy(np.stack([masks[i] for i in batch]).astype(np.int64))
        seeds = [plan.tiles[i].seed for i in batch]
        tiles = generator.sample(labels, seeds)
        if not isinstance(tiles, Tensor) or tiles.ndim != 4 or tiles.shape[0] != len(batch):
            raise ValueError(
                f"generator {name} returned {getattr(tiles, 'shape', type(tiles))} for {len(batch)} masks of slide "
                f"{plan.slide_id}; expected tiles (B, 3, H, W)"
            )
        if tuple(tiles.shape[-2:]) != masks[batch[0]].shape:
            raise ValueError(
                f"generator {name} returned {tuple(tiles.shape[-2:])} px tiles for {masks[batch[0]].shape} px masks"
            )
        for j, i in enumerate(batch):
            save_picture(to_uint8(tiles[j]), partial / IMAGES_DIR / tile_name(i))
            save_picture(masks[i], partial / MASKS_DIR / tile_name(i))
        bar.update(len(batch))
    header = ("image", "slide_id", "label", "source_id", "seed")
    atomic_write_text(partial / TILE_LABELS_NAME, csv_text(header, _tile_label_rows(plan, masks)))
    atomic_write_text(partial / SLIDE_INFO_NAME, json.dumps(_slide_info(plan, name)))
    os.replace(partial, final)
    return final


def _existing_manifest_ids(path: Path) -> list[str] | None:
    try:
        with path.open(newline="") as f:
            return [row["slide_id"] for row in csv.DictReader(f)]
    except (OSError, KeyError, csv.Error):
        return None


def generate_slides(
    plans: Sequence[SlidePlan],
    out_dir: str | os.PathLike,
    generator: TileGenerator,
    bank: ShapeBank,
    batch_size: int = 16,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    tile_size: int | Sequence[int] | None = None,
) -> Path | None:
    """Draw every planned slide with `generator` and write the slide bags and `manifest.csv` (layout in the
    module docstring).

    Finished slides in `out_dir` are skipped (after checking they hold the same plan and generator); a slide
    left unfinished by a killed run is redone. Tile `t` of a slide is drawn from the plan's mask and its noise
    seed `plan.tiles[t].seed`, in batches of at most `batch_size` tiles of that slide.

    Args:
        plans: the slides, e.g. :func:`monai_disc.masks.plan_synthetic_slides` or
            :func:`monai_disc.masks.load_plans`; every generator should get the same plans.
        out_dir: output folder (created).
        generator: a :class:`TileGenerator`, e.g. :class:`monai_disc.inferers.LDMGenerator`.
        bank: the shape bank the plans were made with.
        batch_size: tiles per generator call.
        rank, world_size: this process's shard (slides rank, rank + world_size, ...); None reads them from
            torch.distributed or torchrun's environment (:func:`resolve_rank`).
        progress: show a tqdm bar over this rank's tiles (with tiles per second).
        tile_size: size of the masks given to the generator (nearest resize of the bank shapes, e.g. 512 for
            a bank stored at 128 px); None keeps the bank's size.

    Returns:
        The path of `manifest.csv` when this call found every planned slide finished and wrote it; None when
        slides of other ranks were still missing (the call that finishes the last slide writes it).

    Raises:
        ValueError: bad batch size or rank; slide ids that are not folder names or repeat; plans not made with
            `bank`; a folder in `out_dir` holding another plan or generator; a generator returning tiles of the
            wrong shape.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not callable(getattr(generator, "sample", None)):
        raise TypeError(f"generator must have a sample(masks, seeds) method, got {generator!r}")
    rank, world_size = resolve_rank(rank, world_size)
    plans = list(plans)
    _check_plans(plans, bank)
    name = generator_name(generator)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME

    # a manifest of another slide set (an earlier, different plan) must not outlive this run's start
    if manifest.exists() and _existing_manifest_ids(manifest) != [p.slide_id for p in plans]:
        manifest.unlink(missing_ok=True)

    mine = shard_plans(plans, rank, world_size)
    pending = [p for p in mine if not _is_finished(out / p.slide_id, p, name)]
    total = sum(p.n_tiles for p in pending)
    logger.info(
        "rank %d/%d: %d of %d slides to generate (%d tiles) with %s into %s",
        rank,
        world_size,
        len(pending),
        len(mine),
        total,
        name,
        out,
    )
    desc = "slides" if world_size == 1 else f"slides (rank {rank}/{world_size})"
    start = time.perf_counter()
    with tqdm(
        total=total, desc=desc, unit="tile", disable=not progress, position=rank if world_size > 1 else None
    ) as bar:
        for plan in pending:
            bar.set_postfix_str(plan.slide_id, refresh=False)
            _write_slide(plan, out, generator, name, bank, tile_size, int(batch_size), bar)
    if total:
        elapsed = time.perf_counter() - start
        logger.info("rank %d: %d tiles in %.1f s (%.3f s per tile)", rank, total, elapsed, elapsed / total)

    missing = [p.slide_id for p in plans if not _is_finished(out / p.slide_id, p, name)]
    if missing:
        logger.info("manifest not written yet: %d slides of other ranks missing (e.g. %s)", len(missing), missing[0])
        return None
    return atomic_write_text(manifest, manifest_text(plans, name))


def run_generate_slides(
    data: str | os.PathLike,
    out: str | os.PathLike,
    generator: str = DEFAULT_GENERATOR,
    bundles: str | os.PathLike | None = None,
    target: int = 100,
    tiles: Sequence[int] = (20, 100),
    tile_size: int = 64,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    solver: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    wsi_size: Sequence[int] | None = None,
    mpp: float = 2.0,
) -> tuple[list[SlidePlan], Path | None]:
    """The `generate-slides` job: one shape bank and plan in `out`, one slide folder per generator under it.

    Sizes are checked before anything is written. `out` records the bank and plan settings and `out/<generator>`
    the generator's (:func:`monai_disc.io.job_settings`): a rerun with the same settings resumes, one with other
    settings stops naming them, and `overwrite` starts over (the bank and plan only when their settings changed).

    Args:
        data: SICAPv2 root whose training masks make the bank and whose slides are balanced.
        out: output folder.
        generator: a name of :data:`monai_disc.inferers.GENERATORS`.
        bundles: folder holding the bundles' weights; None: the repository's.
        target: slides per primary grade, real plus synthetic (at least 1).
        tiles: (min, max) tiles per slide.
        tile_size: side of the tiles drawn.
        num_inference_steps: solver steps per tile; None: the generator's own (its registry entry's).
        guidance_scale: classifier-free guidance weight.
        solver: a name of :data:`monai_disc.inferers.SOLVERS`; None: the generator's own.
        batch_size: tiles per generator call.
        seed: plan seed.
        overwrite: start over instead of stopping at other settings.
        progress: show a progress bar.
        wsi_size: (H, W): write each slide as one pyramidal TIFF + mask of this size in the PANDA layout
            (:func:`monai_disc.apps.generate_region.generate_wsi_slides`, into ``out/<generator>_wsi``) instead of
            a bag of tiles.
        mpp: microns per pixel written into those TIFFs.

    Returns:
        (plans, the manifest path (``train.csv`` for slide files), or None when other ranks still have slides).

    Raises:
        ValueError: a target under 1, a tile size the generator cannot draw, nothing to generate, or outputs of
            other settings in `out`.
        monai_disc.errors.FailedFilesError: bad mask files (all of them listed).
    """
    from monai_disc.inferers import GENERATORS, load_generator
    from monai_disc.io import SETTINGS_NAME, compare_settings, file_digest, job_settings
    from monai_disc.masks import load_plans, plan_synthetic_slides, save_plans

    if int(target) < 1:
        raise ValueError(f"target must be at least 1 slide per primary grade, got {target}")
    tile_generator = load_generator(
        generator, bundles, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, solver=solver
    )
    window = tile_generator.ldm_sampler  # the steps and solver the registry resolved
    tile_generator.check_size(tile_size)  # before any file is written
    out = Path(out)
    shared = {
        "data": str(Path(data).resolve()),
        "target": int(target),
        "tiles": [int(t) for t in tiles],
        "tile_size": int(tile_size),
        "seed": int(seed),
    }
    changed = bool(compare_settings(out / SETTINGS_NAME, shared))
    job_settings(out, shared, overwrite=overwrite and changed)
    bank_path, plans_path = out / "shape_bank.npz", out / "plans.json"
    # one bank and one plan for every generator: the paper's fair comparison
    bank = shape_bank(data, bank_path, tile_size)
    if plans_path.is_file():
        plans = load_plans(plans_path)
    else:
        plans = plan_synthetic_slides(data, bank, target=target, seed=seed, n_tiles=tuple(tiles))
        save_plans(plans, plans_path, bank)
    if not plans:
        raise ValueError(f"nothing to generate: every primary grade of {data} already has {target} or more slides")
    own = {
        "generator": generator,
        "num_inference_steps": window.num_inference_steps,
        "solver": type(window.scheduler).__name__ + str(getattr(window.scheduler, "timestep_spacing", "")),
        "guidance_scale": float(guidance_scale),
        "weights": file_digest(bundle_file(GENERATORS[generator].weights, bundles)),
        "autoencoder": file_digest(bundle_file(AUTOENCODER_WEIGHTS, bundles)),
    }
    if wsi_size is not None:
        from monai_disc.apps.generate_region import generate_wsi_slides

        wsi_dir = out / f"{generator}_wsi"
        job_settings(wsi_dir, {**own, "wsi_size": [int(s) for s in wsi_size], "mpp": float(mpp)}, overwrite=overwrite)
        return plans, generate_wsi_slides(plans, wsi_dir, tile_generator, bank, tuple(wsi_size), mpp=mpp)
    job_settings(out / generator, own, overwrite=overwrite)
    manifest = generate_slides(plans, out / generator, tile_generator, bank, batch_size=batch_size, progress=progress)
    return plans, manifest


def shape_bank(data: str | os.PathLike, path: str | os.PathLike, size: int) -> ShapeBank:
    """The shape bank at ``path``, built from the SICAPv2 Train masks of ``data`` when it is not there yet."""
    from monai_disc.data import load_sicapv2

    path = Path(path)
    if path.is_file():
        return ShapeBank.load(path)
    bank = ShapeBank.from_data_list(load_sicapv2(data, "Test", "Train"), size=size)
    bank.save(path)
    return bank
