"""`monai-disc generate-region` and `generate-slides --as-wsi` as a user runs them: slide files OpenSlide opens."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import openslide
from PIL import Image

from monai_disc.apps.cli import main
from monai_disc.data import load_panda
from monai_disc.inferers import DEFAULT_GENERATOR
from monai_disc.masks import BACKGROUND


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_disc.apps.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_generate_region_writes_a_slide_and_mask_and_refuses_a_bad_mask(tmp_path):
    mask = np.full((128, 320), BACKGROUND, np.uint8)
    mask[8:120, 8:300] = 0
    mask[32:96, 64:192] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "region.tiff"
    proc = _cli(
        "generate-region", "--mask", str(tmp_path / "mask.png"), "--out", str(out), "--generator", "sc",
        "--num-inference-steps", "2", "--seed", "3", "--mpp", "1.5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for path in (out, tmp_path / "region_mask.tiff"):
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.level_dimensions == ((320, 128), (160, 64))
            assert float(slide.properties["openslide.mpp-x"]) == 1.5


def test_generate_region_refuses_a_mask_the_autoencoder_cannot_take_naming_it(tmp_path, capsys):
    Image.fromarray(np.full((128, 130), 0, np.uint8)).save(tmp_path / "odd.png")
    assert main(["generate-region", "--mask", str(tmp_path / "odd.png"), "--out", str(tmp_path / "x.tiff")]) == 2
    err = capsys.readouterr().err
    assert "odd.png" in err and "multiple of the autoencoder's downsampling factor 4" in err
    assert not (tmp_path / "x.tiff").exists()


def test_generate_slides_as_wsi_shards_slides_across_ranks_in_the_panda_layout(tmp_path, toy_root, monkeypatch):
    out = tmp_path / "synthetic"
    args = ["generate-slides", "--data", str(toy_root), "--out", str(out), "--target", "3", "--tiles", "2", "3"]
    args += ["--num-inference-steps", "2", "--tile-size", "32", "--as-wsi", "--wsi-size", "128", "256", "--mpp", "2"]
    first = _cli(*args, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert first.returncode == 0, first.stderr
    assert "this rank is done" in first.stdout and not (out / f"{DEFAULT_GENERATOR}_wsi" / "train.csv").exists()
    monkeypatch.setenv("RANK", "1")  # the second rank in this process (one interpreter start less)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(args) == 0
    slides = load_panda(out / f"{DEFAULT_GENERATOR}_wsi")  # the default generator draws
    assert len(slides) >= 2
    for item in slides:
        with openslide.OpenSlide(item["image"]) as slide, openslide.OpenSlide(item["mask"]) as mask:
            assert slide.dimensions == mask.dimensions == (256, 128)
            labels = np.asarray(mask.read_region((0, 0), 0, (256, 128)))[..., 0]
            rgb = np.asarray(slide.read_region((0, 0), 0, (256, 128)))[..., :3]
            assert (rgb[labels == 0] == 255).all() and (labels > 0).mean() > 0.2
            grades = {v - 2 for v in np.unique(labels) if v >= 3}  # radboud 3/4/5 -> labels 1/2/3
            assert grades <= {1, 2, 3} and (item["label"][1:].sum() > 0) == bool(grades)
