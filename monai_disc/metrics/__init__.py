"""Metrics: pixel grading scores, mask fidelity of generated tiles, slide-level AUROC, paired bootstrap intervals."""

from __future__ import annotations

from .bootstrap import VERDICTS, auroc_columns, bootstrap_arms, iou_columns, paired_seed_interval, verdict
from .fidelity import MaskFidelity
from .pixel import (
    LAPC_GROUPS,
    PixelGradingMetric,
    grading_scores,
    group_confusion_matrix,
    pixel_confusion_matrix,
)
from .slide import slide_auroc

__all__ = [
    "LAPC_GROUPS",
    "VERDICTS",
    "auroc_columns",
    "bootstrap_arms",
    "iou_columns",
    "paired_seed_interval",
    "verdict",
    "MaskFidelity",
    "PixelGradingMetric",
    "grading_scores",
    "group_confusion_matrix",
    "pixel_confusion_matrix",
    "slide_auroc",
]
