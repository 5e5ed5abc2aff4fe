"""Sampling of tiles whose Gleason patterns follow a mask (the SD generator), with any solver of the registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from torch import Tensor, nn
from tqdm.auto import tqdm

from monai_disc.inferers.acceleration import CompiledCache, autocast_for, resolve_dtype, to_channels_last
from monai_disc.inferers.schedulers import (
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_SOLVER,
    LDM_SCHEDULE,
    ddim_scheduler,
    make_scheduler,
)
from monai_disc.networks.denoiser import MaskConditionedUNet
from monai_disc.transforms.functional import as_label_map

__all__ = [
    "DEFAULT_NUM_INFERENCE_STEPS",
    "DEFAULT_SOLVER",
    "LDM_SCHEDULE",
    "MaskLDMSampler",
    "ddim_scheduler",
    "latent_shape_for",
    "tile_size_multiple",
]


def latent_shape_for(autoencoder: nn.Module, image_size: Sequence[int], latent_channels: int) -> tuple[int, int, int]:
    """(C, h, w) latent of an image of ``image_size`` (H, W) under ``autoencoder``.

    Uses the autoencoder's ``downsample_factor`` attribute; without one, encodes a single zero image once.

    Args:
        autoencoder: first stage with ``encode_stage_2_inputs``, ideally a ``downsample_factor`` attribute.
        image_size: (H, W) of the tiles.
        latent_channels: channels of the latents (the denoiser's input channels).

    Returns:
        (latent_channels, H // f, W // f).

    Raises:
        ValueError: if the image size is not a multiple of the downsampling factor.
    """
    h, w = (int(s) for s in image_size)
    factor = getattr(autoencoder, "downsample_factor", None)
    if factor is None:
        param = next(autoencoder.parameters(), None)
        device = param.device if param is not None else "cpu"
        with torch.no_grad():
            z = autoencoder.encode_stage_2_inputs(torch.zeros(1, 3, h, w, device=device))
        return latent_channels, int(z.shape[-2]), int(z.shape[-1])
    factor = int(factor)
    if h % factor or w % factor:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the autoencoder's downsampling factor {factor}.")
    return latent_channels, h // factor, w // factor


def tile_size_multiple(autoencoder: nn.Module, denoiser: nn.Module) -> int:
    """Masks (and tiles) must have sides that are a positive multiple of this: the autoencoder's downsampling
    factor times the denoiser U-Net's (2 per level below the first)."""
    factor = int(getattr(autoencoder, "downsample_factor", 1))
    levels = len(getattr(getattr(denoiser, "unet", denoiser), "block_out_channels", ()) or (1,))
    return factor * 2 ** (levels - 1)


class MaskLDMSampler:
    """Sampling of tiles that follow a Gleason mask (SD; also SD-DISC, SD-DISC-CoTrain and SD-GD weights).

    Holds the scheduler, step count and guidance scale and takes the networks as arguments, as MONAI inferers do,
    so one sampler serves any trained model. :meth:`sample_latents` is the hot loop and knows nothing of masks:
    the separated-condition inferer reuses it with uniform-mask tokens.

    Each tile's noise comes from its own seed (:meth:`make_noise`), and every operation in the loop acts on each
    sample alone, so a tile is the same whatever batch it is drawn in.

    Args:
        scheduler: the solver: a name of :data:`monai_disc.inferers.SOLVERS` or a scheduler with
            ``set_timesteps``/``step`` (MONAI's, or diffusers' behind :class:`monai_disc.inferers.DiffusersSolver`);
            None is :data:`DEFAULT_SOLVER` (:func:`make_scheduler`).
        num_inference_steps: solver steps (:data:`DEFAULT_NUM_INFERENCE_STEPS`; DDIM 200 in the paper).
        guidance_scale: classifier-free guidance weight w in eps_u + w (eps_c - eps_u); 1 is plain conditional
            sampling (one network call per step), other values run conditional and unconditional halves as one
            batched call per step.
        progress: show a tqdm bar over the steps.
        decode_batch_size: decode at most this many latents at once (the 512 px decoder needs far more memory
            per tile than the denoiser); ``None`` decodes the whole batch together.
        dtype: precision of the network calls (see :mod:`monai_disc.inferers.acceleration`): ``None`` / "auto"
            is bfloat16 autocast on CUDA and float32 on a CPU; "bf16", "fp16", "fp32" or a ``torch.dtype`` force
            one. The scheduler step runs in float32 whatever the choice; tiles come back as float32.
        channels_last: put the denoiser's and the autoencoder's convolution weights (converted in place, once)
            and the latents in channels-last order.
        compile: ``torch.compile`` the denoiser on first use (the first sampling pays the compilation).
        compile_options: ``torch.compile`` keyword arguments, e.g. ``{"mode": "reduce-overhead"}`` (CUDA graphs;
            the loop's shapes are static per batch size) or ``{"mode": "max-autotune"}``.

    Raises:
        ValueError: on a non-positive step count or more steps than the scheduler was trained with, or an
            unknown dtype.
    """

    def __init__(
        self,
        scheduler: Scheduler | str | None = None,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        guidance_scale: float = 1.0,
        progress: bool = True,
        decode_batch_size: int | None = None,
        dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.scheduler = make_scheduler(scheduler)
        if not 0 < num_inference_steps <= self.scheduler.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must lie in 1..{self.scheduler.num_train_timesteps}, got {num_inference_steps}."
            )
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.progress = progress
        if decode_batch_size is not None and decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1 or None, got {decode_batch_size}.")
        self.decode_batch_size = decode_batch_size
        resolve_dtype(dtype, "cpu")  # an unknown name fails here, not at the first sampling
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self._compiled = CompiledCache(compile_options)

    def compute_dtype(self, device: str | torch.device) -> torch.dtype:
        """The precision the network calls run in on `device` (``dtype`` resolved)."""
        return resolve_dtype(self.dtype, device)

    def autocast(self, device: str | torch.device) -> Any:
        """Context manager running the networks in :meth:`compute_dtype` on `device`."""
        return autocast_for(device, self.compute_dtype(device))

    def prepare(self, *networks: nn.Module) -> None:
        """Apply the layout option to the networks (in place; a no-op unless ``channels_last``)."""
        if self.channels_last:
            to_channels_last(*networks)

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def decode(self, latents: Tensor, autoencoder: nn.Module) -> Tensor:
        """Tiles (B, 3, H, W) in [-1, 1], float32, from scaled latents: chunks of ``decode_batch_size``, in the
        sampler's precision and layout (the codebook lookup stays in float32).

        Args:
            latents: (B, C, h, w) latents as the denoiser produces them (times the autoencoder's scale factor).
            autoencoder: first stage with ``decode_stage_2_outputs`` (a missing ``scale_factor`` counts as 1).

        Returns:
            float32 tiles.
        """
        scale = getattr(autoencoder, "scale_factor", 1.0)
        self.prepare(autoencoder)
        chunks = latents.split(self.decode_batch_size or max(1, latents.shape[0]))
        with torch.no_grad(), self.autocast(latents.device):
            tiles = torch.cat([autoencoder.decode_stage_2_outputs(self._layout(z / scale)).float() for z in chunks])
        return tiles.clamp_(-1.0, 1.0).contiguous()

    @staticmethod
    def make_noise(
        seeds: Sequence[int], latent_shape: tuple[int, int, int], device: str | torch.device | None = None
    ) -> Tensor:
        """z_T for each seed: one CPU generator per sample, so a tile's noise depends on its seed alone.

        Drawn on the CPU and moved, so a seed gives the same noise on any device.

        Args:
            seeds: one integer per sample.
            latent_shape: (C, h, w).
            device: where the noise goes.

        Returns:
            (len(seeds), C, h, w) float32 noise.
        """
        noise = torch.stack(
            [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
        return noise.to(device)

    @torch.no_grad()
    def sample_latents(
        self,
        noise: Tensor,
        context: Tensor,
        denoiser: nn.Module,
        null_context: Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> Tensor:
        """Denoise z_T to z_0 under fixed context tokens, or run only the steps [start, stop) of the DDIM grid.

        Everything that does not change between steps (timestep tensors on the device, the doubled context for
        guidance) is built once before the loop; each step is one network call (in the sampler's precision,
        layout and compilation) and one scheduler step (in the dtype of `noise`). DDIM's step is a function of
        (model output, t, sample) and the step count, so running a grid in two windows, the second from the
        first's output, gives the same latents as running it at once (SD-SC fuses between).

        Args:
            noise: z_T (or the latent after step ``start`` of an earlier window), (B, C, h, w).
            context: (B, N, D) condition tokens, computed once by the caller (``denoiser.encode_mask``).
            denoiser: the noise predictor, called as ``denoiser(x, timesteps, context=tokens)``.
            null_context: (B, N, D) or (1, N, D) unconditional tokens for guidance; defaults to
                ``denoiser.null_context(B)``. Unused when ``guidance_scale == 1``.
            start: first step of the window, in 0..``num_inference_steps``.
            stop: end of the window (exclusive); None runs to the last step.

        Returns:
            the latent after step ``stop`` (z_0 for a full run), (B, C, h, w), in the dtype of ``noise`` (the
            scheduler step runs in that precision even when the network runs in bfloat16).

        Raises:
            ValueError: if noise and context disagree in batch size, or the window lies outside the grid.
        """
        b = noise.shape[0]
        if context.shape[0] != b:
            raise ValueError(f"context has {context.shape[0]} samples but noise has {b}.")
        scheduler = self.scheduler
        scheduler.set_timesteps(self.num_inference_steps)
        grid = [int(t) for t in scheduler.timesteps]  # plain ints: table lookups stay on the host
        stop = len(grid) if stop is None else int(stop)  # PLMS visits one timestep twice: len(grid) = steps + 1
        if not 0 <= start <= stop <= len(grid):
            raise ValueError(f"step window [{start}, {stop}) does not lie in the {len(grid)} steps of the grid.")
        steps = grid[start:stop]
        if not steps:
            return noise
        guided = self.guidance_scale != 1.0
        if guided:
            if null_context is None:
                null_context = denoiser.null_context(b)
            null_context = null_context.to(context).expand(b, -1, -1)
            context = torch.cat([null_context, context])
        batch = context.shape[0]
        t_device = torch.tensor(steps, device=noise.device).unsqueeze(1).expand(-1, batch)  # one copy, not one per step

        self.prepare(denoiser)
        network = self._compiled(denoiser) if self.compile else denoiser
        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if self.compile else None
        autocast = self.autocast(noise.device)

        x = self._layout(noise)
        for i, t in enumerate(tqdm(steps, desc="denoising", leave=False, disable=not self.progress)):
            if mark_step is not None:  # CUDA graph outputs of the previous step are consumed: reuse their memory
                mark_step()
            with autocast:
                eps = network(torch.cat([x, x]) if guided else x, t_device[i], context=context)
            eps = eps.to(x.dtype)
            if guided:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + self.guidance_scale * (eps_c - eps_u)
            x, _ = scheduler.step(eps, t, x)
        return x

    def initial_noise(
        self,
        masks: Tensor,
        autoencoder: nn.Module,
        denoiser: nn.Module,
        seeds: Sequence[int] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """z_T for label maps (B, H, W) on the denoiser's device: from `seeds` (drawn from torch's global generator
        when neither is given) or the given `noise`, checked against the latent shape.

        Raises:
            ValueError: if seeds or noise do not match the masks.
        """
        b = masks.shape[0]
        device = next(denoiser.parameters()).device
        shape = latent_shape_for(autoencoder, masks.shape[-2:], denoiser.in_channels)
        if noise is None:
            if seeds is None:
                seeds = torch.randint(0, 2**31 - 1, (b,)).tolist()
            if len(seeds) != b:
                raise ValueError(f"{len(seeds)} seeds for {b} masks.")
            return self.make_noise(seeds, shape, device)
        if tuple(noise.shape) != (b, *shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(b, *shape)} for these masks.")
        return noise.to(device)

    @torch.no_grad()
    def sample(
        self,
        masks: Tensor,
        autoencoder: nn.Module,
        denoiser: MaskConditionedUNet,
        seeds: Sequence[int] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Tiles for Gleason masks.

        Args:
            masks: integer label maps (B, H, W) or (B, 1, H, W), H and W multiples of the autoencoder's factor.
            autoencoder: first stage with ``decode_stage_2_outputs`` (and ``downsample_factor``, ``scale_factor``;
                a missing ``scale_factor`` counts as 1).
            denoiser: a :class:`monai_disc.networks.MaskConditionedUNet`.
            seeds: one noise seed per mask (see :meth:`make_noise`). When neither seeds nor noise are given, seeds
                are drawn from torch's global generator.
            noise: explicit z_T (B, C, h, w) instead of seeds.

        Returns:
            tiles (B, 3, H, W) in [-1, 1], float32.

        Raises:
            ValueError: if seeds or noise do not match the masks.
        """
        masks = as_label_map(masks, name="masks")
        b = masks.shape[0]
        device = next(denoiser.parameters()).device
        noise = self.initial_noise(masks, autoencoder, denoiser, seeds, noise)

        with self.autocast(device):
            context = denoiser.encode_mask(masks.to(device))
        null_context = denoiser.null_context(b) if self.guidance_scale != 1.0 else None
        latents = self.sample_latents(noise, context, denoiser, null_context)
        return self.decode(latents, autoencoder)
