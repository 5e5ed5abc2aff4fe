"""Confidence intervals of paired study arms: a bootstrap over test items (slides or tiles) and training seeds.

Every arm of a study is scored on the same test items with the same seeds, so one resample (the same items, the
same seeds) is applied to every arm at once: the interval of an arm's score and the interval of its difference to
the reference arm (real only) both come from the same draws, and the difference keeps the pairing (what the items
and seeds share cancels). Percentile intervals; a two-sided bootstrap p-value of the difference.

Scores:

* slide level: AUROC per class (Mann-Whitney with tied scores counted half, equal to ``sklearn`` and MONAI's
  ``compute_roc_auc``) and their macro mean over the classes a resample can score;
* pixel level: IoU per class from per-tile confusion matrices summed over the resampled tiles, and mIoU.

A score of an arm is its mean over seeds; a resample draws the seeds with replacement as well (``resample_seeds``),
so the interval covers the training noise as well as the test set's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from scipy.stats import t as student_t

__all__ = [
    "VERDICTS",
    "as_plain",
    "auroc_columns",
    "bootstrap_arms",
    "iou_columns",
    "paired_seed_interval",
    "percentile_interval",
    "pixel_statistic",
    "slide_statistic",
    "verdict",
]

#: what a paired comparison can conclude (see :func:`verdict`)
VERDICTS: tuple[str, ...] = ("helps", "hurts", "does not help", "cannot be told at this power")


def auroc_columns(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AUROC of every class of (stacks of) multi-label predictions; NaN for a class without both outcomes.

    Args:
        scores: (..., N, K) scores (any monotone scale).
        targets: (N, K) or (..., N, K) binary labels.

    Returns:
        (..., K) AUROC per class, macro not included.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.broadcast_to(np.asarray(targets, dtype=np.float64), s.shape)
    ranks = rankdata(s, axis=-2)  # ties get their mean rank
    pos = y.sum(axis=-2)
    neg = y.shape[-2] - pos
    rank_sum = (ranks * y).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def iou_columns(confusion: np.ndarray) -> np.ndarray:
    """IoU per class from confusion matrices (..., K, K) (rows truth, columns prediction); NaN where a class is
    neither in the truth nor predicted."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(axis=-1) + cm.sum(axis=-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN slice is NaN, which is what it should say
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _with_mean(per_class: np.ndarray) -> np.ndarray:
    """(..., K) -> (..., K + 1): the classes, then their mean over the defined ones (macro)."""
    return np.concatenate([per_class, _nanmean(per_class, axis=-1)[..., None]], axis=-1)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis, ignoring NaN resamples (a resample without a class's positives).

    Returns:
        (low, high), each of ``samples.shape[1:]``; NaN where more than half the resamples are NaN.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x = np.asarray(samples, dtype=np.float64)
    alpha = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(x, [alpha, 100.0 - alpha], axis=0)
    unusable = np.isnan(x).mean(axis=0) > 0.5
    return np.where(unusable, np.nan, low), np.where(unusable, np.nan, high)


def bootstrap_arms(
    per_seed: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    n_seeds: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    reference: int = 0,
    resample_seeds: bool = True,
) -> dict[str, np.ndarray]:
    """Scores of paired arms with bootstrap intervals, and their differences to a reference arm.

    Args:
        per_seed: maps item indices (n_items,) (a resample, with repeats) to the scores of every arm and seed,
            (A, S, M), e.g. AUROC per class and macro (see :func:`slide_statistic`, :func:`pixel_statistic`).
        n_items: test items (slides, tiles) resampled.
        n_seeds: S, the training seeds.
        n_boot: resamples.
        seed: seed of the resampling.
        level: coverage of the intervals.
        reference: the arm the others are compared with (real only).
        resample_seeds: also draw the seeds with replacement in each resample.

    Returns:
        ``point`` (A, M) mean over seeds on all items; ``low``/``high`` its interval; ``delta`` (A, M) the point
        difference to the reference arm, ``delta_low``/``delta_high`` its interval, ``p_value`` a two-sided
        bootstrap p-value of the difference (2 x the smaller share of resamples on either side of 0, at most 1);
        ``per_seed`` (A, S, M) the scores of each seed on all items.
    """
    if n_items < 1 or n_seeds < 1 or n_boot < 1:
        raise ValueError(f"need items, seeds and resamples, got {n_items}, {n_seeds}, {n_boot}")
    full = np.asarray(per_seed(np.arange(n_items)), dtype=np.float64)
    if full.ndim != 3 or full.shape[1] != n_seeds:
        raise ValueError(f"per_seed must return (arms, {n_seeds} seeds, scores), got {full.shape}")
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, full.shape[0], full.shape[2]))
    for b in range(n_boot):
        items = rng.integers(0, n_items, n_items)
        seeds = rng.integers(0, n_seeds, n_seeds) if resample_seeds else np.arange(n_seeds)
        boot[b] = _nanmean(np.asarray(per_seed(items), dtype=np.float64)[:, seeds], axis=1)
    point = _nanmean(full, axis=1)
    low, high = percentile_interval(boot, level)
    deltas = boot - boot[:, reference : reference + 1]
    delta_low, delta_high = percentile_interval(deltas, level)
    valid = ~np.isnan(deltas)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.where(valid, deltas <= 0, False).sum(0) / valid.sum(0)
        above = np.where(valid, deltas >= 0, False).sum(0) / valid.sum(0)
    return {
        "point": point,
        "low": low,
        "high": high,
        "delta": point - point[reference : reference + 1],
        "delta_low": delta_low,
        "delta_high": delta_high,
        "p_value": np.minimum(1.0, 2.0 * np.minimum(below, above)),
        "per_seed": full,
    }


