from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer
from support import CallLog, PoolAutoencoder, tiny_denoiser

from monai_disc.inferers import DEFAULT_NUM_INFERENCE_STEPS, PLMSScheduler
from monai_disc.inferers.mask_ldm import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler, latent_shape_for


def _masks(n: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    coarse = torch.randint(0, 4, (n, 1, 4, 4), generator=g).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()


def test_same_seeds_give_the_same_tiles_and_different_seeds_differ():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    sampler = MaskLDMSampler(num_inference_steps=8, progress=False)
    masks = _masks(2)
    a = sampler.sample(masks, ae, net, seeds=[1, 2])
    b = sampler.sample(masks, ae, net, seeds=[1, 2])
    c = sampler.sample(masks, ae, net, seeds=[3, 4])
    assert a.shape == (2, 3, 32, 32)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.05
    assert a.min() >= -1 and a.max() <= 1


def test_a_tile_does_not_depend_on_batch_size_or_order():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    for guidance in (1.0, 3.0):
        sampler = MaskLDMSampler(num_inference_steps=6, guidance_scale=guidance, progress=False)
        masks = _masks(3)
        together = sampler.sample(masks, ae, net, seeds=[10, 11, 12])
        alone = sampler.sample(masks[2:], ae, net, seeds=[12])
        reordered = sampler.sample(masks[[1, 0]], ae, net, seeds=[11, 10])
        assert together.abs().max() < 1.0  # nothing clamped: the comparison sees every difference
        torch.testing.assert_close(alone[0], together[2], atol=1e-5, rtol=0)
        torch.testing.assert_close(reordered[0], together[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(reordered[1], together[0], atol=1e-5, rtol=0)


def test_noise_for_a_seed_is_the_same_in_any_batch():
    a = MaskLDMSampler.make_noise([5, 6, 7], (3, 8, 8), "cpu")
    b = MaskLDMSampler.make_noise([7], (3, 8, 8), "cpu")
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])


def test_conditional_sampling_calls_the_denoiser_once_per_step_on_the_batch():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    log = CallLog(net)
    MaskLDMSampler("ddim", num_inference_steps=7, progress=False).sample(_masks(3), ae, net, seeds=[0, 1, 2])
    assert log.batches == [3] * 7
    log.batches.clear()  # the default solver (PLMS) evaluates its second timestep twice: steps + 1 calls
    MaskLDMSampler(num_inference_steps=7, progress=False).sample(_masks(3), ae, net, seeds=[0, 1, 2])
    assert log.batches == [3] * 8


def test_guidance_makes_one_batched_call_of_doubled_batch_per_step():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    log = CallLog(net)
    MaskLDMSampler("ddim", num_inference_steps=5, guidance_scale=2.5, progress=False).sample(
        _masks(3), ae, net, seeds=[0, 1, 2]
    )
    assert log.batches == [6] * 5


def test_guidance_changes_the_tiles():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    masks = _masks(2)
    plain = MaskLDMSampler(num_inference_steps=6, progress=False).sample(masks, ae, net, seeds=[0, 1])
    guided = MaskLDMSampler(num_inference_steps=6, guidance_scale=4.0, progress=False).sample(
        masks, ae, net, seeds=[0, 1]
    )
    assert (plain - guided).abs().max() > 1e-3


def test_equals_monai_latent_diffusion_inferer_without_guidance():
    net, ae = tiny_denoiser(), PoolAutoencoder(scale_factor=150.0)
    masks = _masks(3)
    sampler = MaskLDMSampler("ddim", num_inference_steps=10, progress=False)
    noise = sampler.make_noise([4, 5, 6], (3, 8, 8), "cpu")
    ours = sampler.sample(masks, ae, net, noise=noise)

    scheduler = ddim_scheduler()
    scheduler.set_timesteps(10)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=float(ae.scale_factor))
    with torch.no_grad():
        theirs = inferer.sample(noise, ae, net, conditioning=net.encode_mask(masks), verbose=False)
    torch.testing.assert_close(ours, theirs.clamp(-1, 1), atol=1e-5, rtol=0)


