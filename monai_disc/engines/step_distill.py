"""Step distillation: teach a student to reach, in a few solver steps, the latent a many-step teacher sampler reaches.

Guidance distillation's second stage (Meng et al., CVPR 2023) distils the guidance-distilled student (our SD-GD)
to fewer sampling steps. Here the teacher is a whole sampler (SD-GD with the default PLMS, 4 network evaluations)
and the student, started from the teacher's weights, runs its own short grid (e.g. DDIM, 2 steps) from the same
noise z_T under the same mask; the loss is the distance between the two final latents, back-propagated through the
student's steps (knowledge distillation of the sampler's trajectory, Luhman & Luhman 2021; one halving round of
progressive distillation with the whole teacher trajectory as its target).

:class:`SamplerDistillPrepareBatch` turns a batch of masks into ``(z_T, z_0 of the teacher, (), {"mask": m})`` and
:class:`FewStepInferer` runs the student's grid with gradients, so MONAI's stock ``SupervisedTrainer`` with its
MSE loss does the training and the stock evaluator the validation, as :class:`GuidanceDistillPrepareBatch` does
for the first stage.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from torch import nn

from monai_disc.inferers.mask_ldm import MaskLDMSampler, latent_shape_for
from monai_disc.inferers.schedulers import make_scheduler
from monai_disc.transforms.functional import as_label_map

__all__ = ["FewStepInferer", "SamplerDistillPrepareBatch"]


class SamplerDistillPrepareBatch:
    """``prepare_batch`` whose input is noise z_T and whose target is a frozen teacher sampler's z_0 from it.

    Args:
        sampler: the teacher's sampling (solver, steps, guidance), e.g. ``MaskLDMSampler("plms", 3)``.
        teacher: the frozen denoiser it samples with (put on the batches' device by the caller).
        autoencoder: the first stage (its ``downsample_factor`` gives the latent size of a mask).
        mask_key: batch key of the label maps, (B, 1, H, W) or (B, H, W).
        seed: when given, the noise comes from a generator reset by :meth:`attach`'s engine at every epoch
            start (a validation loss comparable between epochs); None draws from a generator seeded once by
            torch's global one (``set_determinism`` makes the run reproducible).
    """

    def __init__(
        self,
        sampler: MaskLDMSampler,
        teacher: nn.Module,
        autoencoder: nn.Module,
        mask_key: str = "mask",
        seed: int | None = None,
    ) -> None:
        self.sampler = sampler
        self.teacher = teacher.eval().requires_grad_(False)
        self.autoencoder = autoencoder
        self.mask_key = mask_key
        self.seed = seed
        self.generator: torch.Generator | None = None

    def attach(self, engine: Engine) -> None:
        """Reset the noise generator at each epoch start (listed among an evaluator's handlers)."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())

    def reset(self) -> None:
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def target(self, noise: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The teacher sampler's z_0 from ``noise`` under ``masks`` (tokens once, the whole grid)."""
        with self.sampler.autocast(noise.device):
            context = self.teacher.encode_mask(masks)
        null = self.teacher.null_context(len(masks)) if self.sampler.guidance_scale != 1.0 else None
        return self.sampler.sample_latents(noise, context, self.teacher, null)

    def __call__(
        self, batchdata: Any, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        masks = as_label_map(batchdata[self.mask_key], name=self.mask_key).to(device, non_blocking=non_blocking)
        if self.generator is None:
            self.reset()
        shape = latent_shape_for(self.autoencoder, masks.shape[-2:], self.teacher.in_channels)
        noise = torch.randn((len(masks), *shape), generator=self.generator).to(masks.device)
        return noise, self.target(noise, masks), (), {"mask": masks}


class FewStepInferer(Inferer):
    """The student's sampling loop with gradients: z_T and a mask in, z_0 out (the trainer's and evaluator's inferer).

    The loop is :meth:`MaskLDMSampler.sample_latents`'s (tokens once, one network call and one solver step per
    grid entry, unguided), so weights trained through it sample the same with ``MaskLDMSampler(solver, steps)``.

    Args:
        scheduler: the student's solver (a name of :data:`monai_disc.inferers.SOLVERS` or a scheduler).
        num_inference_steps: its steps.
    """

    def __init__(self, scheduler: Scheduler | str = "ddim-leading", num_inference_steps: int = 2) -> None:
        super().__init__()
        self.scheduler = make_scheduler(scheduler)
        self.num_inference_steps = int(num_inference_steps)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """z_0 of the student from z_T ``inputs`` (B, C, h, w) under ``mask`` (B, H, W), differentiable."""
        mask = kwargs["mask"]
        self.scheduler.set_timesteps(self.num_inference_steps)
        context = network.encode_mask(mask)
        x = inputs
        for t in [int(t) for t in self.scheduler.timesteps]:
            timesteps = torch.full((len(x),), t, device=x.device, dtype=torch.long)
            x, _ = self.scheduler.step(network(x, timesteps, context=context).to(x.dtype), t, x)
        return x
