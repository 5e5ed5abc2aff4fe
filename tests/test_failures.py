"""Every failure names its file: the rows of issue 13's error table through `monai-disc`, one line per bad file.

The CLI's `main` is called in this process (the door the console script opens) so each row costs no interpreter
start; one subprocess checks the exit code, `--debug` and `--version` as a user sees them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_disc.apps.cli import main

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    """Exit code, the stderr lines and stdout of `monai-disc ARGS`."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("monai-disc")], captured.out


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def toy_copy(toy_root, tmp_path):
    """A private copy of the session's toy set, to damage."""
    return Path(shutil.copytree(toy_root, tmp_path / "toy"))


@pytest.fixture
def bundles_with(tmp_path):
    """A bundles folder with the shipped LDM weights whose denoiser file can be replaced."""

    def make(model: bytes | Path) -> Path:
        root = tmp_path / "bundles"
        models = root / "gleason_ldm" / "models"
        models.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLES / "gleason_ldm" / "models" / "autoencoder.pt", models / "autoencoder.pt")
        if isinstance(model, Path):
            shutil.copy(model, models / "model.pt")
        else:
            (models / "model.pt").write_bytes(model)
        return root

    return make


def test_a_truncated_tile_fails_its_slide_only_in_extract_features(toy_copy, tmp_path, capsys):
    from monai_disc.data.tilesets import load_sicapv2_bags

    bags = load_sicapv2_bags(toy_copy, "Test", "Test")
    bad = _truncate(Path(bags[0]["tiles"][0]))
    tiny = Path(bags[1]["tiles"][0])
    Image.new("RGB", (1, 1), (200, 120, 180)).save(tiny, format="JPEG")  # a 1x1 image under a .jpg name
    out = tmp_path / "features"
    code, lines, _ = _run(capsys, "extract-features", "--data", str(toy_copy), "--split", "Test", "--out", str(out))
    assert code == 2
    assert lines[0].startswith(f"monai-disc extract-features: error: cannot read image file {bad}: OSError: ")
    assert "image file is truncated" in lines[0]
    assert lines[1] == (
        f"monai-disc extract-features: error: {tiny}: the tile is 1x1 px; the extractor needs at least 16 px"
    )
    assert f"{len(bags) - 2} of {len(bags)} slides cached" in lines[2]
    cached = sorted(p.stem for p in out.glob("*.pt"))
    assert cached == sorted(b["slide_id"] for b in bags[2:])  # every good slide is finished
    assert not (out / "manifest.csv").exists()  # the cache is not complete


def test_a_truncated_mask_is_named_by_generate_slides_and_nothing_is_written(toy_copy, tmp_path, capsys):
    masks = sorted((toy_copy / "masks").glob("*.jpg"))
    bad = _truncate(masks[0])
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(masks[1], format="JPEG")  # a 1x1 mask
    out = tmp_path / "slides"
    code, lines, _ = _run(
        capsys, "generate-slides", "--data", str(toy_copy), "--out", str(out), "--target", "4", "--num-inference-steps", "1",
        "--tile-size", "16",
    )  # fmt: skip
    assert code == 2
    assert lines[0].startswith(
        f"monai-disc generate-slides: error: cannot read image file {bad}: OSError: image file is truncated"
    )
    assert lines[1] == (
        f"monai-disc generate-slides: error: {masks[1]}: the mask is 1x1 px; a shape needs at least 16 px a side"
    )
    assert "no shape bank was made" in lines[2] and not (out / "shape_bank.npz").exists()


def test_a_corrupt_partition_sheet_is_named_by_summary(toy_copy, capsys):
    sheet = toy_copy / "partition" / "Test" / "Train.xlsx"
    sheet.write_bytes(b"\x00not a zip" * 10)
    code, lines, _ = _run(capsys, "summary", str(toy_copy))
    assert code == 2
    assert lines == [f"monai-disc summary: error: cannot read SICAPv2 partition sheet {sheet}: File is not a zip file"]


def test_summary_of_an_empty_folder_is_an_error(tmp_path, capsys):
    code, lines, _ = _run(capsys, "summary", str(tmp_path))
    assert code == 2 and lines == [
        f"monai-disc summary: error: {tmp_path} holds no SICAPv2 data: no partition sheets "
        "(partition/Test/Train.xlsx, ...) and no wsi_labels.xlsx"
    ]


