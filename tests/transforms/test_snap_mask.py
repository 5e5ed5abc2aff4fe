"""SnapMaskToLabels: stored (JPEG-noisy) mask values -> labels, far values -> error naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_disc.transforms import SnapMaskToLabels, SnapMaskToLabelsd, snap_to_labels


def _named(values, name: str) -> MetaTensor:
    return MetaTensor(torch.as_tensor(np.asarray(values, dtype=np.float32))[None], meta={"filename_or_obj": name})


def test_noisy_values_snap_to_nearest_valid_value_label():
    stored = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.float32)
    out = SnapMaskToLabels(max_distance=2)(stored)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 0, 1, 1], [2, 3, 3, 3]])
    # the JPEG tolerance: every value within 1 of 0/3/4/5 (0..6) is that value
    jpeg = SnapMaskToLabels()(_named([[0, 1, 2, 3, 4, 5, 6]], "/d/m.jpg"))
    np.testing.assert_array_equal(jpeg.numpy()[0], [[0, 0, 1, 1, 2, 3, 3]])


def test_half_way_values_go_to_the_smaller_value():
    np.testing.assert_array_equal(snap_to_labels(np.array([1.5, 3.5, 4.5]), max_distance=2), [0, 1, 2])


def test_torch_and_numpy_agree():
    stored = np.random.default_rng(0).integers(0, 8, size=(1, 16, 16)).astype(np.float32)
    out = SnapMaskToLabels(max_distance=2)(torch.from_numpy(stored))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), SnapMaskToLabels(max_distance=2)(stored))


def test_value_5_in_a_0_to_3_png_mask_is_an_error_naming_file_value_and_count():
    mask = np.zeros((8, 8))
    mask[:2, :3] = 5
    mask[7, 7] = 3
    snap = SnapMaskToLabels(values=(0, 1, 2, 3), labels=(0, 1, 2, 3))
    with pytest.raises(
        ValueError,
        match=r"^/d/m\.png: mask value 5 \(6 px\) of 64 px map to no Gleason label; valid values are 0, 1, 2, 3$",
    ):
        snap(_named(mask, "/d/m.png"))


def test_a_region_of_7_in_a_sicapv2_jpeg_mask_is_an_error_but_rare_overshoot_is_noise():
    mask = np.full((64, 64), 5.0)
    mask[:8, :8] = 7  # 64 px of 4096: a region, not edge noise
    with pytest.raises(
        ValueError,
        match=r"m\.jpg: mask value 7 \(64 px\) of 4096 px map to no Gleason label; valid values are within 1 of 0, 3, 4, 5",
    ):
        SnapMaskToLabels()(_named(mask, "m.jpg"))
    mask[:8, :8] = 5
    mask[0, :3] = (7, 8, 9)  # 3 px of overshoot at an edge (under 0.1 %): JPEG noise
    assert (SnapMaskToLabels()(_named(mask, "m.jpg")) == 3).all()
    with pytest.raises(ValueError, match="7 \\(1 px\\), 8 \\(1 px\\), 9 \\(1 px\\)"):  # lossless: exact
        SnapMaskToLabels()(_named(mask, "m.png"))


def test_real_jpeg_noise_is_undone_where_values_are_well_separated():
    labels = np.zeros((16, 24), np.int64)
    labels[:, 6:12], labels[:, 12:18], labels[:, 18:] = 1, 2, 3  # edges inside 8x8 JPEG blocks
    values = np.array([0, 3, 4, 5], np.uint8)[labels]
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="JPEG", quality=75)
    noisy = np.asarray(Image.open(buffer)).astype(np.float32)
    assert not np.array_equal(noisy, values)  # the JPEG really moved some values
    out = SnapMaskToLabels()(_named(noisy, "q75.jpg"))[0].numpy()
    # the 0 | 3 edge (3 grey levels apart) comes back exactly; 3 | 4 | 5 edges (1 apart) may shift a pixel
    np.testing.assert_array_equal(out[:, :12], labels[:, :12])
    assert (out == labels).mean() > 0.8


def test_far_values_raise_with_file_name_count_and_values():
    mask = MetaTensor(torch.tensor([[[0.0, 3.0, 10.0], [200.0, 200.0, 5.0]]]), meta={"filename_or_obj": "/d/m_7.jpg"})
    with pytest.raises(ValueError) as err:
        SnapMaskToLabels()(mask)
    message = str(err.value)
    assert "/d/m_7.jpg" in message and "10 (1 px), 200 (2 px) of 6 px" in message


def test_max_distance_zero_only_validates_exact_labels():
    snap = SnapMaskToLabels(values=(0, 1, 2, 3), labels=(0, 1, 2, 3), max_distance=0)
    np.testing.assert_array_equal(snap(np.array([3, 0, 2, 1])), [3, 0, 2, 1])
    with pytest.raises(ValueError, match=r"mask value 4 \(1 px\)"):
        snap(np.array([4, 0]))


def test_dict_version_keeps_metatensor_and_its_metadata():
    mask = MetaTensor(torch.tensor([[[0.0, 4.0], [5.0, 3.0]]]), meta={"filename_or_obj": "m.jpg"})
    out = SnapMaskToLabelsd("mask")({"mask": mask, "slide_id": "s"})
    assert isinstance(out["mask"], MetaTensor) and out["mask"].meta["filename_or_obj"] == "m.jpg"
    assert out["mask"].dtype == torch.int64 and out["slide_id"] == "s"
    np.testing.assert_array_equal(out["mask"].numpy(), [[[0, 2], [3, 1]]])


def test_mismatched_values_and_labels_are_rejected():
    with pytest.raises(ValueError, match="equal length"):
        SnapMaskToLabels(values=(0, 3), labels=(0,))
