"""PANDA (Bulten et al. 2022) on disk -> MONAI data lists of slides, and its mask values -> Gleason labels.

Expected layout::

    root/
      train.csv                               image_id, data_provider, isup_grade, gleason_score
      train_images/<image_id>.tiff            slides
      train_label_masks/<image_id>_mask.tiff  optional pixel masks (labels in the first channel)

Slide labels come from `gleason_score` ("3+4" -> GG3 and GG4); the negatives, written `negative`
(radboud) or `0+0` (karolinska), are NC only. Mask values differ per provider: radboud grades every
pixel (0 background, 1 stroma, 2 benign, 3/4/5 Gleason 3/4/5); karolinska marks only benign (1) and
cancer (2), with no grade, so :func:`panda_mask_to_labels` refuses karolinska masks rather than guess.
No torch import: listing a data set stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from monai_disc.io import read_table
from monai_disc.labels import GLEASON_PATTERN_TO_LABEL, PANDA_RADBOUD_VALUE_TO_LABEL, multi_hot

__all__ = ["PANDA_COLUMNS", "PANDA_PROVIDERS", "load_panda", "panda_mask_to_labels", "parse_gleason_score"]

PANDA_COLUMNS: tuple[str, ...] = ("image_id", "data_provider", "isup_grade", "gleason_score")
PANDA_PROVIDERS: tuple[str, ...] = ("radboud", "karolinska")

_SCORE = re.compile(r"^\s*(\d)\s*\+\s*(\d)\s*$")
_MAX_LISTED = 5


def parse_gleason_score(score: Any) -> tuple[int, int] | None:
    """("3+4" -> (3, 4)); `negative` and "0+0" -> (0, 0); anything else (incl. "0+3", "2+3") -> None."""
    if not isinstance(score, str):
        return None
    text = score.strip().lower()
    if text == "negative":
        return (0, 0)
    match = _SCORE.match(text)
    if match is None:
        return None
    first, second = int(match.group(1)), int(match.group(2))
    if (first, second) == (0, 0):
        return (0, 0)
    if first in (3, 4, 5) and second in (3, 4, 5):
        return (first, second)
    return None


def load_panda(root: str | os.PathLike) -> list[dict]:
    """MONAI data list of the PANDA training slides listed in `train.csv`, in csv order.

    Args:
        root: PANDA directory (holding `train.csv`, `train_images/`, optionally `train_label_masks/`).

    Returns:
        Dicts with `image` (str path), `mask` (str path, or None when the slide has no mask), `slide_id`,
        `provider` (lower case), `isup_grade` (int), `gleason_score` (str as written) and `label`
        (float32 multi-hot [NC, GG3, GG4, GG5] of the two patterns of `gleason_score`).

    Raises:
        FileNotFoundError: missing root, csv, image directory or image file (the message names it).
        ValueError: missing columns, an unparseable `gleason_score` or `isup_grade` (names the csv row).
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"PANDA root directory not found: {root_path}")
    csv = root_path / "train.csv"
    frame = read_table(csv, PANDA_COLUMNS, "PANDA slide table")

    image_dir, mask_dir = root_path / "train_images", root_path / "train_label_masks"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"PANDA image directory not found: {image_dir}")
    images = set(os.listdir(image_dir))
    masks = set(os.listdir(mask_dir)) if mask_dir.is_dir() else set()

    items: list[dict] = []
    absent: list[str] = []
    for index, row in enumerate(frame.itertuples(index=False)):
        line = index + 2  # csv line; line 1 is the header
        slide_id = str(row.image_id).strip()
        if not slide_id:
            raise ValueError(f"{csv}: empty image_id on line {line}")
        patterns = parse_gleason_score(row.gleason_score)
        if patterns is None:
            raise ValueError(
                f"{csv}: cannot parse gleason_score {row.gleason_score!r} of {slide_id} on line {line}; "
                "expected 'A+B' with A, B in 3..5, '0+0' or 'negative'"
            )
        try:
            isup = int(str(row.isup_grade).strip())
        except ValueError:
            msg = f"{csv}: isup_grade {row.isup_grade!r} of {slide_id} on line {line} is not an integer"
            raise ValueError(msg) from None
        if f"{slide_id}.tiff" not in images:
            absent.append(str(image_dir / f"{slide_id}.tiff"))
            continue
        mask_name = f"{slide_id}_mask.tiff"
        items.append(
            {
                "image": str(image_dir / f"{slide_id}.tiff"),
                "mask": str(mask_dir / mask_name) if mask_name in masks else None,
                "slide_id": slide_id,
                "provider": str(row.data_provider).strip().lower(),
                "isup_grade": isup,
                "gleason_score": str(row.gleason_score).strip(),
                "label": multi_hot(GLEASON_PATTERN_TO_LABEL[p] for p in patterns),
            }
        )
    if absent:
        more = f" (and {len(absent) - _MAX_LISTED} more)" if len(absent) > _MAX_LISTED else ""
        raise FileNotFoundError(
            f"{len(absent)} slide image(s) listed in {csv} not found: {', '.join(absent[:_MAX_LISTED])}{more}"
        )
    return items


def panda_mask_to_labels(mask: np.ndarray, provider: str, channel_dim: int = -1) -> np.ndarray:
    """Gleason label map (0..3, uint8) of a radboud PANDA mask.

    Args:
        mask: (H, W) mask values, or a multi-channel mask whose first channel along `channel_dim`
            holds the values (PANDA masks are stored as RGB with the labels in R).
        provider: "radboud" (0, 1, 2 -> NC; 3, 4, 5 -> GG3, GG4, GG5) or "karolinska".
        channel_dim: channel axis of a 3-D `mask` (-1 for (H, W, C) as read by tifffile/openslide,
            0 for MONAI's channel-first arrays).

    Raises:
        ValueError: for karolinska masks (benign/cancer only, not grade-resolved), an unknown provider,
            a mask that is not 2-D or 3-D, or values outside 0..5.
    """
    provider = str(provider).strip().lower()
    if provider == "karolinska":
        raise ValueError(
            "karolinska PANDA masks are not grade-resolved (1 = benign, 2 = cancer of unknown grade); "
            "use the slide's gleason_score instead of its mask for Gleason labels"
        )
    if provider != "radboud":
        raise ValueError(f"unknown PANDA provider {provider!r}; expected one of {list(PANDA_PROVIDERS)}")
    values = np.asarray(mask)
    if values.ndim == 3:
        values = np.take(values, 0, axis=channel_dim)
    if values.ndim != 2:
        raise ValueError(f"PANDA mask must be (H, W) or 3-D with a channel axis, got shape {np.shape(mask)}")
    lut = np.full(256, 255, dtype=np.uint8)
    for value, label in PANDA_RADBOUD_VALUE_TO_LABEL.items():
        lut[value] = label
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(f"PANDA radboud mask values must lie in 0..5, found {values.min()}..{values.max()}")
    out = lut[values.astype(np.int64)]
    if out.size and out.max() == 255:
        bad = np.unique(values[out == 255])
        raise ValueError(f"PANDA radboud mask holds values {bad.tolist()[:10]} outside 0..5")
    return out
