from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_disc.networks.mask_encoder import MaskEncoder


def _one_hot(labels: torch.Tensor, k: int = 4) -> torch.Tensor:
    return F.one_hot(labels.long(), k).permute(0, 3, 1, 2).float()


def _blob_mask(cell_row: int, cell_col: int, size: int = 64, cell: int = 8, label: int = 2) -> torch.Tensor:
    """A mask of NC with one token-cell-sized square of `label`, aligned to the 8x8 token grid."""
    m = torch.zeros(1, size, size, dtype=torch.long)
    m[:, cell_row * cell : (cell_row + 1) * cell, cell_col * cell : (cell_col + 1) * cell] = label
    return m


def _max_nearest_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance from a token of `a` to its nearest token of `b`: 0 iff `a` is a permutation of `b`."""
    d = torch.cdist(a.detach(), b.detach(), compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.min(dim=1).values.max())


def test_tokens_have_grid_shape_for_any_tile_size():
    torch.manual_seed(0)
    enc = MaskEncoder(num_classes=4, context_dim=64, channels=(32, 64, 64), token_grid=8)
    for size in (32, 64, 96):
        out = enc(_one_hot(torch.randint(0, 4, (3, size, size))))
        assert out.shape == (3, 64, 64)
        assert torch.isfinite(out).all()


def test_moving_a_blob_changes_the_tokens_where_it_went():
    torch.manual_seed(0)
    enc = MaskEncoder(token_grid=8).eval()
    a = enc(_one_hot(_blob_mask(2, 2)))[0]
    b = enc(_one_hot(_blob_mask(5, 4)))[0]
    changed = (a - b).norm(dim=-1).reshape(8, 8)
    # the tokens over the old and the new place change most; far corners barely move
    assert changed[2, 2] > 10 * changed[0, 7]
    assert changed[5, 4] > 10 * changed[0, 7]


def test_positional_embedding_makes_a_moved_blob_more_than_a_token_permutation():
    torch.manual_seed(0)
    plain = MaskEncoder(token_grid=8, pos_embedding=None).eval()
    torch.manual_seed(0)
    placed = MaskEncoder(token_grid=8, pos_embedding="learned").eval()
    masks = _one_hot(torch.cat([_blob_mask(2, 2), _blob_mask(5, 4)]))
    # convolutions are translation-equivariant: without position the moved blob only permutes the tokens,
    # which cross-attention cannot tell apart
    p = plain(masks)
    assert _max_nearest_distance(p[0], p[1]) < 1e-3
    # with the 2-D embedding the token set itself differs
    q = placed(masks)
    assert _max_nearest_distance(q[0], q[1]) > 1.0


def test_sincos_embedding_is_fixed_and_learned_one_trains():
    learned = MaskEncoder(pos_embedding="learned")
    fixed = MaskEncoder(pos_embedding="sincos")
    assert learned.pos_embedding.requires_grad
    assert "pos_embedding" not in dict(fixed.named_parameters())
    torch.testing.assert_close(learned.pos_embedding.detach(), fixed.pos_embedding)


def test_rejects_a_mask_with_the_wrong_number_of_channels():
    enc = MaskEncoder(num_classes=4)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        enc(torch.zeros(1, 3, 32, 32))


def test_rejects_context_dim_that_a_2d_embedding_cannot_split():
    with pytest.raises(ValueError, match="divisible by 4"):
        MaskEncoder(context_dim=62)
