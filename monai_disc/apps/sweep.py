"""The lambda sweep: slide AUROC of TransMIL against the real/synthetic balance, per generator (paper, Figure 6).

For each generator's synthetic bags and each lambda, TransMIL is trained on real + synthetic feature bags
(:func:`monai_disc.engines.mil.train_transmil`) with several seeds and scored on the real test bags. ``lambda = 0``
never reads synthetic bags, so it is one shared baseline (generator ``"baseline"``), trained once per seed and
drawn at lambda 0 of every generator's curve.

Outputs in ``out_dir``::

    sweep.csv     one row per (generator, lam, seed, test): macro and GG5 AUROC, per-class AUROC, training summary
    sweep.md      mean +- std over seeds of the macro and the GG5 AUROC, per test set, lambda x generator
    sweep.png     AUROC against lambda per generator with the spread over seeds (macro and GG5 panels)
    runs/<generator>/lam=<lam>/seed=<seed>/   each training's run folder, and its rows in metrics.json

Resumable at two levels: a finished run's rows (in ``sweep.csv`` or its ``metrics.json``) are never redone, and a
killed training resumes at its last epoch. Under torchrun, rank ``r`` of ``W`` takes runs r, r + W, ... of the
fixed run list; every rank merges all finished runs into ``sweep.csv``, and the one that sees every row there
writes the table and the plot (no collective).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from monai_disc.io import atomic_write_text
from monai_disc.labels import LABEL_NAMES
from monai_disc.visualize import save_figure

__all__ = [
    "BASELINE",
    "DEFAULT_LAMBDAS",
    "SWEEP_COLUMNS",
    "format_sweep",
    "lambda_sweep",
    "plot_sweep",
    "summarize_sweep",
]

BASELINE = "baseline"
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9)
SWEEP_COLUMNS: tuple[str, ...] = (
    "generator",
    "lam",
    "seed",
    "test",
    "macro_auroc",
    "gg5_auroc",
    *(f"auroc_{n}" for n in LABEL_NAMES),
    "epochs",
    "best_epoch",
    "best_val_macro_auroc",
    "n_test_slides",
)
_KEY = ("generator", "lam", "seed", "test")
_CSV, _MD, _PNG, _RUNS, _METRICS = "sweep.csv", "sweep.md", "sweep.png", "runs", "metrics.json"


def _lam_key(lam: float) -> float:
    return round(float(lam), 9)


def _row_key(row: Mapping[str, Any]) -> tuple[str, float, int, str]:
    return (str(row["generator"]), _lam_key(row["lam"]), int(row["seed"]), str(row["test"]))


def _check_name(name: str, what: str) -> str:
    if not name or name != name.strip() or name.startswith(".") or any(c in name for c in '/\\:*?"<>|'):
        raise ValueError(f"{what} {name!r} is not a plain folder name (no separators, no leading dot)")
    return name


def _run_dir(out: Path, generator: str, lam: float, seed: int) -> Path:
    return out / _RUNS / generator / f"lam={_lam_key(lam):g}" / f"seed={seed}"


def _read_rows(out: Path) -> dict[tuple, dict]:
    """Every finished row: those in ``sweep.csv`` and those in the runs' ``metrics.json`` (the latter win)."""
    rows: dict[tuple, dict] = {}
    path = out / _CSV
    if path.is_file():
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except Exception as err:
            raise ValueError(f"cannot read {path}: {err}") from err
        missing = [c for c in _KEY if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; found {list(frame.columns)}")
        for row in frame.to_dict("records"):
            rows[_row_key(row)] = row
    for metrics in sorted((out / _RUNS).glob(f"*/*/*/{_METRICS}")):
        try:
            for row in json.loads(metrics.read_text()):
                rows[_row_key(row)] = row
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{metrics}: not a list of sweep rows ({err})") from err
    return rows


def _write_csv(out: Path, rows: Mapping[tuple, Mapping[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([dict(r) for _, r in sorted(rows.items())])
    if frame.empty:
        frame = pd.DataFrame(columns=list(SWEEP_COLUMNS))
    frame = frame[
        [c for c in SWEEP_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in SWEEP_COLUMNS]
    ]
    atomic_write_text(out / _CSV, frame.to_csv(index=False))
    return frame


def summarize_sweep(
    rows: pd.DataFrame, generators: Sequence[str] | None = None, tests: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean and std over seeds of the macro and GG5 AUROC, per test set, generator and lambda.

    The baseline rows (lambda 0) are repeated under every generator, so each generator's curve starts at them.

    Args:
        rows: the rows of ``sweep.csv``.
        generators: generators to list, in this order (default: those in ``rows``, else the baseline alone).
        tests: test sets in this order (default: sorted).

    Returns:
        Columns test, generator, lam, n, macro_mean, macro_std, gg5_mean, gg5_std (std over seeds, ddof 1; NaN for
        one seed).
    """
    if rows.empty:
        return pd.DataFrame(columns=["test", "generator", "lam", "n", "macro_mean", "macro_std", "gg5_mean", "gg5_std"])
    names = list(generators) if generators else sorted(set(rows["generator"]) - {BASELINE}) or [BASELINE]
    parts = []
    base = rows[rows["generator"] == BASELINE]
    for name in names:
        own = rows[rows["generator"] == name]
        if name != BASELINE:
            own = pd.concat([base.assign(generator=name), own[own["lam"].map(_lam_key) != 0.0]])
        parts.append(own)
    data = pd.concat(parts)
    data = data.assign(lam=data["lam"].map(_lam_key))
    table = (
        data.groupby(["test", "generator", "lam"], sort=False)
        .agg(
            n=("seed", "count"),
            macro_mean=("macro_auroc", "mean"),
            macro_std=("macro_auroc", "std"),
            gg5_mean=("gg5_auroc", "mean"),
            gg5_std=("gg5_auroc", "std"),
        )
        .reset_index()
    )
    order = {
        "generator": {n: i for i, n in enumerate(names)},
        "test": {n: i for i, n in enumerate(tests or sorted(set(table["test"])))},
    }
    table = table.sort_values(
        ["test", "generator", "lam"], key=lambda c: c.map(order[c.name]) if c.name in order else c
    )
    return table.reset_index(drop=True)


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def format_sweep(summary: pd.DataFrame) -> str:
    """The summary as Markdown: per test set, a lambda x generator table of the macro AUROC, then of GG5."""
    lines = ["# Lambda sweep: slide-level AUROC of TransMIL (x 100, mean ± std over seeds)", ""]
    for test, part in summary.groupby("test", sort=False):
        generators = list(dict.fromkeys(part["generator"]))
        lams = sorted(set(part["lam"]))
        for metric, title in (("macro", "macro AUROC"), ("gg5", "GG5 AUROC")):
            lines += [f"## {test}: {title}", "", "| lambda | " + " | ".join(generators) + " |"]
            lines.append("|---|" + "---|" * len(generators))
            for lam in lams:
                cells = []
                for g in generators:
                    hit = part[(part["generator"] == g) & (part["lam"] == lam)]
                    cells.append(
                        _cell(float(hit[f"{metric}_mean"].iloc[0]), float(hit[f"{metric}_std"].iloc[0]))
                        if len(hit)
                        else ""
                    )
                lines.append(f"| {lam:g} | " + " | ".join(cells) + " |")
            lines.append("")
        seeds = sorted(set(part["n"]))
        lines += [f"Seeds per cell: {', '.join(str(int(s)) for s in seeds)}.", ""]
    return "\n".join(lines)


def plot_sweep(summary: pd.DataFrame, path: str | os.PathLike) -> Path:
    """AUROC against lambda per generator, mean line and a band of ± one std over seeds (clipped to the AUROC's
    range); one row per test set.

    Args:
        summary: from :func:`summarize_sweep`.
        path: the PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = list(dict.fromkeys(summary["test"]))
    fig, axes = plt.subplots(len(tests), 2, figsize=(10, 3.6 * len(tests)), squeeze=False)
    for row, test in enumerate(tests):
        part = summary[summary["test"] == test]
        for col, (metric, title) in enumerate((("macro", "macro AUROC"), ("gg5", "GG5 AUROC"))):
            ax = axes[row][col]
            for generator, curve in part.groupby("generator", sort=False):
                curve = curve.sort_values("lam")
                mean, std = curve[f"{metric}_mean"] * 100, curve[f"{metric}_std"].fillna(0.0) * 100
                (line,) = ax.plot(curve["lam"], mean, marker="o", label=str(generator))
                low, high = (mean - std).clip(lower=0.0), (mean + std).clip(upper=100.0)
                ax.fill_between(curve["lam"], low, high, color=line.get_color(), alpha=0.15)
            ax.set_ylim(top=100.0)  # an AUROC never passes 100: the band is clipped there, and so is the axis
            ax.set_xlabel("lambda (weight of the synthetic slides' loss)")
            ax.set_ylabel(f"{title} (x 100)")
            ax.set_title(f"{test}: {title}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    return save_figure(fig, path, dpi=120)


def lambda_sweep(
    real_train: Any,
    real_val: Any,
    real_test: Any,
    synthetic: Mapping[str, Any],
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | os.PathLike = "lambda_sweep",
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> pd.DataFrame:
    """Train and score TransMIL for every generator x lambda x seed; write the table and the plot.

    Args:
        real_train, real_val: real feature bags (anything :func:`monai_disc.engines.mil.as_feature_bags` takes: a
            feature cache folder, a list of bags, a ``FeatureBagDataset``). Opened only if a run is left to do.
        real_test: the test bags, or a dict test name -> bags (e.g. ``{"sicapv2": ..., "panda": ...}``); a single
            set is named ``"test"``.
        synthetic: generator name -> its synthetic feature bags.
        lambdas: balance weights in [0, 1]; 0 is the shared baseline.
        seeds: training seeds per cell.
        out_dir: output folder (layout in the module docstring).
        rank, world_size: this process's share of the runs; None reads torch.distributed or torchrun's variables.
        progress: a progress bar over this rank's runs.
        train_kwargs: passed to :func:`monai_disc.engines.mil.train_transmil` (``max_epochs``, ``patience``,
            ``network``, ``network_kwargs``, ``device``, ...). Without ``device``, each rank trains on GPU
            ``LOCAL_RANK`` when CUDA is available (so torchrun spreads the runs over the GPUs), else on the CPU.

    Returns:
        The summary (:func:`summarize_sweep`) of the rows finished so far.

    Raises:
        ValueError: a lambda outside [0, 1], no lambda or seed, a generator named ``"baseline"`` or not a plain
            name, or an unreadable ``sweep.csv`` / ``metrics.json`` (named).
    """
    from tqdm.auto import tqdm

    from monai_disc.distributed import resolve_rank
    from monai_disc.engines.mil import as_feature_bags, evaluate_transmil, train_transmil

    lams = list(dict.fromkeys(_lam_key(lam) for lam in lambdas))
    if not lams or not seeds:
        raise ValueError(f"need at least one lambda and one seed, got {list(lambdas)} and {list(seeds)}")
    bad = [lam for lam in lams if not 0.0 <= lam <= 1.0]
    if bad:
        raise ValueError(f"lambdas must lie in [0, 1], got {bad}")
    for name in synthetic:
        if name == BASELINE:
            raise ValueError(f"generator name {BASELINE!r} is reserved for the lambda = 0 runs")
        _check_name(name, "generator name")
    tests = dict(real_test) if isinstance(real_test, Mapping) else {"test": real_test}
    for name in tests:
        _check_name(name, "test set name")
    rank, world_size = resolve_rank(rank, world_size)
    if train_kwargs.get("device") is None and torch.cuda.is_available():  # one GPU per rank under torchrun
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        train_kwargs["device"] = torch.device("cuda", local)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    runs: list[tuple[str, float, int]] = []
    for seed in seeds:
        if 0.0 in lams:
            runs.append((BASELINE, 0.0, int(seed)))
        runs += [(g, lam, int(seed)) for g in synthetic for lam in lams if lam != 0.0]

    def missing(run: tuple[str, float, int], done: Mapping[tuple, Any]) -> bool:
        return any((run[0], run[1], run[2], t) not in done for t in tests)

    done = _read_rows(out)
    mine = [run for run in runs[rank::world_size] if missing(run, done)]
    opened: dict[str, Any] = {}

    def bags(key: str, value: Any) -> Any:
        if key not in opened:
            opened[key] = as_feature_bags(value)
        return opened[key]

    for generator, lam, seed in tqdm(mine, desc=f"lambda sweep rank {rank}/{world_size}", disable=not progress):
        run_dir = _run_dir(out, generator, lam, seed)
        synth = bags(f"synthetic:{generator}", synthetic[generator]) if lam > 0.0 else None
        model, _ = train_transmil(
            bags("real_train", real_train),
            synth,
            bags("real_val", real_val),
            lam=lam,
            seed=seed,
            out_dir=run_dir,
            **train_kwargs,
        )
        result = json.loads((run_dir / "result.json").read_text())
        rows = []
        for test, test_bags in tests.items():
            scores = evaluate_transmil(model, bags(f"test:{test}", test_bags))
            rows.append(
                {
                    "generator": generator,
                    "lam": lam,
                    "seed": seed,
                    "test": test,
                    "macro_auroc": scores["macro_auroc"],
                    "gg5_auroc": scores["gg5_auroc"],
                    **{f"auroc_{n}": scores[f"auroc_{n}"] for n in LABEL_NAMES},
                    "epochs": result["epochs"],
                    "best_epoch": result["best_epoch"],
                    "best_val_macro_auroc": result["best_val_macro_auroc"],
                    "n_test_slides": scores["n_slides"],
                }
            )
        atomic_write_text(run_dir / _METRICS, json.dumps(rows, indent=1) + "\n")
        _write_csv(out, _read_rows(out))

    done = _read_rows(out)
    frame = _write_csv(out, done)  # also merges rows other ranks finished
    wanted = {(g, lam, s, t) for g, lam, s in runs for t in tests}
    frame = frame[[_row_key(r) in wanted for r in frame.to_dict("records")]] if len(frame) else frame
    summary = summarize_sweep(frame, list(synthetic) or None, list(tests))
    if all(not missing(run, done) for run in runs):
        atomic_write_text(out / _MD, format_sweep(summary))
        plot_sweep(summary, out / _PNG)
    return summary
