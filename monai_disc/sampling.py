"""Generation masks for synthetic tiles and slides: a bank of m_freq shapes and a slide planner.

Annotated masks are turned into frequency-rank shapes ("m_freq": most frequent label -> 0, see
:func:`monai_disc.transforms.relabel_by_frequency`), which keep an annotator's drawing and drop its
grades. A generation mask is a bank shape whose ranks get grade labels by random weights, without
overlap (:func:`monai_disc.transforms.assign_grades`). A synthetic slide of a given primary and
secondary grade is 20-100 such masks with grades drawn from {NC, primary, secondary}; a slide whose
primary is NC is NC only. :func:`balance_slides` decides how many slides of each primary grade to add,
:func:`plan_synthetic_slides` plans them all.

A plan holds shape indices, grades and per-tile noise seeds, not pictures: every generator (SD, SD-SC,
SD-DISC, ...) draws the same slides from the same plan, and a generation job can resume slide by slide.
Everything is deterministic for a seed: slide `i` depends only on (seed, i) and its two grades, so a
slide can be re-planned (or checked) on its own.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from monai.config import NdarrayOrTensor

from monai_disc.io import atomic_write_bytes, atomic_write_text
from monai_disc.labels import (
    GLEASON_PATTERN_TO_LABEL,
    LABEL_NAMES,
    NUM_CLASSES,
    SICAPV2_MASK_VALUES,
    SICAPV2_VALUE_TO_LABEL,
    GleasonLabel,
    multi_hot,
)
from monai_disc.transforms.functional import assign_grades, relabel_by_frequency

__all__ = [
    "DEFAULT_CONCENTRATION",
    "DEFAULT_MIN_FRACTION",
    "MIN_MASK_SIZE",
    "SECONDARY_RULES",
    "ShapeBank",
    "SlidePlan",
    "TilePlan",
    "allowed_labels",
    "balance_slides",
    "count_primary_grades",
    "drop_specks",
    "load_plans",
    "manifest_rows",
    "plan_slide",
    "plan_synthetic_slides",
    "resize_nearest",
    "save_plans",
    "secondary_candidates",
    "tile_noise_seed",
    "write_manifest",
]

RandomState = Union[np.random.Generator, np.random.RandomState]  # noqa: UP007 (runs on Python 3.9)

#: Dirichlet concentration of the per-tile weights of (NC, primary, secondary). The paper's weights
#: (in its supplement) are not known; this default favours the primary grade, whose expected weight
#: (0.5) is twice that of NC and of the secondary grade (0.25 each), as a primary pattern is by
#: definition the larger one.
DEFAULT_CONCENTRATION: tuple[float, float, float] = (1.0, 2.0, 1.0)

#: Connected regions smaller than this fraction of a mask are specks (JPEG noise at boundaries), not
#: drawings: 8 px of a 64 px toy tile, 524 px (about 23 x 23) of a 512 px SICAPv2 tile.
DEFAULT_MIN_FRACTION: float = 0.002
# smallest side of a mask file a shape is taken from: a smaller one holds no drawing to reuse
MIN_MASK_SIZE: int = 16

#: Names accepted by :func:`balance_slides` for `secondary_rule`.
SECONDARY_RULES: tuple[str, ...] = ("neighbour", "same", "any")

_CANCER = (int(GleasonLabel.GG3), int(GleasonLabel.GG4), int(GleasonLabel.GG5))
_PLAN_FORMAT = 1
_BANK_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _randint(rng: RandomState, low: int, high: int) -> int:
    """Integer in [low, high] (inclusive) from a Generator or a RandomState."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return int(rng.randint(low, high + 1))


