"""The transmil bundle: metadata, bundle properties, and real `monai.bundle run` invocations on toy slides.

The subprocess runs are the commands a user types: feature extraction of real and synthetic slides (and its
resume), TransMIL training with lambda-mixed synthetic bags (and its resume), evaluation, and torchrun DDP on two
CPU processes with gloo. Their outputs are checked against the same extractor and model run in this process.
"""

from __future__ import annotations

import csv
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, bundle_run, check_workflow, missing_metadata, single_rank_world, zoo_metadata_problems
from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_disc.data.tilesets import load_sicapv2_bags, load_synthetic_bags, tile_loader
from monai_disc.engines.mil import evaluate_transmil
from monai_disc.engines.mixed import MixedSupervisedTrainer
from monai_disc.labels import LABEL_NAMES
from monai_disc.networks import FeatureBagDataset, build_extractor, carcinonet_toy, transmil_toy

BUNDLE = "transmil"
CONFIGS = BUNDLES / BUNDLE / "configs"
META = CONFIGS / "metadata.json"
TRAIN, MULTI, EVALUATE = CONFIGS / "train.yaml", CONFIGS / "multi_gpu_train.yaml", CONFIGS / "evaluate.yaml"
SYNTH = "sd"  # the synthetic folder's name, hence its cache name
EPOCHS = 2
STATS_LINE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- loss: (\S+) loss_real: (\S+) loss_synth: (\S+)")
VAL_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- val_macro_auroc: (\S+)")


def _write_synthetic_slides(toy_root: Path, out: Path, n_slides: int = 3, n_tiles: int = 4) -> Path:
    """Toy tiles in the layout `monai-disc generate-slides` writes: manifest.csv + <slide>/images, masks (PNG)."""
    rows = []
    for i, bag in enumerate(load_sicapv2_bags(toy_root, "Test", "Train")[:n_slides]):
        sid = f"synth_{i:03d}"
        for sub in ("images", "masks"):
            (out / sid / sub).mkdir(parents=True)
        for t, tile in enumerate(bag["tiles"][:n_tiles]):
            Image.open(tile).convert("RGB").save(out / sid / "images" / f"{t:04d}.png")
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(out / sid / "masks" / f"{t:04d}.png")
        label = [int(v) for v in bag["label"]]
        rows.append([sid, LABEL_NAMES[bag["primary"]], LABEL_NAMES[bag["secondary"]], *label, n_tiles, "SD", i, i])
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "primary", "secondary", *LABEL_NAMES, "n_tiles", "generator", "seed", "index"])
        writer.writerows(rows)
    return out


@pytest.fixture(scope="module")
def extracted(toy_root, tmp_path_factory):
    """Features of the toy slides (random-init toy CarcinoNet encoder) and of 3 synthetic slides.

    Training uses the Test partition's Train sheet (4 slides); validation and test its Test sheet (2 slides, NC
    and GG3+GG4, so three classes get an AUROC): the toy set's Val folds hold one slide each.
    """
    work = tmp_path_factory.mktemp("transmil")
    torch.manual_seed(7)
    torch.save(carcinonet_toy().state_dict(), work / "carcinonet.pt")
    synthetic = _write_synthetic_slides(toy_root, work / "slides" / SYNTH)
    args = ["--dataset_dir", str(toy_root), "--output_dir", str(work / "out"),
            "--extractor_weights", str(work / "carcinonet.pt"), "--synthetic_dir", str(synthetic),
            "--train_partition", "Test", "--val_partition", "Test", "--val_split", "Test",
            "--batch_size", "32", "--num_workers", "0"]  # fmt: skip
    log = bundle_run(BUNDLE, ["extract_features.yaml"], *args)
    return {"work": work, "features": work / "out" / "features", "synthetic": synthetic, "args": args, "log": log}


