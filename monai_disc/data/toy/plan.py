"""What a toy data set holds: slides, patients, Gleason scores and tile label sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monai_disc.labels import NUM_CLASSES

__all__ = ["GLEASON_PAIRS"]

#: Slide Gleason scores (primary, secondary) as labels, with their share of toy slides. The
#: shares give SICAPv2-like labelled areas (about NC 40 %, GG3 20 %, GG4 30 %, GG5 10 %).
GLEASON_PAIRS: tuple[tuple[tuple[int, int], float], ...] = (
    ((0, 0), 0.14),
    ((1, 1), 0.16),
    ((1, 2), 0.16),
    ((2, 1), 0.14),
    ((2, 2), 0.14),
    ((2, 3), 0.11),
    ((3, 2), 0.07),
    ((1, 3), 0.03),
    ((3, 3), 0.05),
)


# ----------------------------------------------------------------------------------------------
# slide plan (which slides, patients, grades and tiles a toy data set holds)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ToyTile:
    name: str
    labels: tuple[int, ...]  # labels to place, background first
    cribriform: float


@dataclass(frozen=True)
class _ToySlide:
    index: int
    slide_id: str
    patient_id: int
    primary: int  # label 0..3
    secondary: int
    cribriform: float
    tiles: tuple[_ToyTile, ...]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, keys): results do not depend on the order of work."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def _tile_labels(primary: int, secondary: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Labels of one tile of a slide: from {NC, primary, secondary}, often one only."""
    if primary == 0:
        return (0,)
    cands = [0, primary] + ([secondary] if secondary != primary else [])
    weights = np.array([0.25, 0.52, 0.23][: len(cands)])
    weights /= weights.sum()
    n = 1 if rng.random() < 0.55 else int(rng.integers(2, len(cands) + 1))
    picked = rng.choice(len(cands), size=n, replace=False, p=weights)
    return tuple(int(cands[i]) for i in picked)


def _pairs_list(pairs: Sequence[tuple[tuple[int, int], float]]) -> list[list]:
    """Gleason pairs as plain lists (as a JSON settings record holds them)."""
    return [[[int(p[0]), int(p[1])], float(w)] for p, w in pairs]


def _check_config(pairs: Sequence[tuple[tuple[int, int], float]], gg45_mix: float, test_share: float) -> None:
    """One-line errors for grade knobs a build cannot use."""
    try:
        plain = _pairs_list(pairs)
    except (TypeError, ValueError, IndexError) as err:
        raise ValueError(f"gleason_pairs must be ((primary, secondary), share) items, got {pairs!r} ({err})") from None
    bad = [p for p, w in plain if not all(0 <= v < NUM_CLASSES for v in p) or w < 0]
    if not plain or bad or sum(w for _, w in plain) <= 0:
        raise ValueError(
            f"gleason_pairs need labels in 0..{NUM_CLASSES - 1} and shares >= 0 summing above 0, got {plain}"
        )
    if not 0.0 <= float(gg45_mix) <= 0.5:
        raise ValueError(f"gg45_mix must lie in [0, 0.5], got {gg45_mix}.")
    if not 0.0 < float(test_share) < 1.0:
        raise ValueError(f"test_share must lie strictly between 0 and 1, got {test_share}.")


def _plan_slides(
    n_slides: int,
    seed: int,
    tiles_per_slide: tuple[int, int],
    tile_size: int,
    gleason_pairs: Sequence[tuple[tuple[int, int], float]] = GLEASON_PAIRS,
) -> list[_ToySlide]:
    """Slides (ids, patients, Gleason scores) and the names and label sets of their tiles."""
    rng = _rng(seed, 0)
    pairs = [(int(p[0]), int(p[1])) for p, _ in gleason_pairs]
    weights = np.array([w for _, w in gleason_pairs], dtype=float)
    must = [(0, 0), (1, 1), (1, 2), (2, 3), (2, 2), (2, 1)][: min(n_slides, 6)]
    rest = [pairs[i] for i in rng.choice(len(pairs), size=n_slides - len(must), p=weights / weights.sum())]
    scores = must + rest
    order = rng.permutation(n_slides)
    scores = [scores[i] for i in order]

    # patients own 1-2 slides; keep at least 6 patients so every split and fold has one
    n_pairs = min(int(0.3 * n_slides), max(0, n_slides - 6))
    n_patients = n_slides - n_pairs
    owners = np.concatenate([np.arange(n_patients), rng.choice(n_patients, n_pairs, replace=False)])
    owners = np.sort(owners)
    patient_ids = rng.choice(np.arange(100, 1000), n_patients, replace=False)

    numbers = rng.choice(np.arange(1_000, 9_999_999), n_slides, replace=False)
    years = rng.choice([16, 17, 18], n_slides)
    stride = 4 * tile_size  # tile origins in level-0 (40x) pixels, as in SICAPv2 names
    slides = []
    for i in range(n_slides):
        primary, secondary = scores[i]
        slide_id = f"{years[i]}B{numbers[i]:07d}"
        srng = _rng(seed, 1, i)
        n_tiles = int(srng.integers(tiles_per_slide[0], tiles_per_slide[1] + 1))
        crib = float(srng.uniform(0.0, 1.0))
        tiles = []
        region, row, col = 1, 0, 0
        x0, y0 = int(srng.integers(2_000, 20_000)), int(srng.integers(2_000, 80_000))
        cols = int(srng.integers(4, 9))
        for _ in range(n_tiles):
            if col == cols:
                col, row = 0, row + 1
            if row == 4 or (row > 1 and srng.random() < 0.08):  # next annotated region of the slide
                region, row, col = region + 1, 0, 0
                x0, y0 = int(srng.integers(2_000, 20_000)), int(srng.integers(2_000, 80_000))
            name = f"{slide_id}_Block_Region_{region}_{row}_{col}_xini_{x0 + col * stride}_yini_{y0 + row * stride}"
            labels = _tile_labels(primary, secondary, srng)
            tiles.append(_ToyTile(name, labels, float(np.clip(crib + srng.normal(0, 0.2), 0.05, 0.95))))
            col += 1
        # the slide's grades must show in its tiles
        present = {v for t in tiles for v in t.labels}
        for j, need in enumerate(sorted({primary, secondary} - present)):
            t = tiles[-1 - j]
            tiles[-1 - j] = _ToyTile(t.name, (need,), t.cribriform)
        slides.append(_ToySlide(i, slide_id, int(patient_ids[owners[i]]), primary, secondary, crib, tuple(tiles)))
    return slides


def _split_patients(
    patients: list[int],
    grades: dict[int, int],
    seed: int,
    n_groups: int,
    first: float | None,
) -> list[list[int]]:
    """Stratified patient groups: sort by grade, deal out in turn (a share ``first`` to group 0 if given)."""
    rng = _rng(seed, 2, n_groups)
    order = sorted(patients, key=lambda p: (grades[p], rng.random()))
    if first is not None:
        n_test = max(1, round(first * len(order)))
        step = len(order) / n_test
        start = rng.uniform(0, step)
        test_idx = {min(len(order) - 1, int(start + k * step)) for k in range(n_test)}
        return [
            [p for i, p in enumerate(order) if i in test_idx],
            [p for i, p in enumerate(order) if i not in test_idx],
        ]
    offset = int(rng.integers(n_groups))
    return [[p for i, p in enumerate(order) if (i + offset) % n_groups == g] for g in range(n_groups)]