def slide_statistic(scores: np.ndarray, targets: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The ``per_seed`` function of slide AUROC for :func:`bootstrap_arms`.

    Args:
        scores: (A, S, N, K) test slide scores of every arm and seed.
        targets: (N, K) multi-hot slide labels.

    Returns:
        indices -> (A, S, K + 1): AUROC per class, then macro (mean over the classes the resample can score).
    """
    s, y = np.asarray(scores), np.asarray(targets)
    if s.ndim != 4 or s.shape[2:] != y.shape:
        raise ValueError(f"scores must be (arms, seeds, {y.shape[0]} slides, {y.shape[1]}), got {s.shape}")
    return lambda idx: _with_mean(auroc_columns(s[:, :, idx], y[idx]))


def pixel_statistic(confusion: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The ``per_seed`` function of pixel IoU for :func:`bootstrap_arms`.

    Args:
        confusion: (A, S, T, K, K) confusion matrix of each test tile, per arm and seed.

    Returns:
        indices -> (A, S, K + 1): IoU per class of the resampled tiles' summed matrix, then mIoU.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 5 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion must be (arms, seeds, tiles, K, K), got {cm.shape}")

    def statistic(idx: np.ndarray) -> np.ndarray:
        counts = np.bincount(idx, minlength=cm.shape[2]).astype(np.float64)
        return _with_mean(iou_columns(np.einsum("t,astkl->askl", counts, cm)))

    return statistic


def paired_seed_interval(per_seed: np.ndarray, reference: int = 0, level: float = 0.95) -> dict[str, np.ndarray]:
    """Per-seed differences to the reference arm on the full test set: mean, Student-t interval, wins.

    Args:
        per_seed: (A, S, M) scores of each arm and seed.

    Returns:
        ``mean`` (A, M), ``low``/``high`` (t interval over seeds; NaN for one seed), ``wins`` (A, M) seeds where
        the arm scores above the reference, ``n`` seeds with both scores defined.
    """
    x = np.asarray(per_seed, dtype=np.float64)
    d = x - x[reference : reference + 1]
    n = (~np.isnan(d)).sum(axis=1)
    mean = _nanmean(d, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nanstd(d, axis=1, ddof=1)
    half = np.array([student_t.ppf(0.5 + level / 2.0, k - 1) if k > 1 else math.nan for k in n.ravel()])
    half = half.reshape(n.shape) * sd / np.sqrt(np.maximum(n, 1))
    return {"mean": mean, "low": mean - half, "high": mean + half, "wins": (d > 0).sum(axis=1), "n": n}


def verdict(low: float, high: float, margin: float = 0.01) -> str:
    """What a difference's interval says: ``helps`` (above 0), ``hurts`` (below 0), ``does not help`` (inside
    +- ``margin``: no effect as large as the margin), else ``cannot be told at this power``."""
    if math.isnan(low) or math.isnan(high):
        return VERDICTS[3]
    if low > 0.0:
        return VERDICTS[0]
    if high < 0.0:
        return VERDICTS[1]
    if -margin <= low and high <= margin:
        return VERDICTS[2]
    return VERDICTS[3]


def as_plain(result: dict[str, np.ndarray], names: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows ``{"arm", "score", point, low, high, delta, ...}`` of a :func:`bootstrap_arms` result, NaN as None."""
    rows = []
    for a, arm in enumerate(names):
        for m, column in enumerate(columns):
            row: dict[str, Any] = {"arm": arm, "score": column}
            for key in ("point", "low", "high", "delta", "delta_low", "delta_high", "p_value"):
                value = float(result[key][a, m])
                row[key] = None if math.isnan(value) else value
            rows.append(row)
    return rows
