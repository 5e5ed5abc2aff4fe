"""tau_theta: the convolutional mask encoder whose tokens the denoiser cross-attends to."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import Tensor, nn

__all__ = ["MaskEncoder", "POS_EMBEDDINGS"]

POS_EMBEDDINGS = ("learned", "sincos", None)


def _sincos_2d(grid: int, dim: int) -> Tensor:
    """MONAI's 2-D sin-cos table (1, grid * grid, dim), tokens in row-major (h, w) order."""
    with warnings.catch_warnings():  # MONAI calls torch.meshgrid without `indexing` ("ij" is what it means)
        warnings.simplefilter("ignore", UserWarning)
        return build_sincos_position_embedding(grid, dim, spatial_dims=2).detach().clone()


class MaskEncoder(nn.Module):
    """Encode a one-hot Gleason mask into a grid of tokens for cross-attention (tau_theta in the paper).

    Strided convolutions read the drawing at full resolution, adaptive average pooling brings any tile size to a
    ``token_grid x token_grid`` map, and a 1x1 projection gives ``context_dim`` features per cell. Cross-attention
    ignores token order, so each token also gets a 2-D positional embedding: without it, a blob moved elsewhere
    would give the same set of tokens and the denoiser could not tell where to draw it.

    Args:
        num_classes: channels of the one-hot input (labels 0..num_classes-1).
        context_dim: feature size of each token; must equal the denoiser's ``cross_attention_dim``.
        channels: output channels of the convolution stages; every stage after the first halves the resolution.
        token_grid: side of the token map, giving ``token_grid ** 2`` tokens.
        norm_num_groups: groups of every GroupNorm; must divide each entry of ``channels``.
        pos_embedding: ``"learned"`` (trainable, initialised with the sin-cos table), ``"sincos"`` (fixed table)
            or ``None`` (no position; only for ablations and tests).

    Raises:
        ValueError: on sizes that do not fit together.
    """

    def __init__(
        self,
        num_classes: int = 4,
        context_dim: int = 64,
        channels: Sequence[int] = (32, 64, 64),
        token_grid: int = 8,
        norm_num_groups: int = 8,
        pos_embedding: str | None = "learned",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not channels:
            raise ValueError("channels must name at least one stage.")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every entry of channels {channels} must be a multiple of norm_num_groups={norm_num_groups}."
            )
        if token_grid < 1:
            raise ValueError(f"token_grid must be >= 1, got {token_grid}.")
        if pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(f"pos_embedding must be one of {POS_EMBEDDINGS}, got {pos_embedding!r}.")
        if pos_embedding is not None and context_dim % 4:
            raise ValueError(f"a 2-D positional embedding needs context_dim divisible by 4, got {context_dim}.")

        self.num_classes = num_classes
        self.context_dim = context_dim
        self.token_grid = token_grid
        self.num_tokens = token_grid * token_grid

        layers: list[nn.Module] = [nn.Conv2d(num_classes, channels[0], kernel_size=3, padding=1)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [
                nn.GroupNorm(norm_num_groups, c_in),
                nn.SiLU(),
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(token_grid)
        self.proj = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], context_dim, kernel_size=1)
        )
        self.norm = nn.LayerNorm(context_dim)

        self.pos_embedding: Tensor | None
        if pos_embedding == "learned":
            self.pos_embedding = nn.Parameter(_sincos_2d(token_grid, context_dim))
        elif pos_embedding == "sincos":
            self.register_buffer("pos_embedding", _sincos_2d(token_grid, context_dim), persistent=False)
        else:
            self.pos_embedding = None

    def forward(self, mask_onehot: Tensor) -> Tensor:
        """Tokens of a batch of one-hot masks.

        Args:
            mask_onehot: float (B, num_classes, H, W), one channel per label.

        Returns:
            (B, token_grid ** 2, context_dim) tokens in row-major grid order.

        Raises:
            ValueError: if the input is not (B, num_classes, H, W).
        """
        if mask_onehot.ndim != 4 or mask_onehot.shape[1] != self.num_classes:
            raise ValueError(
                f"MaskEncoder expects a one-hot mask (B, {self.num_classes}, H, W), got shape {tuple(mask_onehot.shape)}."
            )
        h = self.proj(self.pool(self.features(mask_onehot)))
        tokens = h.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.pos_embedding is not None:
            tokens = tokens + self.pos_embedding
        return self.norm(tokens)
