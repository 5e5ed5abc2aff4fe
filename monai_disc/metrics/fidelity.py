"""Mask fidelity: does a generated tile show the Gleason patterns its conditioning mask asked for?

A trained segmenter (CarcinoNet) is the ruler: it grades every generated tile, and its label map
is compared pixel by pixel with the mask the tile was generated from (IoU per class, mIoU, pixel
accuracy). A better segmenter makes a stricter ruler; the numbers compare generators only when
they are measured with the same segmenter.

Leakage splits the errors inside a mask's regions by where the wrong label comes from: a pixel of label i read
as a label j that the same mask asks for elsewhere is a *leak* (one pattern drawn into another's region, what
separated conditions are meant to stop); read as a label the mask does not hold, a *foreign* error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .pixel import PixelGradingMetric

__all__ = ["MaskFidelity"]


class MaskFidelity:
    """Accumulate segmenter-vs-mask agreement over generated tiles; ``aggregate()`` gives the scores.

    Args:
        segmenter: a trained network mapping (B, 3, H, W) tiles in [-1, 1] to logits (B, K, H, W);
            run in eval mode without gradients (its mode is restored afterwards).
        num_classes: K.
        batch_size: tiles per segmenter call (bounds memory when a large batch is passed).
        groups: optional label grouping (e.g. ``LAPC_GROUPS``) for the scores.

    Raises:
        ValueError: for a non-positive ``batch_size``.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        num_classes: int = 4,
        batch_size: int = 16,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.segmenter = segmenter
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.metric = PixelGradingMetric(num_classes=num_classes, groups=groups)
        self.counts = torch.zeros(3, dtype=torch.long)  # leaked, foreign, all pixels

    def _device(self, fallback: torch.device) -> torch.device:
        param = next(self.segmenter.parameters(), None)
        return fallback if param is None else param.device

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Label maps (B, H, W) the segmenter assigns to tiles (B, 3, H, W) in [-1, 1]."""
        was_training = self.segmenter.training
        self.segmenter.eval()
        try:
            device = self._device(images.device)
            out = [self.segmenter(chunk.to(device)).argmax(dim=1).cpu() for chunk in images.split(self.batch_size)]
        finally:
            self.segmenter.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, *images.shape[-2:]), dtype=torch.long)

    def update(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Segment generated ``images`` and count agreement with their conditioning ``masks``.

        Args:
            images: (B, 3, H, W) generated tiles in [-1, 1].
            masks: (B, H, W) or (B, 1, H, W) integer labels the tiles were generated from.

        Returns:
            The batch's confusion matrix (K, K), rows true (mask) labels.

        Raises:
            ValueError: when images and masks disagree in batch size or spatial size.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}.")
        m = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks  # as_label_map in the metric
        if m.ndim != 3 or m.shape[0] != images.shape[0] or m.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}: "
                "expected (B, H, W) or (B, 1, H, W) with the images' B, H, W."
            )
        pred = self.segment(images)
        truth = m.cpu().long()
        present = torch.nn.functional.one_hot(truth.flatten(1), self.num_classes).amax(dim=1).bool()  # (B, K)
        wrong = pred != truth
        asked = present.gather(1, pred.flatten(1)).view_as(pred)  # the read label is in this tile's mask
        self.counts += torch.stack([(wrong & asked).sum(), (wrong & ~asked).sum(), torch.tensor(truth.numel())])
        return self.metric(pred, m.cpu())[0] if len(pred) else torch.zeros(self.num_classes, self.num_classes)

    __call__ = update

    def confusion_matrix(self) -> torch.Tensor:
        """The accumulated (K, K) matrix."""
        return self.metric.confusion_matrix()

    def aggregate(self) -> dict[str, Any]:
        """``iou`` (per class), ``miou`` (over classes in masks or predictions), ``pixel_accuracy``,
        the other pixel scores of :func:`~monai_disc.metrics.pixel.grading_scores`, and ``leak`` / ``foreign``:
        the fractions of all pixels read as another label of the same mask / as a label the mask does not hold."""
        leaked, foreign, total = (int(c) for c in self.counts)
        share = (lambda n: n / total) if total else (lambda n: float("nan"))
        return {**self.metric.aggregate(), "leak": share(leaked), "foreign": share(foreign)}

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.metric.reset()
        self.counts.zero_()