def _train_args(extracted: dict, run: str, *extra: str) -> list[str]:
    """train.yaml options: 2 epochs, lambda 0.5 with the synthetic cache, outputs in their own folder."""
    work = extracted["work"]
    return ["--output_dir", str(work / "out"), "--run_dir", str(work / run), "--model_dir", str(work / run / "models"),
            "--max_epochs", str(EPOCHS), "--lam", "0.5", "--synthetic_name", SYNTH, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained(extracted):
    """2 epochs with lambda 0.5, then a restart to 3 epochs; meanwhile the same 2 epochs under torchrun (2 ranks)."""
    with ThreadPoolExecutor(1) as pool:
        ddp = pool.submit(
            bundle_run, BUNDLE, ["train.yaml", "multi_gpu_train.yaml"], *_train_args(extracted, "ddp"), torchrun=2
        )
        first = bundle_run(BUNDLE, ["train.yaml"], *_train_args(extracted, "run"))
        run = extracted["work"] / "run"
        first_ckpt = torch.load(run / "checkpoints" / f"checkpoint_iteration={EPOCHS * 4}.pt", weights_only=True)
        second = bundle_run(BUNDLE, ["train.yaml"], *_train_args(extracted, "run", "--max_epochs", str(EPOCHS + 1)))
        ddp_log = ddp.result()
    return {"run": run, "logs": (first, second), "first_ckpt": first_ckpt, "ddp": extracted["work"] / "ddp",
            "ddp_log": ddp_log}  # fmt: skip


def _model(path: Path) -> torch.nn.Module:
    """A bundle's model.pt in the default network (strict: a plain state dict, no "module." prefix)."""
    net = transmil_toy(256)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


_check = partial(check_workflow, meta_file=META)


# ----------------------------------------------------------------------------------------------- static checks


def test_metadata_has_every_mandatory_field_and_describes_feature_bags_and_logits():
    meta = json.loads(META.read_text())
    assert missing_metadata(meta) == [] and zoo_metadata_problems(meta) == []
    assert "nystrom-attention" not in meta["required_packages_version"]  # the project's own attention now
    # a bag (1, N, 256) as MONAI's tools build it: (1, num_channels, *spatial_shape), N = num_channels
    bag, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert (bag["spatial_shape"], bag["dtype"]) == ([256], "float32") and bag["num_channels"] >= 1
    assert (pred["num_channels"], pred["format"]) == (4, "classes")
    assert [pred["channel_def"][str(i)] for i in range(4)] == list(LABEL_NAMES)


def test_network_def_maps_bags_of_any_length_to_four_logits():
    wf = ConfigWorkflow(config_file=str(TRAIN), meta_file=str(META), logging_file=False, workflow_type="train")
    net = wf.parser.get_parsed_content("network_def").eval()
    assert net.in_features == json.loads(META.read_text())["network_data_format"]["inputs"]["image"]["spatial_shape"][0]
    with torch.no_grad():
        for n in (1, 37):
            assert net(torch.randn(1, n, 256)).shape == (1, 4)


def test_train_config_has_every_train_property(extracted, tmp_path):
    wf = _check(
        str(TRAIN), "train", bundle_root=str(CONFIGS.parent), output_dir=str(extracted["work"] / "out"),
        run_dir=str(tmp_path), model_dir=str(tmp_path / "models"),
    )  # fmt: skip
    assert isinstance(wf.trainer, MixedSupervisedTrainer) and wf.trainer.lam == 0.0
    assert wf.trainer.synthetic_loader is None  # lam 0: the synthetic bags are never opened
    assert wf.max_epochs == 200 and wf.parser.get_parsed_content("patience") == 10
    assert len(wf.train_dataset) == 4 and len(wf.val_dataset) == 2
    opt = wf.parser.get_parsed_content("optimizer")
    assert type(opt).__name__ == "Lookahead" and isinstance(opt._base_optimizer, torch.optim.RAdam)
    group = opt.param_groups[0]
    assert (group["lookahead_alpha"], group["lookahead_k"]) == (0.5, 6)
    assert (group["lr"], group["weight_decay"]) == (2e-4, 1e-5)
    assert {id(p) for p in group["params"]} == {id(p) for p in wf.trainer.network.parameters()}


def test_train_with_multi_gpu_config_has_every_train_property(extracted, tmp_path, monkeypatch):
    with single_rank_world(monkeypatch):
        wf = _check(
            [str(TRAIN), str(MULTI)], "train", bundle_root=str(CONFIGS.parent),
            output_dir=str(extracted["work"] / "out"), run_dir=str(tmp_path), model_dir=str(tmp_path / "models"),
            lam=0.5, synthetic_name=SYNTH, finalize=[],  # single_rank_world tears the group down
        )  # fmt: skip
        assert torch.distributed.get_backend() == "gloo"
        assert isinstance(wf.trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert wf.evaluator.network is wf.trainer.network.module  # validation bypasses DDP collectives
        assert type(wf.trainer.synthetic_loader.sampler).__name__ == "DistributedSampler"
        assert len(wf.trainer.synthetic_loader.dataset) == 3


def test_evaluate_config_has_every_infer_property(extracted, tmp_path):
    wf = _check(str(EVALUATE), "infer", bundle_root=str(CONFIGS.parent), output_dir=str(extracted["work"] / "out"))
    assert len(wf.dataset) == 2
    assert wf.parser.get_parsed_content("panda#evaluator") is None  # no --panda_features: no second evaluation


# --------------------------------------------------------------------------------------- real bundle commands


def test_extract_features_caches_every_slide_as_the_extractor_embeds_it(extracted, toy_root):
    features = extracted["features"]
    sheets = {"train": ("Test", "Train"), "val": ("Test", "Test"), "test": ("Test", "Test")}
    for split, sheet in sheets.items():
        cached = FeatureBagDataset(features / "real" / split)
        assert [cached[i]["slide_id"] for i in range(len(cached))] == [
            b["slide_id"] for b in load_sicapv2_bags(toy_root, *sheet)
        ]
    settings = json.loads((features / "real" / "test" / "settings.json").read_text())
    assert settings["extractor"] == "carcinonet_toy" and settings["num_features"] == 256
    extractor, load = build_extractor("carcinonet_toy", extracted["work"] / "carcinonet.pt"), tile_loader()
    for bag in load_sicapv2_bags(toy_root, "Test", "Test"):
        stored = torch.load(features / "real" / "test" / f"{bag['slide_id']}.pt", weights_only=True)
        with torch.no_grad():
            ref = extractor(torch.stack([load(t) for t in bag["tiles"]]))
        assert stored["features"].dtype == torch.float16 and stored["features"].shape == (len(bag["tiles"]), 256)
        torch.testing.assert_close(stored["features"].float(), ref, atol=2e-3, rtol=2e-3)
        assert torch.equal(stored["label"], torch.as_tensor(bag["label"]))
    synthetic = FeatureBagDataset(features / "synthetic" / SYNTH)
    bags = load_synthetic_bags(extracted["synthetic"])
    assert [synthetic[i]["slide_id"] for i in range(3)] == [b["slide_id"] for b in bags]
    assert all(synthetic[i]["features"].shape == (4, 256) and synthetic[i]["source"] == "synthetic" for i in range(3))
    assert all(torch.equal(synthetic[i]["label"], torch.as_tensor(b["label"])) for i, b in enumerate(bags))


def test_extract_features_config_builds_nothing_before_run(extracted, tmp_path):
    # neither a train nor an infer workflow: the metadata properties, and the wiring of the extraction
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "extract_features.yaml"), meta_file=str(META), logging_file=False,
        workflow_type=None, output_dir=str(tmp_path), extractor_weights=str(extracted["work"] / "carcinonet.pt"),
    )  # fmt: skip
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.parser.get_parsed_content("extractor_net").num_features == 256
    assert wf.parser.get_parsed_content("synthetic_features") is None
    assert wf.parser.get_parsed_content("real_features") == f"{tmp_path}/features/real"
    assert list(tmp_path.iterdir()) == []


