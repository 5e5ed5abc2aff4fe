"""TransMIL: square padding, bag shapes, train/eval determinism, and learning a toy MIL problem."""

from __future__ import annotations

import time

import pytest
import torch
from monai.metrics import compute_roc_auc

from monai_disc.networks.transmil import PPEG, TransMIL, pad_to_square, transmil, transmil_toy

torch.set_num_threads(1)


def _small(in_features: int, **kwargs) -> TransMIL:
    config = {"dim": 32, "heads": 4, "landmarks": 8}
    config.update(kwargs)
    return transmil_toy(in_features, **config)


@pytest.mark.parametrize("n, expected", [(1, 1), (2, 4), (5, 9), (9, 9), (10, 16), (5000, 5041)])
def test_pad_to_square_reaches_next_square(n, expected):
    x = torch.randn(2, n, 3)
    out = pad_to_square(x)
    assert out.shape == (2, expected, 3)
    assert torch.equal(out[:, :n], x)


def test_pad_to_square_repeats_the_first_instances():
    x = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1)
    assert pad_to_square(x).flatten().tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    x = torch.arange(5000, dtype=torch.float32).reshape(1, 5000, 1)
    assert pad_to_square(x)[0, 5000:, 0].tolist() == list(range(41))


def test_pad_to_square_leaves_a_square_bag_unchanged():
    x = torch.randn(1, 9, 4)
    assert pad_to_square(x) is x


def test_pad_to_square_rejects_an_empty_bag():
    with pytest.raises(ValueError, match="N >= 1"):
        pad_to_square(torch.zeros(1, 0, 4))


def test_ppeg_adds_depthwise_context_and_keeps_class_token():
    ppeg = PPEG(dim=2)
    for conv in (ppeg.proj7, ppeg.proj5, ppeg.proj3):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    # a 3x3 kernel that copies the left neighbour (channel 0 only)
    ppeg.proj3.weight.data[0, 0, 1, 0] = 1.0
    tokens = torch.arange(1, 10, dtype=torch.float32)  # grid 3x3 in row-major order
    x = torch.stack([tokens, -tokens], dim=-1)[None]  # (1, 9, 2)
    cls = torch.tensor([[[7.0, 8.0]]])
    out = ppeg(torch.cat([cls, x], dim=1), 3, 3)
    assert torch.equal(out[:, 0], cls[:, 0])
    grid = tokens.reshape(3, 3)
    left = torch.nn.functional.pad(grid, (1, 0))[:, :3]
    assert torch.equal(out[0, 1:, 0], (grid + left).flatten())
    assert torch.equal(out[0, 1:, 1], -tokens)


def test_paper_config_has_paper_shapes():
    net = transmil(384)
    assert net.fc1[0].weight.shape == (512, 384)
    assert net.cls_token.shape == (1, 1, 512)
    attn = net.layer1.attn
    assert (attn.heads, attn.num_landmarks, attn.pinv_iterations) == (8, 256, 6)
    assert attn.to_qkv.weight.shape == (3 * 8 * 64, 512)
    assert attn.res_conv.kernel_size == (33, 1)
    assert attn.to_out[1].p == pytest.approx(0.1)
    assert net.pos_layer.proj7.groups == 512
    assert net.fc2.weight.shape == (4, 512)
    layer = 2 * 512 + 512 * 3 * 512 + (512 * 512 + 512) + 8 * 33  # norm, qkv, out, value conv
    ppeg = 512 * (49 + 25 + 9) + 3 * 512
    expected = (384 * 512 + 512) + 512 + 2 * layer + ppeg + 2 * 512 + (512 * 4 + 4)
    assert sum(p.numel() for p in net.parameters()) == expected == 2_345_492


@pytest.mark.parametrize("n", [1, 2, 5, 37])
def test_any_bag_length_gives_one_logit_row_per_bag(n):
    net = _small(7).eval()
    with torch.no_grad():
        logits, attention = net(torch.randn(3, n, 7), return_attention=True)
    assert logits.shape == (3, 4)
    assert attention.shape == (3, n)
    assert torch.isfinite(logits).all() and torch.isfinite(attention).all()


