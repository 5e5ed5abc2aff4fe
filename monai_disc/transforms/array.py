"""Array transforms for Gleason masks and tiles: load, snap stored values to labels, relabel by frequency,
assign grades to ranks, and split a label map into binary masks at latent size."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data import MetaTensor, PILReader
from monai.transforms import EnsureChannelFirst, Randomizable, Transform
from monai.utils import ImageMetaKey, TransformBackends, convert_to_dst_type

from monai_disc.labels import (
    MASK_JPEG_NOISE_FRACTION,
    MASK_JPEG_OVERSHOOT,
    MASK_JPEG_TOLERANCE,
    NUM_CLASSES,
    SICAPV2_MASK_VALUES,
    SICAPV2_VALUE_TO_LABEL,
)
from monai_disc.transforms.functional import (
    assign_grades,
    label_masks_at_size,
    reduction_factors,
    relabel_by_frequency,
    snap_to_labels,
)

__all__ = [
    "AssignGrades",
    "BinaryLabelMasks",
    "LoadPILImage",
    "RelabelByFrequency",
    "SnapMaskToLabels",
    "source_name",
]


def source_name(img: NdarrayOrTensor, default: str = "mask") -> str:
    """The file an array came from (MetaTensor `filename_or_obj`), or `default`; for error messages."""
    meta = getattr(img, "meta", None)
    if isinstance(meta, dict) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return default


def _to_rgb(image):  # module level (not a lambda) so pipelines pickle for DataLoader workers
    return image.convert("RGB")


def _to_gray(image):
    return image.convert("L")


class LoadPILImage(Transform):
    """Load a 2-D image file with PIL as a channel-first float32 MetaTensor (C, H, W) in row-major order.

    Unlike MONAI's default PIL loading, the spatial axes are (H, W) as numpy and PIL show them
    (`reverse_indexing=False`), so tiles, masks and pictures written with PIL line up without transposes.
    Errors name the file: a corrupt JPEG otherwise surfaces as "cannot find a suitable reader" or as a
    bare "image file is truncated".

    Args:
        mode: PIL mode to convert to: "RGB" for tiles (3 channels), "L" for grayscale masks (1 channel).
        dtype: output dtype.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded (the message names it and the decoder's complaint).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, mode: str = "RGB", dtype: DtypeLike = np.float32) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.mode = mode
        converter = _to_rgb if mode == "RGB" else _to_gray
        self.reader = PILReader(converter=converter, reverse_indexing=False)
        self.dtype = dtype
        # LoadImage's steps with this one reader: LoadImage itself would build every reader MONAI knows, each
        # time (pydicom's prints its GPU-codec warnings on every machine without one)
        self.channel_first = EnsureChannelFirst()

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        path = os.fspath(filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            array, meta = self.reader.get_data(self.reader.read(path))
            array = convert_to_dst_type(array, dst=array, dtype=self.dtype)[0]
            meta[ImageMetaKey.FILENAME_OR_OBJ] = path
            img = self.channel_first(MetaTensor.ensure_torch_and_prune_meta(array, meta), meta_dict=meta)
        except Exception as err:
            raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
        if img.ndim != 3:  # pragma: no cover - PIL modes RGB/L always give (C, H, W)
            raise ValueError(f"{path}: expected a 2-D image, got shape {tuple(img.shape)}")
        return img


class SnapMaskToLabels(Transform):
    """Stored mask values -> labels by nearest valid value, e.g. a JPEG-noisy SICAPv2 mask (0/3/4/5) -> 0..3.

    A value no Gleason label maps to is an error naming the file, the value and its pixel count, never a
    label. By default (`max_distance=None`) the tolerance follows the file the mask came from (MetaTensor
    `filename_or_obj`): lossless masks (PNG, TIFF, arrays) must hold valid values exactly; JPEG masks keep a
    tolerance for compression noise (:data:`monai_disc.labels.MASK_JPEG_TOLERANCE`: every value within 1 grey
    level of a valid one, so 0..6 for SICAPv2; values up to :data:`~monai_disc.labels.MASK_JPEG_OVERSHOOT` away
    only while they cover at most :data:`~monai_disc.labels.MASK_JPEG_NOISE_FRACTION` of the mask, as
    overshoot at edges does). So value 5 in a 0..3 PNG mask and a region of 7 in a SICAPv2 JPEG are errors.

    Args:
        values: the valid stored values.
        labels: label of each value.
        max_distance: largest tolerated |pixel - nearest valid value| for every mask; None: by file type, as above.
        dtype: output dtype (integer).

    Raises:
        ValueError: values no label maps to; the message names the file (from MetaTensor metadata when present),
            each such value and its pixel count.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        values: Sequence[float] = SICAPV2_MASK_VALUES,
        labels: Sequence[int] = tuple(SICAPV2_VALUE_TO_LABEL[v] for v in SICAPV2_MASK_VALUES),
        max_distance: float | None = None,
        dtype: DtypeLike | torch.dtype = torch.int64,
    ) -> None:
        if len(values) != len(labels) or not values:
            raise ValueError(f"values {tuple(values)} and labels {tuple(labels)} must be non-empty, equal length")
        if max_distance is not None and max_distance < 0:
            raise ValueError(f"max_distance must be >= 0 or None, got {max_distance}")
        self.values = tuple(values)
        self.labels = tuple(int(v) for v in labels)
        self.max_distance = None if max_distance is None else float(max_distance)
        self.dtype = dtype

    @staticmethod
    def tolerance(name: str) -> dict[str, float | None]:
        """The default tolerance for a mask read from file `name` (keyword arguments of `snap_to_labels`)."""
        if name.lower().endswith((".jpg", ".jpeg")):
            return {
                "max_distance": MASK_JPEG_TOLERANCE,
                "noise_distance": MASK_JPEG_OVERSHOOT,
                "noise_fraction": MASK_JPEG_NOISE_FRACTION,
            }
        return {"max_distance": 0.0}

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        name = source_name(img)
        tolerance = self.tolerance(name) if self.max_distance is None else {"max_distance": self.max_distance}
        out = snap_to_labels(img, self.values, self.labels, name=name, **tolerance)
        return convert_to_dst_type(out, img, dtype=self.dtype)[0]


class RelabelByFrequency(Transform):
    """Label map -> frequency ranks ("m_freq"): most frequent label -> 0, ties: smaller label first.

    The result keeps the mask's drawing and drops its grades, so shapes annotated with one grade can be
    reused with any other (see :class:`AssignGrades`). Shape, array type and dtype are kept.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        ranks, _ = relabel_by_frequency(img)
        return convert_to_dst_type(ranks, img)[0]


class AssignGrades(Randomizable, Transform):
    """Frequency ranks (0..r-1) -> grade labels drawn at random, no two ranks on one grade.

    Rank 0 (the largest region) takes the first weighted draw from `labels`, rank 1 the next draw from
    those left, and so on (:func:`monai_disc.transforms.functional.assign_grades`). The number of ranks
    is the largest rank + 1. Seed with `set_random_state` as any MONAI random transform.

    Args:
        labels: grades allowed (distinct), e.g. (0, 1, 2, 3) or a slide's {NC, primary, secondary}.
        weights: one fixed weight per label; None draws weights from Dirichlet(`concentration`) each call.
        concentration: Dirichlet concentration when `weights` is None.

    Raises:
        ValueError: negative ranks, or more ranks than labels that can be drawn.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        labels: Sequence[int] = tuple(range(NUM_CLASSES)),
        weights: Sequence[float] | None = None,
        concentration: float | Sequence[float] = 1.0,
    ) -> None:
        self.labels = tuple(int(v) for v in labels)
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ValueError(f"labels must be distinct and non-empty, got {tuple(labels)}")
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        if self.weights is not None and len(self.weights) != len(self.labels):
            raise ValueError(f"weights {tuple(weights)} must have one entry per label {self.labels}")
        self.concentration = concentration
        self.grades: np.ndarray | None = None

    @staticmethod
    def num_ranks(img: NdarrayOrTensor) -> int:
        """Largest rank + 1 (0 for an empty map); negative ranks are an error."""
        if (img.size if isinstance(img, np.ndarray) else img.numel()) == 0:
            return 0
        low, high = int(img.min()), int(img.max())
        if low < 0:
            raise ValueError(f"{source_name(img)}: ranks must be >= 0, found {low}")
        return high + 1

    def randomize(self, num_ranks: int) -> None:
        self.grades = assign_grades(num_ranks, self.R, self.labels, self.weights, self.concentration)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Apply; `randomize=False` reuses the last draw (it must cover the ranks present)."""
        num_ranks = self.num_ranks(img)
        if randomize or self.grades is None:
            self.randomize(num_ranks)
        if len(self.grades) < num_ranks:
            raise ValueError(f"the last draw covers {len(self.grades)} ranks, the map holds {num_ranks}")
        lut = self.grades if len(self.grades) else np.zeros(1, dtype=np.int64)
        if isinstance(img, torch.Tensor):
            raw = img.as_tensor() if isinstance(img, MetaTensor) else img
            out = torch.as_tensor(lut, device=raw.device)[raw.long()]
        else:
            out = lut[np.asarray(img).astype(np.int64)]
        return convert_to_dst_type(out, img, dtype=img.dtype)[0]


class BinaryLabelMasks(Transform):
    """Label map (H, W) or (1, H, W) -> float binary masks (K, h, w), one per label, at a smaller size.

    The reduction is nearest neighbour as torch/MONAI "nearest" interpolation does it: output pixel
    (i, j) is input pixel (i * H/h, j * W/w) (:func:`monai_disc.transforms.functional.labels_at_size`,
    the rule `monai_disc.inferers.fuse_latents` uses, so masks built here fuse latents exactly as there).

    Args:
        num_classes: K.
        spatial_size: (h, w) or one int; must divide (H, W). None keeps the size.

    Raises:
        ValueError: bad shape, a size that does not divide the map, labels outside 0..K-1.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_classes: int = NUM_CLASSES, spatial_size: int | Sequence[int] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.spatial_size = spatial_size

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.ndim == 3 and img.shape[0] == 1:
            batch = img[None]
        elif img.ndim == 2:
            batch = img[None, None]
        else:
            raise ValueError(f"{source_name(img)}: label map must be (H, W) or (1, H, W), got {tuple(img.shape)}")
        size = tuple(img.shape[-2:]) if self.spatial_size is None else self.spatial_size
        try:
            masks = label_masks_at_size(batch, self.num_classes, size)[0]
        except ValueError as err:
            raise ValueError(f"{source_name(img)}: {err}") from None
        out = convert_to_dst_type(masks, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]
        if isinstance(out, MetaTensor):
            fh, fw = reduction_factors(img.shape[-2:], size)
            affine = out.affine.clone()
            affine[:, 0] *= fh  # output index i sits at input index i * fh
            affine[:, 1] *= fw
            out.affine = affine
        return out