def test_extract_features_under_torchrun_shards_the_slides_over_ranks(extracted, toy_root):
    out = extracted["work"] / "ddp_features"
    args = list(extracted["args"])
    args[args.index("--output_dir") + 1] = str(out)
    i = args.index("--synthetic_dir")
    del args[i : i + 2]
    log = bundle_run(BUNDLE, ["extract_features.yaml"], *args, torchrun=2)
    bags = load_sicapv2_bags(toy_root, "Test", "Train")
    for rank in (0, 1):  # rank r embeds slides r, r + 2, ... of each sheet
        tiles = sum(len(b["tiles"]) for b in bags[rank::2])
        assert re.search(rf"features rank {rank}/2: 100%\|\S*\| {tiles}/{tiles}", log)
    for split in ("train", "val", "test"):
        single, sharded = (
            FeatureBagDataset(extracted["features"] / "real" / split),
            FeatureBagDataset(out / "features" / "real" / split),
        )
        assert [s["slide_id"] for s in sharded] == [s["slide_id"] for s in single]
        for a, b in zip(single, sharded):
            torch.testing.assert_close(a["features"], b["features"], atol=2e-3, rtol=2e-3)


def test_extract_features_resumes_by_embedding_only_missing_slides(extracted, toy_root):
    folder = extracted["features"] / "real" / "train"
    files = sorted(folder.glob("*.pt"))
    before = {p.name: p.stat().st_mtime_ns for p in files}
    files[1].unlink()  # a slide a killed run had not finished
    (folder / "manifest.csv").unlink()
    log = bundle_run(BUNDLE, ["extract_features.yaml"], *extracted["args"])
    assert {p.name for p in folder.glob("*.pt")} == set(before)
    assert {p.name: p.stat().st_mtime_ns for p in files if p != files[1]} == {
        k: v for k, v in before.items() if k != files[1].name
    }  # untouched
    assert (folder / "manifest.csv").is_file()
    missing = next(b for b in load_sicapv2_bags(toy_root, "Test", "Train") if f"{b['slide_id']}.pt" == files[1].name)
    totals = set(re.findall(r"features rank 0/1: 100%\|\S*\| \d+/(\d+)", log))
    assert totals == {str(len(missing["tiles"]))}  # one progress bar: the missing slide's tiles, nothing else


