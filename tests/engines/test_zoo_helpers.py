"""Pieces the bundles' runners rely on: batch sizes for small sets, name-derived seeds without MaskBatch,
slide bags without labels, the per-slide CSV rows, and PANDA masks in the folder layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_disc.data import list_slide_bags
from monai_disc.engines import MaskLDMInferer, fit_batch_size, mask_seed, slide_prediction_rows
from monai_disc.engines.evaluation import labelled_tile_transforms
from monai_disc.transforms import LoadBag, LoadBagd


def test_fit_batch_size_clamps_a_small_set_with_a_warning():
    assert fit_batch_size(40, 16) == 16
    with pytest.warns(UserWarning, match="has 3 items, fewer than batch_size 16"):
        assert fit_batch_size(3, 16) == 3
    with pytest.raises(ValueError, match="empty"):
        fit_batch_size(0, 16)


class _RecordingSampler:
    """Stands in for MaskLDMSampler's interface only, to see which seeds the inferer passes on."""

    def sample(self, masks, autoencoder, denoiser, seeds=None):
        self.seeds = seeds
        return torch.zeros(masks.shape[0], 3, *masks.shape[-2:])


def test_mask_ldm_inferer_seeds_masks_by_their_file_names_when_no_seeds_are_given():
    sampler = _RecordingSampler()
    inferer = MaskLDMInferer(sampler, torch.nn.Identity(), seed=7)
    one = MetaTensor(torch.zeros(1, 1, 8, 8), meta={"filename_or_obj": "/x/a.png"})  # MONAI Label: one file, a str
    inferer(one, torch.nn.Identity())
    assert sampler.seeds == [mask_seed("/x/a.png", 7)]
    batch = MetaTensor(torch.zeros(2, 1, 8, 8), meta={"filename_or_obj": ["/x/a.png", "/y/b.png"]})
    inferer(batch, torch.nn.Identity())
    assert sampler.seeds == [mask_seed("a.png", 7), mask_seed("b.png", 7)]
    inferer(batch, torch.nn.Identity(), seeds=[1, 2])  # explicit seeds (MaskBatch) win
    assert sampler.seeds == [1, 2]
    inferer(torch.zeros(1, 8, 8), torch.nn.Identity())  # no names: the sampler draws seeds itself
    assert sampler.seeds is None


def test_slide_bags_from_feature_files_or_tile_folders(tmp_path):
    feats = tmp_path / "feats"
    feats.mkdir()
    torch.save({"features": torch.ones(3, 4)}, feats / "s2.pt")
    torch.save(torch.zeros(5, 4), feats / "s1.pt")
    bags = list_slide_bags(feats)
    assert [b["slide_id"] for b in bags] == ["s1", "s2"]
    assert LoadBag()(bags[1]["image"]).shape == (3, 4)
    assert LoadBagd("image")(bags[0])["image"].shape == (5, 4)

    tiles = tmp_path / "tiles"
    for sid, n in (("a", 2), ("b", 3)):
        (tiles / sid / "images").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tiles / sid / "images" / f"{i}.png")
    bags = list_slide_bags(tiles)
    assert [(b["slide_id"], len(b["image"])) for b in bags] == [("a", 2), ("b", 3)]
    mean_colour = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(1))
    out = LoadBag(extractor=mean_colour, batch_size=2)(bags[1]["image"])
    assert out.shape == (3, 3)
    assert torch.allclose(out[:, 0], torch.tensor([0, 40, 80]) / 127.5 - 1, atol=1e-6)  # tiles in [-1, 1], in order
    with pytest.raises(ValueError, match="needs an extractor"):
        LoadBag()(bags[0]["image"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no feature files"):
        list_slide_bags(tmp_path / "empty")


def test_slide_rows_give_probabilities_and_the_labels_present():
    rows = slide_prediction_rows(["a", "b"], torch.tensor([[0.1, 0.7, 0.6, 0.2], [0.3, 0.2, 0.4, 0.1]]))
    assert rows[0]["labels"] == "GG3+GG4" and [rows[0][f"pred_{n}"] for n in ("NC", "GG3", "GG4", "GG5")] == [
        0,
        1,
        1,
        0,
    ]
    assert rows[1]["labels"] == "GG4" and rows[1]["pred_GG4"] == 0  # none reaches 0.5: the most probable
    assert rows[0]["prob_GG3"] == "0.700000"


def test_panda_folder_masks_map_radboud_values_to_gleason_labels(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "t.png")
    Image.fromarray(np.array([[0, 1, 2, 3, 4, 5]] * 4, np.uint8)).save(tmp_path / "m.png")
    out = labelled_tile_transforms("panda")({"image": str(tmp_path / "t.png"), "label": str(tmp_path / "m.png")})
    assert out["label"].reshape(4, 6)[0].tolist() == [0, 0, 0, 1, 2, 3]
