"""Step distillation: the target is the teacher sampler's latent, the student's loop is the sampler's, and the
stock trainer moves the student's few steps towards the teacher's many."""

from __future__ import annotations

import copy

import torch
from monai.engines import SupervisedTrainer
from support import PoolAutoencoder, tiny_denoiser

from monai_disc.engines import FewStepInferer, SamplerDistillPrepareBatch
from monai_disc.inferers import MaskLDMSampler

torch.set_num_threads(1)


def _masks(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, 32, 32, dtype=torch.long)
    for i in range(n):  # two labels per mask, split at a random column
        a, b = torch.randperm(4, generator=g)[:2].tolist()
        cut = int(torch.randint(4, 28, (1,), generator=g))
        masks[i, :, :, :cut], masks[i, :, :, cut:] = a, b
    return masks


def test_the_target_is_the_teacher_samplers_latent_from_the_batchs_noise():
    teacher = tiny_denoiser(seed=1)
    sampler = MaskLDMSampler("plms", num_inference_steps=3, progress=False)
    prepare = SamplerDistillPrepareBatch(sampler, teacher, PoolAutoencoder(), seed=5)
    masks = _masks(3)
    noise, target, args, kwargs = prepare({"mask": masks})
    assert noise.shape == (3, 3, 8, 8) and args == () and torch.equal(kwargs["mask"], masks[:, 0])
    expected = sampler.sample_latents(noise, teacher.encode_mask(masks[:, 0]), teacher)
    torch.testing.assert_close(target, expected, atol=0, rtol=0)
    prepare.reset()  # a seeded preparation draws the same noise after a reset (validation epochs)
    again, _, _, _ = prepare({"mask": masks})
    assert torch.equal(again, noise)


def test_the_students_training_loop_is_its_sampling_loop():
    student = tiny_denoiser(seed=2)
    masks = _masks(2)[:, 0]
    noise = MaskLDMSampler.make_noise([3, 4], (3, 8, 8))
    inferer = FewStepInferer("ddim-leading", 2)
    with torch.no_grad():
        trained = inferer(noise, student, mask=masks)
    sampler = MaskLDMSampler("ddim-leading", num_inference_steps=2, progress=False)
    sampled = sampler.sample_latents(noise, student.encode_mask(masks), student)
    torch.testing.assert_close(trained, sampled, atol=1e-6, rtol=0)
    out = inferer(noise, student, mask=masks)
    out.square().mean().backward()  # gradients reach the mask encoder through both steps
    assert all(p.grad is not None for p in student.mask_encoder.parameters() if p.requires_grad)


def test_the_stock_trainer_brings_the_students_two_steps_closer_to_the_teachers_four():
    torch.manual_seed(0)
    teacher = tiny_denoiser(seed=1)
    student = copy.deepcopy(teacher)
    prepare = SamplerDistillPrepareBatch(
        MaskLDMSampler("plms", num_inference_steps=3, progress=False), teacher, PoolAutoencoder(), seed=7
    )
    inferer = FewStepInferer("ddim-leading", 2)
    batch = {"mask": _masks(4, seed=3)}

    def distance() -> float:
        noise, target, _, kwargs = prepare(batch)
        with torch.no_grad():
            return float((inferer(noise, student, **kwargs) - target).square().mean())

    prepare.reset()
    before = distance()

    class SameNoise(SamplerDistillPrepareBatch):
        def __call__(self, *args, **kwargs):
            self.reset()
            return super().__call__(*args, **kwargs)

    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=30,
        train_data_loader=[batch],
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-3),
        loss_function=torch.nn.MSELoss(),
        prepare_batch=SameNoise(prepare.sampler, teacher, PoolAutoencoder(), seed=7),
        inferer=inferer,
    )
    trainer.run()
    prepare.reset()
    after = distance()
    assert after < 0.5 * before
