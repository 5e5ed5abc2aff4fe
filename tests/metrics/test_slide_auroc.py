"""Slide AUROC per Gleason label and macro mean, on orderings whose AUROC is known."""

from __future__ import annotations

import math

import pytest
import torch

from monai_disc.metrics import slide_auroc


def test_per_class_and_macro_auroc():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float32)
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.3],  # class 0: positives 0.9, 0.8 above negatives 0.2, 0.1 -> 1.0
            [0.8, 0.2, 0.1],  # class 1: positives 0.2, 0.6 vs negatives 0.1, 0.7 -> 2 of 4 pairs -> 0.5
            [0.2, 0.6, 0.2],
            [0.1, 0.7, 0.4],  # class 2 has no positive slide -> undefined
        ]
    )
    out = slide_auroc(scores, targets)
    assert out["auroc"][:2] == pytest.approx([1.0, 0.5])
    assert math.isnan(out["auroc"][2])
    assert out["macro_auroc"] == pytest.approx(0.75)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        slide_auroc(torch.zeros(3, 4), torch.zeros(3, 3))
