"""eps_theta(z_t, t, tau(m)): MONAI's DiffusionModelUNet cross-attending to mask tokens."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from monai_disc.networks.mask_encoder import MaskEncoder

__all__ = ["MaskConditionedUNet", "mask_ldm_toy", "mask_ldm_vq_f4"]


class MaskConditionedUNet(nn.Module):
    """Noise predictor conditioned on a Gleason mask through cross-attention; the mask encoder trains with it.

    The mask is encoded once into tokens (``encode_mask``) and the same tokens serve every denoising step, so a
    sampler calls ``forward(x, t, context=tokens)``; training may pass ``mask=`` directly. A learned null token
    sequence stands for "no mask": training swaps it in for a fraction of the batch (``cond_drop_prob``, or
    ``drop_context`` by hand) so that classifier-free guidance can contrast conditional and unconditional
    predictions at sampling time.

    The call ``forward(x, timesteps=..., context=...)`` is the one MONAI's ``DiffusionInferer`` and
    ``LatentDiffusionInferer`` make, so this module plugs into them unchanged.

    Args:
        unet: a ``DiffusionModelUNet`` built with ``with_conditioning=True`` and
            ``cross_attention_dim == mask_encoder.context_dim``.
        mask_encoder: tau_theta.
        num_classes: number of mask labels; must match ``mask_encoder.num_classes``.
        cond_drop_prob: in training mode, the chance that ``forward(..., mask=...)`` replaces a sample's mask
            tokens by the null tokens (mask dropout for classifier-free guidance; 0.1 is usual, 0 disables).

    Raises:
        ValueError: if the parts do not fit together.
    """

    def __init__(
        self, unet: DiffusionModelUNet, mask_encoder: MaskEncoder, num_classes: int = 4, cond_drop_prob: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}.")
        if not getattr(unet, "with_conditioning", False):
            raise ValueError(
                "the DiffusionModelUNet must be built with with_conditioning=True to attend to mask tokens."
            )
        if mask_encoder.num_classes != num_classes:
            raise ValueError(
                f"mask_encoder.num_classes={mask_encoder.num_classes} differs from num_classes={num_classes}."
            )
        attn2 = next((m for name, m in unet.named_modules() if name.endswith("attn2")), None)
        context_in = getattr(getattr(attn2, "to_k", None), "in_features", None)
        if context_in is not None and context_in != mask_encoder.context_dim:
            raise ValueError(
                f"the UNet's cross_attention_dim ({context_in}) differs from mask_encoder.context_dim "
                f"({mask_encoder.context_dim})."
            )
        self.unet = unet
        self.mask_encoder = mask_encoder
        self.num_classes = num_classes
        self.cond_drop_prob = float(cond_drop_prob)
        self.null_tokens = nn.Parameter(torch.empty(1, mask_encoder.num_tokens, mask_encoder.context_dim))
        nn.init.trunc_normal_(self.null_tokens, std=0.02)

    @property
    def in_channels(self) -> int:
        """Latent channels the denoiser expects."""
        return int(self.unet.in_channels)

    def one_hot(self, mask: Tensor) -> Tensor:
        """One-hot float (B, K, H, W) from integer labels (B, H, W) / (B, 1, H, W), or a one-hot passed through.

        Args:
            mask: integer label map, or float one-hot (B, num_classes, H, W).

        Returns:
            float one-hot (B, num_classes, H, W) in the dtype of the encoder's weights.

        Raises:
            ValueError: on a shape that is neither, or labels outside 0..num_classes-1.
        """
        dtype = self.null_tokens.dtype
        if mask.ndim == 4 and mask.shape[1] == self.num_classes and mask.is_floating_point() and self.num_classes > 1:
            return mask.to(dtype)
        if mask.ndim == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim != 3:
            raise ValueError(
                f"mask must be integer labels (B, H, W) / (B, 1, H, W) or a one-hot (B, {self.num_classes}, H, W), "
                f"got shape {tuple(mask.shape)} dtype {mask.dtype}."
            )
        labels = mask.round().long() if mask.is_floating_point() else mask.long()
        lo, hi = torch.aminmax(labels)
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"mask labels must lie in 0..{self.num_classes - 1}, got values {int(lo)}..{int(hi)}.")
        return F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).to(dtype)

    def encode_mask(self, mask: Tensor) -> Tensor:
        """Context tokens tau(m) of a batch of masks.

        Args:
            mask: integer labels (B, H, W) / (B, 1, H, W) or float one-hot (B, num_classes, H, W).

        Returns:
            (B, N, D) tokens for cross-attention.
        """
        return self.mask_encoder(self.one_hot(mask))

    def null_context(self, batch_size: int) -> Tensor:
        """The learned "no mask" tokens for ``batch_size`` samples (an expanded view: no copy).

        Args:
            batch_size: number of samples.

        Returns:
            (batch_size, N, D) tokens.
        """
        return self.null_tokens.expand(batch_size, -1, -1)

    def drop_context(self, context: Tensor, drop_prob: float, generator: torch.Generator | None = None) -> Tensor:
        """Replace each sample's tokens by the null tokens with probability ``drop_prob`` (training for guidance).

        Args:
            context: (B, N, D) tokens from ``encode_mask``.
            drop_prob: probability in [0, 1] of dropping a sample's mask.
            generator: random generator on ``context``'s device, for reproducible dropout.

        Returns:
            (B, N, D) tokens; gradients flow to the encoder for kept samples and to the null tokens for dropped ones.

        Raises:
            ValueError: if ``drop_prob`` is outside [0, 1].
        """
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}.")
        if drop_prob == 0.0:
            return context
        b = context.shape[0]
        drop = torch.rand(b, 1, 1, device=context.device, generator=generator) < drop_prob
        return torch.where(drop, self.null_context(b).to(context.dtype), context)

    def forward(
        self, x: Tensor, timesteps: Tensor, mask: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        """Predicted noise for noisy latents.

        Args:
            x: noisy latents (B, C, h, w).
            timesteps: (B,) or (1,) diffusion steps, or a 0-d tensor / int shared by the batch.
            mask: the mask to condition on (see ``encode_mask``); give this or ``context``. In training mode its
                tokens are dropped to the null tokens with probability ``cond_drop_prob``.
            context: precomputed (B, N, D) tokens (``encode_mask`` or ``null_context``), used as given; give this
                or ``mask``.

        Returns:
            eps prediction, same shape as ``x``.

        Raises:
            ValueError: unless exactly one of ``mask`` and ``context`` is given.
        """
        if (mask is None) == (context is None):
            raise ValueError("give exactly one of mask= and context=.")
        if context is None:
            context = self.encode_mask(mask)  # type: ignore[arg-type]
            if self.training and self.cond_drop_prob > 0.0:
                context = self.drop_context(context, self.cond_drop_prob)
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=x.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps.reshape(1)
        out: Tensor = self.unet(x, timesteps=timesteps, context=context)
        return out


def _build(
    latent_channels: int,
    num_classes: int,
    cond_drop_prob: float,
    unet_kwargs: dict[str, Any],
    encoder_kwargs: dict[str, Any],
) -> MaskConditionedUNet:
    encoder = MaskEncoder(num_classes=num_classes, **encoder_kwargs)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=latent_channels,
        out_channels=latent_channels,
        with_conditioning=True,
        cross_attention_dim=encoder.context_dim,
        **unet_kwargs,
    )
    return MaskConditionedUNet(unet, encoder, num_classes=num_classes, cond_drop_prob=cond_drop_prob)


def mask_ldm_toy(
    latent_channels: int = 3,
    num_classes: int = 4,
    cond_drop_prob: float = 0.0,
    token_grid: int = 8,
    use_flash_attention: bool = True,
    **unet_kwargs: Any,
) -> MaskConditionedUNet:
    """A ~1.8 M-parameter denoiser for 3x16x16 latents of 64 px tiles: the embedded default, trainable on a CPU.

    Three levels (32, 64, 64 channels; 16, 8, 4 px), one residual block each, cross-attention at the two coarse
    levels and the middle, 8x8 mask tokens of 64 features.

    Args:
        latent_channels: channels of the autoencoder's latents.
        num_classes: number of mask labels.
        cond_drop_prob: mask dropout in training, for classifier-free guidance (see :class:`MaskConditionedUNet`).
        token_grid: side of the mask token grid (8: one token per 8 x 8 px of a 64 px tile; the shipped weights
            use 8).
        use_flash_attention: fused attention (``scaled_dot_product_attention``), equal to MONAI's explicit
            attention to float rounding.
        unet_kwargs: overrides of the ``DiffusionModelUNet`` arguments.

    Returns:
        the denoiser, randomly initialised.
    """
    cfg: dict[str, Any] = {
        "channels": (32, 64, 64),
        "attention_levels": (False, True, True),
        "num_res_blocks": 1,
        "num_head_channels": 32,
        "norm_num_groups": 32,
        "use_flash_attention": use_flash_attention,
    }
    cfg.update(unet_kwargs)
    return _build(
        latent_channels,
        num_classes,
        cond_drop_prob,
        cfg,
        {"context_dim": 64, "channels": (32, 64, 64), "token_grid": token_grid},
    )


def mask_ldm_vq_f4(
    latent_channels: int = 3,
    num_classes: int = 4,
    cond_drop_prob: float = 0.0,
    use_flash_attention: bool = True,
    **unet_kwargs: Any,
) -> MaskConditionedUNet:
    """The paper-size denoiser for 3x128x128 vq-f4 latents of 512 px tiles.

    About 410 M parameters and 1.2 TFLOP per forward of one latent (MONAI's transformer blocks add a GEGLU
    feed-forward and self-attention to each cross-attention, so it is larger than the CompVis UNet it follows).

    The UNet follows CompVis LDM's vq-f4 configurations (e.g. ``celebahq-ldm-vq-4``): model channels 224 with
    multipliers (1, 2, 3, 4), two residual blocks per level, attention at downsampling factors 2, 4 and 8
    (64, 32 and 16 px here) with 32 channels per head, one transformer layer. The DISC paper names no sizes, so
    this is the LDM default at that latent size. The mask encoder gives 16x16 tokens of 256 features, one per
    32x32 px of the tile, fine enough for hand-drawn Gleason outlines.

    Args:
        latent_channels: channels of the autoencoder's latents.
        num_classes: number of mask labels.
        cond_drop_prob: mask dropout in training, for classifier-free guidance (see :class:`MaskConditionedUNet`).
        use_flash_attention: use ``torch.nn.functional.scaled_dot_product_attention`` (memory-efficient; the
            64x64 level has 4096 queries per image).
        unet_kwargs: overrides of the ``DiffusionModelUNet`` arguments.

    Returns:
        the denoiser, randomly initialised.
    """
    cfg: dict[str, Any] = {
        "channels": (224, 448, 672, 896),
        "attention_levels": (False, True, True, True),
        "num_res_blocks": 2,
        "num_head_channels": 32,
        "norm_num_groups": 32,
        "use_flash_attention": use_flash_attention,
    }
    cfg.update(unet_kwargs)
    encoder_kwargs = {"context_dim": 256, "channels": (32, 64, 128, 256), "token_grid": 16, "norm_num_groups": 32}
    return _build(latent_channels, num_classes, cond_drop_prob, cfg, encoder_kwargs)
