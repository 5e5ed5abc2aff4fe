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


def test_overlay_tints_grades_outlines_every_region_and_leaves_nc_tissue_as_it_is():
    tile = np.full((6, 6, 3), 200, dtype=np.uint8)
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[:, 3:] = GleasonLabel.GG5
    out = overlay(tile, labels, alpha=0.5)
    gg5, nc = LABEL_COLORS[GleasonLabel.GG5], LABEL_COLORS[GleasonLabel.NC]
    assert out[0, 5].tolist() == [round((200 + c) / 2) for c in gg5]  # inside GG5: tinted
    assert out[0, 0].tolist() == [200, 200, 200]  # inside NC: the tissue untouched (sky blue over pink reads purple)
    assert out[2, 2].tolist() == list(nc) and out[2, 3].tolist() == list(gg5)  # each side of the edge, exact colours
    assert overlay(tile, labels, alpha=0.0)[:, 5].tolist() == tile[:, 5].tolist()
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
    assert titled.shape[0] == int(1.4 * 12) + 4 + 2 * 2  # a 12 px title line: the smallest readable size


def test_every_mask_picture_can_carry_a_legend_of_the_four_label_colours(tmp_path):
    from monai_disc.labels import colorize
    from monai_disc.visualize import legend

    strip = np.asarray(legend(400, 14))
    for colour in LABEL_COLORS.values():  # every label's swatch is drawn
        assert (strip.reshape(-1, 3) == colour).all(axis=1).sum() > 100
    mask = colorize(np.arange(4).repeat(16).reshape(4, 16).repeat(4, axis=0))
    plain = np.asarray(Image.open(save_grid([[mask]], tmp_path / "a.png")))
    with_legend = np.asarray(Image.open(save_grid([[mask]], tmp_path / "b.png", legend_colors=True, title="t", zoom=4)))
    assert plain.shape == (16 + 4, 16 + 4, 3) and with_legend.shape[1] == 4 * 16 + 4  # cells zoomed 4x
    assert with_legend.shape[0] > 4 * 16 + 4 + 2 * 12  # a title line above, the legend below


def test_label_colours_stay_apart_for_colour_blind_readers():
    """Smallest CIELAB distance between two label colours, for normal vision and simulated CVD (Machado 2009)."""
    sims = [
        np.eye(3),
        np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]),
        np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]),
        np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]),
    ]

    def lab(rgb):
        c = np.asarray(rgb) / 255.0
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return lin

    def to_lab(lin):
        m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
        xyz = (m @ np.clip(lin, 0, 1)) / np.array([0.95047, 1.0, 1.08883])
        f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    colours = [lab(c) for c in LABEL_COLORS.values()]
    worst = min(
        np.linalg.norm(to_lab(sim @ a) - to_lab(sim @ b))
        for sim in sims
        for i, a in enumerate(colours)
        for b in colours[i + 1 :]
    )
    assert worst > 30, worst  # GG4 (230, 159, 0) and GG5 (213, 94, 0) were 18 apart


def test_a_long_title_wraps_onto_more_lines_instead_of_running_off_the_picture(tmp_path):
    tile = np.zeros((32, 32, 3), dtype=np.uint8)
    short = np.asarray(Image.open(save_grid([[tile]], tmp_path / "a.png", title="SD-GD")))
    long = np.asarray(Image.open(save_grid([[tile]], tmp_path / "b.png", title="SD-GD tiles for held-out masks " * 3)))
    assert short.shape[1] == long.shape[1] and long.shape[0] >= short.shape[0] + 2 * int(1.5 * 12)
    assert (long[-34:-2, 2:34] == 0).all()  # the tile still sits under the title lines, whole
