"""CarcinoNet's training recipe: Dice-focal loss on label maps, and paired augmentations."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, FocalLoss

from monai_disc.engines.segmentation import SegmentationLoss, carcinonet_train_transforms


def test_loss_is_dice_plus_softmax_focal_on_label_maps():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    ref = DiceLoss(to_onehot_y=True, softmax=True)(logits, labels.unsqueeze(1)) + FocalLoss(
        to_onehot_y=True, use_softmax=True
    )(logits, labels.unsqueeze(1))
    loss = SegmentationLoss()
    assert torch.allclose(loss(logits, labels), ref)
    assert torch.allclose(loss(logits, labels.unsqueeze(1)), ref)
    perfect = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 20
    assert loss(perfect, labels) < 0.01 < ref


def test_augmentations_move_mask_with_image_and_keep_range():
    t = carcinonet_train_transforms(prob=1.0, scale=0.5, shift=0.5)
    t.set_random_state(seed=3)
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :2, :3] = 2  # an asymmetric corner block
    image = torch.where(mask.bool(), 0.2, -0.6).float().expand(3, -1, -1).clone()
    image[:, 0, 0] = 0.95  # close to the top of the range
    out = t({"image": image, "mask": mask})
    img, m = torch.as_tensor(out["image"]), torch.as_tensor(out["mask"])
    assert m.dtype == torch.long and sorted(m.unique().tolist()) == [0, 2] and int((m == 2).sum()) == 6
    assert not torch.equal(m, mask)  # prob 1: it moved
    # the image moved the same way: the block's pixels are exactly where the mask is 2
    assert torch.equal(img[0] != img[0, m[0] == 0][0], m[0] == 2)
    assert img.min() >= -1.0 and img.max() <= 1.0
