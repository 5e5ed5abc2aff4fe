"""Separated-condition sampling (SD-SC): denoise one noise under each uniform mask, then fuse by the mask (Eq. 2).

A mask-conditioned denoiser draws each Gleason pattern best when the whole tile carries one label. SC therefore
copies a sample's noise z_T once per label of its mask, denoises copy k under the uniform mask "every pixel is
k", and assembles the final latent from the copies, each where its label lies (the mask reduced to latent size
by nearest neighbour). All copies of all samples go through the denoiser as one batch per step, and labels a
mask does not hold are never denoised, so a tile costs about as many SD samplings as it has labels, not K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from monai_disc.inferers.mask_ldm import MaskLDMSampler
from monai_disc.inferers.schedulers import is_stateless
from monai_disc.transforms.functional import as_label_map, labels_at_size

__all__ = ["SeparatedConditionInferer", "fuse_latents", "present_labels", "uniform_masks"]


def _labels_at_latent_size(mask: Tensor, size: Sequence[int], num_classes: int) -> Tensor:
    """The mask reduced to the latent size by :func:`labels_at_size`'s nearest rule, checked against K."""
    labels = as_label_map(mask)
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0 or labels.shape[-2] % h or labels.shape[-1] % w:
        raise ValueError(
            f"mask size {tuple(labels.shape[-2:])} is not a multiple of the latent size {(h, w)}: the mask must be "
            "the tile (or the latent) of these latents."
        )
    small = labels_at_size(labels, (h, w))
    if small.numel():
        lo, hi = torch.aminmax(small)
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"mask labels must lie in 0..{num_classes - 1} (one latent per label), got values {int(lo)}..{int(hi)}."
            )
    return small


