"""Slides as bags of tiles, real (SICAPv2) or synthetic (:func:`monai_disc.apps.generate_slides.generate_slides`, listed by
:func:`monai_disc.data.synthetic.load_synthetic_bags`),
through one interface, for slide-level grading (TransMIL).

A bag is a dict::

    {"slide_id": str, "tiles": [tile paths], "masks": [mask paths], "label": float32 multi-hot [NC, GG3, GG4, GG5],
     "primary": int, "secondary": int (labels 0..3), "source": "real" | "synthetic", ...}

Real bags add `patient_id` (to split by patient); synthetic bags add `generator`. Real and synthetic lists
concatenate into one training list. :class:`BagDataset` turns bags into samples with the tiles as paths or,
through a transform, as one (N, 3, H, W) tensor. Unlike the other loaders of `monai_disc.data`, this module
imports torch (for the dataset).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from monai_disc.data.synthetic import load_synthetic_bags
from monai_disc.labels import GLEASON_PATTERN_TO_LABEL, multi_hot

__all__ = [
    "BAG_SOURCES",
    "BagDataset",
    "load_sicapv2_bags",
    "load_synthetic_bags",
    "tile_loader",
]

BAG_SOURCES: tuple[str, ...] = ("real", "synthetic")
_MAX_LISTED = 5


def load_sicapv2_bags(root: str | os.PathLike, partition: str = "Test", split: str = "Train") -> list[dict]:
    """Real SICAPv2 slides of one partition sheet as bags, labelled from `wsi_labels.xlsx`.

    Tiles are grouped by slide id in sheet order; slides are listed in the order of their first tile.

    Args:
        root: SICAPv2 directory.
        partition, split: the sheet (see :func:`monai_disc.data.load_sicapv2`).

    Returns:
        Bags (module docstring) with `source` "real" and `patient_id`.

    Raises:
        FileNotFoundError, ValueError: see :func:`monai_disc.data.load_sicapv2` and
            :func:`monai_disc.data.load_sicapv2_slides`; also a sheet slide absent from `wsi_labels.xlsx`.
    """
    from monai_disc.data.sicapv2 import load_sicapv2, load_sicapv2_slides

    tiles = load_sicapv2(root, partition, split)
    slides = {s["slide_id"]: s for s in load_sicapv2_slides(root)}
    bags: dict[str, dict] = {}
    for item in tiles:
        sid = item["slide_id"]
        if sid not in bags:
            bags[sid] = {"slide_id": sid, "tiles": [], "masks": []}
        bags[sid]["tiles"].append(item["image"])
        bags[sid]["masks"].append(item["mask"])
    unknown = [sid for sid in bags if sid not in slides]
    if unknown:
        sheet = Path(root).expanduser() / "wsi_labels.xlsx"
        raise ValueError(
            f"{sheet} has no row for slide(s) {unknown[:_MAX_LISTED]}"
            f"{f' (and {len(unknown) - _MAX_LISTED} more)' if len(unknown) > _MAX_LISTED else ''}, "
            f"listed in the {partition}/{split} sheet"
        )
    out = []
    for sid, bag in bags.items():
        slide = slides[sid]
        primary = GLEASON_PATTERN_TO_LABEL[slide["primary"]]
        secondary = GLEASON_PATTERN_TO_LABEL[slide["secondary"]]
        out.append(
            {
                **bag,
                "label": multi_hot((primary, secondary)),
                "primary": primary,
                "secondary": secondary,
                "source": "real",
                "patient_id": slide["patient_id"],
            }
        )
    return out


def tile_loader(spatial_size: int | Sequence[int] | None = None) -> Callable[[str], torch.Tensor]:
    """A tile path -> (3, H, W) float32 tensor in [-1, 1] (the package's image convention), for :class:`BagDataset`.

    Args:
        spatial_size: resize tiles to this size (area averaging); None keeps the file size.
    """
    from monai_disc.transforms.pipelines import tile_transforms

    pipeline = tile_transforms(mask_key=None, spatial_size=spatial_size)

    def load(path: str) -> torch.Tensor:
        return pipeline({"image": path})["image"].as_tensor()

    return load


class BagDataset(Dataset):
    """Bags as a torch Dataset: one sample per slide, for MIL.

    A sample is ``{"slide_id", "tiles", "label", "source"}`` plus the bag's other keys (masks, grades, ...):
    `tiles` are the bag's paths when `transform` is None, else the transformed tiles stacked into (N, ...)
    (e.g. :func:`tile_loader` gives (N, 3, H, W) in [-1, 1]); `label` is a float32 tensor (4,). Bags differ in
    length, so batch them one at a time (batch size 1, as TransMIL trains) or with a custom collate.

    Args:
        bags: from :func:`load_sicapv2_bags` and/or :func:`load_synthetic_bags`.
        transform: tile path -> tensor; None keeps paths.

    Raises:
        ValueError: a bag without `slide_id`, `tiles` or `label`, or with no tile.
    """

    def __init__(self, bags: Sequence[dict], transform: Callable[[str], Any] | None = None) -> None:
        for i, bag in enumerate(bags):
            missing = [k for k in ("slide_id", "tiles", "label") if k not in bag]
            if missing:
                raise ValueError(f"bag {i} lacks key(s) {missing}")
            if not bag["tiles"]:
                raise ValueError(f"bag {i} (slide {bag['slide_id']}) has no tile")
        self.bags = list(bags)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, index: int) -> dict:
        bag = self.bags[index]
        sample = dict(bag)
        sample["label"] = torch.as_tensor(np.asarray(bag["label"], dtype=np.float32))
        sample["source"] = bag.get("source", "real")
        if self.transform is None:
            sample["tiles"] = list(bag["tiles"])
        else:
            sample["tiles"] = torch.stack([torch.as_tensor(self.transform(p)) for p in bag["tiles"]])
        return sample
