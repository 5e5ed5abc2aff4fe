"""Gleason labels: one place that says what 0..3 mean, how they look, and how datasets encode them."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = [
    "ISUP_GRADE",
    "GleasonLabel",
    "NUM_CLASSES",
    "LABEL_NAMES",
    "LABEL_COLORS",
    "MASK_JPEG_NOISE_FRACTION",
    "MASK_JPEG_OVERSHOOT",
    "MASK_JPEG_TOLERANCE",
    "SICAPV2_MASK_VALUES",
    "SICAPV2_VALUE_TO_LABEL",
    "GLEASON_PATTERN_TO_LABEL",
    "PANDA_RADBOUD_VALUE_TO_LABEL",
    "colorize",
    "multi_hot",
]


class GleasonLabel(IntEnum):
    """Pixel and tile labels used throughout the package (K = 4)."""

    NC = 0  # non-cancer: stroma, benign glands, background
    GG3 = 1
    GG4 = 2
    GG5 = 3


NUM_CLASSES = len(GleasonLabel)
LABEL_NAMES: tuple[str, ...] = tuple(label.name for label in GleasonLabel)

# Display colours (RGB, 0-255), a severity ramp from Okabe & Ito's colour-blind-safe palette: sky blue,
# yellow, vermillion, dark purple. The smallest CIELAB distance between any two is 33.6 for normal vision and
# for simulated protanopia, deuteranopia and tritanopia alike (Machado et al. 2009, severity 1); the former
# GG4 orange and GG5 vermillion were 18 apart for normal vision. Sky blue keeps NC visible over H&E.
LABEL_COLORS: dict[GleasonLabel, tuple[int, int, int]] = {
    GleasonLabel.NC: (86, 180, 233),
    GleasonLabel.GG3: (240, 228, 66),
    GleasonLabel.GG4: (213, 94, 0),
    GleasonLabel.GG5: (68, 1, 84),
}

# SICAPv2 grayscale masks store the Gleason pattern: 0 = NC, 3, 4, 5.
SICAPV2_MASK_VALUES: tuple[int, ...] = (0, 3, 4, 5)
SICAPV2_VALUE_TO_LABEL: dict[int, int] = {0: 0, 3: 1, 4: 2, 5: 3}

# JPEG moves stored mask values near region edges (measured on 0/3/4/5 masks: quality 100 reaches 6, quality
# 75 reaches 9 on about 0.03 % of the pixels). A value within MASK_JPEG_TOLERANCE of a valid value is that
# value; one up to MASK_JPEG_OVERSHOOT away is noise only while such pixels are rarer than
# MASK_JPEG_NOISE_FRACTION of the mask. Anything else is an error, never a label. Lossless masks are exact.
MASK_JPEG_TOLERANCE: float = 1.0
MASK_JPEG_OVERSHOOT: float = 4.0
MASK_JPEG_NOISE_FRACTION: float = 0.001

# A Gleason pattern (0 meaning none) as written in slide sheets and PANDA scores.
GLEASON_PATTERN_TO_LABEL: dict[int, int] = {0: 0, 3: 1, 4: 2, 5: 3}

# PANDA radboud masks: 0 background, 1 stroma, 2 benign epithelium, 3/4/5 Gleason 3/4/5.
PANDA_RADBOUD_VALUE_TO_LABEL: dict[int, int] = {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 3}


def colorize(labels: np.ndarray) -> np.ndarray:
    """Map an integer label map (H, W) to an RGB uint8 picture (H, W, 3) in the display colours."""
    lut = np.array([LABEL_COLORS[label] for label in GleasonLabel], dtype=np.uint8)
    return lut[np.clip(np.asarray(labels, dtype=np.int64), 0, NUM_CLASSES - 1)]


def multi_hot(labels) -> np.ndarray:
    """Multi-hot float32 vector [NC, GG3, GG4, GG5] of the given labels (any iterable of ints)."""
    out = np.zeros(NUM_CLASSES, dtype=np.float32)
    for label in labels:
        out[int(label)] = 1.0
    return out


#: ISUP grade group of a (primary, secondary) Gleason pattern pair; (0, 0) is benign (grade group 0).
ISUP_GRADE: dict[tuple[int, int], int] = {
    (0, 0): 0, (3, 3): 1, (3, 4): 2, (4, 3): 3, (4, 4): 4, (3, 5): 4, (5, 3): 4, (4, 5): 5, (5, 4): 5, (5, 5): 5,
}  # fmt: skip
