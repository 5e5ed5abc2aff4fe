"""TransMIL training on feature bags: learning, lambda wiring, early stopping, resume, and the AUROC metric."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.metrics import ROCAUCMetric
from timm.optim import Lookahead

from monai_disc.engines.checkpoint import latest_checkpoint
from monai_disc.engines.mil import (
    MacroAUROCMetric,
    evaluate_transmil,
    train_transmil,
    transmil_optimizer,
)
from monai_disc.labels import multi_hot
from monai_disc.metrics.slide import slide_auroc
from monai_disc.networks.transmil import transmil_toy

torch.set_num_threads(1)

# (primary, secondary) grades of the toy slides: every class appears with and without it
GRADES = [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
SMALL = {"network": "transmil_toy", "network_kwargs": {"dim": 32, "heads": 2, "landmarks": 16}}
FAST = {**SMALL, "lr": 2e-3, "device": "cpu", "tensorboard": False}


def _bags(n: int, seed: int, rotate: int = 0, dim: int = 8) -> list[dict]:
    """Separable bags: grade k of a slide lifts feature dimension (k + rotate) % 4 by 3 in every instance."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        label = multi_hot(GRADES[i % len(GRADES)])
        x = torch.randn(int(torch.randint(4, 12, (1,), generator=g)), dim, generator=g)
        x[:, (np.nonzero(label)[0] + rotate) % 4] += 3.0
        bags.append({"features": x, "label": label, "slide_id": f"s{seed}_{i}"})
    return bags


def test_transmil_learns_separable_bags(tmp_path):
    model, history = train_transmil(
        _bags(16, 0), None, _bags(16, 1), lam=0.0, seed=0, max_epochs=12, patience=12, out_dir=tmp_path, **FAST
    )
    scores = evaluate_transmil(model, _bags(16, 2))
    assert scores["macro_auroc"] > 0.9
    assert scores["gg5_auroc"] == scores["auroc"][3] == scores["auroc_GG5"]
    assert len(history) == 12 and max(r["val_macro_auroc"] for r in history) > 0.9
    result = json.loads((tmp_path / "result.json").read_text())
    best = max(range(12), key=lambda i: history[i]["val_macro_auroc"])  # first best: later ties do not replace it
    assert result["best_epoch"] == best + 1
    assert result["best_val_macro_auroc"] == pytest.approx(history[best]["val_macro_auroc"])
    # the returned model holds the best epoch's weights, not the last ones
    assert torch.equal(model.fc2.weight, torch.load(tmp_path / "model.pt", weights_only=True)["fc2.weight"])
    assert (tmp_path / "tensorboard").is_dir() is False  # tensorboard=False writes no log


def test_lambda_zero_never_opens_the_synthetic_bags(tmp_path):
    _, history = train_transmil(
        _bags(8, 0), tmp_path / "no_such_cache", _bags(8, 1), lam=0.0, max_epochs=2, out_dir=tmp_path / "run", **FAST
    )
    assert len(history) == 2
    for row in history:
        assert np.isnan(row["loss_synth"]) and row["loss"] == pytest.approx(row["loss_real"])


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_epoch_losses_mix_real_and_synthetic_by_lambda(tmp_path, lam):
    _, history = train_transmil(_bags(8, 0), _bags(6, 5), _bags(8, 1), lam=lam, max_epochs=2, out_dir=tmp_path, **FAST)
    for row in history:
        assert np.isfinite(row["loss_synth"])
        if lam < 1.0:
            assert row["loss"] == pytest.approx((1 - lam) * row["loss_real"] + lam * row["loss_synth"], rel=1e-5)
        else:
            assert np.isnan(row["loss_real"]) and row["loss"] == pytest.approx(row["loss_synth"])


