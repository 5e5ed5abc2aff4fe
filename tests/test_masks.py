"""Shape bank (m_freq), slide planner and slide balancer of `monai_disc.masks`."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from monai_disc.data.synthetic import manifest_text
from monai_disc.masks import (
    ShapeBank,
    balance_slides,
    count_primary_grades,
    drop_specks,
    load_plans,
    plan_slide,
    plan_synthetic_slides,
    resize_nearest,
    save_plans,
    tile_noise_seed,
)

NC, GG3, GG4, GG5 = 0, 1, 2, 3


def _mask(kind: int, size: int = 16) -> np.ndarray:
    """Hand-made label maps with 1..4 labels and known area order."""
    m = np.full((size, size), GG4, dtype=np.int64)  # GG4 everywhere first
    if kind >= 1:
        m[: size // 2 + 2] = NC  # NC the largest region
    if kind >= 2:
        m[size - 3 :, :] = GG5  # GG5 a band
    if kind >= 3:
        m[:2, :2] = GG3  # GG3 a small corner
    return m


@pytest.fixture(scope="module")
def bank() -> ShapeBank:
    masks = [_mask(i % 4) for i in range(40)]
    return ShapeBank.from_masks(masks, [f"tile_{i}" for i in range(40)])


def test_bank_stores_frequency_ranks_source_ids_and_rank_counts():
    masks = [_mask(k) for k in range(4)]
    bank = ShapeBank.from_masks(masks, ["a", "b", "c", "d"])
    assert len(bank) == 4 and bank.shapes.dtype == np.uint8 and bank.shapes.shape == (4, 16, 16)
    assert bank.source_ids == ["a", "b", "c", "d"]
    assert bank.num_ranks.tolist() == [1, 2, 3, 4]
    assert bank.rank_counts() == {1: 1, 2: 1, 3: 1, 4: 1}
    # mask 3: NC (8*16-4=124 px) -> 0, GG4 (5*16=80 px) -> 1, GG5 (48 px) -> 2, GG3 (4 px) -> 3
    expected = np.select([masks[3] == NC, masks[3] == GG4, masks[3] == GG5], [0, 1, 2], 3)
    np.testing.assert_array_equal(bank[3], expected)
    np.testing.assert_array_equal(bank[0], np.zeros((16, 16)))  # a one-label mask is rank 0 everywhere


def test_bank_downsamples_by_nearest_then_ranks():
    m = np.zeros((8, 8), dtype=np.int64)
    m[:, 6:] = 5  # a 2-column band: kept by pixel (i*2, j*2) only at column 6
    bank = ShapeBank.from_masks([m], size=4)
    assert bank.spatial_size == (4, 4) and bank.source_ids == ["0"]
    np.testing.assert_array_equal(bank[0], np.array([[0, 0, 0, 1]] * 4))
    np.testing.assert_array_equal(resize_nearest(bank[0], 8)[:, 6:], np.ones((8, 2)))


def test_specks_take_the_nearest_label_and_real_regions_stay():
    m = np.full((50, 50), GG4, dtype=np.int64)
    m[:, 30:] = NC
    m[5:15, 5:15] = GG3  # a real 100 px region (4 % of the map)
    noisy = m.copy()
    noisy[20, 28] = GG5  # JPEG-like flips near the GG4 | NC boundary (one pixel off it: no nearest-label tie)
    noisy[21, 31] = GG3
    noisy[40, 10:12] = GG5
    np.testing.assert_array_equal(drop_specks(noisy, 0.002), m)  # 5 px threshold
    bank = ShapeBank.from_masks([noisy])
    assert bank.num_ranks.tolist() == [3]  # GG4, NC, GG3; the GG5 specks are gone
    assert ShapeBank.from_masks([noisy], min_fraction=0).num_ranks.tolist() == [4]


def test_bank_rejects_masks_of_different_sizes_without_size():
    with pytest.raises(ValueError, match="b: mask size"):
        ShapeBank.from_masks([np.zeros((8, 8)), np.zeros((4, 4))], ["a", "b"])


def test_bank_from_data_list_snaps_jpeg_masks_and_uses_tile_names(tmp_path):
    values = np.array([0, 3, 4, 5], dtype=np.uint8)
    data = []
    for k in range(3):
        path = tmp_path / f"16B000{k}_Block_Region_1_xini_{k}.jpg"
        # quality 100 still leaves JPEG rounding noise (e.g. 0 -> 1), as in the toy set's masks
        Image.fromarray(values[_mask(k + 1, 32)]).save(path, quality=100)
        data.append({"image": "unused", "mask": str(path)})
    data.append({"image": "unused", "mask": None})  # tiles without a mask are skipped
    bank = ShapeBank.from_data_list(data, size=16)
    assert bank.source_ids == [f"16B000{k}_Block_Region_1_xini_{k}" for k in range(3)]
    assert bank.num_ranks.tolist() == [2, 3, 4]
    expected = ShapeBank.from_masks([_mask(k + 1, 32) for k in range(3)], size=16)
    np.testing.assert_array_equal(bank.shapes, expected.shapes)
    with pytest.raises(ValueError, match="no item"):
        ShapeBank.from_data_list([{"mask": None}])


def test_bank_save_load_round_trip(tmp_path, bank):
    path = bank.save(tmp_path / "bank.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.npz"]  # no temp file left behind
    loaded = ShapeBank.load(path)
    np.testing.assert_array_equal(loaded.shapes, bank.shapes)
    assert loaded.source_ids == bank.source_ids
    np.testing.assert_array_equal(loaded.num_ranks, bank.num_ranks)
    (tmp_path / "junk.npz").write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="junk.npz"):
        ShapeBank.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        ShapeBank.load(tmp_path / "nope.npz")


def test_sample_draws_only_shapes_with_few_enough_ranks(bank):
    rng = np.random.default_rng(0)
    drawn = [bank.sample(rng, max_ranks=2) for _ in range(200)]
    assert {int(shape.max()) for shape, _ in drawn} == {0, 1}
    assert {sid for _, sid in drawn} == {f"tile_{i}" for i in range(40) if i % 4 < 2}
    one_rank = ShapeBank.from_masks([_mask(1), _mask(2)])
    with pytest.raises(ValueError, match="no shape with at most 1 ranks"):
        one_rank.sample(rng, max_ranks=1)


def _rank_grades(plans, rank):
    return np.array([t.grades[rank] for p in plans for t in p.tiles if len(t.grades) > rank])


def test_fixed_weights_set_the_grade_frequencies(bank):
    weights = (0.2, 0.5, 0.3)  # NC, primary GG4, secondary GG3
    plans = [plan_slide(GG4, GG3, bank, n_tiles=(40, 60), weights=weights, seed=3, slide_index=i) for i in range(150)]
    rank0 = _rank_grades(plans, 0)
    assert rank0.size > 6000
    freq = np.bincount(rank0, minlength=4) / rank0.size
    np.testing.assert_allclose(freq[[NC, GG4, GG3]], weights, atol=0.02)
    assert freq[GG5] == 0
    # rank 1 is drawn without replacement: after primary took rank 0, secondary has 0.3 / 0.5
    first_two = np.array([t.grades[:2] for p in plans for t in p.tiles if len(t.grades) >= 2])
    after_primary = first_two[first_two[:, 0] == GG4, 1]
    assert abs(np.mean(after_primary == GG3) - 0.6) < 0.03


def test_default_dirichlet_weights_favour_the_primary_grade(bank):
    plans = [plan_slide(GG3, GG5, bank, n_tiles=(40, 60), seed=5, slide_index=i) for i in range(150)]
    freq = np.bincount(_rank_grades(plans, 0), minlength=4) / _rank_grades(plans, 0).size
    # Dirichlet(1, 2, 1): expected weights NC 0.25, primary 0.5, secondary 0.25
    np.testing.assert_allclose(freq[[NC, GG3, GG5]], (0.25, 0.5, 0.25), atol=0.03)


def test_tiles_hold_only_nc_primary_secondary_and_distinct_grades(bank):
    for i, (primary, secondary) in enumerate([(GG3, GG4), (GG5, GG5), (GG4, GG5), (GG5, GG3)]):
        plan = plan_slide(primary, secondary, bank, n_tiles=(20, 30), seed=1, slide_index=i)
        allowed = {NC, primary, secondary}
        seen = set()
        for tile, mask in zip(plan.tiles, plan.masks(bank)):
            assert len(set(tile.grades)) == len(tile.grades) == bank.num_ranks[tile.shape_index]
            assert set(np.unique(mask).tolist()) == set(tile.grades) <= allowed
            seen |= set(tile.grades)
        assert {primary, secondary} <= seen  # the slide label is visible in its tiles
        np.testing.assert_array_equal(plan.label, np.isin(np.arange(4), [primary, secondary]).astype(np.float32))


def test_nc_primary_slides_are_nc_only(bank):
    plans = [plan_slide(NC, NC, bank, seed=2, slide_index=i) for i in range(10)]
    assert all(t.grades == (NC,) and bank.num_ranks[t.shape_index] == 1 for p in plans for t in p.tiles)
    assert all(not mask.any() for p in plans for mask in p.masks(bank))
    assert plans[0].label.tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="NC slide is NC only"):
        plan_slide(NC, GG3, bank)


def test_tile_counts_stay_in_range_and_reach_both_ends(bank):
    counts = [plan_slide(GG3, GG4, bank, n_tiles=(3, 7), seed=0, slide_index=i).n_tiles for i in range(100)]
    assert min(counts) == 3 and max(counts) == 7


def test_balancer_reaches_the_target_exactly():
    pairs = balance_slides({NC: 80, GG3: 50, GG4: 100, GG5: 120}, target=100, seed=0)
    primaries = [p for p, _ in pairs]
    assert primaries.count(NC) == 20 and primaries.count(GG3) == 50
    assert primaries.count(GG4) == 0 and primaries.count(GG5) == 0  # already at / over the target
    secondaries = {p: {s for q, s in pairs if q == p} for p in (NC, GG3)}
    assert secondaries == {NC: {NC}, GG3: {GG3, GG4}}  # "neighbour" rule
    assert len(balance_slides({GG3: 10}, target=30)) == 30 + 20 + 30 + 30  # absent grades count 0
    same = balance_slides({}, target=5, secondary_rule="same")
    assert all(p == s for p, s in same) and len(same) == 20


def test_plan_is_deterministic_for_a_seed_and_each_slide_stands_alone(bank):
    real = {NC: 3, GG3: 4, GG4: 5, GG5: 1}
    a = plan_synthetic_slides(real, bank, target=6, seed=7, n_tiles=(5, 9))
    b = plan_synthetic_slides(real, bank, target=6, seed=7, n_tiles=(5, 9))
    c = plan_synthetic_slides(real, bank, target=6, seed=8, n_tiles=(5, 9))
    assert len(a) == 3 + 2 + 1 + 5 and [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.to_dict() for p in a] != [p.to_dict() for p in c]
    assert len({p.slide_id for p in a}) == len(a)
    again = plan_slide(
        a[4].primary, a[4].secondary, bank, n_tiles=(5, 9), seed=7, slide_index=4, slide_id=a[4].slide_id
    )
    assert again == a[4]
    seeds = [t.seed for p in a for t in p.tiles]
    assert len(set(seeds)) == len(seeds) and seeds[0] == tile_noise_seed(7, 0, 0)


def test_plans_round_trip_through_json_and_make_the_manifest_rows(tmp_path, bank):
    plans = plan_synthetic_slides({NC: 1, GG3: 1, GG4: 2, GG5: 0}, bank, target=2, seed=4, n_tiles=(2, 4))
    loaded = load_plans(save_plans(plans, tmp_path / "plan.json", bank))
    assert loaded == plans
    np.testing.assert_array_equal(next(loaded[-1].masks(bank)), next(plans[-1].masks(bank)))
    rows = list(csv.DictReader(io.StringIO(manifest_text(plans, "SD"))))
    assert [r["slide_id"] for r in rows] == [p.slide_id for p in plans]
    last = rows[-1]
    assert last["primary"] == "GG5" and last["secondary"] in {"GG4", "GG5"}
    assert [int(last[k]) for k in ("NC", "GG3", "GG4", "GG5")] == plans[-1].label.astype(int).tolist()
    assert int(last["n_tiles"]) == plans[-1].n_tiles and int(last["seed"]) == 4 and last["generator"] == "SD"
    (tmp_path / "bad.json").write_text(json.dumps({"slides": [{"slide_id": "x"}]}))
    with pytest.raises(ValueError, match="bad.json"):
        load_plans(tmp_path / "bad.json")


def test_a_plan_refuses_another_bank(bank):
    plan = plan_slide(GG3, GG4, bank, n_tiles=(2, 2), seed=0)
    other = ShapeBank.from_masks([_mask(3)] * 40, [f"other_{i}" for i in range(40)])
    with pytest.raises(ValueError, match="another"):
        next(plan.masks(other))


def test_primary_grades_are_counted_from_sicapv2_and_panda_slides():
    sicap = [{"slide_id": "a", "primary": 0}, {"slide_id": "b", "primary": 3}, {"slide_id": "c", "primary": 5}]
    panda = [{"slide_id": "d", "gleason_score": "negative"}, {"slide_id": "e", "gleason_score": "4+3"}]
    assert count_primary_grades(sicap + panda) == {NC: 2, GG3: 1, GG4: 1, GG5: 1}
    with pytest.raises(ValueError, match="slide x"):
        count_primary_grades([{"slide_id": "x", "primary": 1}])  # a label, not a Gleason pattern
