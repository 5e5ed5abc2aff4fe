"""RelabelByFrequency: label map -> frequency ranks (most frequent 0; ties: smaller label first)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from monai_disc.transforms import RelabelByFrequency, RelabelByFrequencyd, relabel_by_frequency


def test_most_frequent_label_gets_rank_zero():
    labels = np.array([[3, 3, 3, 3], [3, 1, 1, 1], [2, 2, 0, 3]], dtype=np.uint8)  # 3: 6, 1: 3, 2: 2, 0: 1
    out = RelabelByFrequency()(labels)
    assert out.dtype == np.uint8 and out.shape == labels.shape
    np.testing.assert_array_equal(out, [[0, 0, 0, 0], [0, 1, 1, 1], [2, 2, 3, 0]])


def test_ties_go_to_the_smaller_label_first():
    labels = np.array([2, 2, 3, 3, 1, 0, 0])  # 0, 2, 3 tie with 2 each; 1 once
    ranks, order = relabel_by_frequency(labels)
    np.testing.assert_array_equal(order, [0, 2, 3, 1])
    np.testing.assert_array_equal(ranks, [1, 1, 2, 2, 3, 0, 0])
    np.testing.assert_array_equal(order[ranks], labels)


def test_torch_matches_numpy_and_keeps_dtype():
    labels = np.random.default_rng(3).integers(0, 4, size=(1, 9, 7))
    out = RelabelByFrequency()(torch.from_numpy(labels).to(torch.int32))
    assert out.dtype == torch.int32
    np.testing.assert_array_equal(out.numpy(), RelabelByFrequency()(labels))


def test_two_labels_only_give_ranks_zero_and_one():
    out = RelabelByFrequency()(np.array([3, 3, 1]))
    np.testing.assert_array_equal(out, [0, 0, 1])


def test_dict_version_on_metatensor_keeps_metadata():
    mask = MetaTensor(torch.tensor([[[1, 1], [1, 2]]]), meta={"filename_or_obj": "m.png"})
    out = RelabelByFrequencyd("mask")({"mask": mask})["mask"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "m.png"
    np.testing.assert_array_equal(out.numpy(), [[[0, 0], [0, 1]]])