def test_lambda_decides_which_bags_the_model_learns_from(tmp_path):
    """Real bags code grade k on dimension (k + 2) % 4, synthetic bags on dimension k: lambda 0 learns the real
    code only, lambda 1 the synthetic code only (validation holds both codes, so it favours neither)."""
    real_code, synth_code = _bags(16, 2, rotate=2), _bags(16, 2)
    val = _bags(8, 1) + _bags(8, 4, rotate=2)
    scores = {}
    for lam in (0.0, 1.0):
        model, _ = train_transmil(
            _bags(16, 0, rotate=2),
            _bags(16, 3),
            val,
            lam=lam,
            max_epochs=10,
            patience=10,
            out_dir=tmp_path / f"lam{lam}",
            **FAST,
        )
        scores[lam] = {
            code: evaluate_transmil(model, bags)["macro_auroc"]
            for code, bags in (("real", real_code), ("synth", synth_code))
        }
    assert scores[0.0]["real"] > 0.8 and scores[0.0]["synth"] < 0.5
    assert scores[1.0]["synth"] > 0.85 and scores[1.0]["real"] < 0.5


def test_early_stopping_ends_after_patience_validations_without_gain(tmp_path):
    # lr 0: the validation AUROC never moves, so the first epoch stays best and training stops `patience` later
    _, history = train_transmil(
        _bags(6, 0), None, _bags(8, 1), max_epochs=50, patience=3, out_dir=tmp_path, **{**FAST, "lr": 0.0}
    )
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["stopped_early"] and result["epochs"] == 4 and result["best_epoch"] == 1


def test_training_resumes_after_its_last_epoch_and_a_finished_run_is_not_redone(tmp_path):
    args = (_bags(8, 0), None, _bags(8, 1))
    _, first = train_transmil(*args, max_epochs=2, patience=5, out_dir=tmp_path, **FAST)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint_iteration=16.pt"]
    # mark the first epoch's row: a resumed run keeps it, a run started afresh would rewrite it
    history = tmp_path / "history.csv"
    history.write_text(history.read_text().replace(f"{first[0]['loss']!r}", "123.0", 2))
    _, resumed = train_transmil(*args, max_epochs=4, patience=5, out_dir=tmp_path, **FAST)
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3, 4]
    assert resumed[0]["loss"] == 123.0 and resumed[1]["loss"] == first[1]["loss"]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "checkpoint_iteration=32.pt"
    assert json.loads((tmp_path / "result.json").read_text())["epochs"] == 4
    stamp = os.stat(tmp_path / "model.pt").st_mtime_ns
    model, again = train_transmil(*args, max_epochs=4, patience=5, out_dir=tmp_path, **FAST)
    assert os.stat(tmp_path / "model.pt").st_mtime_ns == stamp
    assert [int(r["epoch"]) for r in again] == [1, 2, 3, 4] and not model.training


def test_optimizer_is_radam_inside_lookahead_with_official_settings():
    optimizer = transmil_optimizer(transmil_toy(8))
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer._base_optimizer, torch.optim.RAdam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["lookahead_alpha"], group["lookahead_k"]) == (2e-4, 1e-5, 0.5, 6)


def test_macro_auroc_skips_classes_a_set_cannot_score():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.2, 0.7, 0.3, 0.1], [0.6, 0.4, 0.1, 0.3]])
    full = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1.0]])
    metric, reference = MacroAUROCMetric(), ROCAUCMetric(average="macro")
    metric(scores, full)
    reference(scores, full)
    assert metric.aggregate() == pytest.approx(float(reference.aggregate()))
    no_gg5 = full.clone()
    no_gg5[:, 3] = 0
    metric.reset()
    metric(scores, no_gg5)
    assert metric.aggregate() == pytest.approx(slide_auroc(scores, no_gg5)["macro_auroc"])
    assert np.isfinite(metric.aggregate())


def test_validation_bags_that_score_no_class_are_rejected(tmp_path):
    same = [{"features": torch.randn(3, 8), "label": multi_hot((1, 1))} for _ in range(3)]
    with pytest.raises(ValueError, match="cannot score any class"):
        train_transmil(_bags(4, 0), None, same, max_epochs=1, out_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="synth_train is None"):
        train_transmil(_bags(4, 0), None, _bags(8, 1), lam=0.5, max_epochs=1, out_dir=tmp_path, **FAST)