def fuse_latents(latents: Tensor, mask: Tensor) -> Tensor:
    """Eq. 2: z = sum_k z^k * [m == k], the mask reduced to latent size by nearest neighbour.

    The reduction is :func:`monai_disc.transforms.labels_at_size` (the top-left pixel of each f x f block, as
    ``interpolate(mode="nearest")``), the rule the DISC training masks and the binary masks m_k use, so a label
    lands on the same latent pixels everywhere. Each output pixel takes its label's latent exactly (a gather, not
    a weighted sum), so fusion adds no rounding and gradients flow to the selected latents.

    Args:
        latents: (B, K, C, h, w), latent k denoised under label k.
        mask: integer labels (B, H, W) or (B, 1, H, W), (H, W) a multiple of (h, w) (the tile or the latent
            itself), values in 0..K-1.

    Returns:
        (B, C, h, w) fused latents, dtype and device of ``latents``.

    Raises:
        ValueError: on shapes that do not fit together, non-integer masks or labels >= K.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, K, C, h, w), one latent per label, got shape {tuple(latents.shape)}.")
    b, k, c, h, w = latents.shape
    small = _labels_at_latent_size(mask, (h, w), k).to(latents.device)
    if small.shape[0] != b:
        raise ValueError(f"mask has {small.shape[0]} samples but latents have {b}.")
    index = small[:, None, None].expand(b, 1, c, h, w)
    return latents.gather(1, index)[:, 0]


def present_labels(mask: Tensor, latent_size: Sequence[int], num_classes: int) -> Tensor:
    """(B, K) bool: which labels a mask holds at latent size, i.e. which branches SC must denoise.

    A label that covers no latent pixel after the nearest reduction would contribute nothing to Eq. 2, so it is
    not present.

    Args:
        mask: integer labels (B, H, W) or (B, 1, H, W).
        latent_size: (h, w).
        num_classes: K.

    Returns:
        bool tensor on the mask's device.
    """
    small = _labels_at_latent_size(mask, latent_size, num_classes)
    present = torch.zeros(small.shape[0], num_classes, dtype=torch.bool, device=small.device)
    return present.scatter_(1, small.flatten(1), True)


def uniform_masks(num_classes: int, size: Sequence[int], device: str | torch.device | None = None) -> Tensor:
    """(K, H, W) int64 label maps, map k uniform at label k: the conditions sm_k of the separated branches."""
    h, w = int(size[0]), int(size[1])
    return torch.arange(num_classes, device=device).view(-1, 1, 1).expand(-1, h, w).contiguous()


class SeparatedConditionInferer:
    """SD-SC: one noise per sample, copied per label of its mask, denoised under uniform masks, fused by Eq. 2.

    Holds a :class:`MaskLDMSampler` (scheduler, steps, guidance, decode batch) and takes the networks as
    arguments, so one inferer serves SD, SD-DISC and SD-DISC-CoTrain weights. Per call, the tokens of the K
    uniform masks are computed once, the (sample, label) branches to run are chosen once (labels absent from a
    mask are skipped), and every DDIM step is one denoiser call on all branches of all samples together.

    ``fuse_step`` (an extension, not in the paper) fuses after that many separated DDIM steps and finishes the
    remaining steps on the fused latent under the full mask, which lets the denoiser blend label boundaries;
    ``None`` (or the step count) fuses at the end as the paper does, and ``0`` is plain SD.

    Args:
        sampler: the DDIM sampler to run branches with; defaults to ``MaskLDMSampler()``.
        fuse_step: separated steps before fusion, in 0..``sampler.num_inference_steps``; None fuses at the end.
            An inner fuse step needs a stateless scheduler (DDIM), not PLMS, DPM-Solver++ or UniPC.

    Raises:
        ValueError: for a ``fuse_step`` outside that range, or an inner one with a multistep scheduler.
    """

    def __init__(self, sampler: MaskLDMSampler | None = None, fuse_step: int | None = None) -> None:
        self.sampler = sampler if sampler is not None else MaskLDMSampler()
        steps = self.sampler.num_inference_steps
        if fuse_step is not None and not 0 <= int(fuse_step) <= steps:
            raise ValueError(f"fuse_step must lie in 0..{steps} (the sampler's steps) or be None, got {fuse_step}.")
        self.fuse_step = None if fuse_step is None or int(fuse_step) == steps else int(fuse_step)
        if self.fuse_step is not None and not is_stateless(self.sampler.scheduler):
            raise ValueError(
                "fuse_step needs a scheduler whose step depends on (model output, t, sample) alone, such as DDIM; "
                f"{type(self.sampler.scheduler).__name__} keeps a history of noise predictions across steps."
            )

    @torch.no_grad()
    def separated_latents(
        self,
        noise: Tensor,
        denoiser: nn.Module,
        mask_size: Sequence[int],
        present: Tensor | None = None,
        stop: int | None = None,
    ) -> Tensor:
        """{z^k}: each sample's noise denoised under every uniform mask it needs, all branches batched.

        Args:
            noise: z_T, (B, C, h, w).
            denoiser: a :class:`monai_disc.networks.MaskConditionedUNet` (``encode_mask``, ``num_classes``).
            mask_size: (H, W) of the uniform masks: the tile size the mask encoder was trained at.
            present: (B, K) bool, the branches to run; None runs all K labels (the distillation set).
            stop: run DDIM steps [0, stop) only; None runs them all (z_0^k).

        Returns:
            (B, K, C, h, w); branches not run hold zeros.

        Raises:
            ValueError: if ``present`` does not fit the noise and the denoiser's labels.
        """
        b = noise.shape[0]
        k = int(denoiser.num_classes)
        device = noise.device
        if present is None:
            present = torch.ones(b, k, dtype=torch.bool, device=device)
        elif tuple(present.shape) != (b, k):
            raise ValueError(f"present must be (B, K) = {(b, k)}, got {tuple(present.shape)}.")
        rows, labels = present.to(device).nonzero(as_tuple=True)  # branch order: by sample, then label
        out = noise.new_zeros((b, k, *noise.shape[1:]))
        if rows.numel() == 0:
            return out
        with self.sampler.autocast(device):
            tokens = denoiser.encode_mask(uniform_masks(k, mask_size, device))  # once per call, K x (N, D)
        out[rows, labels] = self.sampler.sample_latents(noise[rows], tokens[labels], denoiser, stop=stop)
        return out

    @torch.no_grad()
    def sample_latents(
        self, noise: Tensor, masks: Tensor, denoiser: nn.Module, return_separated: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Fused z_0 for the masks.

        Args:
            noise: z_T, (B, C, h, w), one noise per sample (shared by its branches).
            masks: integer labels (B, H, W) or (B, 1, H, W) at the tile size (a multiple of (h, w)).
            denoiser: a :class:`monai_disc.networks.MaskConditionedUNet`.
            return_separated: also return the separated latents.

        Returns:
            z_0 (B, C, h, w); with ``return_separated`` also (B, K, C, h, w), the separated latents at the fusion
            (z_0^k when fusing at the end), zeros for labels absent from a mask.

        Raises:
            ValueError: if masks and noise do not fit together.
        """
        masks = as_label_map(masks, name="masks")
        if masks.shape[0] != noise.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks for {noise.shape[0]} noise samples.")
        k = int(denoiser.num_classes)
        masks = masks.to(noise.device)
        present = present_labels(masks, noise.shape[-2:], k)
        separated = self.separated_latents(noise, denoiser, masks.shape[-2:], present, self.fuse_step)
        fused = fuse_latents(separated, masks)
        if self.fuse_step is not None:
            with self.sampler.autocast(noise.device):
                context = denoiser.encode_mask(masks)
            null = denoiser.null_context(1) if self.sampler.guidance_scale != 1.0 else None
            fused = self.sampler.sample_latents(fused, context, denoiser, null, start=self.fuse_step)
        return (fused, separated) if return_separated else fused

    def decode(self, latents: Tensor, autoencoder: nn.Module) -> Tensor:
        """Tiles (B, 3, H, W) in [-1, 1] from scaled latents, as the sampler decodes (:meth:`MaskLDMSampler.decode`:
        chunks of its ``decode_batch_size``, its precision and layout)."""
        return self.sampler.decode(latents, autoencoder)

    @torch.no_grad()
    def sample(
        self,
        masks: Tensor,
        autoencoder: nn.Module,
        denoiser: nn.Module,
        seeds: Sequence[int] | None = None,
        noise: Tensor | None = None,
        return_separated: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Tiles for Gleason masks by separated conditions.

        Args:
            masks: integer label maps (B, H, W) or (B, 1, H, W), H and W multiples of the autoencoder's factor.
            autoencoder: first stage with ``decode_stage_2_outputs`` (and ``downsample_factor``, ``scale_factor``).
            denoiser: a :class:`monai_disc.networks.MaskConditionedUNet`.
            seeds: one noise seed per mask (:meth:`MaskLDMSampler.make_noise`, so SD and SC start from the same
                z_T for a seed); when neither seeds nor noise are given, seeds come from torch's global generator.
            noise: explicit z_T (B, C, h, w) instead of seeds.
            return_separated: also return the separated latents (see :meth:`sample_latents`).

        Returns:
            tiles (B, 3, H, W) in [-1, 1], float32; with ``return_separated`` also the (B, K, C, h, w) latents.

        Raises:
            ValueError: if masks, seeds or noise do not fit together.
        """
        masks = as_label_map(masks, name="masks")
        device = next(denoiser.parameters()).device
        noise = self.sampler.initial_noise(masks, autoencoder, denoiser, seeds, noise)
        out = self.sample_latents(noise, masks.to(device), denoiser, return_separated)
        fused, separated = out if isinstance(out, tuple) else (out, None)
        tiles = self.decode(fused, autoencoder)
        return (tiles, separated) if separated is not None else tiles
