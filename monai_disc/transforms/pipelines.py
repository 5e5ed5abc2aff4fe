"""Ready MONAI pipelines that turn a data-list item (tile and mask paths) into model-ready tensors.

Output of every pipeline: `image` float32 (3, H, W) in [-1, 1] (the package's image convention) and
`mask` int64 (1, H, W) labels 0..3, both MetaTensors; other keys (`slide_id`, `label`) pass through.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import Compose, Resized, ScaleIntensityRanged
from monai.utils import ensure_tuple_rep

from monai_disc.labels import NUM_CLASSES, SICAPV2_MASK_VALUES, SICAPV2_VALUE_TO_LABEL
from monai_disc.transforms.dictionary import CheckSameSpatialShaped, LoadPILImaged, SnapMaskToLabelsd

__all__ = ["folder_tile_transforms", "sicapv2_tile_transforms", "tile_transforms"]


def tile_transforms(
    image_key: str = "image",
    mask_key: str | None = "mask",
    mask_values: Sequence[float] = tuple(range(NUM_CLASSES)),
    mask_labels: Sequence[int] = tuple(range(NUM_CLASSES)),
    max_distance: float | None = None,
    spatial_size: int | Sequence[int] | None = None,
) -> Compose:
    """Load an RGB tile and its grayscale mask, check they match, map mask values to labels, scale to [-1, 1].

    Args:
        image_key: key of the tile path.
        mask_key: key of the mask path; None for tiles without masks.
        mask_values: values stored in mask files; `mask_labels`: the label of each.
        max_distance: tolerance of stored mask values; None: exact for lossless files, the JPEG tolerance for
            JPEG masks (see :class:`monai_disc.transforms.SnapMaskToLabels`).
        spatial_size: resize both to this (h, w) or square size after the checks (tile: area averaging,
            mask: nearest); None keeps the file size.

    Raises (when called):
        FileNotFoundError / ValueError: missing or corrupt file, tile/mask size mismatch, mask values far
        from `mask_values`; every message names the file(s).
    """
    keys = [image_key] if mask_key is None else [image_key, mask_key]
    steps = [LoadPILImaged(image_key, mode="RGB")]
    if mask_key is not None:
        steps += [LoadPILImaged(mask_key, mode="L"), CheckSameSpatialShaped(keys)]
    if spatial_size is not None:
        # before snapping: Resize returns float32, snapping then gives int64 labels
        size = ensure_tuple_rep(spatial_size, 2)
        modes = ["area"] if mask_key is None else ["area", "nearest"]
        steps.append(Resized(keys, spatial_size=size, mode=modes))
    if mask_key is not None:
        steps.append(SnapMaskToLabelsd(mask_key, values=mask_values, labels=mask_labels, max_distance=max_distance))
    steps.append(ScaleIntensityRanged(image_key, a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=True))
    return Compose(steps)


def sicapv2_tile_transforms(
    image_key: str = "image",
    mask_key: str | None = "mask",
    max_distance: float | None = None,
    spatial_size: int | Sequence[int] | None = None,
) -> Compose:
    """:func:`tile_transforms` for SICAPv2 (and the toy data): JPEG masks storing 0/3/4/5, snapped to 0..3
    within the JPEG tolerance (:class:`monai_disc.transforms.SnapMaskToLabels`)."""
    return tile_transforms(
        image_key,
        mask_key,
        mask_values=SICAPV2_MASK_VALUES,
        mask_labels=tuple(SICAPV2_VALUE_TO_LABEL[v] for v in SICAPV2_MASK_VALUES),
        max_distance=max_distance,
        spatial_size=spatial_size,
    )


def folder_tile_transforms(
    image_key: str = "image", mask_key: str | None = "mask", spatial_size: int | Sequence[int] | None = None
) -> Compose:
    """:func:`tile_transforms` for :func:`monai_disc.data.folder.load_folder`: PNG masks holding 0..3 exactly."""
    return tile_transforms(image_key, mask_key, spatial_size=spatial_size)
