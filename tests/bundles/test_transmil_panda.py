"""The PANDA evaluation end to end on toy PANDA slides (radboud and karolinska): `tile-slides --panda`, features
straight from the slides (`extract-features --wsi`), then TransMIL's slide AUROC overall and per provider through
the CLI (`evaluate-slides`) and the transmil bundle (`evaluate.yaml --panda_dir`), checked against the shipped
model run in this process on the same feature files with the labels of train.csv."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from bundle_utils import BUNDLES, bundle_run

from monai_disc.apps.cli import main
from monai_disc.data.panda import load_panda
from monai_disc.data.toy import make_toy_panda
from monai_disc.engines.panda import format_panda_auroc, load_transmil
from monai_disc.labels import LABEL_NAMES
from monai_disc.metrics.slide import slide_auroc

MODEL = BUNDLES / "transmil" / "models" / "model.pt"


@pytest.fixture(scope="module")
def panda(tmp_path_factory):
    work = tmp_path_factory.mktemp("panda")
    root = make_toy_panda(work / "panda", n_slides=6, size=(768, 512), providers=("radboud", "karolinska"))
    tiles, features = work / "tiles", work / "features"
    assert main(["tile-slides", "--panda", str(root), "--out", str(tiles), "--tile-size", "64", "--mpp", "2.0"]) == 0
    assert main(["extract-features", "--wsi", str(tiles), "--out", str(features)]) == 0
    return {"root": root, "tiles": tiles, "features": features, "work": work}


def _expected(panda) -> dict[str, dict]:
    """Scores of the shipped model on the feature files, labels and providers from train.csv."""
    slides = load_panda(panda["root"])
    bags = [torch.load(panda["features"] / f"{s['slide_id']}.pt", weights_only=True) for s in slides]
    model = load_transmil(MODEL, bags[0]["features"].shape[-1])
    with torch.inference_mode():
        logits = torch.stack([model(b["features"].float()[None])[0] for b in bags])
    labels = torch.stack([torch.as_tensor(s["label"]) for s in slides])
    out = {}
    for name in ("overall", "radboud", "karolinska"):
        keep = [i for i, s in enumerate(slides) if name == "overall" or s["provider"] == name]
        out[name] = {"n_slides": len(keep), **slide_auroc(logits[keep], labels[keep])}
    return out


def _check(scores: dict, expected: dict) -> None:
    for name, ref in expected.items():
        assert scores[name]["n_slides"] == ref["n_slides"]
        assert scores[name]["macro_auroc"] == pytest.approx(ref["macro_auroc"], abs=1e-6)
        for cls, value in zip(LABEL_NAMES, ref["auroc"]):
            got = scores[name][f"auroc_{cls}"]
            assert (got is None or math.isnan(got)) if math.isnan(value) else got == pytest.approx(value, abs=1e-6)


def test_tile_slides_on_panda_records_providers_labels_and_radboud_fractions(panda):
    manifest = pd.read_csv(panda["tiles"] / "manifest.csv", dtype=str, keep_default_na=False)
    table = pd.read_csv(panda["root"] / "train.csv", dtype=str)
    assert list(manifest.slide_id) == list(table.image_id) and set(manifest.status) == {"ok"}
    assert list(manifest.provider) == list(table.data_provider) == ["radboud", "karolinska"] * 3
    assert list(manifest.gleason_score) == list(table.gleason_score)
    first = manifest.iloc[0]  # radboud "negative": NC only
    assert (first.NC, first.GG3, first.GG4, first.GG5) == ("1", "0", "0", "0")
    radboud = pd.read_csv(panda["tiles"] / "coords" / f"{table.image_id[2]}.csv")  # radboud 4+5
    assert {"nc", "gg3", "gg4", "gg5"} <= set(radboud.columns) and radboud.gg3.max() == 0
    assert radboud.gg4.max() > 0.5 and radboud.gg5.max() > 0.5
    assert ((radboud.nc + radboud.gg4 + radboud.gg5) <= 1.0 + 3e-4).all()  # fractions rounded to 4 places
    karolinska = pd.read_csv(panda["tiles"] / "coords" / f"{table.image_id[1]}.csv")  # no grade fractions
    assert list(karolinska.columns) == ["x", "y", "level", "size", "tissue"] and len(karolinska) > 10
    assert (panda["tiles"] / "thumbnails" / f"{table.image_id[0]}.png").is_file()


def test_evaluate_slides_scores_panda_overall_and_per_provider(panda, capsys):
    out = panda["work"] / "cli_metrics.json"
    assert main(["evaluate-slides", "--features", str(panda["features"]), "--panda", str(panda["root"]),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    scores = json.loads(out.read_text())
    _check(scores, _expected(panda))
    assert scores["missing"] == [] and scores["test"] == "panda"
    assert format_panda_auroc(scores).splitlines()[0] in printed and "| karolinska | 3 |" in printed


def test_the_transmil_bundle_evaluates_a_panda_folder(panda):
    out = panda["work"] / "bundle_metrics.json"
    bundle_run("transmil", ["evaluate.yaml"], "--run_test", "False", "--panda_dir", str(panda["root"]),
               "--panda_features", str(panda["features"]), "--panda_metrics_file", str(out))  # fmt: skip
    scores = json.loads(out.read_text())
    _check(scores, _expected(panda))
    assert scores["features"] == str(panda["features"])
