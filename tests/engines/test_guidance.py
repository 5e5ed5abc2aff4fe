"""Guidance distillation (SD-GD): the target is the guided prediction, and the stock trainer learns it."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDPMScheduler
from support import tiny_denoiser
from torch import nn

from monai_disc.engines import GuidanceDistillPrepareBatch, draw_timesteps
from monai_disc.inferers.mask_ldm import LDM_SCHEDULE, MaskLDMSampler

torch.set_num_threads(1)


def _masks(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):  # two labels per mask, split at a random column
        a, b = torch.randperm(4, generator=g)[:2].tolist()
        cut = int(torch.randint(2, 14, (1,), generator=g))
        masks[i, :, :cut], masks[i, :, cut:] = a, b
    return masks


class _Noised:
    """Inner batch preparation: clean latents and masks noised at drawn timesteps (as Eq. 1 does), the same noise
    and timesteps at every call."""

    def __init__(self, seed: int = 0) -> None:
        self.scheduler = DDPMScheduler(**LDM_SCHEDULE)
        self.seed = seed

    def __call__(self, batch, device=None, non_blocking=False, **kwargs):
        z0, masks = batch
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(z0.shape, generator=generator)
        t = draw_timesteps(self.scheduler, len(z0), generator)
        return self.scheduler.add_noise(z0, noise, t), noise, (), {"timesteps": t, "mask": masks}


class _Oracle(nn.Module):
    """A student that predicts exactly the distillation target from the mask (passed through as its tokens)."""

    def __init__(self, prepare: GuidanceDistillPrepareBatch) -> None:
        super().__init__()
        self.prepare = prepare

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask

    def forward(self, x, timesteps, context):
        return self.prepare.target(x, timesteps.expand(len(x)), context)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_student_that_learnt_the_target_samples_unguided_what_the_teacher_samples_guided(guidance):
    teacher = tiny_denoiser(seed=1)
    masks = _masks(3)
    noise = MaskLDMSampler.make_noise([0, 1, 2], (3, 4, 4))
    guided = MaskLDMSampler(num_inference_steps=8, guidance_scale=guidance, progress=False)
    expected = guided.sample_latents(noise, teacher.encode_mask(masks), teacher)
    student = _Oracle(GuidanceDistillPrepareBatch(_Noised(), teacher, guidance_scale=guidance))
    plain = MaskLDMSampler(num_inference_steps=8, progress=False)
    got = plain.sample_latents(noise, masks, student)
    assert torch.allclose(got, expected, atol=1e-5)
    if guidance != 1.0:  # the guided teacher differs from the plain one: the test tells them apart
        assert not torch.allclose(expected, plain.sample_latents(noise, teacher.encode_mask(masks), teacher), atol=1e-3)


def test_the_stock_trainer_moves_the_student_towards_the_guided_teacher():
    teacher = tiny_denoiser(seed=1)
    student = copy.deepcopy(teacher).train()
    prepare = GuidanceDistillPrepareBatch(_Noised(), teacher, guidance_scale=3.0)
    data = [(torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)), _masks(8))]
    noisy, target, _, kw = prepare(data[0])

    def distance() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(student(noisy, kw["timesteps"], mask=kw["mask"]), target))

    before = distance()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=60,
        train_data_loader=data,
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), 1e-4),
        loss_function=nn.MSELoss(),
        prepare_batch=prepare,
    )
    trainer.run()
    assert distance() < 0.1 * before
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher stays frozen


def test_guidance_below_one_is_refused():
    with pytest.raises(ValueError, match="guidance_scale must be at least 1"):
        GuidanceDistillPrepareBatch(_Noised(), tiny_denoiser(), guidance_scale=0.5)
