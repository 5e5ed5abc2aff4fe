"""SnapMaskToLabels: stored (JPEG-noisy) mask values -> labels, far values -> error naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_disc.transforms import SnapMaskToLabels, SnapMaskToLabelsd, snap_to_labels


def test_noisy_values_snap_to_nearest_valid_value_label():
    stored = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.float32)
    out = SnapMaskToLabels()(stored)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 0, 1, 1], [2, 3, 3, 3]])


def test_half_way_values_go_to_the_smaller_value():
    np.testing.assert_array_equal(snap_to_labels(np.array([1.5, 3.5, 4.5])), [0, 1, 2])


def test_torch_and_numpy_agree():
    stored = np.random.default_rng(0).integers(0, 8, size=(1, 16, 16)).astype(np.float32)
    out = SnapMaskToLabels()(torch.from_numpy(stored))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), SnapMaskToLabels()(stored))


def test_real_jpeg_noise_is_undone_where_values_are_well_separated():
    labels = np.zeros((16, 24), np.int64)
    labels[:, 6:12], labels[:, 12:18], labels[:, 18:] = 1, 2, 3  # edges inside 8x8 JPEG blocks
    values = np.array([0, 3, 4, 5], np.uint8)[labels]
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="JPEG", quality=75)
    noisy = np.asarray(Image.open(buffer)).astype(np.float32)
    assert not np.array_equal(noisy, values)  # the JPEG really moved some values
    out = SnapMaskToLabels()(noisy)
    # the 0 | 3 edge (3 grey levels apart) comes back exactly; 3 | 4 | 5 edges (1 apart) may shift a pixel
    np.testing.assert_array_equal(out[:, :12], labels[:, :12])
    assert (out == labels).mean() > 0.8


def test_far_values_raise_with_file_name_count_and_values():
    mask = MetaTensor(torch.tensor([[[0.0, 3.0, 10.0], [200.0, 200.0, 5.0]]]), meta={"filename_or_obj": "/d/m_7.jpg"})
    with pytest.raises(ValueError) as err:
        SnapMaskToLabels()(mask)
    message = str(err.value)
    assert "/d/m_7.jpg" in message and "3 of 6" in message and "10, 200" in message


def test_max_distance_zero_only_validates_exact_labels():
    snap = SnapMaskToLabels(values=(0, 1, 2, 3), labels=(0, 1, 2, 3), max_distance=0)
    np.testing.assert_array_equal(snap(np.array([3, 0, 2, 1])), [3, 0, 2, 1])
    with pytest.raises(ValueError, match="found 4"):
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
