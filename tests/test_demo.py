"""The README's main job with the shipped weights: pictures, figures, and a ruler that reads toy tissue."""

from __future__ import annotations

import json
from pathlib import Path

from monai_disc.apps.demo import run_demo

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_demo_draws_and_grades_with_the_shipped_weights(tmp_path, capsys):
    # 12 slides: the smallest toy set whose validation slides can score an AUROC in the lambda sweep
    figures = run_demo(tmp_path, BUNDLES, num_tiles=4, num_inference_steps=10, n_slides=12)
    printed = capsys.readouterr().out.strip().splitlines()
    for name in ("toy_preview.png", "generated_grid.png", "carcinonet_overlays.png", "demo_figures.json"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert json.loads((tmp_path / "demo_figures.json").read_text())["num_inference_steps"] == 10
    # the shipped ruler reads held-out toy tissue (its bundle README gives the full test-split figures; these
    # few multi-label tiles are the hardest)
    assert figures["real"]["pixel_accuracy"] > 0.7
    assert 0.0 <= figures["generated_64px"]["miou"] <= 1.0 and figures["seconds_per_tile"] > 0
    sweep = Path(figures["lambda_sweep"]).read_text()
    assert "| 0 |" in sweep and "| 0.3 |" in sweep and "| 0.7 |" in sweep and "GG5" in sweep
    assert (tmp_path / "lambda_sweep" / "sweep.png").stat().st_size > 1000
    # the toy PANDA slides, tiled and embedded straight from the slides, scored per provider
    assert figures["panda"]["overall"]["n_slides"] == 3 and figures["panda"]["radboud"]["n_slides"] == 3
    assert (tmp_path / "panda_tiles" / "manifest.csv").is_file()

    # the story: slides across grades, what the sweep shows, every picture named on the last line
    import pandas as pd

    slides = pd.read_csv(tmp_path / "synthetic_slides" / "manifest.csv")
    assert slides["primary"].nunique() >= 3 and (slides["primary"] != slides["secondary"]).any()
    assert any(line.startswith("What the sweep shows:") and "one seed" in line for line in printed)
    pictures = figures["pictures"]
    assert all(Path(p).stat().st_size > 1000 for p in pictures)
    assert printed[-1].startswith("figures:") and all(p in printed[-1] for p in pictures)
    for name in ("toy_preview.png", "generated_grid.png", "carcinonet_overlays.png", "synthetic_slides/slide_grid.png"):
        assert str(tmp_path / name) in pictures
    # the masks the LDM bundles read by default pass the bundles' own input check
    from monai_disc.engines.bundle import scan_images

    scan = scan_images(sorted((tmp_path / "masks").glob("*.png")), mode="L", size_multiple=16, mask_values=[0, 1, 2, 3])
    assert len(scan) == 4 and not scan.failures
    # a rerun with other settings stops, naming them
    import pytest

    with pytest.raises(ValueError, match=r"other settings \(num_inference_steps: 10 -> 11\)"):
        run_demo(tmp_path, BUNDLES, num_tiles=4, num_inference_steps=11, n_slides=12)
