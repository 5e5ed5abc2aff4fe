"""MONAI transforms for Gleason tiles and masks: array versions, dictionary ("...d") versions, pipelines.

One-hot encoding is MONAI's own: `monai.transforms.AsDiscrete(to_onehot=4)` / `AsDiscreted`.
"""

from __future__ import annotations

from .array import AssignGrades, BinaryLabelMasks, LoadPILImage, RelabelByFrequency, SnapMaskToLabels, source_name
from .bags import LoadBag, LoadBagD, LoadBagd, LoadBagDict
from .dictionary import (
    AssignGradesD,
    AssignGradesd,
    AssignGradesDict,
    BinaryLabelMasksD,
    BinaryLabelMasksd,
    BinaryLabelMasksDict,
    CheckSameSpatialShapeD,
    CheckSameSpatialShaped,
    CheckSameSpatialShapeDict,
    LoadPILImageD,
    LoadPILImaged,
    LoadPILImageDict,
    RelabelByFrequencyD,
    RelabelByFrequencyd,
    RelabelByFrequencyDict,
    SnapMaskToLabelsD,
    SnapMaskToLabelsd,
    SnapMaskToLabelsDict,
)
from .functional import (
    as_label_map,
    assign_grades,
    label_masks_at_size,
    labels_at_size,
    reduction_factors,
    relabel_by_frequency,
    snap_to_labels,
)
from .pipelines import folder_tile_transforms, sicapv2_tile_transforms, tile_transforms

__all__ = [
    "AssignGrades",
    "as_label_map",
    "AssignGradesD",
    "AssignGradesDict",
    "AssignGradesd",
    "BinaryLabelMasks",
    "BinaryLabelMasksD",
    "BinaryLabelMasksDict",
    "BinaryLabelMasksd",
    "CheckSameSpatialShapeD",
    "CheckSameSpatialShapeDict",
    "CheckSameSpatialShaped",
    "LoadBag",
    "LoadBagD",
    "LoadBagDict",
    "LoadBagd",
    "LoadPILImage",
    "LoadPILImageD",
    "LoadPILImageDict",
    "LoadPILImaged",
    "RelabelByFrequency",
    "RelabelByFrequencyD",
    "RelabelByFrequencyDict",
    "RelabelByFrequencyd",
    "SnapMaskToLabels",
    "SnapMaskToLabelsD",
    "SnapMaskToLabelsDict",
    "SnapMaskToLabelsd",
    "assign_grades",
    "folder_tile_transforms",
    "label_masks_at_size",
    "labels_at_size",
    "reduction_factors",
    "relabel_by_frequency",
    "sicapv2_tile_transforms",
    "snap_to_labels",
    "source_name",
    "tile_transforms",
]
