"""Slide plans -> synthetic slide bags on disk: layout, manifest, reproducibility, resume and rank sharding."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_disc.apps.generate_slides import generate_slides, shard_plans
from monai_disc.data.synthetic import MANIFEST_COLUMNS
from monai_disc.distributed import resolve_rank
from monai_disc.inferers import LDMGenerator, MaskLDMSampler, TileGenerator
from monai_disc.labels import LABEL_COLORS, LABEL_NAMES
from monai_disc.masks import ShapeBank, plan_slide, plan_synthetic_slides
from monai_disc.networks import mask_ldm_toy, vq_f4_toy
from monai_disc.visualize import to_uint8

SIZE = 32
_LUT = np.array([LABEL_COLORS[k] for k in sorted(LABEL_COLORS)], dtype=np.float32) / 127.5 - 1.0


class ColourGenerator:
    """A fast, exactly reproducible TileGenerator: label colours plus noise drawn from each tile's seed.

    Numpy only, so it also runs in a forked child without touching torch's thread pools. Records the seeds of
    every call, to tell which tiles a run drew.
    """

    name = "colour"

    def __init__(self, kill_after: int | None = None, fail_after: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.kill_after = kill_after
        self.fail_after = fail_after

    @staticmethod
    def tile(mask: np.ndarray, seed: int) -> np.ndarray:
        noise = np.random.default_rng(int(seed)).normal(0.0, 0.2, (3, *mask.shape)).astype(np.float32)
        return np.clip(np.moveaxis(_LUT[mask], -1, 0) + noise, -1.0, 1.0)

    def sample(self, masks: torch.Tensor, seeds) -> torch.Tensor:
        if self.kill_after is not None and len(self.calls) == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no exception handler or finally block runs
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise RuntimeError("generator failed on purpose")
        self.calls.append([int(s) for s in seeds])
        m = masks.numpy()
        return torch.from_numpy(np.stack([self.tile(m[i], s) for i, s in enumerate(seeds)]))


class FailingGenerator:
    """Wraps a generator and raises on call `fail_after` (0-based): a crash in the middle of a slide."""

    def __init__(self, inner, fail_after: int) -> None:
        self.inner, self.fail_after, self.count = inner, fail_after, 0
        self.name = inner.name

    def sample(self, masks, seeds):
        if self.count == self.fail_after:
            raise RuntimeError("generator failed on purpose")
        self.count += 1
        return self.inner.sample(masks, seeds)


def _mask(kind: int, size: int = SIZE) -> np.ndarray:
    m = np.full((size, size), 2, dtype=np.int64)
    if kind >= 1:
        m[: size // 2 + 2] = 0
    if kind >= 2:
        m[size - 6 :, :] = 3
    if kind >= 3:
        m[:5, :5] = 1
    return m


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two spinning threads make the tiny networks ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bank() -> ShapeBank:
    return ShapeBank.from_masks([_mask(i % 4) for i in range(24)], [f"tile_{i}" for i in range(24)])


@pytest.fixture(scope="module")
def plans(bank):
    # real slides per primary grade NC 2, GG3 2, GG4 1, GG5 2 with target 3 -> 1 + 1 + 2 + 1 = 5 synthetic slides
    return plan_synthetic_slides({0: 2, 1: 2, 2: 1, 3: 2}, bank, target=3, seed=11, n_tiles=(3, 6))


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes): two runs are equal when these are."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_manifest(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _ldm(steps: int = 2) -> LDMGenerator:
    torch.manual_seed(0)
    return LDMGenerator(MaskLDMSampler(num_inference_steps=steps, progress=False), vq_f4_toy(), mask_ldm_toy(), "SD")


def test_slide_bags_match_the_plan_masks_seeds_and_batches(tmp_path, plans, bank):
    gen = ColourGenerator()
    assert isinstance(gen, TileGenerator)
    manifest = generate_slides(plans, tmp_path, gen, bank, batch_size=4, progress=False)
    assert manifest == tmp_path / "manifest.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.slide_id for p in plans] + ["manifest.csv"])
    expected_calls = []
    for plan in plans:
        folder = tmp_path / plan.slide_id
        names = [f"{t:04d}.png" for t in range(plan.n_tiles)]
        assert sorted(os.listdir(folder / "images")) == names and sorted(os.listdir(folder / "masks")) == names
        for t, (tile, mask) in enumerate(zip(plan.tiles, plan.masks(bank))):
            stored = np.asarray(Image.open(folder / "masks" / names[t]))
            np.testing.assert_array_equal(stored, mask)  # the plan's mask, labels 0..3
            assert set(np.unique(stored)) <= set(plan.allowed)
            rgb = np.asarray(Image.open(folder / "images" / names[t]))
            want = np.clip(np.rint((ColourGenerator.tile(mask.astype(np.int64), tile.seed) + 1) * 127.5), 0, 255)
            np.testing.assert_array_equal(rgb, np.moveaxis(want, 0, -1).astype(np.uint8))  # drawn from the plan's seed
        seeds = [t.seed for t in plan.tiles]
        expected_calls += [seeds[i : i + 4] for i in range(0, len(seeds), 4)]  # batches never span slides
        info = json.loads((folder / "slide.json").read_text())
        assert info["generator"] == "colour" and info["plan"]["tiles"] == plan.to_dict()["tiles"]
        with (folder / "labels.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["image"] for r in rows] == names and {r["slide_id"] for r in rows} == {plan.slide_id}
        first = np.unique(plan.tiles[0].mask(bank))
        assert rows[0]["label"] == ";".join(LABEL_NAMES[v] for v in first)
    assert gen.calls == expected_calls


def test_manifest_lists_every_slide_with_grades_multi_hot_tiles_generator_and_seed(tmp_path, plans, bank):
    rows = _read_manifest(generate_slides(plans, tmp_path, ColourGenerator(), bank, progress=False))
    with (tmp_path / "manifest.csv").open() as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS
    assert [r["slide_id"] for r in rows] == [p.slide_id for p in plans]
    for row, plan in zip(rows, plans):
        assert (row["primary"], row["secondary"]) == (LABEL_NAMES[plan.primary], LABEL_NAMES[plan.secondary])
        assert [float(row[n]) for n in LABEL_NAMES] == plan.label.tolist()
        assert int(row["n_tiles"]) == plan.n_tiles and row["generator"] == "colour"
        assert int(row["seed"]) == 11 and int(row["index"]) == plan.index
    # balanced: NC 1, GG3 1, GG4 2, GG5 1 synthetic slides
    assert [r["primary"] for r in rows] == ["NC", "GG3", "GG4", "GG4", "GG5"]


def test_same_plan_and_seeds_give_identical_ldm_tiles_in_two_runs(tmp_path, plans, bank):
    generate_slides(plans, tmp_path / "a", _ldm(), bank, batch_size=4, progress=False)
    generate_slides(plans, tmp_path / "b", _ldm(), bank, batch_size=4, progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    first = plans[0]
    tiles = [np.asarray(Image.open(tmp_path / "a" / first.slide_id / "images" / f"{t:04d}.png")) for t in range(2)]
    assert not np.array_equal(tiles[0], tiles[1])  # different seeds, different tiles
    # tile 1 is the sampler's tile for the plan's mask and seed (drawn alone here, so allow float noise)
    mask = torch.from_numpy(first.tiles[1].mask(bank).astype(np.int64))[None]
    alone = to_uint8(_ldm().sample(mask, [first.tiles[1].seed])[0]).astype(int)
    assert np.abs(alone - tiles[1].astype(int)).max() <= 1
    assert _read_manifest(tmp_path / "a" / "manifest.csv")[0]["generator"] == "SD"


def test_crash_midway_then_resume_equals_an_uninterrupted_ldm_run_and_redoes_only_the_unfinished_slide(
    tmp_path, plans, bank
):
    generate_slides(plans, tmp_path / "full", _ldm(), bank, batch_size=2, progress=False)
    batches = [-(-p.n_tiles // 2) for p in plans]
    crash_at = batches[0] + batches[1] + 1  # the second batch of slide 2
    with pytest.raises(RuntimeError, match="on purpose"):
        generate_slides(plans, tmp_path / "cut", FailingGenerator(_ldm(), crash_at), bank, batch_size=2, progress=False)
    cut = tmp_path / "cut"
    assert (cut / plans[0].slide_id).is_dir() and (cut / plans[1].slide_id).is_dir()
    assert (cut / f".{plans[2].slide_id}.partial").is_dir() and not (cut / plans[2].slide_id).exists()
    assert not (cut / "manifest.csv").exists()

    resumed = FailingGenerator(_ldm(), fail_after=-1)
    generate_slides(plans, cut, resumed, bank, batch_size=2, progress=False)
    assert resumed.count == sum(batches[2:])  # finished slides 0 and 1 were skipped, slide 2 redone from its start
    assert _files(cut) == _files(tmp_path / "full")


def _killed_run(plans, bank, out, kill_after):
    torch.set_num_threads(1)
    generate_slides(plans, out, ColourGenerator(kill_after=kill_after), bank, batch_size=2, progress=False)


def test_sigkilled_run_resumes_to_the_same_manifest_and_tiles(tmp_path, plans, bank):
    generate_slides(plans, tmp_path / "full", ColourGenerator(), bank, batch_size=2, progress=False)
    batches = [-(-p.n_tiles // 2) for p in plans]
    child = multiprocessing.get_context("fork").Process(
        target=_killed_run, args=(plans, bank, tmp_path / "cut", batches[0] + 1)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    cut = tmp_path / "cut"
    assert (cut / plans[0].slide_id / "slide.json").is_file() and (cut / f".{plans[1].slide_id}.partial").is_dir()
    assert not (cut / plans[1].slide_id).exists() and not (cut / "manifest.csv").exists()

    gen = ColourGenerator()
    generate_slides(plans, cut, gen, bank, batch_size=2, progress=False)
    assert len(gen.calls) == sum(batches[1:])
    assert _files(cut) == _files(tmp_path / "full")


def test_two_ranks_cover_every_slide_once_and_the_last_one_writes_the_manifest(tmp_path, plans, bank):
    generate_slides(plans, tmp_path / "single", ColourGenerator(), bank, progress=False)
    ranks = [ColourGenerator(), ColourGenerator()]
    out = tmp_path / "sharded"
    assert generate_slides(plans, out, ranks[0], bank, rank=0, world_size=2, progress=False) is None
    assert not (out / "manifest.csv").exists()  # rank 1's slides are still missing
    assert generate_slides(plans, out, ranks[1], bank, rank=1, world_size=2, progress=False) == out / "manifest.csv"
    drawn = [sorted(s for call in g.calls for s in call) for g in ranks]
    assert drawn[0] == sorted(t.seed for p in plans[0::2] for t in p.tiles)
    assert drawn[1] == sorted(t.seed for p in plans[1::2] for t in p.tiles)
    assert not set(drawn[0]) & set(drawn[1])
    assert _files(out) == _files(tmp_path / "single")
    assert [p.slide_id for p in shard_plans(plans, 1, 2)] == [plans[1].slide_id, plans[3].slide_id]


def test_rank_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_rank() == (2, 3)
    assert resolve_rank(0, 1) == (0, 1)
    with pytest.raises(ValueError, match="rank 3, world_size 3"):
        resolve_rank(3, 3)


def test_output_of_another_generator_or_plan_is_refused(tmp_path, plans, bank):
    generate_slides(plans[:2], tmp_path, ColourGenerator(), bank, progress=False)
    other = ColourGenerator()
    other.name = "SD"
    with pytest.raises(ValueError, match="generated by 'colour', not 'SD'"):
        generate_slides(plans[:2], tmp_path, other, bank, progress=False)
    replanned = plan_slide(
        plans[0].primary, plans[0].secondary, bank, seed=99, slide_id=plans[0].slide_id, n_tiles=(3, 3)
    )
    with pytest.raises(ValueError, match="another plan"):
        generate_slides([replanned], tmp_path, ColourGenerator(), bank, progress=False)


def test_bad_plans_and_generators_fail_before_or_with_a_clear_message(tmp_path, plans, bank):
    with pytest.raises(ValueError, match="planned twice"):
        generate_slides([plans[0], plans[0]], tmp_path / "a", ColourGenerator(), bank, progress=False)
    other_bank = ShapeBank.from_masks([_mask(0)] * 3, ["x", "y", "z"])
    with pytest.raises(ValueError, match="not in this shape bank"):
        generate_slides(plans, tmp_path / "b", ColourGenerator(), other_bank, progress=False)
    assert not (tmp_path / "b").exists()  # checked before anything is written

    class Small(ColourGenerator):
        def sample(self, masks, seeds):
            return super().sample(masks, seeds)[:, :, :8, :8]

    with pytest.raises(ValueError, match=r"\(8, 8\) px tiles for \(32, 32\) px masks"):
        generate_slides(plans[:1], tmp_path / "c", Small(), bank, progress=False)


def test_masks_are_resized_to_the_tile_size(tmp_path, plans, bank):
    generate_slides(plans[:1], tmp_path, ColourGenerator(), bank, tile_size=64, progress=False)
    stored = np.asarray(Image.open(tmp_path / plans[0].slide_id / "masks" / "0000.png"))
    assert stored.shape == (64, 64)
    np.testing.assert_array_equal(stored[::2, ::2], plans[0].tiles[0].mask(bank))