def test_train_mixes_real_and_synthetic_bags_by_lambda_and_validates_each_epoch(trained):
    log = trained["logs"][0]
    rows = [m.groups() for m in STATS_LINE.finditer(log)]
    assert [(int(r[0]), int(r[2]), int(r[3])) for r in rows] == [(e, i, 4) for e in (1, 2) for i in (1, 2, 3, 4)]
    for *_, loss, real, synth in rows:
        assert math.isfinite(float(synth)) and float(loss) == pytest.approx(
            0.5 * float(real) + 0.5 * float(synth), abs=2e-4
        )
    assert [int(m.group(1)) for m in VAL_LINE.finditer(log)] == [1, 2]
    events = list((trained["run"] / "tensorboard").iterdir())
    assert events and all(p.name.startswith("events.out.tfevents") for p in events)


def test_model_pt_holds_the_best_validation_weights(trained, extracted):
    scores = [float(m.group(2)) for m in VAL_LINE.finditer(trained["logs"][0])]
    ckpt = trained["first_ckpt"]
    assert set(ckpt) == {"network", "optimizer", "trainer", "early_stopping", "best_model"}
    assert ckpt["best_model"]["_saved"][0][0] == pytest.approx(max(scores), abs=1e-4)
    assert ckpt["early_stopping"]["best_score"] == pytest.approx(max(scores), abs=1e-4)
    best_epoch = scores.index(max(scores)) + 1
    assert ckpt["early_stopping"]["counter"] == len(scores) - best_epoch
    # model.pt after the restart: still the best of all 3 validations, re-scored here on the validation bags
    all_scores = scores + [float(m.group(2)) for m in VAL_LINE.finditer(trained["logs"][1])]
    result = evaluate_transmil(_model(trained["run"] / "models" / "model.pt"), extracted["features"] / "real" / "val")
    assert result["macro_auroc"] == pytest.approx(max(all_scores), abs=1e-4)