def test_paper_config_takes_a_bag_of_5000_instances_quickly():
    net = TransMIL(384).eval()
    x = torch.randn(1, 5000, 384)
    start = time.perf_counter()
    with torch.no_grad():
        logits = net(x)
    elapsed = time.perf_counter() - start
    assert logits.shape == (1, 4)
    assert torch.isfinite(logits).all()
    assert elapsed < 10.0, f"5000 instances took {elapsed:.1f} s"


@pytest.mark.parametrize("in_features", [384, 2048, 7])
def test_any_feature_width_is_accepted(in_features):
    net = _small(in_features, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 10, in_features)).shape == (2, 3)
        assert net.features(torch.randn(2, 10, in_features)).shape == (2, 32)


def test_wrong_feature_width_names_expected_shape():
    net = _small(16)
    with pytest.raises(ValueError, match=r"\(B, N >= 1, 16\)"):
        net(torch.randn(1, 10, 15))
    with pytest.raises(ValueError, match="got shape"):
        net(torch.randn(10, 16))


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        TransMIL(8, dim=30, heads=4)
    with pytest.raises(ValueError, match="dropout"):
        TransMIL(8, dropout=1.0)


def test_features_feed_the_classifier():
    net = _small(7).eval()
    x = torch.randn(2, 12, 7)
    with torch.no_grad():
        assert torch.allclose(net.fc2(net.features(x)), net(x))


def test_eval_is_deterministic_and_dropout_acts_only_in_train_mode():
    torch.manual_seed(0)
    net = _small(7, dropout=0.5)
    x = torch.randn(2, 20, 7)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.allclose(net(x), net(x))
        net_no_dropout = _small(7, dropout=0.0).train()
        assert torch.equal(net_no_dropout(x), net_no_dropout(x))


def test_float16_features_are_cast_to_the_weights_dtype():
    net = _small(7).eval()
    x = torch.randn(1, 6, 7)
    with torch.no_grad():
        assert torch.allclose(net(x.half()), net(x.half().float()))


def test_attention_of_square_padding_copies_is_folded_onto_originals():
    torch.manual_seed(0)
    net = _small(5).eval()
    x = torch.randn(1, 5, 5)
    with torch.no_grad():
        _, attention = net(x, return_attention=True)
        # the same bag laid out as its 9 square-padded instances: no further padding, plain rows
        _, padded_attention = net(pad_to_square(x), return_attention=True)
    folded = padded_attention[:, :5].clone()
    folded[:, :4] += padded_attention[:, 5:]
    assert torch.allclose(attention, folded, atol=1e-6)


def _toy_bags(n_bags: int, centers: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags of 16 background instances; class k is positive iff the bag holds 1-2 cluster-k instances."""
    num_classes, width = centers.shape
    bags = torch.randn(n_bags, 16, width, generator=generator)
    labels = (torch.rand(n_bags, num_classes, generator=generator) < 0.5).float()
    for b in range(n_bags):
        slots = torch.randperm(16, generator=generator).tolist()
        for k in torch.nonzero(labels[b]).flatten().tolist():
            for _ in range(int(torch.randint(1, 3, (1,), generator=generator))):
                bags[b, slots.pop()] = centers[k] + 0.3 * torch.randn(width, generator=generator)
    return bags, labels


def test_learns_which_clusters_a_bag_contains():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    width = 16
    centers = 4.0 * torch.linalg.qr(torch.randn(width, 4, generator=g))[0].T  # 4 orthogonal clusters
    train_x, train_y = _toy_bags(256, centers, g)
    test_x, test_y = _toy_bags(128, centers, g)

    net = _small(width, dim=64, dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _step in range(150):
        idx = torch.randint(0, len(train_x), (16,), generator=g)
        optimizer.zero_grad()
        loss = loss_fn(net(train_x[idx]), train_y[idx])
        loss.backward()
        optimizer.step()

    net.eval()
    with torch.no_grad():
        probs = torch.sigmoid(net(test_x))
    per_class = compute_roc_auc(probs, test_y, average="none")
    assert min(per_class) > 0.9, per_class
    assert compute_roc_auc(probs, test_y, average="macro") > 0.95
