"""Making masks: the m_freq shape bank, random masks from it, tile and slide plans, and slide-level masks."""

from __future__ import annotations

from .bank import (
    DEFAULT_MIN_FRACTION,
    MIN_MASK_SIZE,
    RandomState,
    ShapeBank,
    drawable_labels,
    drop_specks,
    random_masks,
    resize_nearest,
)
from .plans import (
    DEFAULT_CONCENTRATION,
    SECONDARY_RULES,
    SlidePlan,
    TilePlan,
    allowed_labels,
    balance_slides,
    count_primary_grades,
    load_plans,
    plan_slide,
    plan_synthetic_slides,
    plans_in_turn,
    save_plans,
    secondary_candidates,
    tile_noise_seed,
)
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
    "DEFAULT_CONCENTRATION",
    "DEFAULT_MIN_FRACTION",
    "MIN_MASK_SIZE",
    "SECONDARY_RULES",
    "RandomState",
    "ShapeBank",
    "SlidePlan",
    "TilePlan",
    "allowed_labels",
    "balance_slides",
    "count_primary_grades",
    "drawable_labels",
    "drop_specks",
    "load_plans",
    "plan_slide",
    "plan_synthetic_slides",
    "plans_in_turn",
    "random_masks",
    "resize_nearest",
    "save_plans",
    "secondary_candidates",
    "tile_noise_seed",
]
