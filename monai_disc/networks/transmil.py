"""TransMIL: a Nystrom-attention transformer over a bag of tile features, for slide-level grading.

Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole Slide
Image Classification", NeurIPS 2021 (official code: szc19990412/TransMIL, ``models/TransMIL.py``).
``forward`` maps onto the paper's figure line by line:

    features -> Linear + ReLU -> pad to a square -> [class token; tokens]
             -> TransLayer -> PPEG -> TransLayer -> LayerNorm -> class token -> Linear -> logits

The head returns logits; the multi-label sigmoid over [NC, GG3, GG4, GG5] lives in the loss
(``BCEWithLogitsLoss``) and at evaluation, so the same network serves any label layout.

Bags of different lengths cannot share a batch (no instance mask, as in the official code); train
with one bag per step, or with bags cut to one length. The attention is :mod:`monai_disc.networks.nystrom`:
the maths and parameter names of ``nystrom-attention`` (the package the official code uses), written so that
``torch.jit.script`` compiles the whole network for any bag size. Its pseudo-inverse is started from a scale
taken over the whole batch, so a bag's logits shift very slightly with its batch mates; with one bag per
batch (the official setting) this never arises.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .nystrom import NystromAttention

__all__ = ["PPEG", "TransLayer", "TransMIL", "pad_to_square", "transmil", "transmil_toy"]


def _ceil_sqrt(n: int) -> int:
    """ceil(sqrt(n)) exactly, in operations TorchScript compiles (``math.isqrt`` is not one of them)."""
    side = int(math.sqrt(n))
    while side * side < n:
        side += 1
    while side > 1 and (side - 1) * (side - 1) >= n:
        side -= 1
    return side


def pad_to_square(x: torch.Tensor) -> torch.Tensor:
    """Pad a bag to the next square length by repeating its first instances, so PPEG sees a grid.

    Args:
        x: instances (B, N, C) with N >= 1.

    Returns:
        (B, ceil(sqrt(N))^2, C): ``x`` followed by its first ``ceil(sqrt(N))^2 - N`` instances
        (``x`` itself when N is already a square).

    Raises:
        ValueError: when ``x`` is not 3-D or holds no instances.
    """
    if x.ndim != 3 or x.shape[1] < 1:
        raise ValueError(f"pad_to_square expects instances (B, N >= 1, C), got shape {list(x.shape)}.")
    n = x.shape[1]
    side = _ceil_sqrt(n)
    extra = side * side - n
    if extra == 0:
        return x
    # extra <= 2 * side - 2 <= n for every n >= 1, so the first instances always suffice.
    return torch.cat([x, x[:, :extra]], dim=1)


class TransLayer(nn.Module):
    """Pre-norm Nystrom self-attention with a residual: ``x + attn(norm(x))`` (no MLP, as in the paper).

    Args:
        dim: token width.
        heads: attention heads; ``dim`` must be divisible by it (head width ``dim // heads``).
        landmarks: Nystrom landmarks; shorter sequences are zero-padded to it inside the attention.
        pinv_iterations: Moore-Penrose iterations for the landmark kernel's pseudo-inverse.
        dropout: dropout after the attention's output projection.
        residual_conv_kernel: depthwise convolution over the values, along the sequence.
    """

    def __init__(
        self,
        dim: int = 512,
        heads: int = 8,
        landmarks: int = 256,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
        residual_conv_kernel: int = 33,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim=dim,
            dim_head=dim // heads,
            heads=heads,
            num_landmarks=landmarks,
            pinv_iterations=pinv_iterations,
            residual=True,
            residual_conv_kernel=residual_conv_kernel,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: tokens (B, L, dim). Returns: tokens (B, L, dim)."""
        return x + self.attn(self.norm(x))

    def forward_with_cls_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as ``forward``, plus the first token's Nystrom attention row over all tokens.

        Only the class token's row is formed (B, heads, L), never the full L x L matrix, so a bag of
        thousands of instances stays cheap.

        Args:
            x: tokens (B, L, dim), the class token first.

        Returns:
            tokens (B, L, dim) and the class-token attention (B, heads, L) over the L input tokens.
        """
        out, attn1, attn2_inv, attn3 = self.attn.attention(self.norm(x))
        lead = attn1.shape[-2] - x.shape[1]  # the attention pads zeros *before* the sequence
        row = attn1[:, :, lead : lead + 1] @ attn2_inv @ attn3  # (B, heads, 1, L_padded)
        return x + out, row[:, :, 0, lead:]


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convolutions over the token grid.

    The class token is kept aside and put back in front; the instance tokens are read as a
    (B, dim, H, W) image, and ``x + dw7(x) + dw5(x) + dw3(x)`` gives each token its neighbours.

    Args:
        dim: token width (the convolutions are depthwise: ``dim`` groups).
    """

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=7 // 2, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=5 // 2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=3 // 2, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Encode positions of the instance tokens.

        Args:
            x: tokens (B, 1 + height * width, dim), class token first.
            height: grid height.
            width: grid width.

        Returns:
            tokens of the same shape, class token unchanged.

        Raises:
            ValueError: when the token count is not ``1 + height * width``.
        """
        b, length, c = x.shape
        if length != 1 + height * width:
            raise ValueError(f"PPEG expects 1 + {height} x {width} tokens, got {length}.")
        cls_token, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(b, c, height, width)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL slide classifier: a bag of instance features (B, N, in_features) -> logits (B, num_classes).

    Defaults are the paper's (dim 512, 8 heads of 64, 256 landmarks, 6 pseudo-inverse iterations,
    dropout 0.1); ``in_features`` is the tile extractor's width (384 for ViT-S/16, 2048 for ResNet-50).

    Args:
        in_features: width of each instance feature.
        num_classes: outputs; 4 for the multi-hot [NC, GG3, GG4, GG5] head.
        dim: token width inside the transformer.
        heads: attention heads; ``dim`` must be divisible by it.
        landmarks: Nystrom landmarks.
        pinv_iterations: Moore-Penrose iterations.
        dropout: attention output dropout (active in train mode only).

    Raises:
        ValueError: for non-positive sizes, ``dim`` not divisible by ``heads``, or dropout outside [0, 1).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 4,
        dim: int = 512,
        heads: int = 8,
        landmarks: int = 256,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_classes", num_classes),
            ("dim", dim),
            ("heads", heads),
            ("landmarks", landmarks),
            ("pinv_iterations", pinv_iterations),
        ):
            if int(value) < 1:
                raise ValueError(f"TransMIL: {name} must be a positive integer, got {value}.")
        if dim % heads:
            raise ValueError(f"TransMIL: dim ({dim}) must be divisible by heads ({heads}).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TransMIL: dropout must be in [0, 1), got {dropout}.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.dim = dim

        self.fc1 = nn.Sequential(nn.Linear(in_features, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        layer_args: dict[str, Any] = {
            "dim": dim,
            "heads": heads,
            "landmarks": landmarks,
            "pinv_iterations": pinv_iterations,
            "dropout": dropout,
        }
        self.layer1 = TransLayer(**layer_args)
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(**layer_args)
        self.norm = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, num_classes)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != self.in_features:
            raise ValueError(f"TransMIL expects a bag (B, N >= 1, {self.in_features}), got shape {list(x.shape)}.")
        return x.to(self.fc1[0].weight.dtype)  # features may be stored as float16 / float64

    def _encode(self, x: torch.Tensor, return_attention: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = x.shape[1]
        h = pad_to_square(self.fc1(self._check(x)))
        side = _ceil_sqrt(h.shape[1])  # a square by now
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, side, side)
        attention: torch.Tensor | None = None
        if return_attention:
            h, row = self.layer2.forward_with_cls_attention(h)
            # drop the class token, fold the square-padding copies back onto the instances they repeat
            tokens = row.mean(dim=1)[:, 1:]
            attention = tokens[:, :n].clone()
            attention[:, : tokens.shape[1] - n] += tokens[:, n:]
        else:
            h = self.layer2(h)
        return self.norm(h)[:, 0], attention

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token embedding of each bag, before the classifier.

        Args:
            x: bag (B, N, in_features).

        Returns:
            (B, dim).

        Raises:
            ValueError: for a tensor that is not (B, N >= 1, in_features).
        """
        return self._encode(x, return_attention=False)[0]

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Classify bags.

        Args:
            x: bag (B, N, in_features); all bags in a batch have the same N.
            return_attention: also return, per instance, the class token's attention in the second
                layer (Nystrom approximation, averaged over heads; copies made by the square padding
                are added to the instance they repeat). Approximate weights: they can be slightly
                negative, and for bags shorter than ``landmarks`` much of the mass sits on the
                attention's internal zero padding, so compare them within a bag, not across bags.

        Returns:
            logits (B, num_classes), and the attention (B, N) when ``return_attention``.

        Raises:
            ValueError: for a tensor that is not (B, N >= 1, in_features).
        """
        feats, attention = self._encode(x, return_attention)
        logits = self.fc2(feats)
        if attention is not None:  # i.e. return_attention (a check TorchScript can refine the type by)
            return logits, attention
        return logits


def transmil(in_features: int, num_classes: int = 4, **kwargs: Any) -> TransMIL:
    """The paper's TransMIL (dim 512, 8 heads, 256 landmarks); ``kwargs`` override any argument."""
    return TransMIL(in_features, num_classes, **kwargs)


def transmil_toy(in_features: int, num_classes: int = 4, **kwargs: Any) -> TransMIL:
    """A small TransMIL for the embedded toy data and tests (dim 128, 4 heads, 64 landmarks)."""
    config: dict[str, Any] = {"dim": 128, "heads": 4, "landmarks": 64}
    config.update(kwargs)
    return TransMIL(in_features, num_classes, **config)
