"""The lambda sweep: one shared baseline, the table and the plot, resume by rows, and rank shards."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from support import MIL_GRADES as GRADES
from support import TINY_MIL_TRAIN as TRAIN

from monai_disc.apps.sweep import BASELINE, lambda_sweep
from monai_disc.labels import multi_hot

torch.set_num_threads(1)


def _bags(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        label = multi_hot(GRADES[i % len(GRADES)])
        x = torch.randn(int(torch.randint(4, 10, (1,), generator=g)), 8, generator=g)
        x[:, np.nonzero(label)[0]] += 2.0
        bags.append({"features": x, "label": label, "slide_id": f"s{seed}_{i}"})
    return bags


def _data() -> dict:
    return {
        "real_train": _bags(8, 0),
        "real_val": _bags(8, 1),
        "real_test": {"sicapv2": _bags(8, 2), "panda": _bags(8, 3)},
        "synthetic": {"sd": _bags(8, 4), "disc": _bags(8, 5)},
    }


def _metrics_stamps(out) -> dict[str, int]:
    return {str(p.relative_to(out)): os.stat(p).st_mtime_ns for p in sorted(out.glob("runs/*/*/*/metrics.json"))}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2-generator, 2-lambda, 2-seed sweep run as two rank shards, one after the other."""
    out = tmp_path_factory.mktemp("sweep")
    shards = []
    for rank in range(2):
        lambda_sweep(
            **_data(), lambdas=(0, 0.5), seeds=(0, 1), out_dir=out, rank=rank, world_size=2, progress=False, **TRAIN
        )
        shards.append((set(_metrics_stamps(out)), (out / "sweep.md").is_file()))
    return out, shards


def test_rank_shards_split_the_runs_and_the_last_writes_the_table(swept):
    out, shards = swept
    # runs in order: baseline s0, sd 0.5 s0, disc 0.5 s0, baseline s1, sd 0.5 s1, disc 0.5 s1
    first = {
        f"runs/{g}/lam={lam}/seed={s}/metrics.json"
        for g, lam, s in [("baseline", 0, 0), ("disc", 0.5, 0), ("sd", 0.5, 1)]
    }
    assert shards[0] == (first, False)
    assert len(shards[1][0]) == 6 and shards[1][1]


def test_baseline_runs_once_per_seed_and_is_shared_at_lambda_zero(swept):
    out, _ = swept
    rows = pd.read_csv(out / "sweep.csv")
    assert len(rows) == 6 * 2  # (2 baseline + 4 generator runs) x 2 test sets
    assert sorted(set(zip(rows.generator, rows.lam))) == [("baseline", 0.0), ("disc", 0.5), ("sd", 0.5)]
    assert not (out / "runs" / "sd" / "lam=0").exists()
    assert set(rows.columns) >= {"macro_auroc", "gg5_auroc", "auroc_NC", "auroc_GG5", "epochs", "best_val_macro_auroc"}
    assert np.allclose(rows.gg5_auroc, rows.auroc_GG5)
    base = rows[(rows.generator == BASELINE) & (rows.test == "panda")].macro_auroc

    summary = lambda_sweep(**_data(), lambdas=(0, 0.5), seeds=(0, 1), out_dir=out, progress=False, **TRAIN)
    at_zero = summary[(summary.lam == 0) & (summary.test == "panda")]
    assert list(at_zero.generator) == ["sd", "disc"]  # the generators' order as given
    assert np.allclose(at_zero.macro_mean, base.mean()) and np.allclose(at_zero.macro_std, base.std())
    assert list(summary.test.unique()) == ["sicapv2", "panda"] and set(summary.n) == {2}


def test_table_and_plot_show_mean_and_spread(swept):
    out, _ = swept
    text = (out / "sweep.md").read_text()
    for heading in ("## sicapv2: macro AUROC", "## sicapv2: GG5 AUROC", "## panda: macro AUROC", "## panda: GG5 AUROC"):
        assert heading in text
    rows = pd.read_csv(out / "sweep.csv")
    sd = rows[(rows.generator == "sd") & (rows.test == "sicapv2")].macro_auroc * 100
    assert f"{sd.mean():.2f} ± {sd.std():.2f}" in text
    assert "| lambda | sd | disc |" in text and "| 0.5 |" in text
    with Image.open(out / "sweep.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 600 and picture.size[1] > 2 * 300


def test_rerun_skips_finished_rows_without_opening_data(swept, tmp_path):
    out, _ = swept
    stamps = _metrics_stamps(out)
    before = pd.read_csv(out / "sweep.csv")
    nowhere = tmp_path / "missing"  # any run left to do would fail opening these
    summary = lambda_sweep(
        nowhere,
        nowhere,
        {"sicapv2": nowhere, "panda": nowhere},
        {"sd": nowhere, "disc": nowhere},
        lambdas=(0, 0.5),
        seeds=(0, 1),
        out_dir=out,
        progress=False,
        **TRAIN,
    )
    assert _metrics_stamps(out) == stamps
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv"), before)
    assert len(summary) == 2 * 2 * 2  # tests x generators x lambdas


def test_a_lost_run_is_redone_alone_and_reproduces_its_row(tmp_path):
    data = _data()
    data["synthetic"] = {"sd": data["synthetic"]["sd"]}
    lambda_sweep(**data, lambdas=(0, 0.5), seeds=(0,), out_dir=tmp_path, progress=False, **TRAIN)
    rows = pd.read_csv(tmp_path / "sweep.csv")
    lost = tmp_path / "runs" / "sd" / "lam=0.5" / "seed=0"
    for path in sorted(lost.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    lost.rmdir()
    rows[rows.generator == BASELINE].to_csv(tmp_path / "sweep.csv", index=False)  # its rows gone from the table too
    kept = _metrics_stamps(tmp_path)
    lambda_sweep(**data, lambdas=(0, 0.5), seeds=(0,), out_dir=tmp_path, progress=False, **TRAIN)
    assert {k: v for k, v in _metrics_stamps(tmp_path).items() if k in kept} == kept
    again = pd.read_csv(tmp_path / "sweep.csv")
    pd.testing.assert_frame_equal(again, rows)  # same seed, same training, same row


def test_bad_sweep_arguments_are_rejected(tmp_path):
    data = _data()
    with pytest.raises(ValueError, match="lambdas must lie in"):
        lambda_sweep(**data, lambdas=(0, 1.5), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="reserved"):
        lambda_sweep(**{**data, "synthetic": {BASELINE: []}}, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="plain folder name"):
        lambda_sweep(**{**data, "synthetic": {"a/b": []}}, out_dir=tmp_path, progress=False)
