"""Pixel grading scores on hand-made label maps whose numbers are known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from monai_disc.metrics import (
    LAPC_GROUPS,
    PixelGradingMetric,
    grading_scores,
    group_confusion_matrix,
    pixel_confusion_matrix,
)

# 2 x 5 pixels, labels 0..3:
#   target  0 0 1 1 2      pred  0 1 1 2 2
#           2 3 3 0 0            3 3 0 0 1
TARGET = torch.tensor([[[0, 0, 1, 1, 2], [2, 3, 3, 0, 0]]])
PRED = torch.tensor([[[0, 1, 1, 2, 2], [3, 3, 0, 0, 1]]])
# confusion matrix, rows true, columns predicted:
#       p0 p1 p2 p3
# t0  [  2, 2, 0, 0]   (0->0, 0->1, 0->0, 0->1)
# t1  [  0, 1, 1, 0]
# t2  [  0, 0, 1, 1]
# t3  [  1, 0, 0, 1]
EXPECTED_CM = [[2, 2, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]]


def test_confusion_matrix_counts_pixels():
    assert pixel_confusion_matrix(PRED, TARGET, 4).tolist() == EXPECTED_CM


def test_scores_from_hand_counted_matrix():
    s = grading_scores(torch.tensor(EXPECTED_CM))
    assert s["pixel_accuracy"] == pytest.approx(5 / 10)
    assert s["precision"] == pytest.approx([2 / 3, 1 / 3, 1 / 2, 1 / 2])
    assert s["recall"] == pytest.approx([2 / 4, 1 / 2, 1 / 2, 1 / 2])
    # IoU = tp / (pred + true - tp)
    assert s["iou"] == pytest.approx([2 / 5, 1 / 4, 1 / 3, 1 / 3])
    assert s["miou"] == pytest.approx((2 / 5 + 1 / 4 + 1 / 3 + 1 / 3) / 4)
    # positive predictions: columns 1..3 hold 3 + 2 + 2 = 7 pixels, 3 of them right
    assert s["positive_precision"] == pytest.approx(3 / 7)
    assert s["mean_positive_precision"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert s["support"] == [4, 2, 2, 2]


def test_logits_and_channel_masks_give_the_same_matrix():
    logits = torch.nn.functional.one_hot(PRED, 4).permute(0, 3, 1, 2).float() * 5.0
    assert pixel_confusion_matrix(logits, TARGET.unsqueeze(1), 4).tolist() == EXPECTED_CM


def test_absent_classes_are_nan_and_left_out_of_miou():
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    s = grading_scores(pixel_confusion_matrix(pred, target, 4))
    assert s["iou"][:2] == pytest.approx([1 / 2, 2 / 3])
    assert math.isnan(s["iou"][2]) and math.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert math.isnan(s["precision"][3]) and math.isnan(s["recall"][2])


def test_lapc_grouping_merges_gg4_and_gg5():
    grouped = group_confusion_matrix(torch.tensor(EXPECTED_CM), LAPC_GROUPS)
    assert grouped.tolist() == [[2, 2, 0], [0, 1, 1], [1, 0, 3]]
    metric = PixelGradingMetric(groups=LAPC_GROUPS)
    metric(PRED, TARGET)
    s = metric.aggregate()
    assert s["iou"] == pytest.approx([2 / 5, 1 / 4, 3 / 5])
    # GG4 predicted as GG5 now counts as right: columns 1..2 hold 3 + 4 pixels, 1 + 3 right
    assert s["positive_precision"] == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="split the labels"):
        PixelGradingMetric(groups=((0,), (1, 2)))


def test_metric_accumulates_over_batches_and_list_inputs():
    metric = PixelGradingMetric(num_classes=4)
    metric(PRED, TARGET)
    # a MONAI evaluator hands decollated channel-first items
    metric([PRED[0].unsqueeze(0)], [TARGET[0].unsqueeze(0)])
    assert metric.confusion_matrix().tolist() == [[2 * v for v in row] for row in EXPECTED_CM]
    assert metric.aggregate()["pixel_accuracy"] == pytest.approx(0.5)
    metric.reset()
    metric(TARGET, TARGET)
    assert metric.aggregate()["miou"] == 1.0


def test_key_option_returns_one_number_for_key_metrics():
    metric = PixelGradingMetric(key="positive_precision")
    metric(PRED, TARGET)
    assert metric.aggregate() == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match="key must be one of"):
        PixelGradingMetric(key="dice")


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        pixel_confusion_matrix(torch.tensor([[[4]]]), torch.tensor([[[0]]]), 4)
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_confusion_matrix(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), 4)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pixel_confusion_matrix(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2), 4)