def test_guided_latents_equal_monai_classifier_free_guidance_with_its_fill_value():
    net = tiny_denoiser()
    masks = _masks(2)
    sampler = MaskLDMSampler("ddim", num_inference_steps=8, guidance_scale=3.0, progress=False)
    noise = sampler.make_noise([1, 2], (3, 8, 8), "cpu")
    with torch.no_grad():
        context = net.encode_mask(masks)
        ours = sampler.sample_latents(noise, context, net, null_context=torch.full_like(context, -1.0))
        scheduler = ddim_scheduler()
        scheduler.set_timesteps(8)
        theirs = LatentDiffusionInferer(scheduler).sample(
            noise, PoolAutoencoder(1.0), net, conditioning=context, verbose=False, cfg=3.0, cfg_fill_value=-1.0
        )
    # MONAI embeds one timestep (1, C) and broadcasts; we embed (2B, C): the matmuls round differently, so the
    # latents (about +-200 with this random net) agree to float32 precision relative to their size
    scale = float(theirs.abs().max())
    torch.testing.assert_close(F.interpolate(ours, scale_factor=4), theirs, atol=1e-6 * scale, rtol=0)


def test_ddim_is_the_ldm_schedule_from_999_to_1():
    sampler = MaskLDMSampler("ddim", num_inference_steps=50, progress=False)
    s = sampler.scheduler
    assert s.num_train_timesteps == LDM_SCHEDULE["num_train_timesteps"]
    assert s.betas[0].item() == pytest.approx(0.0015) and s.betas[-1].item() == pytest.approx(0.0195)
    assert not s.clip_sample
    s.set_timesteps(50)
    assert int(s.timesteps[0]) == 999 and int(s.timesteps[-1]) == 1


def test_the_default_sampler_is_plms_at_three_steps_four_evaluations_on_the_ldm_schedule():
    s = MaskLDMSampler(progress=False).scheduler
    assert isinstance(s, PLMSScheduler) and s.betas[-1].item() == pytest.approx(0.0195)
    s.set_timesteps(DEFAULT_NUM_INFERENCE_STEPS)
    assert DEFAULT_NUM_INFERENCE_STEPS == 3 and s.timesteps.tolist() == [667, 334, 334, 1]


def test_latent_shape_comes_from_the_factor_or_a_probe():
    assert latent_shape_for(PoolAutoencoder(), (64, 32), 3) == (3, 16, 8)
    assert latent_shape_for(PoolAutoencoder(with_factor=False), (64, 32), 3) == (3, 16, 8)
    with pytest.raises(ValueError, match="multiple"):
        latent_shape_for(PoolAutoencoder(), (30, 32), 3)


def test_rejects_seeds_or_noise_that_do_not_match_the_masks():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    sampler = MaskLDMSampler(num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="2 seeds for 3 masks"):
        sampler.sample(_masks(3), ae, net, seeds=[0, 1])
    with pytest.raises(ValueError, match="expected"):
        sampler.sample(_masks(3), ae, net, noise=torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="num_inference_steps"):
        MaskLDMSampler(num_inference_steps=0)


def test_decoding_in_chunks_gives_the_same_tiles():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    masks = _masks(3)
    whole = MaskLDMSampler(num_inference_steps=3, progress=False).sample(masks, ae, net, seeds=[0, 1, 2])
    assert ae.decoded_batches == [3]
    ae.decoded_batches.clear()
    chunked = MaskLDMSampler(num_inference_steps=3, progress=False, decode_batch_size=2)
    tiles = chunked.sample(masks, ae, net, seeds=[0, 1, 2])
    assert ae.decoded_batches == [2, 1]
    torch.testing.assert_close(tiles, whole)
