"""`monai-disc study`: does synthetic data make the graders better? Paired arms, many seeds, confidence intervals.

For each seed, every arm trains on the same few labelled real slides (drawn from the real training pool) from the
same initialisation; arms differ only by the synthetic data they add (:mod:`monai_disc.engines.study`):

* slide level: TransMIL on real feature bags alone, and mixed with each generator's synthetic slides at each
  lambda; AUROC per class (GG5 singled out) and macro on the real test slides;
* pixel level (optional): CarcinoNet on the seed's real tiles alone, mixed with each generator's synthetic tiles,
  and on synthetic tiles only; IoU per class and mIoU on real test tiles.

Scores come with 95 % bootstrap intervals over test items and seeds, and each arm's difference to real only with
its paired interval, p-value and a verdict for GG5 and macro (:mod:`monai_disc.metrics.bootstrap`).

Outputs in ``out_dir``::

    cells/study_settings.json          what the cells depend on; a rerun with other settings stops
                                       (``overwrite`` starts the cells over)
    cells/<level>/<arm>/seed=<seed>/   each cell: its training and ``scores.npz`` + ``cell.json`` (written last)
    study.json study.md study.png      the report: scores, intervals, differences, verdicts, runtimes

Resumable: finished cells are read back, a killed TransMIL training resumes at its last epoch. Under torchrun, rank
``r`` of ``W`` runs cells r, r + W, ... of the fixed cell list; the rank that finds every cell finished writes the
report (no collective). :func:`prepare_study` draws what a study needs from a SICAPv2-layout root (or the toy
benchmark) and generator names: synthetic slides, feature bags, tiles.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_disc.engines.study import REAL_ONLY, Arm, paired_subset, pixel_cell, read_cell, slide_cell, study_arms
from monai_disc.io import atomic_write_text, compare_settings, job_settings
from monai_disc.labels import LABEL_NAMES
from monai_disc.masks import plans_in_turn
from monai_disc.metrics.bootstrap import (
    as_plain,
    bootstrap_arms,
    paired_seed_interval,
    pixel_statistic,
    slide_statistic,
    verdict,
)
from monai_disc.visualize import save_figure

__all__ = [
    "DEFAULT_LAMBDAS",
    "PixelData",
    "format_study",
    "parse_generators",
    "plot_study",
    "prepare_study",
    "run_study",
]

DEFAULT_LAMBDAS: tuple[float, ...] = (0.3, 0.5)
_COLUMNS = (*LABEL_NAMES, "macro")
_SETTINGS, _JSON, _MD, _PNG = "study_settings.json", "study.json", "study.md", "study.png"


@dataclass
class PixelData:
    """Tiles of a pixel-level study, in memory: (images (N, 3, H, W) in [-1, 1], label maps (N, H, W)).

    Args:
        pool: real training slide id -> its tiles (the seed's training slides are taken from here).
        test: real test tiles.
        synthetic: generator -> its synthetic tiles.
        lam: the balance of the mixed arms.
        steps: optimisation steps of each training.
        batch_size: tiles per batch.
        seeds: seeds of the pixel cells (default: the study's).
    """

    pool: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    test: tuple[torch.Tensor, torch.Tensor]
    synthetic: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    lam: float = 0.5
    steps: int = 200
    batch_size: int = 16
    seeds: Sequence[int] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _digest(*arrays: Any) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()[:16]


def _bags_digest(bags: Any) -> str:
    """A digest of feature bags' ids, labels and features: a rerun on other data is refused, not mixed in."""
    h = hashlib.sha1()
    for i in range(len(bags)):
        sample = bags[i]
        h.update(str(sample["slide_id"]).encode())
        h.update(_digest(sample["label"].numpy(), sample["features"].to(torch.float16).numpy()).encode())
    return h.hexdigest()[:16]


def _pixel_digest(pixel: PixelData) -> str:
    parts = [_digest(pixel.test[0].to(torch.float16).numpy(), pixel.test[1].numpy())]
    for key in sorted(pixel.pool):
        parts.append(key + _digest(pixel.pool[key][1].numpy()))
    for key in sorted(pixel.synthetic):
        parts.append(key + _digest(pixel.synthetic[key][1].numpy()))
    return hashlib.sha1("".join(parts).encode()).hexdigest()[:16]


def _cells(arms: Sequence[Arm], seeds: Sequence[int], pixel_arms: Sequence[Arm], pixel_seeds: Sequence[int]) -> list:
    """The fixed cell list: per seed, every slide arm, then every pixel arm (a seed's arms run close together)."""
    cells = [("slide", arm, int(s)) for s in seeds for arm in arms]
    cells += [("pixel", arm, int(s)) for s in pixel_seeds for arm in pixel_arms]
    return cells


def _cell_dir(out: Path, level: str, arm: Arm, seed: int) -> Path:
    return out / "cells" / level / arm.name / f"seed={seed}"


def run_study(
    pool: Any,
    test: Any,
    synthetic: Mapping[str, Any],
    out_dir: str | os.PathLike,
    seeds: Sequence[int] = tuple(range(10)),
    n_train: int = 24,
    n_val: int = 24,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    min_positive: int = 2,
    pixel: PixelData | None = None,
    n_boot: int = 1000,
    margin: float = 0.01,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> dict | None:
    """Run (this rank's share of) the study's cells and, once every cell is finished, write the report.

    Args:
        pool: the real training pool's feature bags (each seed labels ``n_train`` + ``n_val`` of them).
        test: the real test feature bags.
        synthetic: generator name -> its synthetic feature bags (insertion order is the arms' order).
        out_dir: output folder (layout in the module docstring).
        seeds: training seeds (>= 10 for a study that means something; fewer for a smoke run); empty: no slide
            level (a pixel-level study, ``pixel`` with its own seeds).
        n_train, n_val: labelled real slides per seed for training and for early stopping.
        lambdas: the balances of the mixed arms.
        min_positive: positives per class in each seed's training draw (:func:`paired_subset`).
        pixel: the pixel-level study's tiles and knobs; None runs the slide level only.
        n_boot: bootstrap resamples of the report.
        margin: the smallest difference that matters (AUROC / IoU units): an interval inside +- margin reads
            "does not help".
        settings: more settings to record (where the data came from); cells depend on them.
        overwrite: start over in a folder of other settings.
        rank, world_size: this process's share; None reads torch.distributed or torchrun's variables.
        progress: a progress bar over this rank's cells.
        train_kwargs: passed to :func:`monai_disc.engines.mil.train_transmil` (``network``, ``max_epochs``,
            ``patience``, ...).

    Returns:
        The report (also in ``study.json``) when every cell is finished, else None.

    Raises:
        monai_disc.io.SettingsMismatchError: ``out_dir`` holds a study of other settings (each named).
        ValueError: bad lambdas or generator names, a pool too small for the draws, or no seeds at either
            level.
    """
    from tqdm.auto import tqdm

    from monai_disc.distributed import resolve_rank
    from monai_disc.engines.mil import as_feature_bags

    rank, world_size = resolve_rank(rank, world_size)
    out = Path(out_dir).expanduser()
    generators = list(synthetic)
    arms = study_arms(generators, lambdas) if len(seeds) else []
    pixel_arms = study_arms(generators, [pixel.lam], synthetic_only=True) if pixel is not None else []
    pixel_seeds = [] if pixel is None else [int(s) for s in (seeds if pixel.seeds is None else pixel.seeds)]
    if not arms and not pixel_seeds:
        raise ValueError("a study needs seeds at the slide level, or a pixel level with seeds")
    pool_bags, test_bags = as_feature_bags(pool), as_feature_bags(test)
    opened = {g: as_feature_bags(synthetic[g]) for g in generators}
    record = _record(pool_bags, test_bags, opened, seeds, n_train, n_val, lambdas, min_positive, pixel, pixel_seeds,
                     train_kwargs, settings)  # fmt: skip
    if overwrite or compare_settings(out / "cells" / _SETTINGS, record) != []:  # a new study: no old report survives
        for name in (_JSON, _MD, _PNG):
            (out / name).unlink(missing_ok=True)
    job_settings(out / "cells", record, overwrite=overwrite, name=_SETTINGS)

    labels = np.stack([pool_bags[i]["label"].numpy() for i in range(len(pool_bags))])
    subsets = {int(s): paired_subset(labels, n_train, n_val, int(s), min_positive) for s in {*seeds, *pixel_seeds}}
    cells = _cells(arms, seeds, pixel_arms, pixel_seeds)
    mine = [c for c in cells[rank::world_size] if read_cell(_cell_dir(out, *c)) is None]
    for level, arm, seed in tqdm(mine, desc=f"study rank {rank}/{world_size}", disable=not progress):
        start = time.perf_counter()
        train_idx, val_idx = subsets[seed]
        where = _cell_dir(out, level, arm, seed)
        if level == "slide":
            slide_cell(
                arm, seed, [pool_bags[i] for i in train_idx], [pool_bags[i] for i in val_idx], test_bags,
                opened[arm.generator] if arm.generator else None, where, **train_kwargs,
            )  # fmt: skip
        else:
            assert pixel is not None
            _pixel_cell(pixel, arm, seed, [str(pool_bags[i]["slide_id"]) for i in train_idx], where)
        _annotate(where, time.perf_counter() - start, [str(pool_bags[i]["slide_id"]) for i in train_idx])

    if any(read_cell(_cell_dir(out, *c)) is None for c in cells):
        return None
    report = _report(out, arms, seeds, pixel_arms, pixel_seeds, n_boot, margin, record)
    atomic_write_text(out / _JSON, json.dumps(report, indent=1, default=_json_default) + "\n")
    atomic_write_text(out / _MD, format_study(report))
    plot_study(report, out / _PNG)
    return report


def _record(
    pool: Any,
    test: Any,
    synthetic: Mapping[str, Any],
    seeds: Sequence[int],
    n_train: int,
    n_val: int,
    lambdas: Sequence[float],
    min_positive: int,
    pixel: PixelData | None,
    pixel_seeds: Sequence[int],
    train_kwargs: Mapping[str, Any],
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Every setting the cells depend on, the data as digests (other data under the same names is refused)."""
    plain = (int, float, str, bool, type(None))
    return {
        "seeds": [int(s) for s in seeds],
        "n_train": int(n_train),
        "n_val": int(n_val),
        "lambdas": [float(v) for v in lambdas],
        "min_positive": int(min_positive),
        "generators": list(synthetic),
        "pool": _bags_digest(pool),
        "test": _bags_digest(test),
        "synthetic": {g: _bags_digest(bags) for g, bags in synthetic.items()},
        "train": {k: v if isinstance(v, plain) else repr(v) for k, v in train_kwargs.items()},
        "pixel": None
        if pixel is None
        else {
            "lam": pixel.lam,
            "steps": pixel.steps,
            "batch_size": pixel.batch_size,
            "seeds": list(pixel_seeds),
            "data": _pixel_digest(pixel),
            **pixel.settings,
        },  # fmt: skip
        **dict(settings or {}),
    }


def _pixel_cell(pixel: PixelData, arm: Arm, seed: int, train_slides: Sequence[str], where: Path) -> None:
    """One pixel cell on the tiles of the seed's labelled slides."""
    missing = [i for i in train_slides if i not in pixel.pool]
    if missing:
        raise ValueError(f"pixel study: no tiles for training slide(s) {missing[:5]} of seed {seed}")
    real = (torch.cat([pixel.pool[i][0] for i in train_slides]), torch.cat([pixel.pool[i][1] for i in train_slides]))
    synth = pixel.synthetic[arm.generator] if arm.generator else None
    pixel_cell(arm, seed, real, synth, pixel.test, where, steps=pixel.steps, batch_size=pixel.batch_size)


def _annotate(where: Path, seconds: float, train_slides: list[str]) -> None:
    """Record the cell's wall time and the seed's labelled slides in its cell.json (the pairing, to check)."""
    path = where / "cell.json"
    cell = json.loads(path.read_text())
    if "seconds" not in cell:  # a cell read back keeps the time of the run that trained it
        cell["seconds"] = round(seconds, 2)
    cell["train_slides"] = train_slides
    atomic_write_text(path, json.dumps(cell, indent=1) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _level_report(
    out: Path, level: str, arms: Sequence[Arm], seeds: Sequence[int], n_boot: int, margin: float
) -> dict[str, Any]:
    """Bootstrap scores, paired differences, seed intervals and verdicts of one level's finished cells."""
    loaded = [[read_cell(_cell_dir(out, level, arm, s)) for s in seeds] for arm in arms]
    seconds = sum(float(c[0].get("seconds", 0.0)) for row in loaded for c in row if c is not None)
    if level == "slide":
        targets = loaded[0][0][1]["targets"]  # type: ignore[index]
        for row in loaded:
            for cell in row:
                if not np.array_equal(cell[1]["slide_ids"], loaded[0][0][1]["slide_ids"]):  # type: ignore[index]
                    raise ValueError(f"{out}: cells scored different test slides; rerun with --overwrite")
        scores = np.stack([np.stack([c[1]["scores"] for c in row]) for row in loaded])  # type: ignore[index]
        statistic, n_items = slide_statistic(scores, targets), scores.shape[2]
        positives = {n: int(v) for n, v in zip(LABEL_NAMES, targets.sum(0))}
    else:
        confusion = np.stack([np.stack([c[1]["confusion"] for c in row]) for row in loaded])  # type: ignore[index]
        statistic, n_items = pixel_statistic(confusion), confusion.shape[2]
        positives = {n: int(v) for n, v in zip(LABEL_NAMES, confusion[0, 0].sum(axis=(0, 2)))}  # truth pixels
    result = bootstrap_arms(statistic, n_items, len(seeds), n_boot=n_boot, seed=0)
    seed_view = paired_seed_interval(result["per_seed"])
    names = [a.name for a in arms]
    verdicts = {
        arm: {
            col: verdict(result["delta_low"][a, m], result["delta_high"][a, m], margin)
            for m, col in enumerate(_COLUMNS)
            if col in ("GG5", "macro")
        }
        for a, arm in enumerate(names)
        if arm != REAL_ONLY
    }
    between = _between_generators(statistic, n_items, len(seeds), arms, n_boot, margin)
    return {
        "metric": "AUROC" if level == "slide" else "IoU",
        "mean_name": "macro" if level == "slide" else "mIoU",  # the column "macro": the mean over classes
        "arms": [asdict(a) for a in arms],
        "columns": list(_COLUMNS),
        "n_test": int(n_items),
        "test_positives": positives,
        "seeds": [int(s) for s in seeds],
        "rows": as_plain(result, names, _COLUMNS),
        "seed_differences": [
            {
                "arm": arm,
                "score": col,
                "mean": float(seed_view["mean"][a, m]),
                "low": float(seed_view["low"][a, m]),
                "high": float(seed_view["high"][a, m]),
                "wins": int(seed_view["wins"][a, m]),
                "n": int(seed_view["n"][a, m]),
            }
            for a, arm in enumerate(names)
            for m, col in enumerate(_COLUMNS)
            if arm != REAL_ONLY
        ],  # fmt: skip
        "verdicts": verdicts,
        "between_generators": between,
        "cell_seconds": round(seconds, 1),
    }


def _between_generators(
    statistic: Any, n_items: int, n_seeds: int, arms: Sequence[Arm], n_boot: int, margin: float
) -> list[dict[str, Any]]:
    """Each generator's arm against the first generator's arm of the same lambda, paired the same way (the same
    resamples as the comparison with real only)."""
    first = {
        arm.lam: a for a, arm in enumerate(arms) if arm.generator is not None and arm.generator == arms[1].generator
    }
    rows = []
    for lam, reference in first.items():
        others = [a for a, arm in enumerate(arms) if arm.lam == lam and arm.generator not in (None, arms[1].generator)]
        if not others:
            continue
        result = bootstrap_arms(statistic, n_items, n_seeds, n_boot=n_boot, seed=0, reference=reference)
        for a in others:
            for m, col in enumerate(_COLUMNS):
                if col not in ("GG5", "macro"):
                    continue
                low, high = float(result["delta_low"][a, m]), float(result["delta_high"][a, m])
                values = {"delta": float(result["delta"][a, m]), "delta_low": low, "delta_high": high,
                          "p_value": float(result["p_value"][a, m])}  # fmt: skip
                rows.append(
                    {"arm": arms[a].name, "versus": arms[reference].name, "score": col,
                     **{k: None if math.isnan(v) else v for k, v in values.items()}, "verdict": verdict(low, high, margin)}
                )  # fmt: skip
    return rows


def _report(
    out: Path,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    pixel_arms: Sequence[Arm],
    pixel_seeds: Sequence[int],
    n_boot: int,
    margin: float,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "settings": dict(settings),
        "n_boot": int(n_boot),
        "level": 0.95,
        "margin": float(margin),
    }
    if arms:  # no slide seeds: a pixel-level study
        report["slide"] = _level_report(out, "slide", arms, seeds, n_boot, margin)
    if pixel_arms:
        report["pixel"] = _level_report(out, "pixel", pixel_arms, pixel_seeds, n_boot, margin)
    return report


def _ci(row: Mapping[str, Any], key: str = "point", scale: float = 100.0) -> str:
    lo, hi = ("low", "high") if key == "point" else ("delta_low", "delta_high")
    if row[key] is None:
        return "n/a"
    sign = "+" if key == "delta" else ""
    interval = "" if row[lo] is None else f" [{row[lo] * scale:{sign}.2f}, {row[hi] * scale:{sign}.2f}]"
    return f"{row[key] * scale:{sign}.2f}{interval}"


def _seeds(level: Mapping[str, Any]) -> str:
    n = len(level["seeds"])
    return f"{n} seed{'' if n == 1 else 's'}"


def _p(value: float | None, n_boot: int) -> str:
    if value is None:
        return "n/a"
    return f"< {1 / n_boot:.3g}" if value == 0.0 else f"{value:.3f}"


def _rows(level: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(r["arm"], r["score"]): r for r in level["rows"]}


def format_study(report: Mapping[str, Any]) -> str:
    """The report as Markdown: per level, each arm's scores with intervals, its paired difference to real only,
    and the verdicts for GG5 and macro."""
    pct = int(round(100 * report["level"]))
    lines = ["# Downstream study: does synthetic data make the graders better?", ""]
    for key, title in (("slide", "Slide level: TransMIL AUROC"), ("pixel", "Pixel level: CarcinoNet IoU")):
        if key not in report:
            continue
        level = report[key]
        rows = _rows(level)
        arms = [a["name"] for a in level["arms"]]
        lines += [
            f"## {title} (x 100, mean over {_seeds(level)}, {pct} % bootstrap intervals over "
            f"{level['n_test']} test {'slides' if key == 'slide' else 'tiles'} and seeds)",
            "",
            "| arm | " + " | ".join(level["mean_name"] if c == "macro" else c for c in level["columns"]) + " |",
            "|---|" + "---|" * len(level["columns"]),
        ]
        for arm in arms:
            lines.append(f"| {arm} | " + " | ".join(_ci(rows[(arm, c)]) for c in level["columns"]) + " |")
        lines += [
            "",
            "Paired difference to real only (same seeds, same test items; p: two-sided bootstrap):",
            "",
            f"| arm | {level['mean_name']} difference | p | GG5 difference | p | {level['mean_name']} | GG5 |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm in arms[1:]:
            m, g = rows[(arm, "macro")], rows[(arm, "GG5")]
            p_m, p_g = _p(m["p_value"], report["n_boot"]), _p(g["p_value"], report["n_boot"])
            v = level["verdicts"][arm]
            lines.append(
                f"| {arm} | {_ci(m, 'delta')} | {p_m} | {_ci(g, 'delta')} | {p_g} | {v['macro']} | {v['GG5']} |"
            )
        if level.get("between_generators"):
            lines += ["", "Between generators (the same lambda, paired the same way):", "",
                      "| arm | against | score | difference | p | verdict |", "|---|---|---|---|---|---|"]  # fmt: skip
            for r in level["between_generators"]:
                name = level["mean_name"] if r["score"] == "macro" else r["score"]
                lines.append(f"| {r['arm']} | {r['versus']} | {name} | {_ci(r, 'delta')} | "
                             f"{_p(r['p_value'], report['n_boot'])} | {r['verdict']} |")  # fmt: skip
        lines += [
            "",
            f"Verdicts: 'helps'/'hurts' when the {pct} % interval of the difference excludes 0; 'does not help' when "
            f"it lies inside +- {100 * report['margin']:.1f} points; else 'cannot be told at this power'. Test "
            f"positives per class: {', '.join(f'{k} {v}' for k, v in level['test_positives'].items())}. "
            f"Training time of the cells: {level['cell_seconds'] / 60:.1f} min.",
            "",
        ]
    return "\n".join(lines)


def plot_study(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Each arm's score with its interval bar (GG5 and macro; mIoU and per class at pixel level), and each arm's
    paired difference to real only with its interval.

    Args:
        report: from :func:`run_study`.
        path: the PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [k for k in ("slide", "pixel") if k in report]
    height = max(3.5, 0.45 * max(len(report[k]["arms"]) for k in levels) + 1.5)
    fig, axes = plt.subplots(len(levels), 2, figsize=(13, height * len(levels)), squeeze=False)
    for row, key in enumerate(levels):
        level = report[key]
        rows = _rows(level)
        arms = [a["name"] for a in level["arms"]]
        shown = ("GG5", "macro")
        for col, (what, title) in enumerate((("point", level["metric"]), ("delta", f"{level['metric']} - real only"))):
            ax = axes[row][col]
            for k, score in enumerate(shown):
                ys = np.arange(len(arms)) + (k - 0.5) * 0.3
                lo, hi = ("low", "high") if what == "point" else ("delta_low", "delta_high")
                vals = [rows[(a, score)] for a in arms]
                x = np.array([np.nan if v[what] is None else 100 * v[what] for v in vals])
                err_lo = np.array([np.nan if v[lo] is None else 100 * v[lo] for v in vals])
                err_hi = np.array([np.nan if v[hi] is None else 100 * v[hi] for v in vals])
                label = level["mean_name"] if score == "macro" else score
                ax.errorbar(x, ys, xerr=[x - err_lo, err_hi - x], fmt="o", capsize=3, label=label)
            if what == "delta":
                ax.axvline(0.0, color="grey", lw=1)
                ax.axvspan(-100 * report["margin"], 100 * report["margin"], color="grey", alpha=0.12)
            ax.set_yticks(np.arange(len(arms)))
            ax.set_yticklabels(arms)
            ax.invert_yaxis()
            ax.set_xlabel(f"{title} (x 100)")
            ax.set_title(f"{key} level: {title}, {int(100 * report['level'])} % intervals, {_seeds(level)}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    return save_figure(fig, path)


def parse_generators(
    specs: Sequence[str],
    solver: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """The generators a study draws with, each with its sampling settings resolved through the registry.

    A spec is a registered generator, ``default`` (:data:`monai_disc.inferers.DEFAULT_GENERATOR` at run time) or
    ``NAME:SOLVER:STEPS`` (that generator with that solver and step count). A bare name samples with ``solver`` and
    ``num_inference_steps`` where given, else with its registry entry's own (a student keeps the solver and steps
    it was trained through); a spec's knobs win over both. So one study can hold the same weights at several step
    counts, each its own arm on the same masks and seeds.

    Args:
        specs: generator specs, in the arms' order; one naming the same arm twice counts once.
        solver, num_inference_steps: the sampling of bare names (None: each entry's own).
        guidance_scale: classifier-free guidance weight of every generator.

    Returns:
        arm name -> ``generator``, ``solver``, ``num_inference_steps``, ``guidance_scale``. A bare name is its own
        arm name; ``NAME:SOLVER:STEPS`` is ``NAME-SOLVER-STEPS`` (``gd:ddim:50`` -> ``gd-ddim-50``).

    Raises:
        ValueError: a spec that is not ``NAME`` or ``NAME:SOLVER:STEPS``, an unknown generator or solver, steps
            that are not a positive integer.
    """
    from monai_disc.inferers import DEFAULT_GENERATOR, sampler_options, split_generator_spec

    resolved: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, spec_knobs = split_generator_spec(spec)
        name = DEFAULT_GENERATOR if name == "default" else name
        knobs = spec_knobs or {"solver": solver, "num_inference_steps": num_inference_steps}
        label = "-".join([name, *(str(v) for v in spec_knobs.values())])  # gd:ddim:50 -> gd-ddim-50
        options = sampler_options(name, guidance_scale=guidance_scale, **knobs)
        resolved.setdefault(label, {
            "generator": name,
            "solver": options["scheduler"],
            "num_inference_steps": options["num_inference_steps"],
            "guidance_scale": options["guidance_scale"],
        })  # fmt: skip
    return resolved


def _draw_synthetic(
    root: Path,
    out: Path,
    name: str,
    n_slides: int,
    tiles: tuple[int, int],
    tile_size: int,
    sampling: Mapping[str, Any],
    bundles_dir: str | os.PathLike | None,
    rank: int,
    world_size: int,
    progress: bool,
    overwrite: bool,
) -> Path:
    """``n_slides`` planned synthetic slides (every primary grade alike) of arm ``name``, drawn with ``sampling``
    (:func:`parse_generators`: the generator and its resolved solver, steps and guidance). The plan (masks and noise
    seeds) depends on the real data and the counts only, so every generator draws the same masks with the same
    seeds. Slides drawn with other settings are never reused (an error, or ``overwrite`` draws them again)."""
    from monai_disc.apps.generate_slides import generate_slides
    from monai_disc.data.sicapv2 import load_sicapv2
    from monai_disc.distributed import wait_for_file
    from monai_disc.inferers import load_generator
    from monai_disc.masks import ShapeBank, plan_synthetic_slides

    folder = out / "synthetic" / name
    record = {"n_slides": n_slides, "tiles": list(tiles), "tile_size": tile_size, **sampling}
    if rank == 0:
        job_settings(folder, record, overwrite=overwrite, name="draw_settings.json")
    else:
        wait_for_file(folder / "draw_settings.json", f"the settings of {name}'s synthetic slides")
    if not (folder / "manifest.csv").is_file():
        bank = ShapeBank.from_data_list(load_sicapv2(root, "Test", "Train"), size=tile_size)
        per_grade = -(-n_slides // 4)
        plans = plan_synthetic_slides({g: 0 for g in range(4)}, bank, target=per_grade, n_tiles=tiles)
        knobs = {k: v for k, v in sampling.items() if k != "generator"}
        generator = load_generator(sampling["generator"], bundles_dir, **knobs)
        generate_slides(plans_in_turn(plans, n_slides), folder, generator, bank, rank=rank, world_size=world_size,
                        progress=progress)  # fmt: skip
        wait_for_file(folder / "manifest.csv", f"synthetic slides of {name}")
    return folder


def _features(
    bags: list, extractor: Any, folder: Path, rank: int, world_size: int, progress: bool, overwrite: bool
) -> Path:
    from monai_disc.distributed import wait_for_file
    from monai_disc.networks import extract_bag_features

    extract_bag_features(bags, extractor, folder, rank=rank, world_size=world_size, progress=progress,
                         overwrite=overwrite)  # fmt: skip
    wait_for_file(folder / "manifest.csv", f"features in {folder}")
    return folder


def _pixel_tiles(root: Path, synthetic: Mapping[str, Path], n_test: int) -> dict[str, Any]:
    """Real pool tiles per slide, ``n_test`` real test tiles (evenly spaced in sheet order), synthetic tiles."""
    from monai_disc.data.sicapv2 import load_sicapv2
    from monai_disc.data.synthetic import load_synthetic_bags
    from monai_disc.engines.study import load_labelled_tiles

    by_slide: dict[str, list] = {}
    for item in load_sicapv2(root, "Test", "Train"):
        by_slide.setdefault(str(item["slide_id"]), []).append(item)
    pool = {sid: load_labelled_tiles(items, "sicapv2") for sid, items in by_slide.items()}
    test_items = load_sicapv2(root, "Test", "Test")
    keep = np.unique(np.linspace(0, len(test_items) - 1, min(n_test, len(test_items))).round().astype(int))
    test = load_labelled_tiles([test_items[i] for i in keep], "sicapv2")
    synth = {}
    for name, folder in synthetic.items():
        items = [
            {"image": t, "mask": m} for bag in load_synthetic_bags(folder) for t, m in zip(bag["tiles"], bag["masks"])
        ]
        synth[name] = load_labelled_tiles(items, "folder")
    return {"pool": pool, "test": test, "synthetic": synth}


def prepare_study(
    out_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    toy_config: str = "hard",
    toy_seed: int = 0,
    synthetic: Mapping[str, str | os.PathLike] | None = None,
    generators: Sequence[str] | None = None,
    n_synthetic: int = 64,
    synthetic_tiles: tuple[int, int] = (4, 8),
    bundles_dir: str | os.PathLike | None = None,
    num_inference_steps: int | None = None,
    solver: str | None = None,
    guidance_scale: float = 1.0,
    extractor: str = "carcinonet_toy",
    weights: str | os.PathLike | None = None,
    pixel: bool = False,
    pixel_test_tiles: int = 400,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """What a study needs, from a SICAPv2-layout root (or the toy benchmark) and synthetic slides (folders, or
    generators that draw them); each step is resumable and rank-sharded.

    The real training pool is the ``Test/Train`` sheet, the test set ``Test/Test``.

    Args:
        out_dir: the study folder (``toy/``, ``synthetic/<generator>/``, ``features/`` go there).
        data: a SICAPv2-layout root; None draws the toy set ``toy_config`` (``TOY_CONFIGS``) with ``toy_seed``.
        synthetic: name -> a synthetic slide folder (``generate-slides`` output) to use as it is.
        generators: generator specs (:func:`parse_generators`: a registered name, ``"default"`` for the default
            generator at run time, or ``NAME:SOLVER:STEPS``) that draw ``n_synthetic`` slides each, all from the
            same plan (masks and noise seeds); an arm named twice draws once. None: ``sd``, ``gd`` and ``default``,
            unless ``synthetic`` is given.
        n_synthetic: synthetic slides per generator (every primary grade alike).
        synthetic_tiles: inclusive range of tiles per synthetic slide.
        bundles_dir: folder of the bundles' weights; None: the source checkout's.
        num_inference_steps, solver: sampling of the generators named without knobs (None: each registry
            entry's own).
        guidance_scale: classifier-free guidance weight of every generator.
        extractor, weights: the tile feature extractor (:func:`monai_disc.networks.build_extractor`); the toy
            CarcinoNet encoder reads the carcinonet bundle's weights when ``weights`` is None.
        pixel: also load the tiles of a pixel-level study.
        pixel_test_tiles: real test tiles of the pixel level.
        overwrite: draw synthetic slides again where they were drawn with other settings (else an error), and
            start feature caches of other settings over.
        rank, world_size: this process's share.
        progress: progress bars.

    Returns:
        ``pool``, ``test`` (feature folders), ``synthetic`` (name -> feature folder), ``pixel`` (tiles for
        :class:`PixelData`, or None) and ``settings`` (where the data came from, for the study's record).
    """
    from PIL import Image

    from monai_disc.bundles import CARCINONET_WEIGHTS, bundle_file
    from monai_disc.data.synthetic import load_synthetic_bags
    from monai_disc.data.tilesets import load_sicapv2_bags
    from monai_disc.data.toy import TOY_CONFIGS, is_complete, make_toy_sicapv2
    from monai_disc.distributed import resolve_rank, wait_for_file
    from monai_disc.inferers import DEFAULT_GENERATOR
    from monai_disc.networks import build_extractor

    rank, world_size = resolve_rank(rank, world_size)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {}
    if data is None:
        if toy_config not in TOY_CONFIGS:
            raise ValueError(f"unknown toy config {toy_config!r}; choose one of {sorted(TOY_CONFIGS)}")
        kwargs = TOY_CONFIGS[toy_config].build_kwargs()
        root = out / "toy"
        if rank == 0:
            make_toy_sicapv2(root, seed=toy_seed, num_workers=1, **kwargs)
        wait_for_file(root / ".toy_complete.json", "the toy set")
        if not is_complete(root, seed=toy_seed, **kwargs):
            raise ValueError(
                f"{root} holds a toy set of other settings than toy config {toy_config!r}, seed {toy_seed}"
            )
        settings["data"] = f"toy:{toy_config}:seed={toy_seed}"
    else:
        root = Path(data).expanduser()
        settings["data"] = str(root.resolve())
    pool_bags, test_bags = load_sicapv2_bags(root, "Test", "Train"), load_sicapv2_bags(root, "Test", "Test")
    with Image.open(pool_bags[0]["tiles"][0]) as first:
        tile_size = int(first.size[1])

    folders = {name: Path(path).expanduser() for name, path in (synthetic or {}).items()}
    if generators is None and not folders:
        generators = ["sd", "gd", "default"]
    sampling = parse_generators(generators or [], solver, num_inference_steps, guidance_scale)
    for name, knobs in sampling.items():
        if name in folders:
            raise ValueError(f"generator {name!r} is given both as a folder and to draw")
        folders[name] = _draw_synthetic(root, out, name, n_synthetic, tuple(synthetic_tiles), tile_size, knobs,
                                        bundles_dir, rank, world_size, progress, overwrite)  # fmt: skip
    settings.update(
        {
            "default_generator": DEFAULT_GENERATOR,
            "drawn": list(sampling),
            "synthetic_folders": {k: str(v) for k, v in folders.items()},
            "n_synthetic": int(n_synthetic),
            "synthetic_tiles": list(synthetic_tiles),
            "sampling": sampling,
            "extractor": extractor,
            "weights": None if weights is None else str(weights),
        }
    )
    weights_path = weights or (bundle_file(CARCINONET_WEIGHTS, bundles_dir) if extractor == "carcinonet_toy" else None)
    encoder = build_extractor(extractor, weights=weights_path)
    features = out / "features"
    result: dict[str, Any] = {
        "pool": _features(pool_bags, encoder, features / "pool", rank, world_size, progress, overwrite),
        "test": _features(test_bags, encoder, features / "test", rank, world_size, progress, overwrite),
        "synthetic": {
            name: _features(
                load_synthetic_bags(folder),
                encoder,
                features / f"synthetic_{name}",
                rank,
                world_size,
                progress,
                overwrite,
            )
            for name, folder in folders.items()
        },
        "pixel": _pixel_tiles(root, folders, pixel_test_tiles) if pixel else None,
        "settings": settings,
    }
    return result
