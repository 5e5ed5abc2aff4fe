"""Paired bootstrap intervals of study arms: AUROC and IoU columns, interval maths on known cases, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from monai_disc.metrics import slide_auroc
from monai_disc.metrics.bootstrap import (
    auroc_columns,
    bootstrap_arms,
    iou_columns,
    paired_seed_interval,
    percentile_interval,
    pixel_statistic,
    slide_statistic,
    verdict,
)


def test_auroc_columns_match_monai_with_ties_and_give_nan_for_a_one_sided_class():
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 4)) < 0.4).astype(float)
    targets[:, 3] = 0.0  # no positive: undefined
    scores = np.round(rng.normal(size=(60, 4)) + targets, 1)  # rounding makes ties
    ours = auroc_columns(scores, targets)
    reference = slide_auroc(scores, targets)["auroc"]
    np.testing.assert_allclose(ours[:3], reference[:3], rtol=0, atol=1e-12)
    assert math.isnan(ours[3]) and math.isnan(reference[3])
    stacked = auroc_columns(np.stack([scores, -scores]), targets)  # a stack of predictions: one AUROC each
    np.testing.assert_allclose(stacked[1, :3], 1.0 - ours[:3], atol=1e-12)


def test_interval_of_a_mean_matches_the_normal_theory_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=400)
    result = bootstrap_arms(lambda idx: x[idx].mean().reshape(1, 1, 1), 400, 1, n_boot=2000, seed=5)
    half = 1.96 * x.std(ddof=1) / math.sqrt(400)  # 0.196
    assert result["point"][0, 0] == pytest.approx(x.mean())
    assert result["low"][0, 0] == pytest.approx(x.mean() - half, abs=0.03)
    assert result["high"][0, 0] == pytest.approx(x.mean() + half, abs=0.03)


def test_pairing_cancels_what_the_arms_share():
    """Arm 1 = arm 0 + 0.05 per item: each arm's interval is wide, their difference's interval is exactly 0.05."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 200))  # 3 seeds x 200 items

    def per_seed(idx: np.ndarray) -> np.ndarray:
        a = base[:, idx].mean(axis=1)
        return np.stack([a, a + 0.05])[:, :, None]

    result = bootstrap_arms(per_seed, 200, 3, n_boot=300, seed=0)
    assert result["high"][0, 0] - result["low"][0, 0] > 0.2
    assert result["delta_low"][1, 0] == pytest.approx(0.05) and result["delta_high"][1, 0] == pytest.approx(0.05)
    assert result["p_value"][1, 0] == 0.0 and result["p_value"][0, 0] == 1.0  # the reference against itself
    assert verdict(result["delta_low"][1, 0], result["delta_high"][1, 0], margin=0.01) == "helps"


def test_slide_statistic_adds_the_macro_mean_of_the_defined_classes():
    targets = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]], dtype=float)
    scores = np.zeros((1, 2, 4, 4))
    scores[0, 0] = targets  # perfect
    scores[0, 1] = targets[::-1]  # inverted
    values = slide_statistic(scores, targets)(np.arange(4))
    np.testing.assert_allclose(values[0, 0, :2], [1.0, 1.0])
    np.testing.assert_allclose(values[0, 1, :2], [0.0, 0.0])
    assert math.isnan(values[0, 0, 2]) and math.isnan(values[0, 0, 3])  # GG4, GG5 never positive
    np.testing.assert_allclose(values[0, :, 4], [1.0, 0.0])  # macro over NC and GG3 only


def test_iou_of_known_confusions_and_tile_resamples_sum_their_matrices():
    cm = np.array([[8, 2, 0, 0], [2, 6, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_allclose(iou_columns(cm)[:2], [8 / 12, 6 / 10])
    assert iou_columns(cm)[2] == 0.0  # predicted once, never true: 0, not undefined
    tiles = np.stack([cm, 2 * cm])[None, None]  # 1 arm, 1 seed, 2 tiles
    statistic = pixel_statistic(tiles)
    np.testing.assert_allclose(statistic(np.array([0, 1]))[0, 0, :4], iou_columns(3 * cm), equal_nan=True)
    np.testing.assert_allclose(statistic(np.array([1, 1]))[0, 0, :4], iou_columns(4 * cm), equal_nan=True)
    mean = np.nanmean(iou_columns(3 * cm))
    assert statistic(np.array([0, 1]))[0, 0, 4] == pytest.approx(mean)


def test_seed_interval_is_the_paired_t_interval():
    per_seed = np.zeros((2, 3, 1))
    per_seed[1, :, 0] = [1.0, 2.0, 3.0]  # differences 1, 2, 3: mean 2, sd 1
    out = paired_seed_interval(per_seed)
    half = student_t.ppf(0.975, 2) / math.sqrt(3)
    assert out["mean"][1, 0] == 2.0
    assert out["low"][1, 0] == pytest.approx(2.0 - half) and out["high"][1, 0] == pytest.approx(2.0 + half)
    assert out["wins"][1, 0] == 3 and out["n"][1, 0] == 3


def test_percentile_interval_skips_nan_resamples_but_not_a_mostly_nan_column():
    samples = np.column_stack([np.r_[np.arange(100.0), [np.nan] * 10], [np.nan] * 60 + [1.0] * 50])
    low, high = percentile_interval(samples, 0.9)
    assert low[0] == pytest.approx(4.95) and high[0] == pytest.approx(94.05)
    assert math.isnan(low[1]) and math.isnan(high[1])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.002, 0.03, "helps"), (-0.03, -0.001, "hurts"), (-0.008, 0.009, "does not help"),
     (-0.02, 0.05, "cannot be told at this power"), (math.nan, 0.1, "cannot be told at this power")],
)  # fmt: skip
def test_verdicts(low, high, expected):
    assert verdict(low, high, margin=0.01) == expected