@pytest.mark.parametrize("model", ["random bytes", "another network"])
def test_a_bad_model_file_is_one_line_naming_it_in_generate_slides(model, toy_root, tmp_path, bundles_with, capsys):
    content = (
        np.random.default_rng(0).bytes(4096) if model == "random bytes" else BUNDLES / "carcinonet/models/model.pt"
    )
    bundles = bundles_with(content)
    weights = bundles / "gleason_ldm" / "models" / "model.pt"
    code, lines, _ = _run(
        capsys, "generate-slides", "--data", str(toy_root), "--out", str(tmp_path / "o"), "--bundles", str(bundles),
        "--generator", "sd",
    )  # fmt: skip
    assert code == 2 and len(lines) == 1
    if model == "random bytes":
        assert lines[0] == (
            f"monai-disc generate-slides: error: cannot load {weights}: not a PyTorch weight file (neither a "
            "torch.save archive nor a tensor pickle)"
        )
    else:
        assert lines[0].startswith(
            f"monai-disc generate-slides: error: cannot load {weights}: does not fit MaskConditionedUNet: "
        )
        assert "missing keys: ['null_tokens', 'unet.conv_in.conv.weight'" in lines[0] and "unexpected keys" in lines[0]
    assert "weights_only" not in lines[0] and not (tmp_path / "o").exists()


def test_sizes_and_targets_below_the_minimum_are_refused_before_anything_is_written(toy_root, tmp_path, capsys):
    out = tmp_path / "o"
    code, lines, _ = _run(capsys, "generate-slides", "--data", str(toy_root), "--out", str(out), "--tile-size", "3")
    assert code == 2 and lines == [
        "monai-disc generate-slides: error: tile size 3 px: generator SD-GD draws tiles whose side is a multiple of "
        "16 px (at least 16 px)"
    ]
    code, lines, _ = _run(capsys, "generate-slides", "--data", str(toy_root), "--out", str(out), "--target", "0")
    assert code == 2 and lines == [
        "monai-disc generate-slides: error: target must be at least 1 slide per primary grade, got 0"
    ]
    assert not out.exists()  # no 3 px shape bank left behind for the next run to trip on


def test_changed_settings_stop_naming_them_and_overwrite_starts_over(toy_root, tmp_path, capsys):
    out = tmp_path / "slides"
    base = [
        "generate-slides",
        "--data",
        str(toy_root),
        "--out",
        str(out),
        "--tiles",
        "2",
        "3",
        "--num-inference-steps",
        "1",
    ]
    base += ["--tile-size", "16", "--batch-size", "4", "--generator", "sd"]
    code, _, stdout = _run(capsys, *base, "--target", "3")
    assert code == 0 and "manifest:" in stdout
    first = {p: p.read_bytes() for p in sorted((out / "sd").rglob("*.png"))}
    plans = (out / "plans.json").read_bytes()

    code, lines, _ = _run(capsys, *base, "--target", "5", "--seed", "9")
    assert code == 2 and lines == [
        f"monai-disc generate-slides: error: {out} holds outputs made with other settings (seed: 0 -> 9; "
        "target: 3 -> 5); rerun with the same settings to resume, pass --overwrite (overwrite=True) to start "
        "over, or choose another folder"
    ]
    code, lines, _ = _run(capsys, *base, "--target", "3", "--num-inference-steps", "2")  # the generator's own settings
    assert code == 2 and "(num_inference_steps: 1 -> 2)" in lines[0] and str(out / "sd") in lines[0]
    assert {p: p.read_bytes() for p in first} == first and (out / "plans.json").read_bytes() == plans

    code, _, _ = _run(capsys, *base, "--target", "5", "--seed", "9", "--overwrite")
    assert code == 0
    assert (out / "plans.json").read_bytes() != plans  # a new plan, drawn anew
    assert '"seed": 9' in (out / "settings.json").read_text()


def test_version_debug_and_exit_code_as_a_user_sees_them(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "monai_disc.apps.cli", *args], capture_output=True, text=True, timeout=300
        )

    from monai_disc import __version__

    assert cli("--version").stdout.strip() == f"monai-disc {__version__}"
    plain = cli("summary", str(tmp_path))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("monai-disc summary: error:")
    debug = cli("--debug", "summary", str(tmp_path))
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


def test_the_innermost_message_that_names_a_file_is_kept():
    from monai_disc.errors import FailedFilesError, failure_lines, failure_message

    try:
        try:
            try:
                raise OSError("image file is truncated (24 bytes not processed)")
            except OSError as err:
                raise ValueError("cannot read image file /d/t.jpg: OSError: image file is truncated") from err
        except ValueError as err:
            raise RuntimeError("applying transform <LoadImaged object at 0x7f>") from err
    except RuntimeError as err:
        assert failure_message(err) == "cannot read image file /d/t.jpg: OSError: image file is truncated"
    assert failure_message(KeyError("x")) == "missing key 'x'"
    many = FailedFilesError({"/a.png": "/a.png: broken", "/b.png": "too small"}, done="1 of 3 written")
    assert failure_lines(RuntimeError("wrapped")) == ["wrapped"]
    assert failure_lines(many) == ["/a.png: broken", "/b.png: too small", "2 failed; 1 of 3 written"]