def _slide_rng(seed: int, slide_index: int) -> np.random.Generator:
    """Planning stream of one slide: a function of (seed, slide index) only."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0, int(slide_index))))


def tile_noise_seed(seed: int, slide_index: int, tile_index: int) -> int:
    """Noise seed of one synthetic tile, a function of (plan seed, slide index, tile index) only.

    Generators seed their initial noise z_T with it, so the same plan gives the same tiles whatever
    order, sharding or resumption the generation job uses, and every generator starts from the same noise.

    Returns:
        An int in [0, 2**31) (valid for `torch.Generator.manual_seed` and numpy).
    """
    state = np.random.SeedSequence(int(seed), spawn_key=(1, int(slide_index), int(tile_index))).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def resize_nearest(labels: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (H, W) to `size`, up or down.

    Output pixel (i, j) is input pixel (floor(i * H / h), floor(j * W / w)), the rule of torch's
    `interpolate(mode="nearest")`; when `size` divides (H, W) this equals
    :func:`monai_disc.transforms.labels_at_size`, so shapes reduced here line up with latents.
    """
    x = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {x.shape}")
    h, w = _as_size(size)
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


def _check_label(value: Any, what: str) -> int:
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a label 0..{NUM_CLASSES - 1}, got {value!r}") from None
    if label != value or not 0 <= label < NUM_CLASSES:
        raise ValueError(f"{what} must be a label 0..{NUM_CLASSES - 1} (NC, GG3, GG4, GG5), got {value!r}")
    return label


def _check_range(n_tiles: Sequence[int]) -> tuple[int, int]:
    lo, hi = (int(v) for v in n_tiles)
    if lo < 1 or hi < lo:
        raise ValueError(f"n_tiles must be (min, max) with 1 <= min <= max, got {tuple(n_tiles)}")
    return lo, hi


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
# slide plans
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TilePlan:
    """One synthetic tile: a bank shape, the grade of each of its ranks, and its noise seed."""

    shape_index: int
    source_id: str
    grades: tuple[int, ...]
    seed: int

    def mask(self, bank: ShapeBank, size: int | Sequence[int] | None = None) -> np.ndarray:
        """The generation mask: uint8 label map (H, W) of the shape with its ranks replaced by grades.

        Args:
            bank: the bank the plan was made with.
            size: resize (nearest) to this size, e.g. the tile size; None keeps the bank's size.

        Raises:
            ValueError: when `bank` is not the one the plan was made with (index or source id differ).
        """
        if not 0 <= self.shape_index < len(bank) or bank.source_ids[self.shape_index] != self.source_id:
            raise ValueError(
                f"shape {self.shape_index} ({self.source_id}) is not in this bank: the plan was made with another"
            )
        lut = np.asarray(self.grades, dtype=np.uint8)
        shape = bank.shapes[self.shape_index]
        if int(shape.max()) >= lut.size:
            raise ValueError(f"shape {self.shape_index} has more ranks than the {lut.size} planned grades")
        out = lut[shape]
        return out if size is None else resize_nearest(out, size)


