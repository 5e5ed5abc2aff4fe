"""Guidance distillation (SD-GD): teach the denoiser to give, in one evaluation, what the guided teacher gives in two.

Classifier-free guidance samples with ``eps_u + w (eps_c - eps_u)``: the conditional and the unconditional ("no
mask") predictions of the same network, two evaluations per step. Distilling it (Meng et al., CVPR 2023, first stage,
at one fixed ``w``) trains a student, started from the teacher's weights, to predict that combination directly from
the mask alone: on the usual noised training latents z_t, the regression target is the teacher's guided prediction
instead of the drawn noise. The student then samples as plain SD does (``guidance_scale=1``), at SD's cost.

:class:`GuidanceDistillPrepareBatch` wraps any ``prepare_batch`` that returns ``(z_t, eps, (), {"timesteps", "mask"})``
(:class:`LatentDiffusionPrepareBatch` on real tiles, :class:`DISCPrepareBatch` on fused latents) and swaps the target,
so MONAI's stock ``SupervisedTrainer`` with its MSE loss does the distillation and every handler works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["GuidanceDistillPrepareBatch"]


class GuidanceDistillPrepareBatch:
    """``prepare_batch`` whose target is a frozen teacher's classifier-free-guided noise prediction.

    Args:
        prepare_batch: the batch preparation that noises the clean latents, returning
            ``(z_t, eps, (), {"timesteps": t, "mask": m})``; its ``eps`` is replaced.
        teacher: the frozen denoiser with trained null tokens (``encode_mask``, ``null_context``, ``forward(x, t,
            context=)``), e.g. the SD weights trained with ``cond_drop_prob``; put on the batches' device by the caller.
        guidance_scale: the guidance weight w distilled, ``eps_u + w (eps_c - eps_u)``; 1 reproduces the teacher's
            conditional prediction (plain self-distillation).

    Raises:
        ValueError: on ``guidance_scale < 1``.
    """

    def __init__(
        self,
        prepare_batch: Callable[..., tuple[torch.Tensor, torch.Tensor, tuple, dict]],
        teacher: nn.Module,
        guidance_scale: float = 3.0,
    ) -> None:
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be at least 1, got {guidance_scale}.")
        self.prepare_batch = prepare_batch
        self.teacher = teacher.eval().requires_grad_(False)
        self.guidance_scale = float(guidance_scale)

    def attach(self, engine: Any) -> None:
        """Pass an evaluator's epoch hook on to the wrapped batch preparation, when it has one."""
        if hasattr(self.prepare_batch, "attach"):
            self.prepare_batch.attach(engine)

    @torch.no_grad()
    def target(self, noisy: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The teacher's guided prediction for ``(z_t, t, m)``: one batched evaluation of both conditions."""
        context = self.teacher.encode_mask(mask)
        if self.guidance_scale == 1.0:
            return self.teacher(noisy, timesteps, context=context)
        null = self.teacher.null_context(len(noisy)).to(context)
        eps_u, eps_c = self.teacher(
            torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]), context=torch.cat([null, context])
        ).chunk(2)
        return eps_u + self.guidance_scale * (eps_c - eps_u)

    def __call__(
        self, batchdata: Any, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        noisy, _, args, kw = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        return noisy, self.target(noisy, kw["timesteps"], kw["mask"]), args, kw
