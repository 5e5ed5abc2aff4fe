"""Bundle runs over a folder fail like the CLI: bad weights in one line naming the file, bad inputs named after the
good ones are written, exit status 2, no traceback. Real `python -m monai.bundle run` subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_utils import BUNDLES
from PIL import Image

from monai_disc.inferers import DEFAULT_GENERATOR, GENERATORS


def _run(bundle: str, *args: str) -> subprocess.CompletedProcess:
    configs = BUNDLES / bundle / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.yaml")]
    command += ["--meta_file", str(configs / "metadata.json"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=BUNDLES / bundle, env=env, capture_output=True, text=True, timeout=300)


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory, toy_root):
    folder = tmp_path_factory.mktemp("tiles")
    for path in sorted((toy_root / "images").glob("*.jpg"))[:3]:
        shutil.copy(path, folder / path.name)
    data = (folder / path.name).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (1, 1), (200, 120, 180)).save(folder / "tiny.png")
    return folder


def test_carcinonet_writes_the_good_tiles_and_names_the_bad_ones(tiles, tmp_path):
    out = tmp_path / "pred"
    proc = _run("carcinonet", "--dataset_dir", str(tiles), "--output_dir", str(out), "--num_workers", "0")
    assert proc.returncode == 2
    errors = _errors(proc)
    assert errors[0] == f"error: {tiles / 'tiny.png'}: the image is 1x1 px; this bundle needs at least 32 px a side"
    assert errors[1].startswith(
        f"error: cannot read image file {tiles / 'truncated.jpg'}: OSError: image file is truncated"
    )
    assert errors[2] == "error: 2 of 5 tiles failed; the other tiles were written"
    written = sorted(p.name for p in (out / "labels").iterdir())
    assert written == sorted(f"{p.stem}.png" for p in tiles.glob("16B*.jpg"))


def test_weights_that_are_not_a_checkpoint_end_a_bundle_run_in_one_line(tmp_path, capsys):
    """The config-level load every inference config runs first (the same call in a `monai.bundle run` above)."""
    from monai_disc.engines.bundle import load_weights_or_exit
    from monai_disc.networks import carcinonet_toy

    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SystemExit) as exit_:
        load_weights_or_exit(carcinonet_toy(), junk)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: cannot load {junk}: not a PyTorch weight file (neither a torch.save archive nor a tensor pickle)\n"
    )


def test_ldm_bundle_names_bad_masks_after_drawing_the_good_ones(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    good = np.zeros((64, 64), np.uint8)
    good[:32], good[40:, 40:] = 1, 3
    Image.fromarray(good).save(masks / "good.png")
    Image.fromarray(np.where(good == 3, 5, good).astype(np.uint8)).save(masks / "five.png")  # SICAPv2's GG5 value
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(masks / "tiny.png")
    out = tmp_path / "tiles"
    proc = _run("gleason_ldm", "--dataset_dir", str(masks), "--output_dir", str(out), "--num_inference_steps", "2")
    assert proc.returncode == 2
    assert _errors(proc) == [
        f"error: {masks / 'five.png'}: mask value 5 (576 px) of 4096 px map to no Gleason label; valid values are "
        "0, 1, 2, 3",
        f"error: {masks / 'tiny.png'}: the image is 1x1 px; this bundle needs sides that are a multiple of 16 px "
        "(at least 16 px)",
        "error: 2 of 3 masks failed; the other masks were written",
    ]
    assert sorted(p.name for p in out.glob("*.png")) == ["good_overlay.png", "good_tile.png"]


def test_ldm_bundle_refuses_a_checkpoint_of_another_network_naming_it(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(BUNDLES / "gleason_ldm" / "models" / "autoencoder.pt", models / "autoencoder.pt")
    weights = models / Path(GENERATORS[DEFAULT_GENERATOR].weights).name  # the file the bundle loads by default
    shutil.copy(BUNDLES / "carcinonet" / "models" / "model.pt", weights)
    proc = _run("gleason_ldm", "--model_dir", str(models), "--output_dir", str(tmp_path / "o"))
    assert proc.returncode == 2
    (line,) = _errors(proc)
    assert line.startswith(f"error: cannot load {weights}: does not fit MaskConditionedUNet: ")
    assert "missing keys: ['null_tokens'" in line and "unexpected keys: ['encoder.conv1.weight'" in line


def test_bundle_output_folder_of_other_settings_stops_in_one_line(tmp_path, capsys):
    from monai_disc.engines.bundle import bundle_settings

    weights = BUNDLES / "carcinonet" / "models" / "model.pt"
    bundle_settings(tmp_path, {"dataset_dir": "a"}, {"model": weights})
    bundle_settings(tmp_path, {"dataset_dir": "a"}, {"model": weights})  # same: resumes
    with pytest.raises(SystemExit) as exit_:
        bundle_settings(tmp_path, {"dataset_dir": "b"}, {"model": weights})
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(
        f'error: {tmp_path} holds outputs made with other settings (dataset_dir: "a" -> "b")'
    )
    bundle_settings(tmp_path, {"dataset_dir": "b"}, {"model": weights}, overwrite=True)
