"""Making masks: slide-level Gleason masks (read from files or planned) for whole synthetic slides."""

from __future__ import annotations

from .slide_masks import (
    BACKGROUND,
    RADBOUD_TO_SLIDE_LABEL,
    biopsy_cores,
    labels_to_radboud,
    load_slide_mask,
    plan_slide_mask,
)

__all__ = [
    "BACKGROUND",
    "RADBOUD_TO_SLIDE_LABEL",
    "biopsy_cores",
    "labels_to_radboud",
    "load_slide_mask",
    "plan_slide_mask",
]
