"""Slide plans: which bank shapes, grades and noise seeds make each synthetic tile and slide.

A generation mask is a :class:`monai_disc.masks.ShapeBank` shape whose frequency ranks get grade labels by
random weights, without overlap (:func:`monai_disc.transforms.assign_grades`). A synthetic slide of a given primary and
secondary grade is 20-100 such masks with grades drawn from {NC, primary, secondary}; a slide whose
primary is NC is NC only. :func:`balance_slides` decides how many slides of each primary grade to add,
:func:`plan_synthetic_slides` plans them all.

A plan holds shape indices, grades and per-tile noise seeds, not pictures: every generator (SD, SD-SC,
SD-DISC, ...) draws the same slides from the same plan, and a generation job can resume slide by slide.
Everything is deterministic for a seed: slide `i` depends only on (seed, i) and its two grades, so a
slide can be re-planned (or checked) on its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_disc.io import atomic_write_text
from monai_disc.labels import GLEASON_PATTERN_TO_LABEL, LABEL_NAMES, NUM_CLASSES, GleasonLabel, multi_hot
from monai_disc.masks.bank import RandomState, ShapeBank, _randint, resize_nearest
from monai_disc.transforms.functional import assign_grades

__all__ = [
    "DEFAULT_CONCENTRATION",
    "SECONDARY_RULES",
    "SlidePlan",
    "TilePlan",
    "allowed_labels",
    "balance_slides",
    "count_primary_grades",
    "load_plans",
    "plan_slide",
    "plan_synthetic_slides",
    "plans_in_turn",
    "save_plans",
    "secondary_candidates",
    "tile_noise_seed",
]

#: Dirichlet concentration of the per-tile weights of (NC, primary, secondary). The paper's weights
#: (in its supplement) are not known; this default favours the primary grade, whose expected weight
#: (0.5) is twice that of NC and of the secondary grade (0.25 each), as a primary pattern is by
#: definition the larger one.
DEFAULT_CONCENTRATION: tuple[float, float, float] = (1.0, 2.0, 1.0)

#: Names accepted by :func:`balance_slides` for `secondary_rule`.
SECONDARY_RULES: tuple[str, ...] = ("neighbour", "same", "any")

_CANCER = (int(GleasonLabel.GG3), int(GleasonLabel.GG4), int(GleasonLabel.GG5))
_PLAN_FORMAT = 1


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


def plans_in_turn(
    plans: Sequence[SlidePlan], n: int, key: Callable[[SlidePlan], Any] = lambda plan: plan.primary
) -> list[SlidePlan]:
    """Up to ``n`` plans taken in turn from each group of equal ``key`` (groups in sorted key order), so a few
    slides cover every grade: :func:`plan_synthetic_slides` returns them sorted by grade, and its first ``n`` would
    all be NC.

    Args:
        plans: slide plans.
        n: how many to take at most.
        key: the grouping (default: the primary grade; ``(primary, secondary)`` pairs spread further).
    """
    groups: dict[Any, list[SlidePlan]] = {}
    for plan in plans:
        groups.setdefault(key(plan), []).append(plan)
    queues, picked = [list(groups[k]) for k in sorted(groups)], []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked
