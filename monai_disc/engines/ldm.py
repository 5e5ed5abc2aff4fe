"""Training pieces for the mask-conditioned LDM (Eq. 1) that plug into MONAI's stock SupervisedTrainer.

MONAI's ``DiffusionPrepareBatch`` draws image-shaped noise, and the latent inferer's argument order
clashes with the trainer's; instead of subclassing the trainer, the batch preparation below encodes
tiles to latents with the frozen autoencoder and hands the denoiser ``(z_t, timesteps, mask)``. The
stock trainer then computes ``MSE(eps_theta(z_t, t, tau(m)), eps)``, and the stock evaluator the
validation loss, with every MONAI handler working unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.networks.schedulers import Scheduler
from torch import nn

from monai_disc.labels import colorize

__all__ = ["LatentDiffusionPrepareBatch", "SampleGridHandler", "draw_timesteps", "preview_masks", "mask_tile_grid"]


def draw_timesteps(
    scheduler: Scheduler, n: int, generator: torch.Generator | None = None, snr_gamma: float | None = None
) -> torch.Tensor:
    """Training timesteps: uniform (Eq. 1 as written), or min-SNR-gamma weighted by importance sampling.

    Min-SNR-gamma (Hang et al., 2023) weights the eps loss at step t by ``min(SNR(t), gamma) / SNR(t)``: the
    nearly noise-free steps, whose large and mostly unpredictable eps error otherwise dominates the gradient, count
    less, and the noisy steps that decide a tile's layout (and so whether it follows its mask) count more. Drawing
    t with probability proportional to that weight gives the expected gradient of the weighted loss (up to a
    constant factor that the learning rate absorbs), so the stock trainer's plain MSE stays.

    Args:
        scheduler: the training schedule (``alphas_cumprod``, ``num_train_timesteps``).
        n: number of timesteps.
        generator: CPU random generator, for reproducible draws.
        snr_gamma: gamma of min-SNR weighting; ``None`` draws uniformly.

    Returns:
        (n,) int64 timesteps on the CPU.
    """
    if snr_gamma is None:
        return torch.randint(0, scheduler.num_train_timesteps, (n,), generator=generator)
    if snr_gamma <= 0:
        raise ValueError(f"snr_gamma must be positive, got {snr_gamma}.")
    alphas = scheduler.alphas_cumprod.double().cpu()
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=snr_gamma) / snr
    return torch.multinomial(weights, n, replacement=True, generator=generator)


class LatentDiffusionPrepareBatch:
    """Turn a batch of tiles and masks into a noised latent, its noise target and the mask condition.

    Args:
        autoencoder: frozen first stage with ``encode_stage_2_inputs`` and a ``scale_factor`` buffer.
        scheduler: the training noise schedule (``add_noise`` with the cumulative schedule).
        image_key: batch key of the tiles, float in [-1, 1], (B, 3, H, W).
        mask_key: batch key of the label maps, (B, 1, H, W) or (B, H, W) with values 0..K-1.
        seed: when given, noise and timesteps come from a generator reset by :meth:`attach`'s engine at
            every epoch start, so a validation loss is comparable between epochs.
        snr_gamma: min-SNR-gamma weighting of the timesteps (see :func:`draw_timesteps`); ``None`` is uniform.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        scheduler: Scheduler,
        image_key: str = "image",
        mask_key: str = "mask",
        seed: int | None = None,
        snr_gamma: float | None = None,
    ) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.image_key = image_key
        self.mask_key = mask_key
        self.seed = seed
        self.snr_gamma = snr_gamma
        self.generator: torch.Generator | None = None

    def attach(self, engine: Engine) -> None:
        """Reset the generator at each epoch start (listed among an evaluator's handlers)."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())

    def reset(self) -> None:
        self.generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of the tiles: ``scale_factor * encode(x)``."""
        scale = getattr(self.autoencoder, "scale_factor", 1.0)
        return self.autoencoder.encode_stage_2_inputs(images) * scale

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images = torch.as_tensor(batchdata[self.image_key]).to(device, non_blocking=non_blocking).float()
        masks = torch.as_tensor(batchdata[self.mask_key]).to(device, non_blocking=non_blocking)
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"masks {tuple(masks.shape)} and images {tuple(images.shape)} differ in size")
        latents = self.encode(images.as_subclass(torch.Tensor))
        if self.seed is not None and self.generator is None:
            self.reset()
        noise = torch.randn(latents.shape, generator=self.generator, dtype=latents.dtype).to(latents.device)
        timesteps = draw_timesteps(self.scheduler, latents.shape[0], self.generator, self.snr_gamma).to(latents.device)
        noisy = self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        return noisy, noise, (), {"timesteps": timesteps, "mask": masks.long().as_subclass(torch.Tensor)}


class SampleGridHandler:
    """Every `interval` iterations, sample tiles for fixed masks and log mask | tile | overlay to TensorBoard.

    Args:
        sampler: a :class:`monai_disc.inferers.MaskLDMSampler` (few steps are enough to watch training).
        autoencoder: the first stage used to decode.
        denoiser: the network being trained (or its EMA copy).
        masks: fixed label maps (N, H, W) to draw for.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        interval: iterations between grids.
        seeds: one noise seed per mask, fixed so successive grids are comparable.
    """

    def __init__(
        self,
        sampler: Any,
        autoencoder: nn.Module,
        denoiser: nn.Module,
        masks: torch.Tensor,
        summary_writer: Any,
        interval: int = 500,
        seeds: Sequence[int] | None = None,
        tag: str = "samples",
    ) -> None:
        self.sampler = sampler
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.masks = torch.as_tensor(masks).long()
        self.writer = summary_writer
        self.interval = interval
        self.seeds = list(seeds) if seeds is not None else list(range(len(self.masks)))
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        was_training = self.denoiser.training
        self.denoiser.eval()
        device = next(self.denoiser.parameters()).device
        tiles = self.sampler.sample(self.masks.to(device), self.autoencoder, self.denoiser, seeds=self.seeds)
        self.denoiser.train(was_training)
        self.writer.add_image(self.tag, mask_tile_grid(tiles.cpu(), self.masks), engine.state.iteration)
        self.writer.flush()


def mask_tile_grid(tiles: torch.Tensor, masks: torch.Tensor, alpha: float = 0.4) -> torch.Tensor:
    """(3, N*H, 3*W) float grid in [0, 1]: one row per sample, columns mask | tile | overlay."""
    rgb = (tiles.clamp(-1, 1) + 1) / 2
    colours = torch.from_numpy(colorize(masks.numpy())).permute(0, 3, 1, 2).float() / 255
    overlay = (1 - alpha) * rgb + alpha * colours
    rows = torch.cat([colours, rgb, overlay], dim=-1)  # (N, 3, H, 3W)
    return torch.cat(list(rows), dim=-2)


def preview_masks(dataset: Sequence[dict], num: int = 4, mask_key: str = "mask", scan: int = 64) -> torch.Tensor:
    """Label maps (num, H, W) for sample grids: among the first `scan` items, those with the most labels."""
    masks = [
        torch.as_tensor(dataset[i][mask_key]).long().reshape(dataset[i][mask_key].shape[-2:])
        for i in range(min(scan, len(dataset)))
    ]
    if not masks:
        raise ValueError("cannot draw preview masks from an empty dataset")
    masks.sort(key=lambda m: -len(torch.unique(m)))
    return torch.stack(masks[:num])
