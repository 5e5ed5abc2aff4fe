"""The `monai-disc` command as a user runs it: toy data with preview, summary, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monai_disc.data import load_sicapv2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_disc.apps.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_toy_data_writes_a_sicapv2_layout_every_partition_reads(tmp_path):
    out = tmp_path / "toy"
    proc = _cli("toy-data", "--out", str(out), "--slides", "6", "--tile-size", "64", "--preview")
    assert proc.returncode == 0, proc.stderr
    assert (out / "preview.png").stat().st_size > 10_000
    assert "slides per primary grade" not in proc.stderr and "GG5" in proc.stdout
    for partition in ("Test", "Val1", "Val2", "Val3", "Val4"):
        for split in ("Train", "Test"):
            items = load_sicapv2(out, partition, split)
            assert items and all(item["image"].endswith(".jpg") for item in items)
    summary = _cli("summary", str(out))
    assert summary.returncode == 0 and "Val4" in summary.stdout


def test_missing_root_is_an_error_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    proc = _cli("summary", str(missing))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_generate_slides_balances_every_primary_grade_and_resumes(tmp_path, toy_root):
    import pandas as pd

    from monai_disc.data import load_sicapv2_slides
    from monai_disc.labels import LABEL_NAMES

    out = tmp_path / "synthetic"
    args = ["generate-slides", "--data", str(toy_root), "--out", str(out), "--target", "4", "--tiles", "2", "3"]
    args += ["--num-inference-steps", "2", "--tile-size", "32", "--generator", "sd"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    manifest = pd.read_csv(out / "sd" / "manifest.csv")
    real = pd.Series([s["primary"] for s in load_sicapv2_slides(toy_root)]).map({0: 0, 3: 1, 4: 2, 5: 3})
    real_counts = real.value_counts()
    synthetic = manifest["primary"].map(LABEL_NAMES.index)  # the manifest names grades: NC, GG3, ...
    counts = real_counts.add(synthetic.value_counts(), fill_value=0)
    for grade in range(4):  # grades under the target are filled up to it exactly, the others left alone
        assert counts.get(grade, 0) == max(4, real_counts.get(grade, 0))
    assert set(manifest["generator"]) == {"SD"} and manifest["n_tiles"].between(2, 3).all()

    # a second generator reuses the same plan; rerunning the first redraws nothing
    stamp = max(p.stat().st_mtime_ns for p in (out / "sd").rglob("*.png"))
    assert _cli(*args).returncode == 0
    assert max(p.stat().st_mtime_ns for p in (out / "sd").rglob("*.png")) == stamp
    assert _cli(*args[:-6], "--num-inference-steps", "2", "--tile-size", "32", "--generator", "sc").returncode == 0
    sc = pd.read_csv(out / "sc" / "manifest.csv")
    assert list(sc["slide_id"]) == list(manifest["slide_id"]) and list(sc["seed"]) == list(manifest["seed"])


def test_every_drawing_command_takes_the_solver_and_defaults_to_the_generators_own():
    from monai_disc.apps.cli import build_parser

    parser = build_parser()
    for command in (
        ["generate-slides", "--data", "d", "--out", "o"],
        ["compare-generators", "--data", "d", "--out", "o"],
    ):
        args = parser.parse_args(command)
        assert args.solver is None and args.num_inference_steps is None  # each registry entry's own
        args = parser.parse_args([*command, "--solver", "ddim-leading", "--num-inference-steps", "8"])
        assert (args.solver, args.num_inference_steps) == ("ddim-leading", 8)
    with pytest.raises(SystemExit):
        parser.parse_args(["compare-generators", "--data", "d", "--out", "o", "--solver", "euler"])
    assert not hasattr(parser.parse_args(["demo"]), "solver")  # the demo samples with each generator's own
