"""DISC fine-tuning batches: stored separated latents fused by random masks, noised for the diffusion loss (Eq. 3).

A batch of the distillation set (:class:`monai_disc.engines.distill.DistillationSet`) holds, per set, the K
latents {z_0^k} that one noise gives under the K uniform masks. For each set a random generation mask is drawn
as at sampling time (an m_freq shape of a training mask from a :class:`monai_disc.masks.ShapeBank`, its ranks
given grades by :func:`monai_disc.transforms.assign_grades`), the latents are fused by it (Eq. 2, the mask
reduced to latent size) into z_0^mixed, and z_0^mixed is noised with the cumulative schedule. The stock MONAI
``SupervisedTrainer`` then computes ``MSE(eps_theta(z_t, t, tau(m)), eps)``, the loss of Eq. 1 on the fused
latent, with the full-size mask as the condition.

SD-DISC trains with this batch preparation alone. SD-DISC-CoTrain averages it with Eq. 1 on real tiles:
:class:`monai_disc.engines.MixedSupervisedTrainer` with ``lam=0.5``, the real loader prepared by
:class:`monai_disc.engines.LatentDiffusionPrepareBatch` and the distillation loader by :class:`DISCPrepareBatch`
(``synthetic_prepare_batch``); its loss is ``0.5 * L_real + 0.5 * L_DISC``, the mean of the two.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.networks.schedulers import Scheduler
from monai.utils import ensure_tuple_rep

from monai_disc.engines.ldm import draw_timesteps
from monai_disc.inferers.separated import fuse_latents
from monai_disc.labels import NUM_CLASSES
from monai_disc.masks.bank import ShapeBank, drawable_labels, random_masks

__all__ = ["DISCPrepareBatch"]


class DISCPrepareBatch:
    """``prepare_batch`` of SD-DISC: fuse each set of separated latents by a random mask and noise the result.

    Returns ``(z_t, eps, (), {"timesteps": t, "mask": m})`` as :class:`LatentDiffusionPrepareBatch` does, so the
    same denoiser, loss (MSE), inferer and handlers train on real tiles (Eq. 1) and on fused latents (Eq. 3).

    Args:
        scheduler: the training noise schedule (``add_noise`` with the cumulative schedule), the one of Eq. 1.
        bank: m_freq shapes of the training masks, or the path of a saved bank.
        image_size: (H, W) or side of the tiles, the size of the masks the denoiser reads; a multiple of the
            latent size. None keeps the bank's size.
        latents_key: batch key of the separated latents (B, K, C, h, w); a bare tensor batch is used as is.
        labels: grades a mask may use.
        weights: fixed grade weights; None draws random weights per mask (Dirichlet(``concentration``)).
        concentration: Dirichlet concentration of the random weights.
        crop: take random tile-size windows of the bank shapes instead of resizing them (see :func:`random_masks`).
        seed: when given, masks, noise and timesteps come from generators reset at every epoch start of the engine
            this is attached to (:meth:`attach`), so a validation loss is comparable between epochs; None draws
            the mask generator's seed from torch's global generator (reproducible under ``set_determinism``) and
            the noise from torch's global generator.
        snr_gamma: min-SNR-gamma weighting of the timesteps, as the SD training used (see
            :func:`monai_disc.engines.draw_timesteps`); ``None`` is uniform.

    Raises:
        ValueError: on labels outside 0..3 or no drawable label.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        bank: ShapeBank | str | os.PathLike,
        image_size: int | Sequence[int] | None = None,
        latents_key: str = "latents",
        labels: Sequence[int] = tuple(range(NUM_CLASSES)),
        weights: Sequence[float] | None = None,
        concentration: float | Sequence[float] = 1.0,
        crop: bool = False,
        seed: int | None = None,
        snr_gamma: float | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.snr_gamma = snr_gamma
        self.crop = crop
        self.bank = bank if isinstance(bank, ShapeBank) else ShapeBank.load(bank)
        self.image_size: tuple[int, int] = (
            self.bank.spatial_size if image_size is None else tuple(int(s) for s in ensure_tuple_rep(image_size, 2))
        )
        self.latents_key = latents_key
        self.labels = tuple(int(x) for x in labels)
        if any(not 0 <= x < NUM_CLASSES for x in self.labels):
            raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got {self.labels}.")
        if drawable_labels(self.labels, weights) < 1:
            raise ValueError(f"no label can be drawn with weights {weights}.")
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.concentration = concentration
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.rng: np.random.Generator | None = None

    def attach(self, engine: Engine) -> None:
        """Reset the generators at each epoch start (listed among an evaluator's handlers)."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())

    def reset(self) -> None:
        """Restart the mask and noise streams from ``seed`` (a fresh mask stream when ``seed`` is None)."""
        if self.seed is None:
            self.generator = None
            self.rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        else:
            self.generator = torch.Generator().manual_seed(self.seed)
            self.rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(4,)))

    def masks(self, n: int) -> torch.Tensor:
        """``n`` random generation masks at the tile size, (n, H, W) int64 (see :func:`random_masks`)."""
        if self.rng is None:
            self.reset()
        assert self.rng is not None
        drawn = random_masks(
            self.bank, n, self.rng, self.image_size, self.labels, self.weights, self.concentration, crop=self.crop
        )
        return torch.from_numpy(drawn)

    def __call__(
        self, batchdata: Any, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        """(z_t, eps, (), {"timesteps", "mask"}) of a batch of separated latents.

        Raises:
            ValueError: latents that are not (B, K, C, h, w), or a tile size that is not a multiple of theirs.
        """
        data = batchdata[self.latents_key] if isinstance(batchdata, dict) else batchdata
        latents = torch.as_tensor(data).to(device, non_blocking=non_blocking).float().as_subclass(torch.Tensor)
        if latents.ndim != 5:
            raise ValueError(
                f"batch key {self.latents_key!r} must hold separated latents (B, K, C, h, w), "
                f"got shape {tuple(latents.shape)}."
            )
        if latents.shape[1] <= max(self.labels):
            raise ValueError(f"latents hold {latents.shape[1]} labels but masks may use label {max(self.labels)}.")
        h, w = latents.shape[-2:]
        if self.image_size[0] % h or self.image_size[1] % w:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the latent size {(h, w)}.")
        masks = self.masks(latents.shape[0]).to(latents.device)
        z0 = fuse_latents(latents, masks)
        if self.seed is not None and self.generator is None:
            self.reset()
        noise = torch.randn(z0.shape, generator=self.generator, dtype=z0.dtype).to(z0.device)
        timesteps = draw_timesteps(self.scheduler, z0.shape[0], self.generator, self.snr_gamma).to(z0.device)
        noisy = self.scheduler.add_noise(original_samples=z0, noise=noise, timesteps=timesteps)
        return noisy, noise, (), {"timesteps": timesteps, "mask": masks}
