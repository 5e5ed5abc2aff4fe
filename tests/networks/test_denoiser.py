from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import tiny_denoiser, tiny_unet

from monai_disc.networks.denoiser import MaskConditionedUNet, mask_ldm_toy
from monai_disc.networks.mask_encoder import MaskEncoder


def test_mask_and_precomputed_context_give_the_same_noise_prediction():
    net = tiny_denoiser(std=0.2)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    mask = torch.randint(0, 4, (2, 32, 32))
    with torch.no_grad():
        via_mask = net(x, t, mask=mask)
        via_context = net(x, t, context=net.encode_mask(mask))
    assert via_mask.shape == x.shape
    torch.testing.assert_close(via_mask, via_context)


def test_label_maps_and_one_hot_masks_encode_alike():
    net = tiny_denoiser(std=0.2)
    labels = torch.randint(0, 4, (2, 32, 32))
    one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        a = net.encode_mask(labels)
        b = net.encode_mask(labels[:, None])
        c = net.encode_mask(one_hot)
    assert a.shape == (2, 16, 32)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_the_mask_changes_the_prediction():
    net = tiny_denoiser(std=0.2)
    x = torch.randn(1, 3, 8, 8)
    t = torch.tensor([500])
    with torch.no_grad():
        nc = net(x, t, mask=torch.zeros(1, 32, 32, dtype=torch.long))
        gg5 = net(x, t, mask=torch.full((1, 32, 32), 3))
        null = net(x, t, context=net.null_context(1))
    assert (nc - gg5).abs().max() > 1e-3
    assert (nc - null).abs().max() > 1e-3


def test_scalar_timestep_is_shared_by_the_batch():
    net = tiny_denoiser(std=0.2)
    x = torch.randn(3, 3, 8, 8)
    mask = torch.randint(0, 4, (3, 32, 32))
    with torch.no_grad():
        a = net(x, torch.tensor(250), mask=mask)
        b = net(x, torch.full((3,), 250), mask=mask)
    torch.testing.assert_close(a, b)


def test_null_context_is_one_learned_sequence_for_every_sample():
    net = tiny_denoiser(std=0.2)
    null = net.null_context(5)
    assert null.shape == (5, 16, 32)
    assert torch.equal(null[0], null[4])
    null.sum().backward()
    assert net.null_tokens.grad is not None and torch.all(net.null_tokens.grad == 5)


def test_drop_context_swaps_in_null_tokens_at_the_given_rate():
    net = tiny_denoiser(std=0.2)
    ctx = net.encode_mask(torch.randint(0, 4, (400, 8, 8)))
    out = net.drop_context(ctx, 0.25, generator=torch.Generator().manual_seed(0))
    dropped = (out == net.null_context(400)).all(dim=(1, 2))
    kept = (out == ctx).all(dim=(1, 2))
    assert torch.all(dropped ^ kept)
    assert 0.18 < dropped.float().mean() < 0.32
    assert net.drop_context(ctx, 0.0) is ctx


def test_needs_exactly_one_of_mask_and_context():
    net = tiny_denoiser(std=0.2)
    x = torch.randn(1, 3, 8, 8)
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        net(x, torch.tensor([1]))
    with pytest.raises(ValueError, match="exactly one"):
        net(x, torch.tensor([1]), mask=mask, context=net.encode_mask(mask))


def test_rejects_labels_outside_the_classes():
    net = tiny_denoiser(std=0.2)
    with pytest.raises(ValueError, match=r"0\.\.3, got values 0\.\.4"):
        net.encode_mask(torch.tensor([[[0, 4], [1, 2]]]))


def test_rejects_parts_that_do_not_fit():
    with pytest.raises(ValueError, match="cross_attention_dim"):
        MaskConditionedUNet(tiny_unet(cross_attention_dim=48), MaskEncoder(context_dim=32, channels=(16, 32)))


def test_toy_factory_is_about_two_million_parameters_and_runs_on_16px_latents():
    net = mask_ldm_toy()
    n = sum(p.numel() for p in net.parameters())
    assert 1.5e6 < n < 2.5e6
    with torch.no_grad():
        out = net(torch.randn(2, 3, 16, 16), torch.tensor([3, 999]), mask=torch.randint(0, 4, (2, 64, 64)))
    assert out.shape == (2, 3, 16, 16)


def test_cond_drop_prob_drops_masks_only_in_training_and_only_for_mask_input():
    net = tiny_denoiser(std=0.2)
    net.cond_drop_prob = 1.0
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([100, 100])
    mask = torch.full((2, 32, 32), 3)
    with torch.no_grad():
        null = net(x, t, context=net.null_context(2))
        conditioned = net(x, t, mask=mask)  # eval mode: mask kept
        net.train()
        dropped = net(x, t, mask=mask)
        explicit = net(x, t, context=net.encode_mask(mask))  # explicit tokens are used as given
    net.eval()
    assert (conditioned - null).abs().max() > 1e-3
    torch.testing.assert_close(dropped, null)
    torch.testing.assert_close(explicit, conditioned)
