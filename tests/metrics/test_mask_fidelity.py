"""MaskFidelity with a small real segmenter whose output is known in advance."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_disc.metrics import MaskFidelity


class ColourSegmenter(nn.Module):
    """Labels a pixel by its brightest channel: R -> 1, G -> 2, B -> 3, all dark -> 0.

    A 1x1 convolution with fixed weights; it has a BatchNorm so eval mode matters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1:, :, 0, 0] = torch.eye(3)
            self.conv.bias.zero_()
        self.norm = nn.BatchNorm2d(4, affine=False)  # identity in eval mode (fresh running stats)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert not self.training and not torch.is_grad_enabled()
        return self.norm(self.conv(x))


def _tiles(labels: torch.Tensor) -> torch.Tensor:
    """Tiles in [-1, 1] painting label k > 0 bright in channel k - 1, label 0 black."""
    x = -torch.ones(labels.shape[0], 3, *labels.shape[-2:])
    for k in (1, 2, 3):
        x[:, k - 1][labels == k] = 1.0
    return x


def test_fidelity_is_perfect_when_tiles_show_their_masks():
    seg = ColourSegmenter().train()
    masks = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [0, 1]], [[1, 1], [1, 1]]])
    fid = MaskFidelity(seg, num_classes=4, batch_size=2)
    fid(_tiles(masks), masks)
    s = fid.aggregate()
    assert s["iou"] == [1.0, 1.0, 1.0, 1.0] and s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    assert seg.calls == 2  # 3 tiles in chunks of 2
    assert seg.training  # mode restored


def test_fidelity_counts_disagreement_exactly():
    seg = ColourSegmenter()
    shown = torch.tensor([[[0, 1, 1, 2]]])  # what the tile shows (and the segmenter sees)
    asked = torch.tensor([[[0, 1, 2, 2]]])  # the conditioning mask
    fid = MaskFidelity(seg, batch_size=8)
    fid.update(_tiles(shown), asked.unsqueeze(1))
    s = fid.aggregate()
    assert fid.confusion_matrix().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)
    assert s["iou"][:3] == pytest.approx([1.0, 1 / 2, 1 / 2])
    assert s["miou"] == pytest.approx(2 / 3)  # GG5 absent from both, left out
    # a second batch accumulates
    fid.update(_tiles(asked), asked)
    assert s != fid.aggregate() and fid.aggregate()["pixel_accuracy"] == pytest.approx(7 / 8)
    fid.reset()
    assert fid.confusion_matrix().sum() == 0


def test_leak_and_foreign_errors_are_told_apart():
    seg = ColourSegmenter()
    asked = torch.tensor([[[0, 1, 1, 2]], [[3, 3, 3, 3]]])
    # tile 0 draws GG3 (asked elsewhere in its mask) into the GG4 pixel: a leak; and GG5 (not asked) into NC: foreign
    # tile 1 draws GG3 into a uniform GG5 mask: foreign (a one-label mask cannot leak)
    shown = torch.tensor([[[3, 1, 1, 1]], [[3, 1, 3, 3]]])
    fid = MaskFidelity(seg)
    fid(_tiles(shown), asked)
    s = fid.aggregate()
    assert s["leak"] == pytest.approx(1 / 8) and s["foreign"] == pytest.approx(2 / 8)
    assert s["pixel_accuracy"] == pytest.approx(1 - s["leak"] - s["foreign"])
    fid.reset()
    fid(_tiles(asked), asked)
    assert fid.aggregate()["leak"] == 0.0 and fid.aggregate()["foreign"] == 0.0


def test_masks_must_match_tiles():
    fid = MaskFidelity(ColourSegmenter())
    with pytest.raises(ValueError, match="do not match images"):
        fid(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        MaskFidelity(ColourSegmenter(), batch_size=0)
