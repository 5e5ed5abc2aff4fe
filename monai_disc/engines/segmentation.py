"""The training recipe of pixel-level grading: CarcinoNet's loss and its augmentations.

Carcino-Net re-implementation recipe: focal + Dice loss, flips and mild colour jitter (we add
rotations by 90 degrees, which histology does not care about). Both are MONAI parts, wired once
here so the bundle, the CLI and the tests train the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceFocalLoss, FocalLoss
from monai.transforms import (
    Compose,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
)

__all__ = ["SegmentationLoss", "carcinonet_train_transforms"]


class SegmentationLoss(DiceFocalLoss):
    """Dice + softmax focal loss on logits against integer label maps (one-hot targets).

    Gleason labels exclude each other, so the focal term uses a softmax like the Dice term
    (MONAI's ``DiceFocalLoss`` always builds a sigmoid focal term). Targets may be (B, H, W) or
    (B, 1, H, W); MONAI's loss needs the channel, so it is added here rather than by every caller.

    Args:
        gamma: focal loss focusing parameter.
        lambda_dice: weight of the Dice term.
        lambda_focal: weight of the focal term.
        include_background: whether label 0 (NC) counts in the Dice term.
    """

    def __init__(
        self, gamma: float = 2.0, lambda_dice: float = 1.0, lambda_focal: float = 1.0, include_background: bool = True
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            gamma=gamma,
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
        )
        self.focal = FocalLoss(include_background=include_background, to_onehot_y=False, gamma=gamma, use_softmax=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``input`` (B, K, H, W) against labels ``target`` (B, [1,] H, W)."""
        if target.ndim == input.ndim - 1:
            target = target.unsqueeze(1)
        return super().forward(input, target)


def carcinonet_train_transforms(
    image_key: str = "image",
    mask_key: str = "mask",
    prob: float = 0.5,
    scale: float = 0.1,
    shift: float = 0.1,
) -> Compose:
    """Augmentations of channel-first tiles in [-1, 1] and their label maps.

    Flips on both axes and rotations by multiples of 90 degrees move image and mask together;
    per-channel intensity scale and shift (a mild colour jitter that also moves the stain
    balance) touch the image only, which is clipped back to [-1, 1].

    Args:
        image_key: key of the (3, H, W) float tile in [-1, 1].
        mask_key: key of the (1, H, W) integer label map.
        prob: probability of each random transform.
        scale: largest relative intensity scale per channel (``x * (1 + u)``, ``|u| <= scale``).
        shift: largest intensity offset per channel, in [-1, 1] units.

    Returns:
        A MONAI ``Compose`` of dictionary transforms (use ``set_random_state`` for determinism).

    Raises:
        ValueError: for a probability outside [0, 1] or negative jitter.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must lie in [0, 1], got {prob}.")
    if scale < 0 or shift < 0:
        raise ValueError(f"scale and shift must be >= 0, got {scale} and {shift}.")
    both: Sequence[str] = (image_key, mask_key)
    return Compose(
        [
            RandFlipd(keys=both, prob=prob, spatial_axis=0),
            RandFlipd(keys=both, prob=prob, spatial_axis=1),
            RandRotate90d(keys=both, prob=prob, max_k=3, spatial_axes=(0, 1)),
            RandScaleIntensityd(keys=image_key, factors=scale, prob=prob, channel_wise=True),
            RandShiftIntensityd(keys=image_key, offsets=shift, prob=prob, channel_wise=True),
            ScaleIntensityRanged(keys=image_key, a_min=-1.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True),
        ]
    )