@dataclass(frozen=True)
class SlidePlan:
    """One synthetic slide: its grades, its tiles and the seeds that make it reproducible.

    `primary` and `secondary` are labels (0 NC, 1 GG3, 2 GG4, 3 GG5), not Gleason patterns.
    """

    slide_id: str
    primary: int
    secondary: int
    seed: int
    index: int
    tiles: tuple[TilePlan, ...] = field(default_factory=tuple)

    @property
    def label(self) -> np.ndarray:
        """float32 multi-hot [NC, GG3, GG4, GG5] of primary and secondary (the MIL target)."""
        return multi_hot((self.primary, self.secondary))

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    @property
    def allowed(self) -> tuple[int, ...]:
        """Grades the slide's tiles may hold: NC only for an NC slide, else NC, primary, secondary."""
        return allowed_labels(self.primary, self.secondary)

    def masks(self, bank: ShapeBank, size: int | Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """The generation masks of the tiles, in order (see :meth:`TilePlan.mask`)."""
        for tile in self.tiles:
            yield tile.mask(bank, size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tiles as lists)."""
        return {
            "slide_id": self.slide_id,
            "primary": self.primary,
            "secondary": self.secondary,
            "label": self.label.tolist(),
            "seed": self.seed,
            "index": self.index,
            "tiles": [[t.shape_index, t.source_id, list(t.grades), t.seed] for t in self.tiles],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlidePlan:
        """Inverse of :meth:`to_dict`."""
        tiles = tuple(
            TilePlan(int(i), str(s), tuple(int(g) for g in grades), int(seed)) for i, s, grades, seed in d["tiles"]
        )
        return cls(str(d["slide_id"]), int(d["primary"]), int(d["secondary"]), int(d["seed"]), int(d["index"]), tiles)


def allowed_labels(primary: int, secondary: int) -> tuple[int, ...]:
    """(NC,) for an NC slide; else the distinct labels of (NC, primary, secondary) in that order."""
    if primary == GleasonLabel.NC:
        return (int(GleasonLabel.NC),)
    return tuple(dict.fromkeys((int(GleasonLabel.NC), int(primary), int(secondary))))


def _role_values(
    values: Sequence[float], primary: int, secondary: int, what: str
) -> tuple[tuple[int, ...], np.ndarray]:
    """Per-role (NC, primary, secondary) values -> the allowed labels and their values; a shared grade sums."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != 3:
        raise ValueError(f"{what} must give 3 values (NC, primary, secondary), got {tuple(values)}")
    labels = allowed_labels(primary, secondary)
    out = np.zeros(len(labels))
    for role, label in enumerate((int(GleasonLabel.NC), primary, secondary)):
        if label in labels:
            out[labels.index(label)] += v[role]
    return labels, out


def plan_slide(
    primary: int,
    secondary: int,
    bank: ShapeBank,
    rng: RandomState | None = None,
    n_tiles: Sequence[int] = (20, 100),
    weights: Sequence[float] | None = None,
    concentration: float | Sequence[float] = DEFAULT_CONCENTRATION,
    slide_id: str | None = None,
    seed: int = 0,
    slide_index: int = 0,
    require_labels: bool = True,
    max_attempts: int = 100,
) -> SlidePlan:
    """Plan one synthetic slide of grades (`primary`, `secondary`).

    The slide gets `n_tiles` tiles (inclusive range, uniform). Each tile is a bank shape with at most as
    many ranks as the slide has allowed labels (:func:`allowed_labels`), whose ranks get distinct grades by
    :func:`monai_disc.transforms.assign_grades`: rank 0 (the largest region) takes the first weighted draw.
    An NC slide therefore uses one-rank shapes only and is NC everywhere.

    Args:
        primary, secondary: labels 0..3; an NC primary needs an NC secondary, a cancer primary a cancer
            secondary (they may be equal).
        bank: the shapes to draw from.
        rng: planning random state; None derives it from (`seed`, `slide_index`), as
            :func:`plan_synthetic_slides` does.
        n_tiles: (min, max) tiles per slide; the paper uses (20, 100).
        weights: fixed weights of (NC, primary, secondary) for every tile; None draws fresh weights per tile
            from Dirichlet(`concentration`). When primary == secondary the two roles' weights (and
            concentrations) add up on that grade.
        concentration: Dirichlet concentration of (NC, primary, secondary), or one value for all three
            (default :data:`DEFAULT_CONCENTRATION`).
        slide_id: name of the slide; None gives "synth_<index>".
        seed, slide_index: recorded in the plan; tile noise seeds are :func:`tile_noise_seed` of them.
        require_labels: redraw the slide's grades (up to `max_attempts` times) until every grade of its
            label occurs in some tile, so a slide labelled GG3+GG5 shows both.
        max_attempts: bound on those redraws.

    Returns:
        The :class:`SlidePlan`.

    Raises:
        ValueError: bad labels, range or weights; no bank shape with few enough ranks; a label that cannot
            occur (weight 0) or still missing after `max_attempts` draws when `require_labels`.
    """
    primary = _check_label(primary, "primary")
    secondary = _check_label(secondary, "secondary")
    if (primary == GleasonLabel.NC) != (secondary == GleasonLabel.NC):
        raise ValueError(
            f"primary {LABEL_NAMES[primary]} with secondary {LABEL_NAMES[secondary]}: an NC slide is NC only "
            "and a cancer slide needs a cancer secondary grade"
        )
    lo, hi = _check_range(n_tiles)
    if len(bank) == 0:
        raise ValueError("the shape bank is empty")
    rng = _slide_rng(seed, slide_index) if rng is None else rng
    fixed: np.ndarray | None = None
    alpha: np.ndarray | None = None
    if weights is not None:
        labels, fixed = _role_values(weights, primary, secondary, "weights")
        if np.any(~np.isfinite(fixed)) or np.any(fixed < 0) or not np.any(fixed > 0):
            raise ValueError(f"weights must be finite, non-negative and not all 0, got {tuple(weights)}")
        max_ranks = int(np.count_nonzero(fixed))
    else:
        conc = np.asarray(concentration, dtype=np.float64).reshape(-1)
        labels, alpha = _role_values(
            np.repeat(conc, 3) if conc.size == 1 else conc, primary, secondary, "concentration"
        )
        if np.any(~np.isfinite(alpha)) or np.any(alpha <= 0):
            raise ValueError(f"concentration must be positive, got {concentration}")
        max_ranks = len(labels)
    wanted = set(labels) & {primary, secondary}
    if require_labels and fixed is not None:
        zero = [LABEL_NAMES[g] for g, w in zip(labels, fixed) if g in wanted and w <= 0]
        if zero:
            raise ValueError(f"weights {tuple(weights)} give no weight to {zero}, part of the slide's label")

    count = _randint(rng, lo, hi)
    shape_indices = [bank.sample_index(rng, max_ranks=max_ranks) for _ in range(count)]
    ranks = [int(bank.num_ranks[i]) for i in shape_indices]
    for _ in range(max(1, int(max_attempts))):
        grades = [
            tuple(int(g) for g in assign_grades(r, rng, labels, fixed, 1.0 if alpha is None else alpha)) for r in ranks
        ]
        present = {g for gs in grades for g in gs}
        if not require_labels or wanted <= present:
            break
    else:
        missing = [LABEL_NAMES[label] for label in sorted(wanted - present)]
        raise ValueError(
            f"slide {primary, secondary}: grades {missing} did not occur in {max_attempts} draws of {count} tiles; "
            "raise their weights or n_tiles"
        )
    tiles = tuple(
        TilePlan(i, bank.source_ids[i], g, tile_noise_seed(seed, slide_index, t))
        for t, (i, g) in enumerate(zip(shape_indices, grades))
    )
    name = f"synth_{int(slide_index):04d}" if slide_id is None else str(slide_id)
    return SlidePlan(name, primary, secondary, int(seed), int(slide_index), tiles)


# ----------------------------------------------------------------------------------------------
# balancing
# ----------------------------------------------------------------------------------------------
def secondary_candidates(primary: int, rule: str = "neighbour") -> tuple[int, ...]:
    """Secondary grades a synthetic slide of `primary` may get under a named rule.

    * "neighbour" (default): the primary grade or an adjacent cancer grade: GG3 -> {GG3, GG4},
      GG4 -> {GG3, GG4, GG5}, GG5 -> {GG4, GG5}; the common Gleason scores (3+3, 3+4, 4+3, 4+5, ...).
    * "same": the primary grade only (3+3, 4+4, 5+5).
    * "any": any cancer grade.

    An NC primary always gets NC.
    """
    primary = _check_label(primary, "primary")
    if rule not in SECONDARY_RULES:
        raise ValueError(f"unknown secondary_rule {rule!r}; use one of {list(SECONDARY_RULES)} or a callable")
    if primary == GleasonLabel.NC:
        return (int(GleasonLabel.NC),)
    if rule == "same":
        return (primary,)
    if rule == "any":
        return _CANCER
    return tuple(g for g in _CANCER if abs(g - primary) <= 1)


def balance_slides(
    real_primary_counts: Mapping[int, int],
    target: int = 100,
    secondary_rule: str | Callable[[int, np.random.Generator], int] = "neighbour",
    seed: int = 0,
    grades: Sequence[int] = tuple(range(NUM_CLASSES)),
) -> list[tuple[int, int]]:
    """(primary, secondary) pairs of the synthetic slides that bring every primary grade to `target` slides.

    A grade with `c` real slides gets `max(0, target - c)` synthetic ones (the paper: 100 per grade, 276
    synthetic slides on SICAPv2). Secondaries are drawn uniformly from :func:`secondary_candidates`
    (`secondary_rule` a name) or by a callable `(primary, rng) -> secondary`.

    Args:
        real_primary_counts: primary label (0..3) -> number of real slides; absent grades count 0.
        target: slides wanted per primary grade.
        secondary_rule: "neighbour", "same", "any", or a callable.
        seed: seed of the secondary draws.
        grades: the primary grades to balance.

    Returns:
        Pairs of labels, grouped by primary grade in the order of `grades`.

    Raises:
        ValueError: a key outside 0..3, a negative count, a negative target or an invalid secondary.
    """
    if int(target) < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    counts = {}
    for key, value in real_primary_counts.items():
        label = _check_label(key, "a primary grade in real_primary_counts")
        if int(value) != value or value < 0:
            raise ValueError(f"slide count of {LABEL_NAMES[label]} must be a non-negative integer, got {value!r}")
        counts[label] = int(value)
    if not callable(secondary_rule):
        secondary_candidates(int(GleasonLabel.GG3), secondary_rule)  # validates the name early
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2,)))
    pairs: list[tuple[int, int]] = []
    for grade in grades:
        primary = _check_label(grade, "a grade to balance")
        for _ in range(max(0, int(target) - counts.get(primary, 0))):
            if callable(secondary_rule):
                secondary = _check_label(secondary_rule(primary, rng), "secondary_rule's result")
            else:
                pool = secondary_candidates(primary, secondary_rule)
                secondary = pool[_randint(rng, 0, len(pool) - 1)]
            pairs.append((primary, secondary))
    return pairs


