"""The label server's request checks without a server: region caps, slide resolution and ``base_mpp``, labels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from monai_disc.monailabel.checks import (
    ClientError,
    ServerLimits,
    check_label_file,
    check_region,
    image_size,
    rasterize_asap,
)


def _slide(path, dpi, unit):
    rgb = np.full((512, 768, 3), 230, np.uint8)
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(256, 256), resolution=(dpi, dpi), resolutionunit=unit)
    return path


def test_screen_dpi_slide_refused_until_base_mpp(tmp_path):
    path = _slide(tmp_path / "shot.tiff", 96, "INCH")
    with pytest.raises(ClientError) as err:
        image_size(path, "image 'shot'")
    assert err.value.status == 400
    assert "image 'shot'" in err.value.detail and "tiff.XResolution=96" in err.value.detail
    assert "--conf base_mpp" in err.value.detail
    assert image_size(path, "image 'shot'", base_mpp=0.5) == (768, 512, True)
    scanner = _slide(tmp_path / "scan.tiff", 40000, "CENTIMETER")  # 0.25 um/px
    assert image_size(scanner, "image 'scan'") == (768, 512, True)


def test_region_caps_name_the_key_that_raises_them():
    limits = ServerLimits(max_region_pixels=10_000, max_region_tiles=4)
    region = check_region({"size": [0, 0], "tile_size": [64, 64]}, 100, 100, "s", limits, True)
    assert region == {"location": [0, 0], "size": [100, 100], "tile_size": [64, 64], "tiles": 4}
    with pytest.raises(ClientError, match=r"10201 px\).*10000 px \(max_region_pixels\).*--conf max_region_pixels"):
        check_region({"size": [0, 0]}, 101, 101, "s", limits, True)
    with pytest.raises(ClientError, match=r"makes 9 tiles, above the cap of 4 \(max_region_tiles\)") as err:
        check_region({"size": [90, 90], "tile_size": [32, 32]}, 100, 100, "s", limits, True)
    assert err.value.status == 413
    with pytest.raises(ClientError, match=r"'wsi.location' is \[5, 0\]"):
        check_region({"location": [5, 0], "size": [0, 0]}, 100, 100, "s", limits, True)
    with pytest.raises(ClientError, match=r"'wsi.size' must be two integers"):
        check_region({"size": ["a", 3]}, 100, 100, "s", limits, True)
    with pytest.raises(ValueError, match="--conf max_region_tiles must be an integer"):
        ServerLimits.from_conf({"max_region_tiles": "many"})
    assert ServerLimits.from_conf({"base_mpp": "0.25", "infer_workers": "3"}).base_mpp == 0.25


def test_label_maps_and_asap_polygons(tmp_path):
    from PIL import Image

    path = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)).save(path)
    np.testing.assert_array_equal(check_label_file(path, "l.png", "img", (2, 2), [0, 1, 2, 3]), [[0, 1], [2, 3]])
    with pytest.raises(ClientError, match=r"l.png is 2 x 2 px, image 'img' is 3 x 2 px"):
        check_label_file(path, "l.png", "img", (3, 2), [0, 1, 2, 3])
    with pytest.raises(ClientError, match=r"l.png holds value\(s\) \[3\] \(1 px\)"):
        check_label_file(path, "l.png", "img", (2, 2), [0, 1, 2])
    square = (2, np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]]))
    labels = rasterize_asap([square], 10, 8, offset=(1, 0))
    assert labels.shape == (8, 10) and labels[4, 3] == 2 and labels[4, 6] == 0 and labels[4, 1] == 2
