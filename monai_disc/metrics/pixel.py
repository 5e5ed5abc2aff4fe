"""Pixel-level grading scores from a confusion matrix accumulated over a data set.

Every pixel score of the paper and of Carcino-Net (per-class precision, recall and IoU, mIoU,
pixel accuracy, the precision of positive i.e. Gleason-graded predictions with NC omitted, and the
LAPC grouping GG3 vs GG4+GG5) is a function of one confusion matrix, so the metric accumulates
only that and computes the scores once at the end (exact for any number of batches or ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric

from monai_disc.transforms.functional import as_label_map

__all__ = [
    "LAPC_GROUPS",
    "PixelGradingMetric",
    "grading_scores",
    "group_confusion_matrix",
    "pixel_confusion_matrix",
]

# Low- vs advanced-grade cancer: NC stays NC, GG3 alone, GG4 and GG5 together.
LAPC_GROUPS: tuple[tuple[int, ...], ...] = ((0,), (1,), (2, 3))


def pixel_confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix (K, K) of pixel counts: rows are true labels, columns predicted labels.

    Args:
        pred: predicted labels (B, H, W) / (B, 1, H, W) or scores (B, K, H, W).
        target: true labels in the same forms.
        num_classes: K.

    Raises:
        ValueError: for bad shapes, mismatched sizes or out-of-range labels.
    """
    p = as_label_map(pred, num_classes, "pred")
    t = as_label_map(target, num_classes, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target label maps differ in shape: {tuple(p.shape)} vs {tuple(t.shape)}.")
    idx = (t.reshape(-1) * num_classes + p.reshape(-1).to(t.device)).cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def group_confusion_matrix(cm: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Merge labels into groups (e.g. :data:`LAPC_GROUPS`) by summing rows and columns.

    Raises:
        ValueError: when ``groups`` is not a partition of the matrix's labels.
    """
    k = cm.shape[0]
    flat = sorted(int(i) for g in groups for i in g)
    if flat != list(range(k)) or any(len(g) == 0 for g in groups):
        raise ValueError(f"groups must split the labels 0..{k - 1} into non-empty disjoint sets, got {groups!r}.")
    assign = torch.zeros(k, len(groups), dtype=cm.dtype)
    for j, g in enumerate(groups):
        for i in g:
            assign[int(i), j] = 1
    return assign.T @ cm @ assign


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def grading_scores(cm: torch.Tensor, negative_class: int | None = 0) -> dict[str, Any]:
    """Pixel scores of a confusion matrix (rows true, columns predicted).

    Undefined values (a class never predicted, never present) are NaN and skipped by the means.

    Args:
        cm: (K, K) pixel counts.
        negative_class: the NC label, omitted from the positive-prediction precision; None treats
            every class as positive.

    Returns:
        ``confusion_matrix`` (nested lists), per-class lists ``precision``, ``recall``, ``iou``,
        ``support`` (true pixels per class); ``miou`` (mean IoU over classes present in the target
        or the prediction), ``pixel_accuracy``, ``positive_precision`` (of all pixels predicted as a
        positive class, the fraction whose true label is that class) and
        ``mean_positive_precision`` (mean of the positive classes' precisions).
    """
    cm = cm.detach().cpu().long()
    diag = cm.diagonal()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    union = predicted + actual - diag
    precision = _ratio(diag, predicted)
    recall = _ratio(diag, actual)
    iou = _ratio(diag, union)
    positive = torch.ones(cm.shape[0], dtype=torch.bool)
    if negative_class is not None:
        positive[negative_class] = False
    pos_prec = _ratio(diag[positive].sum(), predicted[positive].sum())
    return {
        "confusion_matrix": cm.tolist(),
        "support": actual.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "iou": iou.tolist(),
        "miou": float(iou.nanmean()) if bool((union > 0).any()) else float("nan"),
        "pixel_accuracy": float(_ratio(diag.sum(), cm.sum())),
        "positive_precision": float(pos_prec),
        "mean_positive_precision": float(precision[positive].nanmean()) if bool(positive.any()) else float("nan"),
    }


class PixelGradingMetric(CumulativeIterationMetric):
    """Pixel grading scores over a data set, accumulated as a confusion matrix.

    Call it on each batch as ``metric(y_pred, y)`` (batch-first tensors or lists of channel-first
    ones, as MONAI evaluators give them): predictions as label maps or class scores (argmax),
    targets as label maps or one-hot. ``aggregate()`` returns :func:`grading_scores` of the summed
    matrix (buffers of all ranks in distributed runs).

    Args:
        num_classes: K (4 Gleason labels).
        groups: optional label grouping applied before scoring, e.g. :data:`LAPC_GROUPS`.
        key: when set, ``aggregate()`` returns only this entry (e.g. ``"miou"``) so the metric can
            be an evaluator's key metric.

    Raises:
        ValueError: for a bad grouping or an unknown ``key``.
    """

    def __init__(
        self, num_classes: int = 4, groups: Sequence[Sequence[int]] | None = None, key: str | None = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.groups = None if groups is None else tuple(tuple(int(i) for i in g) for g in groups)
        if self.groups is not None:  # validate now, not at the end of an evaluation
            group_confusion_matrix(torch.zeros(num_classes, num_classes, dtype=torch.long), self.groups)
        known = set(grading_scores(torch.zeros(2, 2, dtype=torch.long)))
        if key is not None and key not in known:
            raise ValueError(f"key must be one of {sorted(known)}, got {key!r}.")
        self.key = key

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("PixelGradingMetric needs targets y.")
        return pixel_confusion_matrix(y_pred, y, self.num_classes).unsqueeze(0)

    def confusion_matrix(self) -> torch.Tensor:
        """The accumulated (K, K) matrix (ungrouped), zeros before any update."""
        buffer = self.get_buffer()
        if buffer is None or (isinstance(buffer, torch.Tensor) and buffer.numel() == 0):
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        if isinstance(buffer, list):  # get_buffer returns a list only for multiple outputs
            buffer = buffer[0]
        return buffer.sum(dim=0).long().cpu()

    def aggregate(self) -> dict[str, Any] | Any:  # type: ignore[override]
        """Scores of the accumulated matrix (see :func:`grading_scores`), or the ``key`` entry."""
        cm = self.confusion_matrix()
        negative: int | None = 0
        if self.groups is not None:
            cm = group_confusion_matrix(cm, self.groups)
            negative = next((j for j, g in enumerate(self.groups) if 0 in g), None)
        scores = grading_scores(cm, negative_class=negative)
        return scores if self.key is None else scores[self.key]