def count_primary_grades(real_slides: Any) -> dict[int, int]:
    """Real slides per primary label (0..3).

    Args:
        real_slides: a mapping label -> count (returned as is); a SICAPv2 root (path), read with
            :func:`monai_disc.data.load_sicapv2_slides`; or slide dicts: with `gleason_score` (PANDA,
            :func:`monai_disc.data.load_panda`) or with `primary` as a Gleason pattern 0/3/4/5
            (:func:`monai_disc.data.load_sicapv2_slides`).

    Raises:
        ValueError: a slide without a readable primary grade (the message names the slide).
    """
    if isinstance(real_slides, Mapping):
        return {_check_label(k, "a primary grade"): int(v) for k, v in real_slides.items()}
    if isinstance(real_slides, (str, os.PathLike)):
        from monai_disc.data.sicapv2 import load_sicapv2_slides

        real_slides = load_sicapv2_slides(real_slides)
    from monai_disc.data.panda import parse_gleason_score

    counts = {label: 0 for label in range(NUM_CLASSES)}
    for slide in real_slides:
        name = slide.get("slide_id", "?")
        if "gleason_score" in slide:
            patterns = parse_gleason_score(slide["gleason_score"])
            if patterns is None:
                raise ValueError(f"slide {name}: cannot parse gleason_score {slide['gleason_score']!r}")
            pattern = patterns[0]
        elif "primary" in slide:
            pattern = slide["primary"]
        else:
            raise ValueError(f"slide {name} has neither 'primary' nor 'gleason_score'")
        if pattern not in GLEASON_PATTERN_TO_LABEL:
            raise ValueError(f"slide {name}: primary Gleason pattern must be 0, 3, 4 or 5, got {pattern!r}")
        counts[GLEASON_PATTERN_TO_LABEL[int(pattern)]] += 1
    return counts


