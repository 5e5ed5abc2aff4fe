"""Metrics: pixel grading scores, mask fidelity of generated tiles, slide-level AUROC."""

from __future__ import annotations

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
    "MaskFidelity",
    "PixelGradingMetric",
    "grading_scores",
    "group_confusion_matrix",
    "pixel_confusion_matrix",
    "slide_auroc",
]
