"""Bundle gleason_ldm through `python -m monai.bundle run`: autoencoder, LDM, resume after a kill, DDP, inference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, bundle_run, check_workflow, missing_metadata, single_rank_world
from PIL import Image

from monai_disc.engines import latest_checkpoint
from monai_disc.inferers import DEFAULT_NUM_INFERENCE_STEPS, PLMSScheduler, SpacedDDIMScheduler

ROOT = BUNDLES / "gleason_ldm"
CONFIGS = ROOT / "configs"
TINY = ["--batch_size", "2", "--num_workers", "0", "--max_epochs", "1", "--epoch_length", "2"]


def test_metadata_has_every_mandatory_field():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert missing_metadata(meta) == []


@pytest.mark.parametrize(
    "configs, workflow_type",
    [
        (["train_autoencoder.yaml"], "train"),
        (["train.yaml"], "train"),
        (["train.yaml", "multi_gpu_train.yaml"], "train"),
        (["train.yaml", "train_gd.yaml"], "train"),
        (["train.yaml", "train_gd2.yaml"], "train"),
        (["inference.yaml"], "infer"),
    ],
)
def test_config_workflows_have_required_properties(configs, workflow_type, toy_root, tmp_path, monkeypatch):
    dataset_dir = toy_root
    if workflow_type == "infer":  # a folder of masks
        dataset_dir = tmp_path
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "mask.png")
    files = [str(CONFIGS / c) for c in configs]
    override = {"dataset_dir": str(dataset_dir), "output_dir": str(tmp_path / "out"), "bundle_root": str(ROOT)}
    if "multi_gpu_train.yaml" in configs:
        with single_rank_world(monkeypatch):
            check_workflow(files, workflow_type, CONFIGS / "metadata.json", **override)
    else:
        check_workflow(files, workflow_type, CONFIGS / "metadata.json", **override)


@pytest.fixture(scope="module")
def trained(toy_root, tmp_path_factory):
    """Autoencoder then LDM, each for two iterations, from the bundle's own configs."""
    out = tmp_path_factory.mktemp("gleason_ldm")
    models = out / "models"
    common = ["--dataset_dir", str(toy_root), "--model_dir", str(models), *TINY]
    log = bundle_run(
        "gleason_ldm", ["train_autoencoder.yaml"], *common, "--output_dir", str(out / "ae"), "--adv_start", "1"
    )
    assert "scale_factor set to" in log
    bundle_run("gleason_ldm", ["train.yaml"], *common, "--output_dir", str(out / "ldm"), "--sample_interval", "1")
    return out


def test_training_writes_weights_that_load_with_weights_only(trained):
    autoencoder = torch.load(trained / "models" / "autoencoder.pt", weights_only=True)
    denoiser = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert float(autoencoder["scale_factor"]) > 0 and float(autoencoder["scale_factor"]) != 1.0
    assert any(k.startswith("mask_encoder.") for k in denoiser)
    # the sample grid reached TensorBoard
    assert list((trained / "ldm" / "tensorboard").glob("events.out.tfevents.*"))


def test_guidance_distillation_starts_from_the_teacher_and_writes_model_gd(trained, toy_root, tmp_path):
    models = trained / "models"
    teacher = torch.load(models / "model.pt", weights_only=True)
    args = ["--dataset_dir", str(toy_root), "--model_dir", str(tmp_path), "--output_dir", str(tmp_path / "gd")]
    args += ["--autoencoder_path", str(models / "autoencoder.pt"), "--teacher_path", str(models / "model.pt")]
    log = bundle_run("gleason_ldm", ["train.yaml", "train_gd.yaml"], *args, *TINY, "--sample_interval", "100000")
    assert "val_mse" in log  # the distance to the guided teacher, on the Test tiles
    student = torch.load(tmp_path / "model_gd.pt", weights_only=True)
    assert student.keys() == teacher.keys()
    moved = [k for k in teacher if teacher[k].is_floating_point() and not torch.equal(teacher[k], student[k])]
    # two steps at lr 1e-4 from the teacher's weights: every trained tensor moved, and only a little
    assert moved and all((student[k] - teacher[k]).abs().max() < 1e-2 for k in moved)


def test_step_distillation_trains_through_the_students_grid_and_writes_model_gd2(trained, toy_root, tmp_path):
    models = trained / "models"
    teacher = torch.load(models / "model.pt", weights_only=True)
    args = ["--dataset_dir", str(toy_root), "--model_dir", str(tmp_path), "--output_dir", str(tmp_path / "gd2")]
    args += ["--autoencoder_path", str(models / "autoencoder.pt"), "--teacher_path", str(models / "model.pt")]
    log = bundle_run("gleason_ldm", ["train.yaml", "train_gd2.yaml"], *args, *TINY, "--sample_interval", "100000")
    assert "val_mse" in log  # the distance to the teacher sampler's latents, on the Test masks
    student = torch.load(tmp_path / "model_gd2.pt", weights_only=True)
    moved = [k for k in teacher if teacher[k].is_floating_point() and not torch.equal(teacher[k], student[k])]
    assert student.keys() == teacher.keys() and moved


