"""Named settings of the toy generator: the default set and the downstream benchmark, each in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .plan import GLEASON_PAIRS

__all__ = ["HARD_GLEASON_PAIRS", "TOY_CONFIGS", "ToyConfig"]

#: Slide Gleason scores of the downstream benchmark: GG5 rare (about 12 % of slides hold it, 2 % as both grades).
HARD_GLEASON_PAIRS: tuple[tuple[tuple[int, int], float], ...] = (
    ((0, 0), 0.18),
    ((1, 1), 0.18),
    ((1, 2), 0.18),
    ((2, 1), 0.16),
    ((2, 2), 0.18),
    ((2, 3), 0.05),
    ((3, 2), 0.03),
    ((1, 3), 0.02),
    ((3, 3), 0.02),
)


@dataclass(frozen=True)
class ToyConfig:
    """One named setting of :func:`monai_disc.data.toy.make_toy_sicapv2`: sizes, slide grades and how alike
    GG4 and GG5 look. ``make_toy_sicapv2(root, seed=s, **config.build_kwargs())`` builds it.

    Args:
        n_slides: slides of the set.
        tile_size: tile side in pixels.
        tiles_per_slide: inclusive range of tiles per slide.
        n_wsi: PANDA-layout whole slides (0: none).
        wsi_size: their level-0 width and height.
        gleason_pairs: slide Gleason scores with their shares.
        gg45_mix: share of each GG4 region drawn like GG5 and of each GG5 region drawn like GG4 (0 to 0.5).
        test_share: share of patients in the Test partition's test split.
    """

    n_slides: int = 40
    tile_size: int = 128
    tiles_per_slide: tuple[int, int] = (20, 55)
    n_wsi: int = 3
    wsi_size: tuple[int, int] = (2048, 1536)
    gleason_pairs: tuple[tuple[tuple[int, int], float], ...] = GLEASON_PAIRS
    gg45_mix: float = 0.0
    test_share: float = 0.25

    def build_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`make_toy_sicapv2` this setting stands for."""
        return asdict(self) | {"gleason_pairs": self.gleason_pairs}


#: ``default``: the embedded toy set every bundle and table was made on (make_toy_sicapv2's defaults).
#: ``hard``: the downstream benchmark, off the ceiling by design: GG4 and GG5 drawn alike (30 % of each region in
#: the other's pattern), GG5 rare, small 64 px tiles, few tiles per slide, half the patients held out for testing
#: (about 210 test slides), so a study draws few labelled slides from the rest (``monai-disc study``).
TOY_CONFIGS: dict[str, ToyConfig] = {
    "default": ToyConfig(),
    "hard": ToyConfig(
        n_slides=420,
        tile_size=64,
        tiles_per_slide=(4, 8),
        n_wsi=0,
        gleason_pairs=HARD_GLEASON_PAIRS,
        gg45_mix=0.3,
        test_share=0.5,
    ),
}