def plan_synthetic_slides(
    real_slides: Any,
    bank: ShapeBank,
    target: int = 100,
    seed: int = 0,
    n_tiles: Sequence[int] = (20, 100),
    weights: Sequence[float] | None = None,
    concentration: float | Sequence[float] = DEFAULT_CONCENTRATION,
    secondary_rule: str | Callable[[int, np.random.Generator], int] = "neighbour",
    id_prefix: str = "synth_",
) -> list[SlidePlan]:
    """Plan the synthetic slides that balance the real ones: :func:`balance_slides` + :func:`plan_slide`.

    Slide `i` is planned from a random state derived from (`seed`, `i`) and named `<id_prefix><i:04d>`.

    Args:
        real_slides: see :func:`count_primary_grades`.
        bank: the shapes to draw from.
        target: slides wanted per primary grade.
        seed: the one seed of the whole plan.
        n_tiles, weights, concentration: see :func:`plan_slide`.
        secondary_rule: see :func:`balance_slides`.
        id_prefix: prefix of the slide ids.

    Returns:
        One :class:`SlidePlan` per synthetic slide; the same arguments give the same plans.
    """
    pairs = balance_slides(count_primary_grades(real_slides), target, secondary_rule, seed)
    return [
        plan_slide(
            primary,
            secondary,
            bank,
            None,
            n_tiles=n_tiles,
            weights=weights,
            concentration=concentration,
            slide_id=f"{id_prefix}{i:04d}",
            seed=seed,
            slide_index=i,
        )
        for i, (primary, secondary) in enumerate(pairs)
    ]


