"""The carcinonet bundle: metadata, bundle properties, network I/O, and real `monai.bundle run` invocations.

The subprocess runs are the commands a user types (train with lambda-mixed synthetic tiles and a resume,
evaluate, inference, torchrun DDP on two CPU processes with gloo); their outputs are checked against
the same model run in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import check_workflow, single_rank_world, zoo_metadata_problems
from monai.bundle import ConfigWorkflow, verify_net_in_out
from PIL import Image

from monai_disc.data.sicapv2 import load_sicapv2
from monai_disc.engines.evaluation import labelled_tile_transforms, labelled_tiles
from monai_disc.engines.mixed import MixedSupervisedTrainer
from monai_disc.labels import LABEL_COLORS, LABEL_NAMES, SICAPV2_MASK_VALUES, SICAPV2_VALUE_TO_LABEL
from monai_disc.metrics import LAPC_GROUPS, group_confusion_matrix, pixel_confusion_matrix
from monai_disc.networks.carcinonet import carcinonet_toy
from monai_disc.transforms import tile_transforms

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "carcinonet"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
TRAIN, MULTI = CONFIGS / "train.yaml", CONFIGS / "multi_gpu_train.yaml"
EVALUATE, INFERENCE = CONFIGS / "evaluate.yaml", CONFIGS / "inference.yaml"

MANDATORY_META = (
    "version changelog monai_version pytorch_version numpy_version required_packages_version "
    "task description authors copyright data_source data_type image_classes "
    "label_classes pred_classes eval_metrics intended_use references network_data_format"
).split()
TENSOR_FORMAT = "type format modality num_channels spatial_shape dtype value_range is_patch_data channel_def".split()
TOY_PX = 64  # the shared toy_root fixture's tile size
STATS_LINE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- loss: (\S+) loss_real: (\S+) loss_synth: (\S+)")


def _bundle(args: list[str], cwd: Path, module: tuple[str, ...] = ("-m", "monai.bundle", "run")) -> str:
    """Run one bundle command in a fresh interpreter; returns its log, fails the test with it on error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args[:4])} failed ({proc.returncode}):\n{log[-4000:]}"
    return log


def _load_model(path: Path) -> torch.nn.Module:
    net = carcinonet_toy()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def _opts(**options) -> list[str]:
    """``--key value`` pairs of a bundle command line."""
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))]


def _common(config: Path | str, dataset_dir: Path, output_dir: Path, model_dir: Path) -> list[str]:
    return _opts(
        config_file=config, meta_file=META, bundle_root=BUNDLE, dataset_dir=dataset_dir,
        output_dir=output_dir, model_dir=model_dir, num_workers=0,
    )  # fmt: skip


def _train_args(toy_root: Path, run: Path, *extra: str) -> list[str]:
    tiny = _opts(epoch_length=2, max_epochs=1, batch_size=2, patch_size=TOY_PX, save_interval=2)
    return [*_common(TRAIN, toy_root, run, run / "models"), *tiny, *extra]


def _write_synthetic_folder(toy_root: Path, out: Path, n: int = 6) -> Path:
    """Tiles in the plain-folder layout the bundle takes as synthetic data (PNG tiles, PNG labels 0..3)."""
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    values = np.array(SICAPV2_MASK_VALUES)
    to_label = np.array([SICAPV2_VALUE_TO_LABEL[v] for v in SICAPV2_MASK_VALUES], dtype=np.uint8)
    for i, item in enumerate(load_sicapv2(toy_root, "Test", "Train")[:n]):
        Image.open(item["image"]).convert("RGB").save(out / "images" / f"synth_{i}.png")
        stored = np.asarray(Image.open(item["mask"]).convert("L")).astype(int)
        Image.fromarray(to_label[np.abs(stored[..., None] - values).argmin(-1)]).save(out / "masks" / f"synth_{i}.png")
    return out


# ----------------------------------------------------------------------------------------------- static checks


def test_metadata_has_every_mandatory_field_and_describes_tiles_and_logits():
    meta = json.loads(META.read_text())
    assert [k for k in MANDATORY_META if k not in meta] == []
    assert zoo_metadata_problems(meta) == []
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    assert [k for k in TENSOR_FORMAT if k not in image] == [] and [k for k in TENSOR_FORMAT if k not in pred] == []
    assert (image["num_channels"], image["spatial_shape"], image["value_range"]) == (3, [128, 128], [-1, 1])
    assert (pred["num_channels"], pred["spatial_shape"], pred["format"]) == (4, [128, 128], "labels")
    assert [pred["channel_def"][str(i)] for i in range(4)] == list(LABEL_NAMES) == ["NC", "GG3", "GG4", "GG5"]


def test_network_matches_the_metadata_in_and_out():
    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(TRAIN), device="cpu")
    wf = ConfigWorkflow(config_file=str(TRAIN), meta_file=str(META), logging_file=False, workflow_type="train")
    net = wf.parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 128, 128) * 2 - 1).shape == (1, 4, 128, 128)


