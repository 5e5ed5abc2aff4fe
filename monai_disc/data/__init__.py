"""Where data comes from: SICAPv2, PANDA and plain-folder data lists (no torch import here).

Submodules not re-exported here (toy data, WSI tiling, tile sets) are imported by their full name.
"""

from __future__ import annotations

from .folder import load_folder
from .panda import load_panda, panda_mask_to_labels
from .sicapv2 import (
    format_summary,
    load_sicapv2,
    load_sicapv2_slide_labels,
    load_sicapv2_slides,
    summarize_sicapv2,
)

__all__ = [
    "format_summary",
    "load_folder",
    "load_panda",
    "load_sicapv2",
    "load_sicapv2_slide_labels",
    "load_sicapv2_slides",
    "panda_mask_to_labels",
    "summarize_sicapv2",
]
