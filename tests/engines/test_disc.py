"""DISC fine-tuning: random masks from a shape bank, fused separated latents noised for Eq. 3, SD-DISC and CoTrain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDPMScheduler
from support import tiny_denoiser

from monai_disc.engines.disc import DISCPrepareBatch
from monai_disc.engines.distill import DistillationSet, write_distillation_set
from monai_disc.engines.ldm import LatentDiffusionPrepareBatch
from monai_disc.engines.mixed import LOSS_REAL, LOSS_SYNTH, MixedSupervisedTrainer
from monai_disc.inferers.mask_ldm import LDM_SCHEDULE, MaskLDMSampler
from monai_disc.masks import ShapeBank, random_masks
from monai_disc.networks.autoencoder import vq_f4_toy
from monai_disc.transforms import labels_at_size

torch.set_num_threads(1)


def _bank(size: int = 16) -> ShapeBank:
    """Three drawings: halves (2 ranks), quadrants of three sizes (3 ranks), a single region (1 rank)."""
    halves = np.zeros((size, size), np.int64)
    halves[:, : size // 4] = 1
    thirds = np.zeros((size, size), np.int64)
    thirds[: size // 2, : size // 2] = 1
    thirds[: size // 4, : size // 4] = 2
    return ShapeBank.from_masks([halves, thirds, np.zeros((size, size), np.int64)], ["h", "t", "u"], min_fraction=0)


def test_random_masks_colour_bank_shapes_with_distinct_grades_at_the_tile_size():
    bank = _bank()
    one_shape = ShapeBank(bank.shapes[1:2], ["t"])  # three ranks
    masks = random_masks(one_shape, 40, np.random.default_rng(0), size=32)
    assert masks.shape == (40, 32, 32) and masks.dtype == np.int64
    ranks = one_shape.shapes[0]
    for m in masks:
        small = m[::2, ::2]  # back at the bank's size (nearest x2)
        grades = [np.unique(small[ranks == r]) for r in range(3)]
        assert all(g.size == 1 for g in grades)  # a rank region takes one grade
        assert len({int(g[0]) for g in grades}) == 3  # no two ranks share a grade
    assert np.unique(masks).tolist() == [0, 1, 2, 3]

    mixed = random_masks(bank, 60, np.random.default_rng(0), size=32)
    assert {len(np.unique(m)) for m in mixed} == {1, 2, 3}
    assert np.array_equal(mixed, random_masks(bank, 60, np.random.default_rng(0), size=32))
    # two drawable labels: the three-rank shape is never used, and only those labels appear
    two = random_masks(bank, 30, np.random.default_rng(1), labels=(1, 3))
    assert two.shape == (30, 16, 16)
    assert set(np.unique(two).tolist()) == {1, 3} and max(len(np.unique(m)) for m in two) == 2
    fixed = random_masks(bank, 30, np.random.default_rng(2), weights=(0.0, 1.0, 0.0, 0.0))
    assert np.unique(fixed).tolist() == [1]  # one positive weight: only the one-rank shape fits


def test_prepare_batch_noises_the_latents_fused_by_the_mask_it_returns():
    scheduler = DDPMScheduler(**LDM_SCHEDULE)
    prep = DISCPrepareBatch(scheduler, _bank(), image_size=32, seed=5)
    b, k = 6, 4
    # latent k is the constant k + 10, so the fused latent says which label each latent pixel took
    latents = (torch.arange(k, dtype=torch.float32) + 10).view(1, k, 1, 1, 1).expand(b, k, 3, 8, 8).clone()
    noisy, noise, args, kwargs = prep({"latents": latents, "index": torch.arange(b)})
    t, masks = kwargs["timesteps"], kwargs["mask"]
    assert args == () and noisy.shape == noise.shape == (b, 3, 8, 8)
    assert masks.shape == (b, 32, 32) and masks.dtype == torch.int64 and t.shape == (b,)
    assert 0 <= int(t.min()) and int(t.max()) < 1000 and len(set(t.tolist())) > 1
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z0 = (noisy - (1 - abar).sqrt() * noise) / abar.sqrt()
    expected = (labels_at_size(masks, 8).float() + 10)[:, None].expand(-1, 3, -1, -1)
    torch.testing.assert_close(z0, expected, rtol=0, atol=1e-3)
    assert len(torch.unique(masks)) > 1
    # seeded: reset at an epoch start gives the same batch again, and the next batch differs
    prep.reset()
    again = prep(latents)
    torch.testing.assert_close(again[0], noisy, rtol=0, atol=0)
    assert not torch.equal(prep(latents)[3]["mask"], masks)


def test_prepare_batch_rejects_latents_that_do_not_fit():
    prep = DISCPrepareBatch(DDPMScheduler(**LDM_SCHEDULE), _bank(), image_size=30)
    with pytest.raises(ValueError, match="multiple"):
        prep(torch.zeros(1, 4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, K, C, h, w\)"):
        prep({"latents": torch.zeros(1, 3, 8, 8)})
    with pytest.raises(ValueError, match="label 3"):
        DISCPrepareBatch(DDPMScheduler(**LDM_SCHEDULE), _bank(), image_size=32)(torch.zeros(1, 2, 3, 8, 8))


@pytest.fixture(scope="module")
def distill_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    sampler = MaskLDMSampler(num_inference_steps=2, progress=False)
    net = tiny_denoiser()
    write_distillation_set(root, net, 8, (3, 8, 8), image_size=32, shard_size=4, sampler=sampler, progress=False)
    return root


def test_sd_disc_trains_the_stock_supervised_trainer_on_the_distillation_set(distill_dir):
    net = tiny_denoiser(1)
    start = [p.detach().clone() for p in net.parameters()]
    loader = DataLoader(DistillationSet(distill_dir), batch_size=4, shuffle=True)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=torch.nn.MSELoss(),
        prepare_batch=DISCPrepareBatch(DDPMScheduler(**LDM_SCHEDULE), _bank(), image_size=32, seed=0),
        decollate=False,
    )
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
    )
    trainer.run()
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert any(not torch.equal(a, b) for a, b in zip(start, net.parameters()))


def test_cotrain_loss_is_the_mean_of_the_real_and_the_disc_losses(distill_dir):
    torch.manual_seed(0)
    net = tiny_denoiser(2)
    autoencoder = vq_f4_toy(channels=(8, 16, 16), norm_num_groups=8, n_embed=16)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    masks = F.interpolate(torch.randint(0, 4, (4, 1, 4, 4), generator=g).float(), size=32).long()
    real = DataLoader([{"image": images[i], "mask": masks[i]} for i in range(4)], batch_size=2)
    scheduler = DDPMScheduler(**LDM_SCHEDULE)
    trainer = MixedSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=real,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=torch.nn.MSELoss(),
        prepare_batch=LatentDiffusionPrepareBatch(autoencoder, scheduler),
        synthetic_loader=DataLoader(DistillationSet(distill_dir), batch_size=4, shuffle=True),
        synthetic_prepare_batch=DISCPrepareBatch(scheduler, _bank(), image_size=32, seed=0),
        lam=0.5,
        decollate=False,
    )
    parts = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: parts.append(tuple(float(e.state.output[k]) for k in ("loss", LOSS_REAL, LOSS_SYNTH))),
    )
    trainer.run()
    assert len(parts) == 2
    for total, l_real, l_disc in parts:
        assert all(math.isfinite(x) and x > 0 for x in (l_real, l_disc))
        assert total == pytest.approx((l_real + l_disc) / 2, rel=1e-6)
        assert l_real != pytest.approx(l_disc)  # two different batches, two different losses


def test_random_masks_crop_keeps_the_drawing_scale():
    import numpy as np

    from monai_disc.masks import ShapeBank, random_masks

    stripes = np.zeros((8, 8), np.uint8)
    stripes[:, 4:] = 1  # two ranks, 4 px wide each
    bank = ShapeBank(stripes[None], ["tile"])
    rng = np.random.default_rng(0)
    cropped = random_masks(bank, 20, rng, size=4, crop=True)
    resized = random_masks(bank, 20, rng, size=4)
    # a crop keeps 4 px wide stripes (so a 4 px window holds one or two labels, never split 2+2 always);
    # a resize halves them (always exactly 2 px of each label per row)
    assert {len(np.unique(m[0])) for m in cropped} == {1, 2}
    assert all((m[0] == m[0, 0]).sum() == 2 for m in resized)