_check = partial(check_workflow, meta_file=META)


def test_train_config_has_every_train_property(toy_root, tmp_path):
    wf = _check(
        str(TRAIN), "train", bundle_root=str(BUNDLE), dataset_dir=str(toy_root), output_dir=str(tmp_path),
        model_dir=str(tmp_path / "models"), patch_size=TOY_PX, num_workers=0,
    )  # fmt: skip
    assert isinstance(wf.trainer, MixedSupervisedTrainer) and wf.trainer.lam == 0.0
    assert wf.trainer.synthetic_loader is None  # lam 0: the real-only baseline
    assert len(wf.train_dataset) == len(load_sicapv2(toy_root, "Test", "Train"))
    assert len(wf.val_dataset) == len(load_sicapv2(toy_root, "Test", "Test"))


def test_train_with_multi_gpu_config_has_every_train_property(toy_root, tmp_path, monkeypatch):
    with single_rank_world(monkeypatch):
        wf = _check(
            [str(TRAIN), str(MULTI)], "train", bundle_root=str(BUNDLE), dataset_dir=str(toy_root),
            output_dir=str(tmp_path), model_dir=str(tmp_path / "models"), patch_size=TOY_PX, num_workers=0,
            finalize=[],  # single_rank_world tears the group down, with ignite's view of it
        )  # fmt: skip
        assert torch.distributed.get_backend() == "gloo"
        assert isinstance(wf.trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert wf.evaluator.network is wf.trainer.network.module  # validation bypasses DDP collectives


def test_evaluate_config_has_every_infer_property(toy_root, tmp_path):
    wf = _check(str(EVALUATE), "infer", bundle_root=str(BUNDLE), dataset_dir=str(toy_root), output_dir=str(tmp_path))
    assert len(wf.dataset) == len(load_sicapv2(toy_root, "Test", "Test"))


def test_inference_config_has_every_infer_property(toy_root, tmp_path):
    wf = _check(
        str(INFERENCE), "infer", bundle_root=str(BUNDLE), dataset_dir=str(toy_root / "images"), output_dir=str(tmp_path)
    )
    assert len(wf.dataset) == len(os.listdir(toy_root / "images"))


# --------------------------------------------------------------------------------------- real bundle commands


@pytest.fixture(scope="module")
def trained(toy_root, tmp_path_factory):
    """Train 2 iterations with lambda 0.5 on real + synthetic tiles, then restart for a second epoch."""
    work = tmp_path_factory.mktemp("carcinonet")
    synth = _write_synthetic_folder(toy_root, work / "synthetic")
    run = work / "run"
    mix = ["--lam", "0.5", "--synthetic_dir", str(synth)]
    first = _bundle(_train_args(toy_root, run, *mix), cwd=work)
    first_model = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    second = _bundle(_train_args(toy_root, run, *mix, "--max_epochs", "2"), cwd=work)
    return {"work": work, "run": run, "logs": (first, second), "first_model": first_model}


def test_train_mixes_real_and_synthetic_losses_by_lambda(trained):
    rows = [tuple(map(float, m.groups()[4:])) for m in STATS_LINE.finditer(trained["logs"][0])]
    assert len(rows) == 2  # epoch_length 2
    for loss, real, synth in rows:
        assert np.isfinite(synth) and loss == pytest.approx(0.5 * real + 0.5 * synth, abs=2e-4)
    assert (trained["run"] / "checkpoints" / "checkpoint_iteration=2.pt").is_file()
    assert "val_miou" in trained["logs"][0]  # validated after the epoch


def test_train_resumes_from_the_newest_checkpoint(trained):
    second = trained["logs"][1]
    assert re.search(r"resumed from \S+checkpoint_iteration=2\.pt at iteration 2", second)
    iters = [(int(m.group(1)), int(m.group(3))) for m in STATS_LINE.finditer(second)]
    assert iters == [(2, 1), (2, 2)]  # only epoch 2 ran
    assert (trained["run"] / "checkpoints" / "checkpoint_iteration=4.pt").is_file()
    final = _load_model(trained["run"] / "models" / "model.pt").state_dict()
    changed = [k for k, v in trained["first_model"].items() if v.is_floating_point() and not torch.equal(v, final[k])]
    assert changed  # two more optimiser steps moved the weights


def test_evaluate_writes_the_models_pixel_scores(trained, toy_root):
    out = trained["work"] / "eval"
    args = _common(EVALUATE, toy_root, out, trained["run"] / "models")
    log = _bundle([*args, "--groups", "$monai_disc.metrics.LAPC_GROUPS"], cwd=trained["work"])
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["classes"] == list(LABEL_NAMES) and scores["groups"] == [list(g) for g in LAPC_GROUPS]
    assert '"miou"' in log and json.dumps(scores["grading"]["confusion_matrix"][0]) in log  # printed too

    # the same model, run here, gives the same confusion matrix (up to float noise between processes)
    net = _load_model(trained["run"] / "models" / "model.pt")
    load = labelled_tile_transforms("sicapv2")
    items = [load(d) for d in labelled_tiles(toy_root, "sicapv2", "Test", "Test")]
    with torch.no_grad():
        preds = torch.cat([net(torch.stack([d["image"] for d in items[i : i + 16]])) for i in range(0, len(items), 16)])
    ref = pixel_confusion_matrix(preds, torch.stack([d["label"] for d in items]), 4)
    cm = torch.tensor(scores["grading"]["confusion_matrix"])
    assert int(cm.sum()) == len(items) * TOY_PX * TOY_PX
    assert torch.equal(cm.sum(dim=1), ref.sum(dim=1))  # true pixels per class: exact
    assert int((cm - ref).abs().sum()) <= 0.002 * len(items) * TOY_PX * TOY_PX
    grouped = torch.tensor(scores["grouped"]["confusion_matrix"])
    assert torch.equal(grouped, group_confusion_matrix(cm, LAPC_GROUPS))
    assert scores["mean_iou"] == pytest.approx(scores["grading"]["miou"])  # the key metric, not overwritten
    for key in ("precision", "recall", "iou", "pixel_accuracy", "positive_precision"):
        assert key in scores["grading"]

    grid = np.asarray(Image.open(out / "overlays.png"))
    rows_height = 14 + 8 * TOY_PX + 9 * 2  # title line and 8 rows of tile | truth | prediction
    assert grid.shape[1:] == (3 * TOY_PX + 4 * 2, 3) and grid.shape[0] > rows_height
    strip = grid[rows_height:].reshape(-1, 3)  # the colour legend under the rows: every label's colour
    assert all((strip == np.asarray(c, np.uint8)).all(axis=1).any() for c in LABEL_COLORS.values())


def test_inference_writes_label_maps_and_skips_finished_tiles(trained, toy_root):
    tiles, out = trained["work"] / "tiles", trained["work"] / "pred"
    tiles.mkdir()
    names = sorted(os.listdir(toy_root / "images"))[:3]
    for name in names:
        (tiles / name).write_bytes((toy_root / "images" / name).read_bytes())
    # an earlier, killed run with the same weights and tiles: its settings record, and one tile it finished
    from monai_disc.engines.bundle import bundle_settings

    bundle_settings(out, {"dataset_dir": str(tiles)}, {"model": trained["run"] / "models" / "model.pt"})
    done = out / "labels" / f"{Path(names[0]).stem}.png"
    done.parent.mkdir(parents=True)
    Image.fromarray(np.full((TOY_PX, TOY_PX), 2, dtype=np.uint8)).save(done)
    _bundle(_common(INFERENCE, tiles, out, trained["run"] / "models"), cwd=trained["work"])
    assert sorted(os.listdir(out / "labels")) == sorted(f"{Path(n).stem}.png" for n in names)
    assert np.all(np.asarray(Image.open(done)) == 2)  # skipped, not redone
    assert sorted(os.listdir(out / "overlays")) == sorted(f"{Path(n).stem}.png" for n in names[1:])

    net = _load_model(trained["run"] / "models" / "model.pt")
    load = tile_transforms(mask_key=None)
    for name in names[1:]:
        written = np.asarray(Image.open(out / "labels" / f"{Path(name).stem}.png"))
        assert written.dtype == np.uint8 and written.shape == (TOY_PX, TOY_PX) and written.max() <= 3
        with torch.no_grad():
            ref = net(load({"image": str(tiles / name)})["image"][None])[0].argmax(0).numpy()
        assert (written == ref).mean() >= 0.99
        overlay = np.asarray(Image.open(out / "overlays" / f"{Path(name).stem}.png"))
        assert overlay.shape == (TOY_PX, TOY_PX, 3)


def test_multi_gpu_training_runs_ddp_on_two_cpu_processes_with_gloo(toy_root, tmp_path):
    run = tmp_path / "ddp"
    args = _train_args(toy_root, run)
    args[args.index("--config_file") + 1] = f"['{TRAIN}','{MULTI}']"  # merged, multi_gpu_train.yaml last
    log = _bundle(
        ["--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", *args],
        cwd=tmp_path,
        module=("-m", "torch.distributed.run"),
    )
    assert len(STATS_LINE.findall(log)) == 2  # rank 0 alone logs its 2 iterations
    assert "val_miou" in log
    _load_model(run / "models" / "model.pt")  # rank 0 saved the unwrapped network (no "module." prefix)
    assert (run / "checkpoints" / "checkpoint_iteration=2.pt").is_file()
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").iterdir()}
    assert len(writers) == 1  # TensorBoard event files from one process only