# ----------------------------------------------------------------------------------------------
# serialisation
# ----------------------------------------------------------------------------------------------
def save_plans(plans: Sequence[SlidePlan], path: str | os.PathLike, bank: ShapeBank | None = None) -> Path:
    """Write plans as JSON (atomically). With `bank`, its size and length are recorded for a later check."""
    content: dict[str, Any] = {"format": _PLAN_FORMAT, "slides": [p.to_dict() for p in plans]}
    if bank is not None:
        content["bank"] = {"shapes": len(bank), "spatial_size": list(bank.spatial_size)}
    return atomic_write_text(path, json.dumps(content, indent=None, separators=(",", ":")))


def load_plans(path: str | os.PathLike) -> list[SlidePlan]:
    """Read plans written by :func:`save_plans`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a plan file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide plan file not found: {path}")
    try:
        content = json.loads(path.read_text())
        return [SlidePlan.from_dict(d) for d in content["slides"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a slide plan file: {type(err).__name__}: {err}") from None


def manifest_rows(plans: Iterable[SlidePlan]) -> list[dict[str, Any]]:
    """One row per slide: slide_id, primary, secondary (label names), NC, GG3, GG4, GG5 (multi-hot 0/1),
    n_tiles, seed, index."""
    rows = []
    for p in plans:
        row: dict[str, Any] = {
            "slide_id": p.slide_id,
            "primary": LABEL_NAMES[p.primary],
            "secondary": LABEL_NAMES[p.secondary],
        }
        row.update({name: int(v) for name, v in zip(LABEL_NAMES, p.label)})
        row.update({"n_tiles": p.n_tiles, "seed": p.seed, "index": p.index})
        rows.append(row)
    return rows


def write_manifest(plans: Iterable[SlidePlan], path: str | os.PathLike) -> Path:
    """Write :func:`manifest_rows` as CSV (atomically): the human-readable list of synthetic slides."""
    rows = manifest_rows(plans)
    header = ["slide_id", "primary", "secondary", *LABEL_NAMES, "n_tiles", "seed", "index"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())
