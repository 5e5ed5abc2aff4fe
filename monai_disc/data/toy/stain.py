"""H&E stains of toy slides: colour vectors, stain amounts, glass white (Beer-Lambert)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_STAIN", "Stain", "random_stain"]


# ----------------------------------------------------------------------------------------------
# stain
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stain:
    """H&E stain of one slide: optical-density colour vectors, stain amounts and the glass white.

    Attributes:
        hematoxylin: unit RGB optical-density vector of hematoxylin (blue-purple).
        eosin: unit RGB optical-density vector of eosin (pink).
        h_scale: multiplier of all hematoxylin densities (staining strength).
        e_scale: multiplier of all eosin densities.
        background: RGB (0-255) of unstained glass as the scanner sees it.
    """

    hematoxylin: tuple[float, float, float] = (0.60, 0.75, 0.28)
    eosin: tuple[float, float, float] = (0.16, 0.90, 0.40)
    h_scale: float = 1.0
    e_scale: float = 1.0
    background: tuple[float, float, float] = (244.0, 241.0, 245.0)


DEFAULT_STAIN = Stain()


def _unit(v: np.ndarray) -> tuple[float, float, float]:
    v = np.clip(v, 0.01, None)
    v = v / np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def random_stain(rng: np.random.Generator) -> Stain:
    """Draw a slide's stain around :data:`DEFAULT_STAIN` (lab-to-lab and batch variation).

    Args:
        rng: numpy random generator.

    Returns:
        A :class:`Stain`.
    """
    h = np.array(DEFAULT_STAIN.hematoxylin) + rng.normal(0.0, 0.05, 3)
    e = np.array(DEFAULT_STAIN.eosin) + rng.normal(0.0, 0.06, 3)
    bg = np.array(DEFAULT_STAIN.background) + rng.normal(0.0, 3.0) + rng.normal(0.0, 2.0, 3)
    return Stain(
        hematoxylin=_unit(h),
        eosin=_unit(e),
        h_scale=float(rng.uniform(0.8, 1.2)),
        e_scale=float(rng.uniform(0.75, 1.25)),
        background=tuple(float(x) for x in np.clip(bg, 225.0, 254.0)),
    )
