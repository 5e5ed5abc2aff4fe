"""Dictionary versions of :mod:`monai_disc.transforms.array`, plus a tile/mask size check."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import TransformBackends

from monai_disc.labels import NUM_CLASSES, SICAPV2_MASK_VALUES, SICAPV2_VALUE_TO_LABEL
from monai_disc.transforms.array import (
    AssignGrades,
    BinaryLabelMasks,
    LoadPILImage,
    RelabelByFrequency,
    SnapMaskToLabels,
    source_name,
)

__all__ = [
    "AssignGradesD",
    "AssignGradesDict",
    "AssignGradesd",
    "BinaryLabelMasksD",
    "BinaryLabelMasksDict",
    "BinaryLabelMasksd",
    "CheckSameSpatialShapeD",
    "CheckSameSpatialShapeDict",
    "CheckSameSpatialShaped",
    "LoadPILImageD",
    "LoadPILImageDict",
    "LoadPILImaged",
    "RelabelByFrequencyD",
    "RelabelByFrequencyDict",
    "RelabelByFrequencyd",
    "SnapMaskToLabelsD",
    "SnapMaskToLabelsDict",
    "SnapMaskToLabelsd",
]


class LoadPILImaged(MapTransform):
    """Dictionary-based version of :class:`monai_disc.transforms.LoadPILImage` (paths -> (C, H, W))."""

    backend = LoadPILImage.backend

    def __init__(
        self, keys: KeysCollection, mode: str = "RGB", dtype: DtypeLike = np.float32, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadPILImage(mode=mode, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class SnapMaskToLabelsd(MapTransform):
    """Dictionary-based version of :class:`monai_disc.transforms.SnapMaskToLabels`."""

    backend = SnapMaskToLabels.backend

    def __init__(
        self,
        keys: KeysCollection,
        values: Sequence[float] = SICAPV2_MASK_VALUES,
        labels: Sequence[int] = tuple(SICAPV2_VALUE_TO_LABEL[v] for v in SICAPV2_MASK_VALUES),
        max_distance: float | None = None,
        dtype: DtypeLike | torch.dtype = torch.int64,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.snap = SnapMaskToLabels(values, labels, max_distance, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.snap(d[key])
        return d


class RelabelByFrequencyd(MapTransform):
    """Dictionary-based version of :class:`monai_disc.transforms.RelabelByFrequency`."""

    backend = RelabelByFrequency.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.relabel = RelabelByFrequency()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.relabel(d[key])
        return d


class AssignGradesd(Randomizable, MapTransform):
    """Dictionary-based version of :class:`monai_disc.transforms.AssignGrades`.

    All keys share one draw per call (the draw covers the most ranks found in any key), so several rank
    maps of one sample get the same rank -> grade mapping.

    Args:
        keys: keys of the rank maps.
        labels, weights, concentration: see :class:`AssignGrades`.
        grades_key: when set, store the drawn grades (int64 array, grade of rank r at index r) there.
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = AssignGrades.backend

    def __init__(
        self,
        keys: KeysCollection,
        labels: Sequence[int] = tuple(range(NUM_CLASSES)),
        weights: Sequence[float] | None = None,
        concentration: float | Sequence[float] = 1.0,
        grades_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.assign = AssignGrades(labels, weights, concentration)
        self.grades_key = grades_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> AssignGradesd:
        super().set_random_state(seed, state)
        self.assign.set_random_state(state=self.R)
        return self

    def randomize(self, num_ranks: int) -> None:
        self.assign.randomize(num_ranks)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        num_ranks = max((AssignGrades.num_ranks(d[key]) for key in self.key_iterator(d)), default=0)
        self.randomize(num_ranks)
        for key in self.key_iterator(d):
            d[key] = self.assign(d[key], randomize=False)
        if self.grades_key is not None:
            d[self.grades_key] = self.assign.grades.copy()
        return d


class BinaryLabelMasksd(MapTransform):
    """Dictionary-based version of :class:`monai_disc.transforms.BinaryLabelMasks`.

    Args:
        keys: keys of the label maps.
        num_classes, spatial_size: see :class:`BinaryLabelMasks`.
        output_keys: where to write the masks (one per key); None replaces the label maps.
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = BinaryLabelMasks.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int = NUM_CLASSES,
        spatial_size: int | Sequence[int] | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.to_masks = BinaryLabelMasks(num_classes, spatial_size)
        self.output_keys = (
            self.keys if output_keys is None else tuple([output_keys] if isinstance(output_keys, str) else output_keys)
        )
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must match keys {self.keys} one to one")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.to_masks(d[key])
        return d


class CheckSameSpatialShaped(MapTransform):
    """Raise when the items under `keys` differ in spatial shape (a tile and its mask must match).

    Compares the shapes after the channel axis; the message names both files (from MetaTensor metadata,
    else the keys) and both shapes.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key, first_shape = None, None
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape[1:])
            if first_key is None:
                first_key, first_shape = key, shape
            elif shape != first_shape:
                raise ValueError(
                    f"spatial size mismatch: {source_name(d[first_key], str(first_key))} is {first_shape}, "
                    f"{source_name(d[key], str(key))} is {shape}"
                )
        return d


LoadPILImageD = LoadPILImageDict = LoadPILImaged
SnapMaskToLabelsD = SnapMaskToLabelsDict = SnapMaskToLabelsd
RelabelByFrequencyD = RelabelByFrequencyDict = RelabelByFrequencyd
AssignGradesD = AssignGradesDict = AssignGradesd
BinaryLabelMasksD = BinaryLabelMasksDict = BinaryLabelMasksd
CheckSameSpatialShapeD = CheckSameSpatialShapeDict = CheckSameSpatialShaped
