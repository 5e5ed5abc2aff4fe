"""monai_disc: mask-conditioned latent diffusion for Gleason grading, built on MONAI."""

from __future__ import annotations

from .labels import LABEL_NAMES, NUM_CLASSES, GleasonLabel

__version__ = "0.1.0"

__all__ = ["GleasonLabel", "LABEL_NAMES", "NUM_CLASSES", "__version__"]
