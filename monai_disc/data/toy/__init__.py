"""Procedural Gleason-like prostate tissue: the embedded default data set.

No real slides can be downloaded where this package is developed and tested, so every code path
(loaders, tiling, training, sampling, grading) runs on tissue drawn here. The four labels differ
by *structure* under one H&E palette, as in real slides:

* NC (0): pink fibrous stroma with spindle nuclei and a few large benign glands whose wide,
  undulating lumens are lined by two cell layers (flat basal + taller luminal cells).
* GG3 (1): many small, separate, round glands with small lumens and one layer of nuclei.
* GG4 (2): large epithelial nests, either cribriform (punched by many small round lumens) or
  fused, poorly formed glands with tiny lumens.
* GG5 (3): solid sheets of crowded, dark, pleomorphic nuclei without lumens; single cells and
  cords in the thin stroma between sheets.

Tissue is drawn as hematoxylin and eosin optical densities and turned into RGB with per-slide
stain vectors (Beer-Lambert), so stain variation is realistic and shared by all patterns. One
toy pixel is about 2 um (a 128 px tile shows about a quarter of a 512 px SICAPv2 tile's field).

:func:`make_toy_sicapv2` writes the SICAPv2 layout (tiles, annotator-like masks, partition
sheets, slide labels) plus a few small pyramidal TIFF slides in the PANDA layout under
``<root>/panda``. :func:`save_contact_sheet` shows tiles beside their masks. :data:`TOY_CONFIGS` names
whole settings of the generator: ``default`` (the embedded set) and ``hard`` (the downstream benchmark).

Modules: ``stain`` (stains), ``shapes`` (noise, masks), ``patterns`` (structures per grade), ``render``
(tissue pictures), ``plan`` (slides, grades, patient splits), ``config`` (named settings), ``writers``,
``sicapv2`` (the SICAPv2-layout build), ``panda`` (whole slides), ``sheet`` (contact sheets).
"""

from __future__ import annotations

from .config import HARD_GLEASON_PAIRS, TOY_CONFIGS, ToyConfig
from .panda import make_toy_panda
from .plan import GLEASON_PAIRS
from .render import draw_tile, draw_tissue
from .shapes import draw_mask
from .sheet import save_contact_sheet
from .sicapv2 import TOY_VERSION, is_complete, make_toy_sicapv2
from .stain import DEFAULT_STAIN, Stain, random_stain

__all__ = [
    "DEFAULT_STAIN",
    "GLEASON_PAIRS",
    "HARD_GLEASON_PAIRS",
    "TOY_CONFIGS",
    "TOY_VERSION",
    "Stain",
    "ToyConfig",
    "draw_mask",
    "draw_tile",
    "draw_tissue",
    "is_complete",
    "make_toy_panda",
    "make_toy_sicapv2",
    "random_stain",
    "save_contact_sheet",
]
