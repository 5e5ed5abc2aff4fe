"""`monai-disc study`: paired arms, resume, stale-settings refusal, rank shards, the pixel level, the report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from support import MIL_GRADES as GRADES
from support import TINY_MIL_TRAIN as TRAIN

from monai_disc.apps.study import PixelData, run_study
from monai_disc.engines.study import Arm, paired_subset, pixel_cell, study_arms, tile_confusions
from monai_disc.io import SettingsMismatchError
from monai_disc.labels import multi_hot

torch.set_num_threads(1)

SMALL = {"seeds": (0, 1), "n_train": 8, "n_val": 8, "lambdas": (0.5,), "n_boot": 40, "progress": False, **TRAIN}


def _bags(n: int, seed: int, prefix: str) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        label = multi_hot(GRADES[i % len(GRADES)])
        x = torch.randn(int(torch.randint(3, 6, (1,), generator=g)), 8, generator=g)
        x[:, np.nonzero(label)[0]] += 1.5
        bags.append({"features": x, "label": label, "slide_id": f"{prefix}{i}"})
    return bags


@pytest.fixture(scope="module")
def data():
    return {"pool": _bags(32, 0, "p"), "test": _bags(24, 1, "t"), "synthetic": {"gen": _bags(12, 2, "s")}}


def _cells(out):
    return {p.parent.relative_to(out / "cells"): p for p in sorted((out / "cells").glob("*/*/seed=*/cell.json"))}


def test_paired_subset_is_a_function_of_the_seed_with_rare_grades_present():
    labels = np.stack([multi_hot(GRADES[i % len(GRADES)]) for i in range(40)])
    labels[:, 3] = 0
    labels[[5, 13, 21], 3] = 1  # GG5 in three slides of forty
    train, val = paired_subset(labels, 8, 6, seed=4)
    assert (train, val) == paired_subset(labels, 8, 6, seed=4)
    assert (train, val) != paired_subset(labels, 8, 6, seed=5)
    assert not set(train) & set(val) and len(train) == 8 and len(val) == 6
    assert labels[train, 3].sum() >= 2 and labels[val, 3].sum() >= 1  # the rare grade in both draws
    with pytest.raises(ValueError, match="pool of 40"):
        paired_subset(labels, 30, 20, seed=0)


def test_arms_and_their_names():
    arms = study_arms(["sd", "gd"], [0.3, 0.5], synthetic_only=True)
    assert [a.name for a in arms] == ["real", "sd@0.3", "sd@0.5", "gd@0.3", "gd@0.5", "sd-only", "gd-only"]
    assert arms[-1] == Arm("gd-only", "gd", 1.0)
    with pytest.raises(ValueError, match="lambdas"):
        study_arms(["sd"], [0.0])
    with pytest.raises(ValueError, match="plain name"):
        study_arms(["a/b"], [0.5])


def test_study_pairs_arms_resumes_refuses_stale_settings_and_writes_the_report(data, tmp_path):
    out = tmp_path / "study"
    report = run_study(data["pool"], data["test"], data["synthetic"], out, **SMALL)
    cells = _cells(out)
    assert len(cells) == 2 * 2  # (real, gen@0.5) x 2 seeds
    records = {k: json.loads(p.read_text()) for k, p in cells.items()}
    drawn = {s: {tuple(r["train_slides"]) for k, r in records.items() if k.name == f"seed={s}"} for s in (0, 1)}
    assert len(drawn[0]) == len(drawn[1]) == 1  # every arm of a seed labels the same real slides
    assert drawn[0] != drawn[1]  # and the seeds differ
    assert {r["n_test"] for r in records.values()} == {24}
    rows = {(r["arm"], r["score"]): r for r in report["slide"]["rows"]}
    assert rows[("real", "macro")]["delta"] == 0.0 and rows[("real", "macro")]["delta_low"] == 0.0
    assert rows[("gen@0.5", "GG5")]["low"] <= rows[("gen@0.5", "GG5")]["point"] <= rows[("gen@0.5", "GG5")]["high"]
    assert set(report["slide"]["verdicts"]["gen@0.5"]) == {"GG5", "macro"}
    for name in ("study.json", "study.md", "study.png"):
        assert (out / name).stat().st_size > 0
    assert "gen@0.5" in (out / "study.md").read_text()

    # a killed run: one cell unfinished; the rerun redoes that cell only and reproduces the report
    killed = out / "cells" / "slide" / "gen@0.5" / "seed=1"
    (killed / "cell.json").unlink()
    stamps = {k: p.stat().st_mtime_ns for k, p in cells.items() if p.parent != killed}
    again = run_study(data["pool"], data["test"], data["synthetic"], out, **SMALL)
    assert {k: p.stat().st_mtime_ns for k, p in _cells(out).items() if p.parent != killed} == stamps
    assert (killed / "cell.json").is_file()
    assert again["slide"]["rows"] == report["slide"]["rows"]

    # other settings never reuse these cells: refused, and overwrite starts over
    with pytest.raises(SettingsMismatchError, match="n_train: 8 -> 10"):
        run_study(data["pool"], data["test"], data["synthetic"], out, **{**SMALL, "n_train": 10})
    other_synthetic = {"gen": _bags(12, 3, "s")}  # same names, other data
    with pytest.raises(SettingsMismatchError, match="synthetic"):
        run_study(data["pool"], data["test"], other_synthetic, out, **SMALL)
    run_study(data["pool"], data["test"], data["synthetic"], out, **{**SMALL, "seeds": (0,), "overwrite": True})
    assert len(_cells(out)) == 2


def test_rank_shards_split_the_cells_and_the_last_rank_writes_the_same_report(data, tmp_path):
    whole = run_study(data["pool"], data["test"], data["synthetic"], tmp_path / "one", **SMALL)
    sharded = tmp_path / "two"
    assert run_study(data["pool"], data["test"], data["synthetic"], sharded, rank=0, world_size=2, **SMALL) is None
    assert len(_cells(sharded)) == 2 and not (sharded / "study.json").exists()  # rank 0's half only
    report = run_study(data["pool"], data["test"], data["synthetic"], sharded, rank=1, world_size=2, **SMALL)
    assert len(_cells(sharded)) == 4
    assert report["slide"]["rows"] == whole["slide"]["rows"]  # same cells, same numbers as one process


def test_two_generators_with_the_same_slides_train_the_same_and_compare_as_equal(data, tmp_path):
    same = {"gen": data["synthetic"]["gen"], "alt": data["synthetic"]["gen"]}
    report = run_study(data["pool"], data["test"], same, tmp_path / "same", **{**SMALL, "seeds": (0, 1)})
    rows = {(r["arm"], r["score"]): r for r in report["slide"]["rows"]}
    assert rows[("alt@0.5", "macro")]["point"] == rows[("gen@0.5", "macro")]["point"]  # same data, same seed
    between = {(r["arm"], r["versus"], r["score"]): r for r in report["slide"]["between_generators"]}
    macro = between[("alt@0.5", "gen@0.5", "macro")]
    assert macro["delta"] == macro["delta_low"] == macro["delta_high"] == 0.0 and macro["verdict"] == "does not help"
    assert "Between generators" in (tmp_path / "same" / "study.md").read_text()


def _tiles(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles whose label is told by their colour: label k paints channel k % 3 bright where the mask is k."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 32, 32, dtype=torch.uint8)
    for i in range(n):
        masks[i, :, 16:] = i % 4
        masks[i, :16] = (i + 1) % 4
    images = -torch.ones(n, 3, 32, 32) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    for k in range(4):
        images[:, k % 3] += (masks == k).float() * (0.5 + 0.4 * k)
    return images.clamp(-1, 1), masks


def test_tile_confusions_count_every_pixel_of_every_tile():
    pred = torch.tensor([[[0, 1], [1, 1]], [[3, 3], [3, 0]]])
    target = torch.tensor([[[0, 1], [2, 1]], [[3, 3], [3, 3]]])
    cm = tile_confusions(pred.numpy(), target.numpy())
    assert cm.shape == (2, 4, 4) and cm.sum() == 8
    assert cm[0, 2, 1] == 1 and cm[0, 1, 1] == 2 and cm[1, 3, 3] == 3 and cm[1, 3, 0] == 1


def test_pixel_level_runs_real_mixed_and_synthetic_only_arms(data, tmp_path):
    pool = {f"p{i}": _tiles(2, i) for i in range(32)}
    pixel = PixelData(pool=pool, test=_tiles(6, 99), synthetic={"gen": _tiles(8, 50)}, steps=2, batch_size=4, seeds=[0])
    out = tmp_path / "pixel"
    report = run_study(data["pool"], data["test"], data["synthetic"], out, pixel=pixel, **SMALL)
    arms = [a["name"] for a in report["pixel"]["arms"]]
    assert arms == ["real", "gen@0.5", "gen-only"]
    assert report["pixel"]["mean_name"] == "mIoU" and report["pixel"]["n_test"] == 6
    cell = json.loads((out / "cells" / "pixel" / "gen-only" / "seed=0" / "cell.json").read_text())
    assert cell["arm"]["lam"] == 1.0 and len(cell["iou"]) == 4
    assert cell["torch_threads"] == torch.get_num_threads()  # what a rerun needs to give the same numbers
    with np.load(out / "cells" / "pixel" / "real" / "seed=0" / "scores.npz") as saved:
        assert saved["confusion"].shape == (6, 4, 4) and saved["confusion"].sum() == 6 * 32 * 32
    assert "Pixel level" in (out / "study.md").read_text()
    # the same seed trains the same network: a cell redone from scratch gives the same confusion
    again = tmp_path / "again"
    real = (
        torch.cat([pool[i][0] for i in cell["train_slides"]]),
        torch.cat([pool[i][1] for i in cell["train_slides"]]),
    )
    pixel_cell(Arm("real"), 0, real, None, pixel.test, again, steps=2, batch_size=4)
    with np.load(again / "scores.npz") as redone, np.load(out / "cells/pixel/real/seed=0/scores.npz") as first:
        np.testing.assert_array_equal(redone["confusion"], first["confusion"])
    shutil.rmtree(again)


def test_prepare_draws_once_and_never_reuses_slides_drawn_with_other_settings(tmp_path):
    from monai_disc.apps.study import prepare_study
    from monai_disc.data.toy import make_toy_sicapv2
    from monai_disc.inferers import DEFAULT_GENERATOR

    root = make_toy_sicapv2(tmp_path / "toy", n_slides=6, tile_size=64, tiles_per_slide=(1, 2), n_wsi=0)
    draw = {"data": root, "generators": ["sd", "default", "sd"], "n_synthetic": 2, "synthetic_tiles": (2, 2),
            "num_inference_steps": 2, "progress": False}  # fmt: skip
    prepared = prepare_study(tmp_path / "study", **draw)
    assert prepared["settings"]["drawn"] == list(dict.fromkeys(["sd", DEFAULT_GENERATOR]))  # each once
    assert set(prepared["synthetic"]) == set(prepared["settings"]["drawn"])
    manifest = tmp_path / "study" / "synthetic" / "sd" / "manifest.csv"
    stamp = manifest.stat().st_mtime_ns
    prepare_study(tmp_path / "study", **draw)  # the same settings: nothing drawn again
    assert manifest.stat().st_mtime_ns == stamp
    with pytest.raises(SettingsMismatchError, match="num_inference_steps: 2 -> 3"):
        prepare_study(tmp_path / "study", **{**draw, "num_inference_steps": 3})


def test_generator_specs_keep_each_entry_own_sampling_and_name_their_knobs():
    from monai_disc.apps.study import parse_generators
    from monai_disc.inferers import DEFAULT_GENERATOR, DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_SOLVER

    drawn = parse_generators(["gd:ddim:50", "default", DEFAULT_GENERATOR, "gd2", "gd1", "gd2:plms:3"])
    assert list(drawn) == ["gd-ddim-50", DEFAULT_GENERATOR, "gd2", "gd1", "gd2-plms-3"]  # default == its name: once
    knobs = {k: (v["generator"], v["solver"], v["num_inference_steps"]) for k, v in drawn.items()}
    assert knobs["gd-ddim-50"] == ("gd", "ddim", 50) and knobs["gd2-plms-3"] == ("gd2", "plms", 3)
    assert knobs[DEFAULT_GENERATOR] == (DEFAULT_GENERATOR, DEFAULT_SOLVER, DEFAULT_NUM_INFERENCE_STEPS)
    # a student samples through the solver and steps it was trained with, not the default's
    assert knobs["gd2"] == ("gd2", "ddim-leading", 2) and knobs["gd1"] == ("gd1", "ddim-middle", 1)
    # the command's knobs set bare names; a spec's own knobs win
    both = parse_generators(["gd2", "gd:ddim:50"], solver="ddim", num_inference_steps=8, guidance_scale=2.0)
    assert both["gd2"] == {"generator": "gd2", "solver": "ddim", "num_inference_steps": 8, "guidance_scale": 2.0}
    assert (both["gd-ddim-50"]["solver"], both["gd-ddim-50"]["num_inference_steps"]) == ("ddim", 50)
    for bad, message in (("gd:ddim", "NAME:SOLVER:STEPS"), ("gd:ddim:0", "positive integer"),
                         ("gd:nope:3", "unknown solver"), ("nope", "unknown generator")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_generators([bad])


def test_generators_at_several_step_counts_draw_the_same_masks_and_never_reuse_other_steps(tmp_path):
    from monai_disc.apps.study import prepare_study
    from monai_disc.data.synthetic import load_synthetic_bags
    from monai_disc.data.toy import make_toy_sicapv2
    from monai_disc.io import file_digest

    root = make_toy_sicapv2(tmp_path / "toy", n_slides=6, tile_size=64, tiles_per_slide=(1, 2), n_wsi=0)
    draw = {"data": root, "generators": ["sd", "sd:plms:1"], "solver": "ddim", "num_inference_steps": 2,
            "n_synthetic": 2, "synthetic_tiles": (2, 2), "progress": False}  # fmt: skip
    prepared = prepare_study(tmp_path / "study", **draw)
    assert prepared["settings"]["drawn"] == ["sd", "sd-plms-1"]
    assert prepared["settings"]["sampling"]["sd"]["solver"] == "ddim"
    assert prepared["settings"]["sampling"]["sd-plms-1"]["solver"] == "plms"
    folders = prepared["settings"]["synthetic_folders"]
    bags = {name: load_synthetic_bags(folder) for name, folder in folders.items()}
    masks = {name: [file_digest(m) for bag in b for m in bag["masks"]] for name, b in bags.items()}
    images = {name: [file_digest(t) for bag in b for t in bag["tiles"]] for name, b in bags.items()}
    assert len(masks["sd"]) == 4 and masks["sd"] == masks["sd-plms-1"]  # the same masks
    assert all(a != b for a, b in zip(images["sd"], images["sd-plms-1"]))  # drawn differently
    assert prepared["pixel"] is None
    # the same arm name with another solver underneath (a bare name after a default change) is refused
    with pytest.raises(SettingsMismatchError, match="solver"):
        prepare_study(tmp_path / "study", **{**draw, "solver": "plms"})


def test_a_study_without_slide_seeds_runs_the_pixel_level_only(data, tmp_path):
    pool = {f"p{i}": _tiles(2, i) for i in range(32)}
    pixel = PixelData(pool=pool, test=_tiles(6, 99), synthetic={"gen": _tiles(8, 50)}, steps=2, batch_size=4, seeds=[0])
    out = tmp_path / "pixel_only"
    report = run_study(data["pool"], data["test"], data["synthetic"], out, pixel=pixel, **{**SMALL, "seeds": ()})
    assert "slide" not in report and [a["name"] for a in report["pixel"]["arms"]] == ["real", "gen@0.5", "gen-only"]
    assert not (out / "cells" / "slide").exists() and "Slide level" not in (out / "study.md").read_text()
    with pytest.raises(ValueError, match="needs seeds"):
        run_study(data["pool"], data["test"], data["synthetic"], tmp_path / "none", **{**SMALL, "seeds": ()})
