"""Making generation masks: the m_freq shape bank, random masks from it, and synthetic tile and slide plans."""

from __future__ import annotations

from .bank import (
    DEFAULT_MIN_FRACTION,
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
    save_plans,
    secondary_candidates,
    tile_noise_seed,
)

__all__ = [
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
    "random_masks",
    "resize_nearest",
    "save_plans",
    "secondary_candidates",
    "tile_noise_seed",
]
