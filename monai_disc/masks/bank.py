"""The shape bank: m_freq shapes of annotated masks, and random generation masks drawn from it.

Annotated masks are turned into frequency-rank shapes ("m_freq": most frequent label -> 0, see
:func:`monai_disc.transforms.relabel_by_frequency`), which keep an annotator's drawing and drop its
grades. A generation mask is a bank shape whose ranks get grade labels by random weights, without
overlap (:func:`monai_disc.transforms.assign_grades`): :func:`random_masks` draws such masks (DISC's
training masks); :mod:`monai_disc.masks.plans` plans whole synthetic slides from the same bank.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from monai.config import NdarrayOrTensor
from monai.utils import ensure_tuple_rep

from monai_disc.io import atomic_write_bytes
from monai_disc.labels import NUM_CLASSES, SICAPV2_MASK_VALUES, SICAPV2_VALUE_TO_LABEL
from monai_disc.transforms.functional import assign_grades, relabel_by_frequency

__all__ = [
    "DEFAULT_MIN_FRACTION",
    "MIN_MASK_SIZE",
    "RandomState",
    "ShapeBank",
    "drawable_labels",
    "drop_specks",
    "random_masks",
    "resize_nearest",
]

RandomState = Union[np.random.Generator, np.random.RandomState]  # noqa: UP007 (runs on Python 3.9)

#: Connected regions smaller than this fraction of a mask are specks (JPEG noise at boundaries), not
#: drawings: 8 px of a 64 px toy tile, 524 px (about 23 x 23) of a 512 px SICAPv2 tile.
DEFAULT_MIN_FRACTION: float = 0.002
#: Smallest side of a mask file a shape is taken from: a smaller one holds no drawing to reuse.
MIN_MASK_SIZE: int = 16

_BANK_FORMAT = 1


def _randint(rng: RandomState, low: int, high: int) -> int:
    """Integer in [low, high] (inclusive) from a Generator or a RandomState."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return int(rng.randint(low, high + 1))


