"""The README's main job with the shipped weights: six steps, each with a picture and a line that says what it shows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from monai_disc.apps.demo import SCARCE_LAMBDA, SCARCE_SEEDS, run_demo

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_demo_tells_its_story_with_the_shipped_weights(tmp_path, capsys):
    # 12 slides: the smallest toy set whose validation slides can score an AUROC in the scarce-slides step
    figures = run_demo(tmp_path, BUNDLES, num_tiles=4, num_inference_steps=10, n_slides=12, num_synthetic_slides=8)
    captured = capsys.readouterr()
    printed = captured.out.strip().splitlines()
    for name in ("toy_preview.png", "generated_grid.png", "carcinonet_overlays.png", "scarce_slides.png",
                 "panda_slide.png", "demo_figures.json"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 1000, name
    assert json.loads((tmp_path / "demo_figures.json").read_text())["num_inference_steps"] == 10
    # six numbered steps, no third-party lines (ignite's INFO, MONAI's reader warnings) among them
    assert [line.split("]")[0] for line in printed if line.startswith("[")] == [f"[{i}/6" for i in range(1, 7)]
    noise = [line for line in (captured.out + captured.err).splitlines() if " INFO" in line or "nvImageCodec" in line]
    assert not noise, noise
    # the shipped ruler reads held-out toy tissue (its bundle README gives the full test-split figures; these
    # few multi-label tiles are the hardest)
    assert figures["real"]["pixel_accuracy"] > 0.7
    assert 0.0 <= figures["generated_64px"]["miou"] <= 1.0 and figures["seconds_per_tile"] > 0

    # scarce slides: per seed, both arms on the same real slides; every AUROC a number within [0, 100]
    rows = pd.read_csv(tmp_path / "scarce_slides" / "sweep.csv")
    assert sorted(rows["lam"].unique()) == [0.0, SCARCE_LAMBDA]
    for lam in (0.0, SCARCE_LAMBDA):
        assert sorted(rows[rows["lam"] == lam]["seed"]) == list(range(SCARCE_SEEDS))
    for metric in ("macro_auroc", "gg5_auroc"):
        arms = figures["scarce_slides"][metric]
        assert len(arms["real"]) == len(arms["mixed"]) == SCARCE_SEEDS
        assert all(0.0 <= v <= 100.0 for v in arms["real"] + arms["mixed"])
    assert any(line.startswith("What it shows:") and "synthetic slides" in line for line in printed)

    # whole slides: every toy PANDA slide read, with its provider and truth
    readings = figures["whole_slides"]
    assert len(readings) == 3 and all(r["provider"] == "radboud" and r["truth"] for r in readings)
    assert sum(line.startswith("slide ") and "TransMIL reads" in line for line in printed) == 3

    slides = pd.read_csv(tmp_path / "synthetic_slides" / "manifest.csv")
    assert slides["primary"].nunique() >= 3 and (slides["primary"] != slides["secondary"]).any()
    # the last lines: what was shown, where to look next, every picture named
    pictures = figures["pictures"]
    assert all(Path(p).stat().st_size > 1000 for p in pictures)
    assert printed[-1].startswith("figures:") and all(p in printed[-1] for p in pictures)
    assert printed[-2].startswith("Next:") and "What was shown" in "\n".join(printed[-9:])
    for name in ("toy_preview.png", "generated_grid.png", "carcinonet_overlays.png", "synthetic_slides/slide_grid.png"):
        assert str(tmp_path / name) in pictures
    # the masks the LDM bundles read by default pass the bundles' own input check
    from monai_disc.engines.bundle import scan_images

    scan = scan_images(sorted((tmp_path / "masks").glob("*.png")), mode="L", size_multiple=16, mask_values=[0, 1, 2, 3])
    assert len(scan) == 4 and not scan.failures
    # every folder the demo derives is cleared by --overwrite, so a rerun with other settings reuses none of it
    from monai_disc.apps.demo import _DERIVED

    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} - {"toy"} <= set(_DERIVED)
    # a rerun with other settings stops, naming them
    with pytest.raises(ValueError, match=r"other settings \(num_inference_steps: 10 -> 11\)"):
        run_demo(tmp_path, BUNDLES, num_tiles=4, num_inference_steps=11, n_slides=12, num_synthetic_slides=8)
