"""Where data comes from: SICAPv2, PANDA and plain-folder data lists, whole slides (no torch import here).

The toy generator is re-exported too; it imports only numpy, scipy, PIL and tifffile.
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
from .slide_bags import list_slide_bags
from .slide_tiff import pyramid_shapes, raw_bands, write_pyramid_tiff
from .toy import make_toy_sicapv2, save_contact_sheet
from .wsi import SlideTileLoader, detect_tissue, load_wsi_bags, open_slide, read_tile, tile_slide

__all__ = [
    "SlideTileLoader",
    "detect_tissue",
    "format_summary",
    "list_slide_bags",
    "load_folder",
    "load_panda",
    "load_sicapv2",
    "load_sicapv2_slide_labels",
    "load_sicapv2_slides",
    "load_wsi_bags",
    "open_slide",
    "make_toy_sicapv2",
    "panda_mask_to_labels",
    "pyramid_shapes",
    "raw_bands",
    "read_tile",
    "save_contact_sheet",
    "summarize_sicapv2",
    "tile_slide",
    "write_pyramid_tiff",
]
