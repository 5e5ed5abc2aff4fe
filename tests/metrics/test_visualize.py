"""Evaluation pictures: label overlays and saved grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_disc.labels import LABEL_COLORS, GleasonLabel
from monai_disc.visualize import overlay, save_grid, to_uint8


def test_to_uint8_maps_package_range():
    tile = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    assert to_uint8(tile)[0, 0].tolist() == [0, 128, 255]


def test_overlay_blends_label_colours():
    tile = np.zeros((2, 2, 3), dtype=np.uint8)
    labels = np.array([[0, 3], [3, 3]])
    out = overlay(tile, labels, alpha=0.5)
    assert out[0, 1].tolist() == [round(c / 2) for c in LABEL_COLORS[GleasonLabel.GG5]]
    assert overlay(tile, labels, alpha=0.0).max() == 0
    with pytest.raises(ValueError, match="do not match"):
        overlay(tile, np.zeros((3, 3)), 0.5)


def test_save_grid_writes_cells_in_place(tmp_path):
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue_tile = -torch.ones(3, 4, 4)
    blue_tile[2] = 1.0
    path = save_grid([[red, blue_tile], [blue_tile]], tmp_path / "sub" / "grid.png", pad=1)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 4 + 3, 2 * 4 + 3, 3)
    assert img[1, 1].tolist() == [255, 0, 0]  # row 0, col 0
    assert img[1, 6].tolist() == [0, 0, 255]  # row 0, col 1
    assert img[6, 6].tolist() == [255, 255, 255]  # row 1 has one cell: background
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left
    titled = np.asarray(Image.open(save_grid([[red, red]], tmp_path / "t.png", titles=["real", "SD"])))
    assert titled.shape[0] == 14 + 4 + 2 * 2