def test_train_resumes_after_the_last_validation(trained):
    second = trained["logs"][1]
    assert re.search(rf"resumed from \S+checkpoint_iteration={EPOCHS * 4}\.pt at iteration {EPOCHS * 4}", second)
    assert [(int(m.group(1)), int(m.group(3))) for m in STATS_LINE.finditer(second)] == [(3, i) for i in (1, 2, 3, 4)]
    assert [int(m.group(1)) for m in VAL_LINE.finditer(second)] == [3]
    last = torch.load(trained["run"] / "checkpoints" / "checkpoint_iteration=12.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 12
    assert last["early_stopping"]["best_score"] == pytest.approx(
        max(float(m.group(2)) for log in trained["logs"] for m in VAL_LINE.finditer(log)), abs=1e-4
    )


def test_evaluate_writes_the_slide_auroc_of_the_model(trained, extracted):
    out = extracted["work"] / "eval"
    args = ["--output_dir", str(extracted["work"] / "out"), "--model_dir", str(trained["run"] / "models"),
            "--metrics_file", str(out / "metrics.json"), "--panda_features", str(extracted["features"] / "real" / "train"),
            "--panda_metrics_file", str(out / "metrics_panda.json")]  # fmt: skip
    log = bundle_run(BUNDLE, ["evaluate.yaml"], *args)  # the training bags stand in for a PANDA-format cache
    model = _model(trained["run"] / "models" / "model.pt")
    for name, features in (("metrics.json", "test"), ("metrics_panda.json", "train")):
        scores = json.loads((out / name).read_text())
        ref = evaluate_transmil(model, extracted["features"] / "real" / features)
        assert scores["classes"] == list(LABEL_NAMES) and scores["n_slides"] == ref["n_slides"]
        assert scores["macro_auroc"] == pytest.approx(ref["macro_auroc"], abs=1e-6)
        for c in LABEL_NAMES:
            expected = ref[f"auroc_{c}"]
            assert scores[f"auroc_{c}"] == (None if math.isnan(expected) else pytest.approx(expected, abs=1e-6))
        assert scores["gg5_auroc"] == scores["auroc_GG5"]
    test = json.loads((out / "metrics.json").read_text())
    assert test["test"] == "sicapv2" and test["auroc_GG5"] is None  # no GG5 slide among the 2 test slides
    assert test["auroc_NC"] is not None and '"macro_auroc"' in log  # printed too
    assert json.loads((out / "metrics_panda.json").read_text())["test"] == "panda"


def test_multi_gpu_training_runs_ddp_on_two_cpu_processes_with_gloo(trained):
    log, ddp = trained["ddp_log"], trained["ddp"]
    rows = STATS_LINE.findall(log)
    assert [(int(r[0]), int(r[2]), int(r[3])) for r in rows] == [(e, i, 2) for e in (1, 2) for i in (1, 2)]  # rank 0
    for *_, loss, real, synth in rows:
        assert float(loss) == pytest.approx(0.5 * float(real) + 0.5 * float(synth), abs=2e-4)
    # one macro AUROC per epoch from the validation bags of both ranks (one slide each: alone, no class is scorable)
    assert [int(m.group(1)) for m in VAL_LINE.finditer(log)] == [1, 2]
    assert all(math.isfinite(float(m.group(2))) for m in VAL_LINE.finditer(log))
    _model(ddp / "models" / "model.pt")  # rank 0 saved the unwrapped network (no "module." prefix)
    assert (ddp / "checkpoints" / "checkpoint_iteration=4.pt").is_file()
    writers = {p.name.split(".")[-2] for p in (ddp / "tensorboard").iterdir()}
    assert len(writers) == 1  # TensorBoard event files from one process only
