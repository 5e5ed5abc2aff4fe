"""PLMS with its timesteps in step: an exact noise predictor lands on the DDIM result; MONAI's grid does not."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import PNDMScheduler
from support import tiny_denoiser

from monai_disc.inferers import (
    LDM_SCHEDULE,
    MaskLDMSampler,
    SeparatedConditionInferer,
    ddim_scheduler,
    plms_scheduler,
)


class ExactEps(torch.nn.Module):
    """The true noise of a sample that lies on the deterministic path from `x0` with noise `e`.

    It reads the noise level from the timestep it is told, so it is right only when the sampler tells the
    timestep of the sample it passes.
    """

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.alphas = x0, alphas_cumprod
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = int(timesteps.reshape(-1)[0])
        self.calls.append(t)
        a = self.alphas[t]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def _run(scheduler, steps: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    torch.manual_seed(0)
    x0, e = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    a = scheduler.alphas_cumprod
    oracle = ExactEps(x0, a)
    scheduler.set_timesteps(steps)
    start = int(scheduler.timesteps[0])  # z_T at the grid's first noise level
    x_t = a[start].sqrt() * x0 + (1 - a[start]).sqrt() * e
    sampler = MaskLDMSampler(scheduler, num_inference_steps=steps, progress=False)
    out = sampler.sample_latents(x_t, torch.zeros(1, 1, 1), oracle)
    expected = a[0].sqrt() * x0 + (1 - a[0]).sqrt() * e  # the final alpha-bar is that of step 0
    return out, expected, oracle.calls


def test_plms_grid_repeats_the_second_timestep():
    scheduler = plms_scheduler()
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert scheduler.num_inference_steps == 10


@pytest.mark.parametrize("steps", [10, 20])
def test_plms_with_an_exact_noise_predictor_lands_where_ddim_does(steps):
    out, expected, calls = _run(plms_scheduler(), steps)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert len(calls) == steps + 1
    ddim_out, ddim_expected, _ = _run(ddim_scheduler(), steps)
    assert (ddim_out - ddim_expected).abs().max() > 1e-3  # MONAI's DDIM grid is not aligned either (linspace)
    # MONAI's PLMS grid tells the network a timestep one step below its sample's: the result is off
    monai_out, _, _ = _run(
        PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, **LDM_SCHEDULE), steps
    )
    ours, theirs = (out - expected).abs().max(), (monai_out - expected).abs().max()
    assert theirs > 10 * max(float(ours), 1e-5)


def test_sc_refuses_an_inner_fuse_step_with_a_multistep_scheduler():
    sampler = MaskLDMSampler(plms_scheduler(), num_inference_steps=10, progress=False)
    with pytest.raises(ValueError, match="history of noise predictions"):
        SeparatedConditionInferer(sampler, fuse_step=5)
    SeparatedConditionInferer(sampler)  # fusing at the end runs the whole grid in one loop: fine
    net = tiny_denoiser()
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    masks[:, :, 16:] = 2
    tiles = SeparatedConditionInferer(sampler).sample(masks, _Pool(), net, seeds=[0])
    assert tiles.shape == (1, 3, 32, 32) and torch.isfinite(tiles).all()


class _Pool(torch.nn.Module):
    downsample_factor = 4

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(z, scale_factor=4) / 200
