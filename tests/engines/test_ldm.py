import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from monai_disc.engines import LatentDiffusionPrepareBatch, draw_timesteps
from monai_disc.inferers import LDM_SCHEDULE
from tests.support import PoolAutoencoder


@pytest.fixture
def scheduler():
    return DDPMScheduler(**LDM_SCHEDULE)


def test_uniform_timesteps_by_default(scheduler):
    t = draw_timesteps(scheduler, 20000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < scheduler.num_train_timesteps
    assert abs((t < 500).float().mean().item() - 0.5) < 0.02


def test_min_snr_draws_fewer_nearly_clean_steps_and_keeps_noisy_ones_uniform(scheduler):
    t = draw_timesteps(scheduler, 50000, torch.Generator().manual_seed(0), snr_gamma=1.0)
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    noisy = snr[t] <= 1.0  # weight 1 there: as often as any other noisy step
    assert (t < 100).float().mean() < 0.05  # 10% under uniform draws
    counts = torch.bincount(t, minlength=1000).float()
    flat = counts[snr <= 1.0]
    assert flat.std() / flat.mean() < 0.2
    assert noisy.float().mean() > 0.6


def test_draws_repeat_with_the_same_generator(scheduler):
    a = draw_timesteps(scheduler, 64, torch.Generator().manual_seed(3), snr_gamma=5.0)
    b = draw_timesteps(scheduler, 64, torch.Generator().manual_seed(3), snr_gamma=5.0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="snr_gamma"):
        draw_timesteps(scheduler, 4, snr_gamma=0.0)


def test_prepare_batch_noises_latents_with_its_timesteps(scheduler):
    ae = PoolAutoencoder()
    prepare = LatentDiffusionPrepareBatch(ae, scheduler, seed=0, snr_gamma=1.0)
    batch = {"image": torch.rand(6, 3, 16, 16) * 2 - 1, "mask": torch.randint(0, 4, (6, 1, 16, 16))}
    noisy, noise, args, kwargs = prepare(batch)
    t = kwargs["timesteps"]
    expected = scheduler.add_noise(prepare.encode(batch["image"]), noise, t)
    torch.testing.assert_close(noisy, expected)
    assert args == () and kwargs["mask"].shape == (6, 16, 16)
