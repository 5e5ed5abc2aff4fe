"""The README's main job with the shipped weights: pictures, figures, and a ruler that reads toy tissue."""

from __future__ import annotations

import json
from pathlib import Path

from monai_disc.apps.demo import run_demo

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_demo_draws_and_grades_with_the_shipped_weights(tmp_path):
    # 12 slides: the smallest toy set whose validation slides can score an AUROC in the lambda sweep
    figures = run_demo(tmp_path, BUNDLES, num_tiles=4, num_inference_steps=10, n_slides=12)
    for name in ("toy_preview.png", "sd_grid.png", "carcinonet_overlays.png", "demo_figures.json"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert json.loads((tmp_path / "demo_figures.json").read_text())["num_inference_steps"] == 10
    # the shipped ruler reads held-out toy tissue (its bundle README gives the full test-split figures; these
    # few multi-label tiles are the hardest)
    assert figures["real"]["pixel_accuracy"] > 0.7
    assert 0.0 <= figures["sd_64px"]["miou"] <= 1.0 and figures["sd_seconds_per_tile"] > 0
    sweep = Path(figures["lambda_sweep"]).read_text()
    assert "| 0 |" in sweep and "| 0.3 |" in sweep and "| 0.7 |" in sweep and "GG5" in sweep
    assert (tmp_path / "lambda_sweep" / "sweep.png").stat().st_size > 1000
    # the toy PANDA slides, tiled and embedded straight from the slides, scored per provider
    assert figures["panda"]["overall"]["n_slides"] == 3 and figures["panda"]["radboud"]["n_slides"] == 3
    assert (tmp_path / "panda_tiles" / "manifest.csv").is_file()