def resize_nearest(labels: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (H, W) to `size`, up or down.

    Output pixel (i, j) is input pixel (floor(i * H / h), floor(j * W / w)), the rule of torch's
    `interpolate(mode="nearest")`; when `size` divides (H, W) this equals
    :func:`monai_disc.transforms.labels_at_size`, so shapes reduced here line up with latents.
    """
    x = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {x.shape}")
    h, w = ensure_tuple_rep(size, 2)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if (h, w) == x.shape:
        return x.copy()
    rows = (np.arange(h) * x.shape[0]) // h
    cols = (np.arange(w) * x.shape[1]) // w
    return x[rows[:, None], cols[None, :]]


def drop_specks(labels: np.ndarray, min_fraction: float = DEFAULT_MIN_FRACTION) -> np.ndarray:
    """Give every small connected region (4-connected, fewer pixels than `min_fraction` of the map) the
    label of the nearest pixel outside such regions.

    JPEG noise flips single boundary pixels of a SICAPv2 mask from 4 to 3 or 5, which snapping cannot
    undo; left in, each flip would count as a region of its own. Returns `labels` itself when nothing
    changes (or when every region is small).
    """
    if not 0 <= min_fraction < 1:
        raise ValueError(f"min_fraction must lie in [0, 1), got {min_fraction}")
    x = np.asarray(labels)
    threshold = min_fraction * x.size
    if threshold <= 1:
        return x
    from scipy import ndimage

    speck = np.zeros(x.shape, dtype=bool)
    for value in np.unique(x):
        components, n = ndimage.label(x == value)
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        small = np.flatnonzero(sizes < threshold)
        small = small[small > 0]
        if small.size:
            speck |= np.isin(components, small)
    if not speck.any() or speck.all():
        return x
    _, (rows, cols) = ndimage.distance_transform_edt(speck, return_indices=True)
    return x[rows, cols]


# ----------------------------------------------------------------------------------------------
# shape bank
# ----------------------------------------------------------------------------------------------
class ShapeBank:
    """m_freq shapes of training masks, stored as one uint8 stack (N, H, W) of frequency ranks.

    Each shape keeps the id of the tile it came from (to trace a synthetic tile back to its drawing)
    and its number of ranks (1..4), so a sampler can ask for shapes that fit the labels it may assign.

    Args:
        shapes: (N, H, W) frequency-rank maps (0 = the largest region); stored as uint8.
        source_ids: one id per shape.
        num_ranks: ranks per shape; None counts them.

    Raises:
        ValueError: a stack that is not (N, H, W), ranks outside 0..3, ids or counts of the wrong length,
            counts that disagree with the shapes.
    """

    def __init__(self, shapes: np.ndarray, source_ids: Sequence[str], num_ranks: Sequence[int] | None = None) -> None:
        stack = np.asarray(shapes)
        if stack.ndim != 3:
            raise ValueError(f"shapes must be a stack (N, H, W), got shape {stack.shape}")
        if stack.size and (stack.min() < 0 or stack.max() >= NUM_CLASSES):
            raise ValueError(f"shape ranks must lie in 0..{NUM_CLASSES - 1}, found {stack.min()}..{stack.max()}")
        self.shapes = np.ascontiguousarray(stack, dtype=np.uint8)
        self.source_ids = [str(s) for s in source_ids]
        if len(self.source_ids) != len(self.shapes):
            raise ValueError(f"{len(self.source_ids)} source ids for {len(self.shapes)} shapes")
        counted = self._count_ranks(self.shapes)
        if num_ranks is not None:
            given = np.asarray(num_ranks, dtype=np.int64).reshape(-1)
            if given.shape != counted.shape or np.any(given != counted):
                raise ValueError("num_ranks disagrees with the ranks present in the shapes")
        self.num_ranks = counted
        self._candidates: dict[int, np.ndarray] = {}

    @staticmethod
    def _count_ranks(stack: np.ndarray) -> np.ndarray:
        if len(stack) == 0:
            return np.zeros(0, dtype=np.int64)
        return stack.reshape(len(stack), -1).max(axis=1).astype(np.int64) + 1

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_masks(
        cls,
        masks: Iterable[NdarrayOrTensor],
        source_ids: Sequence[str] | None = None,
        size: int | Sequence[int] | None = None,
        min_fraction: float = DEFAULT_MIN_FRACTION,
    ) -> ShapeBank:
        """Bank of label maps: specks dropped, resized (nearest, when `size` is set), relabelled by frequency.

        A connected region smaller than `min_fraction` of a mask is a speck, not a drawing
        (:func:`drop_specks`): JPEG noise turns boundary pixels of a SICAPv2 mask from 4 into 3 or 5, and
        each such speck would otherwise become a rank of its own and receive a grade. Relabelling after
        the resize keeps ranks dense and ordered by the stored areas.

        Args:
            masks: label maps (H, W) or (1, H, W), numpy or torch, any integer labels.
            source_ids: one id per mask; None numbers them "0", "1", ...
            size: stored (h, w) or side; None keeps the masks' size (they must then all match).
            min_fraction: smallest area fraction a connected region needs to stay; 0 keeps every pixel.

        Raises:
            ValueError: a mask of another shape, maps of different sizes without `size`, a count
                mismatch of ids, or no mask at all.
        """
        out: list[np.ndarray] = []
        ids = None if source_ids is None else [str(s) for s in source_ids]
        for i, mask in enumerate(masks):
            name = ids[i] if ids is not None and i < len(ids) else f"mask {i}"
            out.append(cls._shape_of(mask, size, name, min_fraction))
        if not out:
            raise ValueError("no mask given to build a shape bank from")
        if ids is None:
            ids = [str(i) for i in range(len(out))]
        if len(ids) != len(out):
            raise ValueError(f"{len(ids)} source ids for {len(out)} masks")
        first = out[0].shape
        for name, shape in zip(ids, out):
            if shape.shape != first:
                raise ValueError(
                    f"{name}: mask size {shape.shape} differs from {first}; pass size=(h, w) to resize them"
                )
        return cls(np.stack(out), ids)

    @staticmethod
    def _shape_of(
        mask: NdarrayOrTensor, size: int | Sequence[int] | None, name: str, min_fraction: float
    ) -> np.ndarray:
        x = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"{name}: a mask must be (H, W) or (1, H, W), got shape {x.shape}")
        x = drop_specks(x, min_fraction)
        if size is not None:
            x = resize_nearest(x, size)
        ranks, _ = relabel_by_frequency(x.astype(np.int64))
        return ranks.astype(np.uint8)

    @classmethod
    def from_data_list(
        cls,
        data: Sequence[Mapping[str, Any]],
        mask_key: str = "mask",
        id_key: str | None = None,
        size: int | Sequence[int] | None = None,
        mask_values: Sequence[float] = SICAPV2_MASK_VALUES,
        mask_labels: Sequence[int] = tuple(SICAPV2_VALUE_TO_LABEL[v] for v in SICAPV2_MASK_VALUES),
        max_distance: float | None = None,
        min_fraction: float = DEFAULT_MIN_FRACTION,
        progress: bool = False,
        min_size: int = MIN_MASK_SIZE,
    ) -> ShapeBank:
        """Bank of the mask files of a data list, e.g. :func:`monai_disc.data.load_sicapv2`'s.

        Masks are read and snapped with the package's transforms (:class:`~monai_disc.transforms.LoadPILImage`,
        :class:`~monai_disc.transforms.SnapMaskToLabels`); items whose mask is None are skipped. The
        defaults read SICAPv2 JPEG masks (0/3/4/5); for a plain folder's PNG masks (0..3) pass
        `mask_values=(0, 1, 2, 3), mask_labels=(0, 1, 2, 3), max_distance=0`.

        Args:
            data: items with a mask path under `mask_key`.
            mask_key: key of the mask path.
            id_key: key of the source id; None uses the mask file name without extension (the tile name).
            size: stored size (nearest resize); None keeps the files' size. 128 keeps a SICAPv2 bank of
                18k tiles near 300 MB; upsample at generation time with :func:`resize_nearest`.
            mask_values, mask_labels, max_distance: see :class:`~monai_disc.transforms.SnapMaskToLabels`.
            min_fraction: see :meth:`from_masks`.
            progress: show a progress bar.
            min_size: smallest side of a mask file (a smaller one holds no drawing to reuse).

        Raises:
            ValueError: no item with a mask, or masks of different sizes without `size`.
            monai_disc.errors.FailedFilesError: masks that are missing, unreadable, smaller than `min_size` or hold
                values no label maps to; every bad file is listed with its problem, and no bank is made.
        """
        from monai_disc.errors import collect, raise_failures
        from monai_disc.transforms.array import LoadPILImage, SnapMaskToLabels

        items = [d for d in data if d.get(mask_key) is not None]
        if not items:
            raise ValueError(f"no item of the data list ({len(data)} items) has a mask under {mask_key!r}")
        load = LoadPILImage(mode="L")
        snap = SnapMaskToLabels(mask_values, mask_labels, max_distance)
        ids = [str(d[id_key]) if id_key is not None else Path(str(d[mask_key])).stem for d in items]
        iterator: Iterable[tuple[Mapping[str, Any], str]] = zip(items, ids)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(items), desc="shape bank", unit="mask")
        shapes: list[np.ndarray] = []
        kept: list[str] = []
        failures: dict[str, str] = {}
        for item, source_id in iterator:  # every mask is checked, so one run names every bad file
            path = str(item[mask_key])
            try:
                mask = snap(load(path))
                h, w = mask.shape[-2:]
                if min(h, w) < min_size:
                    raise ValueError(f"{path}: the mask is {h}x{w} px; a shape needs at least {min_size} px a side")
                shapes.append(cls._shape_of(mask, size, path, min_fraction))
                kept.append(source_id)
            except (OSError, ValueError) as err:
                collect(failures, path, err)
        raise_failures(failures, done=f"{len(kept)} of {len(items)} masks are good; no shape bank was made")
        return cls.from_masks(shapes, kept, None, 0.0)

    # storage -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank as a compressed npz (temp file + rename, so a killed write leaves no half file)."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            format=np.int64(_BANK_FORMAT),
            shapes=self.shapes,
            source_ids=np.asarray(self.source_ids, dtype=np.str_),
            num_ranks=self.num_ranks.astype(np.uint8),
        )
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShapeBank:
        """Read a bank written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a shape bank file, or inconsistent content (the message names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"shape bank file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                content = {k: f[k] for k in f.files}
        except Exception as err:
            raise ValueError(f"cannot read shape bank {path}: {err}") from err
        missing = [k for k in ("shapes", "source_ids", "num_ranks") if k not in content]
        if missing:
            raise ValueError(f"{path} is not a shape bank: it lacks {missing}")
        try:
            return cls(content["shapes"], content["source_ids"].tolist(), content["num_ranks"])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    # access ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.shapes[index]

    @property
    def spatial_size(self) -> tuple[int, int]:
        """(H, W) of the stored shapes."""
        return int(self.shapes.shape[1]), int(self.shapes.shape[2])

    def rank_counts(self) -> dict[int, int]:
        """How many shapes have 1, 2, 3, 4 ranks."""
        counts = np.bincount(self.num_ranks, minlength=NUM_CLASSES + 1)
        return {r: int(counts[r]) for r in range(1, NUM_CLASSES + 1)}

    def candidates(self, max_ranks: int | None = None, num_ranks: int | None = None) -> np.ndarray:
        """Indices of the shapes with exactly `num_ranks` ranks, or at most `max_ranks` (None: all)."""
        if num_ranks is not None:
            return np.flatnonzero(self.num_ranks == int(num_ranks))
        key = NUM_CLASSES if max_ranks is None else int(max_ranks)
        if key not in self._candidates:
            self._candidates[key] = np.flatnonzero(self.num_ranks <= key)
        return self._candidates[key]

    def sample_index(self, rng: RandomState, max_ranks: int | None = None, num_ranks: int | None = None) -> int:
        """Index of a shape drawn uniformly among :meth:`candidates`.

        Raises:
            ValueError: when no shape qualifies.
        """
        pool = self.candidates(max_ranks, num_ranks)
        if pool.size == 0:
            want = f"exactly {num_ranks}" if num_ranks is not None else f"at most {max_ranks}"
            raise ValueError(
                f"the shape bank ({len(self)} shapes, by number of ranks {self.rank_counts()}) has no shape "
                f"with {want} ranks"
            )
        return int(pool[_randint(rng, 0, pool.size - 1)])

    def sample(
        self, rng: RandomState, max_ranks: int | None = None, num_ranks: int | None = None
    ) -> tuple[np.ndarray, str]:
        """A shape drawn uniformly among :meth:`candidates` (a copy) and its source id."""
        index = self.sample_index(rng, max_ranks, num_ranks)
        return self.shapes[index].copy(), self.source_ids[index]


# ----------------------------------------------------------------------------------------------
# random generation masks
# ----------------------------------------------------------------------------------------------
def drawable_labels(labels: Sequence[int], weights: Sequence[float] | None) -> int:
    """How many distinct grades one mask can get: the labels that can be drawn."""
    if weights is None:
        return len(labels)
    return int(np.count_nonzero(np.asarray(weights, dtype=np.float64) > 0))


def random_masks(
    bank: ShapeBank,
    n: int,
    rng: RandomState,
    size: int | Sequence[int] | None = None,
    labels: Sequence[int] = tuple(range(NUM_CLASSES)),
    weights: Sequence[float] | None = None,
    concentration: float | Sequence[float] = 1.0,
    crop: bool = False,
) -> np.ndarray:
    """``n`` generation masks: bank shapes whose frequency ranks get grades by random weights, no two alike.

    Only shapes with no more ranks than drawable labels are used, so every rank gets its own grade.

    Args:
        bank: m_freq shapes of training masks.
        n: number of masks.
        rng: numpy Generator or RandomState.
        size: (H, W) or side of the masks (nearest resize); None keeps the bank's size.
        labels, weights, concentration: see :func:`monai_disc.transforms.assign_grades`.
        crop: take a random `size` window of each shape instead of resizing it, keeping the drawings' scale
            (for a generator trained on crops of the tiles, as the toy LDM is).

    Returns:
        int64 label maps (n, H, W).

    Raises:
        ValueError: when the bank has no shape that the labels can colour, or bad labels or weights.
    """
    max_ranks = drawable_labels(labels, weights)
    out = []
    for _ in range(int(n)):
        index = bank.sample_index(rng, max_ranks=max_ranks)
        grades = assign_grades(int(bank.num_ranks[index]), rng, labels, weights, concentration)
        mask = grades[bank.shapes[index]]
        if size is not None and crop:
            out.append(_random_window(mask, size, rng))
        else:
            out.append(mask if size is None else resize_nearest(mask, size))
    if not out:
        h, w = bank.spatial_size if size is None else resize_nearest(bank.shapes[0], size).shape
        return np.zeros((0, h, w), dtype=np.int64)
    return np.stack(out).astype(np.int64, copy=False)


def _random_window(mask: np.ndarray, size: int | Sequence[int], rng: RandomState) -> np.ndarray:
    h, w = ensure_tuple_rep(size, 2)
    if h > mask.shape[0] or w > mask.shape[1]:
        raise ValueError(f"cannot crop {h}x{w} masks from {mask.shape[0]}x{mask.shape[1]} bank shapes")
    integers = getattr(rng, "integers", None) or rng.randint  # numpy Generator or RandomState
    top = int(integers(0, mask.shape[0] - h + 1))
    left = int(integers(0, mask.shape[1] - w + 1))
    return mask[top : top + h, left : left + w]
