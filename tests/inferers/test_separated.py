"""fuse_latents (Eq. 2) and SeparatedConditionInferer (SD-SC): exactness against K plain samplings, branch counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import CallLog, PoolAutoencoder, tiny_denoiser

from monai_disc.inferers.mask_ldm import MaskLDMSampler, ddim_scheduler
from monai_disc.inferers.separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks
from monai_disc.transforms import label_masks_at_size

torch.set_num_threads(1)

STEPS = 5


def _mask(labels_2x2: list[list[int]], size: int = 32) -> torch.Tensor:
    """(size, size) label map of four quadrants."""
    coarse = torch.tensor(labels_2x2, dtype=torch.float32)[None, None]
    return F.interpolate(coarse, size=size, mode="nearest")[0, 0].long()


def _decode(z: torch.Tensor, ae: PoolAutoencoder) -> torch.Tensor:
    return ae.decode_stage_2_outputs(z / ae.scale_factor).clamp(-1, 1)


def _hand_fused(separated: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Eq. 2 written out: sum_k z^k * m_k with the binary masks of label_masks_at_size."""
    m = label_masks_at_size(masks, len(separated), separated[0].shape[-2:])
    return sum(z * m[:, k : k + 1] for k, z in enumerate(separated))


# ------------------------------------------------------------------------------------------------ fuse_latents
def test_fuse_latents_takes_each_latent_pixel_from_the_top_left_label_of_its_block():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 3, 4, 4, generator=g)
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[0, :8, :] = 3  # top half GG5
    mask[0, 4, 4] = 1  # top-left pixel of block (1, 1): that block takes label 1
    mask[0, 5, 5] = 2  # inside block (1, 1) but not its top-left pixel: ignored
    mask[1] = 2
    fused = fuse_latents(latents, mask)
    assert fused.shape == (2, 3, 4, 4)
    torch.testing.assert_close(fused[0, :, 0, 0], latents[0, 3, :, 0, 0], rtol=0, atol=0)
    torch.testing.assert_close(fused[0, :, 1, 1], latents[0, 1, :, 1, 1], rtol=0, atol=0)
    torch.testing.assert_close(fused[0, :, 3, 2], latents[0, 0, :, 3, 2], rtol=0, atol=0)
    torch.testing.assert_close(fused[1], latents[1, 2], rtol=0, atol=0)
    torch.testing.assert_close(fused, _hand_fused(list(latents.unbind(1)), mask), rtol=0, atol=0)


def test_fuse_latents_accepts_channel_masks_latent_size_masks_and_passes_gradients():
    latents = torch.randn(1, 4, 2, 4, 4, requires_grad=True)
    mask = torch.randint(0, 4, (1, 4, 4))
    big = mask.repeat_interleave(8, -1).repeat_interleave(8, -2)
    a = fuse_latents(latents, mask)
    b = fuse_latents(latents, big[:, None])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    a.sum().backward()
    # every latent pixel takes exactly one label's value: the gradient is the one-hot of the mask
    torch.testing.assert_close(latents.grad[0, :, 0], F.one_hot(mask[0], 4).permute(2, 0, 1).float())


