"""Pyramidal TIFF writing: a picture given as row bands writes the same file as the array, its levels read back
through OpenSlide are block means (nearest pixels for labels) of the level above, and bands that do not make up
the picture are refused with nothing left behind."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from monai_disc.data import pyramid_shapes, raw_bands, write_pyramid_tiff


def _picture(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    a[: shape[0] // 3] //= 5  # a darker top third: levels differ from noise
    return a


def _level(path, level: int) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]))[..., :3]


@pytest.mark.parametrize("shape,factor,nearest", [((515, 700, 3), 2, False), ((600, 517), 4, True)])
def test_a_picture_given_as_bands_writes_the_same_file_as_the_array(tmp_path, shape, factor, nearest):
    picture = _picture(shape)
    whole = write_pyramid_tiff(tmp_path / "whole.tiff", picture, mpp=0.5, factor=factor, nearest=nearest)
    picture.tofile(tmp_path / "picture.u8")
    banded = write_pyramid_tiff(
        tmp_path / "banded.tiff",
        raw_bands(tmp_path / "picture.u8", shape, rows=97),  # bands that do not fall on tile rows
        mpp=0.5,
        factor=factor,
        nearest=nearest,
        shape=shape,
    )
    assert banded.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["banded.tiff", "picture.u8", "whole.tiff"]


def test_levels_are_block_means_of_the_level_above_and_labels_stay_labels(tmp_path):
    rgb = _picture((515, 700, 3), seed=1)
    path = write_pyramid_tiff(tmp_path / "rgb.tiff", rgb, mpp=0.5, factor=2)
    shapes = pyramid_shapes(515, 700, 2)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == tuple((w, h) for h, w in shapes)
    above = rgb
    for i, (h, w) in enumerate(shapes[1:], start=1):
        blocks = above[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.float64).mean(axis=(1, 3))
        expected = np.rint(blocks).astype(np.uint8)
        np.testing.assert_array_equal(_level(path, i), expected)
        above = expected
    labels = np.random.default_rng(2).choice(np.array([0, 1, 3, 4, 5], np.uint8), size=(600, 517))
    rgb_labels = np.zeros((600, 517, 3), np.uint8)
    rgb_labels[..., 0] = labels
    path = write_pyramid_tiff(tmp_path / "labels.tiff", rgb_labels, mpp=0.5, factor=4, nearest=True)
    np.testing.assert_array_equal(_level(path, 1)[..., 0], labels[2:600:4, 2:516:4])


def test_bands_that_do_not_make_up_the_picture_are_refused(tmp_path):
    picture = _picture((300, 200, 3))
    out = tmp_path / "x.tiff"
    cases = {
        "hold 280 rows, the picture 300": [picture[:280]],
        "more than the 300 rows": [picture, picture[:1]],
        r"must be uint8 \(rows, \(200, 3\)\)": [picture[:, :100]],
    }
    for message, bands in cases.items():
        with pytest.raises(ValueError, match=message):
            write_pyramid_tiff(out, iter(bands), mpp=0.5, shape=picture.shape)
    with pytest.raises(ValueError, match="needs its shape"):
        write_pyramid_tiff(out, iter([picture]), mpp=0.5)
    assert list(tmp_path.iterdir()) == []