@pytest.mark.parametrize(
    "generator, solver, steps, weights",
    [
        (None, PLMSScheduler, DEFAULT_NUM_INFERENCE_STEPS, "model_gd.pt"),
        ("gd2", SpacedDDIMScheduler, 2, "model_gd2.pt"),
    ],
)
def test_inference_samples_with_the_registry_entrys_solver(generator, solver, steps, weights, tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "mask.png")
    override = {"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "bundle_root": str(ROOT)}
    if generator:
        override["generator"] = generator
    wf = check_workflow(str(CONFIGS / "inference.yaml"), "infer", CONFIGS / "metadata.json", **override)
    sampler = wf.parser.get_parsed_content("sampler")
    assert type(sampler.scheduler) is solver and sampler.num_inference_steps == steps
    assert wf.parser.get_parsed_content("ckpt_path").endswith(f"/models/{weights}")


def test_inference_draws_one_tile_per_mask_and_skips_finished_ones(trained, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, labels in enumerate([(0, 1), (2,), (0, 3)]):
        m = np.zeros((64, 64), np.uint8)
        m[:, 32:] = labels[-1]
        m[:32, :32] = labels[0]
        Image.fromarray(m).save(masks / f"mask{i}.png")
    out = tmp_path / "tiles"
    args = ["--dataset_dir", str(masks), "--output_dir", str(out), "--model_dir", str(trained / "models")]
    args += ["--generator", "sd"]  # the weights the fixture trained (models/model.pt); the default is SD-GD's
    bundle_run("gleason_ldm", ["inference.yaml"], *args, "--num_inference_steps", "3")
    tiles = sorted(p.name for p in out.glob("*_tile.png"))
    assert tiles == ["mask0_tile.png", "mask1_tile.png", "mask2_tile.png"]
    assert len(list(out.glob("*_overlay.png"))) == 3
    assert np.asarray(Image.open(out / "mask0_tile.png")).shape == (64, 64, 3)

    # a resumed run redraws nothing that exists, and draws a removed tile again identically (name-derived seed)
    before = np.asarray(Image.open(out / "mask1_tile.png"))
    stamp = (out / "mask0_tile.png").stat().st_mtime_ns
    (out / "mask1_tile.png").unlink()
    bundle_run("gleason_ldm", ["inference.yaml"], *args, "--num_inference_steps", "3")
    assert (out / "mask0_tile.png").stat().st_mtime_ns == stamp
    again = np.asarray(Image.open(out / "mask1_tile.png")).astype(int)
    assert np.abs(again - before).max() <= 1  # same noise; batch size may move a rounding by one level

    # other denoiser weights (--ckpt_path, e.g. models/model_gd.pt) never reuse these tiles
    other = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in torch.load(trained / "models" / "model.pt").items()
    }
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(AssertionError, match=r"holds outputs made with other settings \(model: "):
        bundle_run("gleason_ldm", ["inference.yaml"], *args, "--ckpt_path", str(tmp_path / "other.pt"))


def test_killed_training_resumes_from_its_last_checkpoint(trained, toy_root, tmp_path):
    ckpts = tmp_path / "ldm" / "checkpoints"
    args = [
        "--dataset_dir", str(toy_root), "--model_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "ldm"),
        "--autoencoder_path", str(trained / "models" / "autoencoder.pt"), "--batch_size", "2", "--num_workers", "0",
        "--save_interval", "2", "--sample_interval", "100000", "--val_interval", "100",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.yaml"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(ROOT), *args, "--max_epochs", "1000"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.time() + 240
        while latest_checkpoint(ckpts) is None or "iteration=4" not in latest_checkpoint(ckpts).name:
            assert proc.poll() is None and time.time() < deadline, "training never reached iteration 4"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = int(latest_checkpoint(ckpts).stem.split("=")[1])
    assert killed_at >= 4

    log = bundle_run("gleason_ldm", ["train.yaml"], *args, "--max_epochs", "1000", "--epoch_length", "1",
                     "--time_limit_s", "1")  # fmt: skip
    assert f"checkpoint_iteration={killed_at}.pt" in log  # resumed from the newest save, not from scratch
    assert "Engine run resuming from iteration" in log


def test_multi_gpu_config_trains_with_two_processes_on_gloo(trained, toy_root, tmp_path):
    log = bundle_run(
        "gleason_ldm",
        ["train.yaml", "multi_gpu_train.yaml"],
        "--dataset_dir", str(toy_root), "--model_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "ddp"),
        "--autoencoder_path", str(trained / "models" / "autoencoder.pt"), *TINY, "--sample_interval", "100000",
        torchrun=2,
    )  # fmt: skip
    assert (tmp_path / "models" / "model.pt").is_file()  # rank 0 saved the final weights
    assert log.count("Epoch: 1/1, Iter: 2/2") >= 1