@pytest.mark.parametrize(
    "latents, mask, message",
    [
        (torch.zeros(1, 4, 3, 4, 4), torch.zeros(1, 18, 16, dtype=torch.long), "multiple"),
        (torch.zeros(1, 4, 3, 4, 4), torch.full((1, 16, 16), 4), "0..3"),
        (torch.zeros(1, 2, 3, 4, 4), torch.full((1, 16, 16), 2), "0..1"),
        (torch.zeros(2, 4, 3, 4, 4), torch.zeros(1, 16, 16, dtype=torch.long), "samples"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 16, 16, dtype=torch.long), "(B, K, C, h, w)"),
        (torch.zeros(1, 4, 3, 4, 4), torch.full((1, 16, 16), 0.5), "integer"),
        (torch.zeros(1, 4, 3, 4, 4), torch.zeros(16, 16, dtype=torch.long), "(B, H, W)"),
    ],
)
def test_fuse_latents_rejects_sizes_and_labels_that_do_not_fit(latents, mask, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fuse_latents(latents, mask)


def test_present_labels_are_those_left_at_latent_size():
    mask = _mask([[0, 2], [2, 2]])[None]
    mask[0, 1, 1] = 3  # not a top-left pixel of a 4x4 block: vanishes at latent size
    present = present_labels(mask, (8, 8), 4)
    assert present.tolist() == [[True, False, True, False]]
    assert uniform_masks(4, (2, 3))[3].tolist() == [[3, 3, 3], [3, 3, 3]]


# --------------------------------------------------------------------------------------------- SC sampling
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_sc_equals_fused_uniform_runs(guidance):
    """SD-SC == K ordinary samplings under uniform masks from the same noise, fused by Eq. 2, then decoded."""
    net, ae = tiny_denoiser(), PoolAutoencoder()
    sampler = MaskLDMSampler(num_inference_steps=STEPS, guidance_scale=guidance, progress=False)
    masks = torch.stack([_mask([[0, 1], [2, 3]]), _mask([[1, 1], [3, 3]])])
    seeds = [7, 8]
    tiles, separated = SeparatedConditionInferer(sampler).sample(masks, ae, net, seeds=seeds, return_separated=True)

    noise = MaskLDMSampler.make_noise(seeds, (3, 8, 8))
    runs = []
    for k in range(4):
        uniform = torch.full_like(masks, k)
        runs.append(sampler.sample_latents(noise, net.encode_mask(uniform), net))
    expected = _decode(_hand_fused(runs, masks), ae)
    assert expected.abs().max() < 1.0  # nothing clamped: the comparison sees every difference
    torch.testing.assert_close(tiles, expected, rtol=0, atol=1e-5)
    # the separated latents (about +-200 here) are those runs where a label is present, zeros where it is absent
    torch.testing.assert_close(separated[0], torch.stack(runs)[:, 0], rtol=0, atol=2e-4)
    torch.testing.assert_close(separated[1, [1, 3]], torch.stack(runs)[[1, 3], 1], rtol=0, atol=2e-4)
    assert not separated[1, [0, 2]].any()
    # and the fusion matters: the branches differ from each other
    assert (runs[0] - runs[3]).abs().mean() > 0.1


def test_a_two_label_mask_runs_two_branches_in_one_call_per_step():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    log = CallLog(net)
    inferer = SeparatedConditionInferer(MaskLDMSampler("ddim", num_inference_steps=STEPS, progress=False))
    inferer.sample(_mask([[0, 2], [0, 2]])[None], ae, net, seeds=[0])
    assert log.batches == [2] * STEPS
    log.batches.clear()
    masks = torch.stack([_mask([[0, 2], [0, 2]]), _mask([[1, 1], [1, 1]]), _mask([[0, 1], [2, 3]])])
    inferer.sample(masks, ae, net, seeds=[0, 1, 2])
    assert log.batches == [2 + 1 + 4] * STEPS  # labels present, not 3 x K
    log.batches.clear()
    SeparatedConditionInferer(
        MaskLDMSampler("ddim", num_inference_steps=STEPS, guidance_scale=2.0, progress=False)
    ).sample(masks, ae, net, seeds=[0, 1, 2])
    assert log.batches == [2 * 7] * STEPS  # guidance doubles the one batched call


def test_one_label_mask_gives_the_sd_tile():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    sampler = MaskLDMSampler(num_inference_steps=STEPS, progress=False)
    masks = torch.stack([_mask([[2, 2], [2, 2]]), _mask([[0, 0], [0, 0]])])
    sd = sampler.sample(masks, ae, net, seeds=[3, 4])
    sc = SeparatedConditionInferer(sampler).sample(masks, ae, net, seeds=[3, 4])
    torch.testing.assert_close(sc, sd, rtol=0, atol=1e-5)


def test_fuse_step_zero_is_sd_and_an_inner_fuse_step_follows_the_split_loop():
    net = tiny_denoiser()
    sampler = MaskLDMSampler("ddim", num_inference_steps=STEPS, progress=False)
    masks = torch.stack([_mask([[0, 3], [3, 3]]), _mask([[1, 2], [2, 1]])])
    seeds = [11, 12]
    noise = MaskLDMSampler.make_noise(seeds, (3, 8, 8))
    sd = sampler.sample_latents(noise, net.encode_mask(masks), net)
    at_zero = SeparatedConditionInferer(sampler, fuse_step=0).sample_latents(noise, masks, net)
    torch.testing.assert_close(at_zero, sd, rtol=0, atol=1e-5)

    # an independent DDIM loop: 2 separated steps under uniform masks, fuse, 3 steps under the full mask
    scheduler = ddim_scheduler()
    scheduler.set_timesteps(STEPS)
    steps = [int(t) for t in scheduler.timesteps]
    branches = []
    for k in range(4):
        x, ctx = noise, net.encode_mask(torch.full_like(masks, k))
        for t in steps[:2]:
            x, _ = scheduler.step(net(x, torch.tensor([t]), context=ctx), t, x)
        branches.append(x)
    x, ctx = _hand_fused(branches, masks), net.encode_mask(masks)
    for t in steps[2:]:
        x, _ = scheduler.step(net(x, torch.tensor([t]), context=ctx), t, x)

    log = CallLog(net)
    split = SeparatedConditionInferer(sampler, fuse_step=2).sample_latents(noise, masks, net)
    torch.testing.assert_close(split, x, rtol=0, atol=2e-4)  # latents of about +-200
    assert log.batches == [4] * 2 + [2] * 3  # 2 + 2 branches for 2 steps, then the 2 fused samples
    at_end = SeparatedConditionInferer(sampler).sample_latents(noise, masks, net)
    assert (split - at_end).abs().mean() > 1e-3 and (split - sd).abs().mean() > 1e-3
    same_as_end = SeparatedConditionInferer(sampler, fuse_step=STEPS).sample_latents(noise, masks, net)
    torch.testing.assert_close(same_as_end, at_end, rtol=0, atol=0)


def test_seeds_and_explicit_noise_give_the_same_tiles_in_any_batch():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    inferer = SeparatedConditionInferer(MaskLDMSampler(num_inference_steps=STEPS, progress=False))
    masks = torch.stack([_mask([[0, 1], [1, 0]]), _mask([[3, 2], [2, 2]])])
    by_seed = inferer.sample(masks[:, None], ae, net, seeds=[5, 6])
    by_noise = inferer.sample(masks, ae, net, noise=MaskLDMSampler.make_noise([5, 6], (3, 8, 8)))
    alone = inferer.sample(masks[1:], ae, net, seeds=[6])
    assert by_seed.shape == (2, 3, 32, 32)
    torch.testing.assert_close(by_seed, by_noise, rtol=0, atol=0)
    torch.testing.assert_close(alone[0], by_seed[1], rtol=0, atol=1e-5)


def test_bad_arguments_are_rejected_with_a_reason():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    sampler = MaskLDMSampler(num_inference_steps=STEPS, progress=False)
    with pytest.raises(ValueError, match="fuse_step"):
        SeparatedConditionInferer(sampler, fuse_step=STEPS + 1)
    inferer = SeparatedConditionInferer(sampler)
    with pytest.raises(ValueError, match="0..3"):
        inferer.sample(torch.full((1, 32, 32), 4), ae, net, seeds=[0])
    with pytest.raises(ValueError, match="seeds"):
        inferer.sample(torch.zeros(2, 32, 32, dtype=torch.long), ae, net, seeds=[0])
    with pytest.raises(ValueError, match="noise"):
        inferer.sample(torch.zeros(1, 32, 32, dtype=torch.long), ae, net, noise=torch.zeros(1, 3, 4, 4))


def test_sc_plugs_into_the_generation_evaluator_inferer_like_the_sd_sampler():
    from monai_disc.engines.generation import MaskLDMInferer

    net, ae = tiny_denoiser(), PoolAutoencoder()
    inferer = SeparatedConditionInferer(MaskLDMSampler(num_inference_steps=STEPS, progress=False))
    masks = torch.stack([_mask([[0, 1], [1, 0]]), _mask([[3, 2], [2, 2]])])
    tiles = MaskLDMInferer(inferer, ae)(masks[:, None], net, seeds=[5, 6])
    torch.testing.assert_close(tiles, inferer.sample(masks, ae, net, seeds=[5, 6]), rtol=0, atol=0)
