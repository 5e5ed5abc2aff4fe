"""Binary label masks at latent size: nearest reduction identical to torch/MONAI "nearest" resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Resize

from monai_disc.transforms import BinaryLabelMasks, BinaryLabelMasksd, label_masks_at_size, labels_at_size


def test_labels_at_size_picks_top_left_pixel_of_each_block():
    labels = torch.arange(36).reshape(1, 6, 6)
    np.testing.assert_array_equal(labels_at_size(labels, (2, 3)).numpy(), [[[0, 2, 4], [18, 20, 22]]])


@pytest.mark.parametrize("size", [(4, 4), (2, 8), (8, 8), (1, 1)])
def test_labels_at_size_equals_torch_and_monai_nearest(size):
    labels = torch.randint(0, 4, (3, 8, 16), generator=torch.Generator().manual_seed(0))
    ours = labels_at_size(labels, size)
    torch_nearest = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    monai_nearest = Resize(size, mode="nearest")(labels[:1].float())[0].long()
    assert torch.equal(ours, torch_nearest)
    assert torch.equal(ours[0], monai_nearest)


def test_labels_at_size_accepts_channel_dim_and_numpy():
    labels = np.arange(16).reshape(1, 1, 4, 4)
    out = labels_at_size(labels, 2)
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out, [[[0, 2], [8, 10]]])


def test_size_that_does_not_divide_is_an_error():
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(8, 8\)"):
        labels_at_size(torch.zeros(1, 8, 8), 3)


def test_label_masks_at_size_are_one_hot_of_the_reduced_labels():
    labels = torch.tensor([[[0, 0, 3, 3], [0, 0, 3, 3], [1, 1, 2, 2], [1, 1, 2, 2]]])
    masks = label_masks_at_size(labels, 4, 2)
    assert masks.shape == (1, 4, 2, 2) and masks.dtype == torch.float32
    assert torch.equal(masks.sum(1), torch.ones(1, 2, 2))
    assert torch.equal(masks[0].argmax(0), torch.tensor([[0, 3], [1, 2]]))


def test_binary_label_masks_transform_on_metatensor_scales_affine():
    labels = MetaTensor(torch.tensor([[[2, 2, 0, 0], [2, 2, 0, 0]]]), meta={"filename_or_obj": "m.png"})
    out = BinaryLabelMasks(num_classes=4, spatial_size=(1, 2))(labels)
    assert isinstance(out, MetaTensor) and out.shape == (4, 1, 2) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy()[:, 0], [[0, 1], [0, 0], [1, 0], [0, 0]])
    assert out.meta["filename_or_obj"] == "m.png"
    np.testing.assert_allclose(torch.diag(out.affine)[:2].numpy(), [2, 2])


def test_binary_label_masks_numpy_two_d_input_keeps_size_by_default():
    out = BinaryLabelMasks(num_classes=2)(np.array([[0, 1], [1, 1]]))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[1, 0], [0, 0]], [[0, 1], [1, 1]]])


def test_labels_outside_classes_raise_naming_the_file():
    labels = MetaTensor(torch.tensor([[[0, 5]]]), meta={"filename_or_obj": "bad.png"})
    with pytest.raises(ValueError, match=r"bad.png.*0\.\.3"):
        BinaryLabelMasks()(labels)


def test_dict_version_writes_to_output_key():
    d = {"mask": torch.zeros(1, 4, 4, dtype=torch.long)}
    out = BinaryLabelMasksd("mask", spatial_size=2, output_keys="masks")(d)
    assert out["masks"].shape == (4, 2, 2) and out["mask"].shape == (1, 4, 4)
    assert float(out["masks"][0].sum()) == 4.0
