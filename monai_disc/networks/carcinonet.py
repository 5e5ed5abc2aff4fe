"""Carcino-Net: a ResNet U-Net with a pyramid-pooling bridge for pixel-level Gleason grading.

Lokhande et al., "Carcino-Net: A Deep Learning Framework for Automated Gleason Grading of Prostate
Biopsies", EMBC 2020. There is no official code; this follows the public re-implementation's shape:

- encoder: a timm ResNet (``features_only``), weights only from a local file;
- bridge: BN + ReLU, pyramid pooling over grids [1, 2, 3] (adaptive average pool, 1x1 conv, BN,
  ReLU, upsample, concatenate), reduced back to the encoder's channels;
- decoder: pixel-shuffle upsampling that *sums* the batch-normalised encoder skip, then a 3x3
  conv-BN-ReLU, one stage per encoder level;
- head: a 1x1 convolution; logits at the input size.

Inputs follow the package convention (float RGB in [-1, 1]); the network maps them to the
encoder's normalisation (ImageNet by default) itself, so an ImageNet-pretrained encoder sees what
it was trained on and callers never normalise twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, SubpixelUpsample
from monai.networks.utils import icnr_init

from monai_disc.networks.weights import load_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CarcinoNet",
    "PyramidPoolingBridge",
    "SkipSumUpBlock",
    "carcinonet_toy",
    "load_encoder_weights",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Prefixes that wrappers (DDP, a whole segmentation model, self-supervised frameworks) put before
# ResNet key names; stripped only when every key carries them.
_KEY_PREFIXES = ("module.", "encoder.", "backbone.", "model.")
# Classifier keys of a full ResNet; the segmentation encoder has no classifier.
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> Convolution:
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        act="relu",
        norm="batch",
        bias=False,
    )


def _pixel_shuffle_up(in_channels: int, out_channels: int, scale: int) -> SubpixelUpsample:
    """1x1 conv to ``out * scale^2`` channels then pixel shuffle; ICNR init avoids checkerboards.

    A 1x1 rather than MONAI's default 3x3 conv keeps the deep stages affordable (2048 -> 4096
    channels is 8M weights at 1x1, 75M at 3x3); no pad-pool, which would shift the map by half a
    pixel per stage while the skips stay put.
    """
    conv = nn.Conv2d(in_channels, out_channels * scale**2, kernel_size=1, bias=False)
    icnr_init(conv, scale)
    return SubpixelUpsample(2, in_channels, out_channels, scale, conv_block=conv, apply_pad_pool=False)


class PyramidPoolingBridge(nn.Module):
    """BN + ReLU, then pyramid pooling context concatenated to the features and reduced back.

    Note: a BatchNorm after a 1x1 pooled grid needs more than one sample per batch in training.

    Args:
        channels: channels of the deepest encoder feature (kept at the output).
        pool_sizes: output grid sizes of the adaptive average pools.
    """

    def __init__(self, channels: int, pool_sizes: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        if not pool_sizes or any(int(s) < 1 for s in pool_sizes):
            raise ValueError(f"pool_sizes must be positive grid sizes, got {pool_sizes!r}.")
        self.pre = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        branch_channels = max(channels // len(pool_sizes), 1)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(s)), _conv_bn_relu(channels, branch_channels, 1)) for s in pool_sizes
        )
        self.reduce = _conv_bn_relu(channels + branch_channels * len(pool_sizes), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        size = x.shape[-2:]
        parts = [x]  # a list built by appending (not ``[x, *pooled]``), so TorchScript can type it
        for branch in self.branches:
            parts.append(F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False))
        return self.reduce(torch.cat(parts, dim=1))


class SkipSumUpBlock(nn.Module):
    """Pixel-shuffle upsampling by 2 plus the batch-normalised skip, then a 3x3 conv-BN-ReLU.

    Args:
        in_channels: channels of the coarser decoder feature.
        skip_channels: channels of the encoder skip (also the block's output channels).
    """

    def __init__(self, in_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.up = _pixel_shuffle_up(in_channels, skip_channels, 2)
        self.skip_norm = nn.BatchNorm2d(skip_channels)
        self.fuse = _conv_bn_relu(skip_channels, skip_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.up(x) + self.skip_norm(skip))


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local ResNet state dict into a timm ``features_only`` ResNet encoder.

    Accepts torchvision and timm key names (they agree for ResNets), a nested ``state_dict`` /
    ``model`` entry, and common wrapper prefixes (``module.``, ``encoder.``, ``backbone.``);
    classifier weights (``fc.*``) are ignored. Read through :func:`monai_disc.networks.weights.load_weights`.

    Args:
        encoder: the encoder to fill (``CarcinoNet.encoder``).
        path: a ``.pth``/``.pt`` file readable with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a state dict or its keys/shapes do not fit the encoder;
            the message names the file and the first mismatches.
    """
    was_training = encoder.training
    load_weights(
        encoder, path, ignore=_CLASSIFIER_PREFIXES, strip_prefixes=_KEY_PREFIXES, what="the CarcinoNet encoder"
    )
    encoder.train(was_training)


class CarcinoNet(nn.Module):
    """Carcino-Net segmentation network: (B, 3, H, W) tiles in [-1, 1] -> logits (B, K, H, W).

    Any H, W works: the input is padded to a multiple of the encoder's stride and the logits are
    cropped back.

    Args:
        num_classes: output classes (Gleason labels NC, GG3, GG4, GG5 by default).
        encoder: timm model name of a ResNet-like encoder with ``features_only`` support whose
            levels halve the resolution each (``resnet50``, ``resnet18``, ...).
        pretrained_weights: optional local file of encoder weights (torchvision or timm names);
            nothing is ever downloaded.
        in_channels: input channels.
        pool_sizes: grid sizes of the bridge's pyramid pooling.
        mean: per-channel mean, in [0, 1] units, the encoder expects (ImageNet by default).
        std: per-channel standard deviation, in [0, 1] units, the encoder expects.
        encoder_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``channels``,
            ``stem_width`` for a narrower ResNet).

    Raises:
        ValueError: for an encoder whose feature levels do not halve the resolution, or a bad
            weight file (see :func:`load_encoder_weights`).
    """

    def __init__(
        self,
        num_classes: int = 4,
        encoder: str = "resnet50",
        pretrained_weights: str | Path | None = None,
        in_channels: int = 3,
        pool_sizes: Sequence[int] = (1, 2, 3),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values each, got {len(mean)} and {len(std)}.")
        self.num_classes = num_classes
        self.encoder = timm.create_model(
            encoder, pretrained=False, features_only=True, in_chans=in_channels, **dict(encoder_kwargs or {})
        )
        channels: list[int] = list(self.encoder.feature_info.channels())
        reductions: list[int] = list(self.encoder.feature_info.reduction())
        if any(b != 2 * a for a, b in zip(reductions, reductions[1:])) or reductions[0] < 1:
            raise ValueError(
                f"encoder {encoder!r} feature levels must halve the resolution each, got strides {reductions}."
            )
        if pretrained_weights is not None:
            load_encoder_weights(self.encoder, pretrained_weights)
        self.num_features = channels[-1]
        self.stride = reductions[-1]

        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

        self.bridge = PyramidPoolingBridge(channels[-1], pool_sizes)
        self.decoder = nn.ModuleList(
            SkipSumUpBlock(c_in, c_skip) for c_in, c_skip in zip(channels[:0:-1], channels[-2::-1])
        )
        final_channels = max(channels[0] // 2, num_classes)
        self.final_up: nn.Module = (
            nn.Sequential(
                _pixel_shuffle_up(channels[0], final_channels, reductions[0]),
                _conv_bn_relu(final_channels, final_channels, 3),
            )
            if reductions[0] > 1
            else _conv_bn_relu(channels[0], final_channels, 3)
        )
        self.head = nn.Conv2d(final_channels, num_classes, kernel_size=1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map package tiles in [-1, 1] to the encoder's normalisation."""
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled deepest encoder features (B, ``num_features``) of tiles in [-1, 1].

        Used as a tile feature extractor (slide bags, FID features) from a trained segmenter.
        """
        return self.encoder(self.normalize(x))[-1].mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.normalize(x)
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zero = the encoder's mean colour
        feats = self.encoder(x)
        y = self.bridge(feats[-1])
        # the skips from the second-deepest level up; indexed, not zipped, so TorchScript can unroll the loop
        for i, block in enumerate(self.decoder):
            y = block(y, feats[len(feats) - 2 - i])
        y = self.head(self.final_up(y))
        return y[..., :h, :w]


def carcinonet_toy(num_classes: int = 4, pretrained_weights: str | Path | None = None) -> CarcinoNet:
    """A half-width ResNet-18 CarcinoNet (3.4M parameters) that trains on CPU on toy tiles.

    The ResNet-18 layout with channels (32, 64, 128, 256) keeps the paper's structure while a
    batch of 16 tiles of 128 px takes a training step in about 0.5 s on two free CPU cores (0.9 s on one).

    Args:
        num_classes: output classes.
        pretrained_weights: optional local weight file of a network with the same narrow encoder.

    Returns:
        The network, randomly initialised unless weights are given.
    """
    return CarcinoNet(
        num_classes=num_classes,
        encoder="resnet18",
        pretrained_weights=pretrained_weights,
        encoder_kwargs={"channels": (32, 64, 128, 256), "stem_width": 32},
    )
