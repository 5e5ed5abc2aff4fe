"""The four bundles under MONAI's own bundle tools and under a runner that runs no handlers (MONAI Label).

- `python -m monai.bundle verify_net_in_out` and `ckpt_export` behave as docs/bundles.md's table says: both pass
  for carcinonet and transmil (and the TorchScript file is right at every input size), both fail for the two
  LDM bundles (their READMEs say why).
- Parsing an inference config gives the trained secondary networks (autoencoders, the feature extractor) with
  no handler run: their weights equal the files in models/.
- MONAI Label 0.8.5's own `BundleInferTask` (its pre-transforms, inferer, Compose post-transforms, network
  loading; no handlers) gives what `python -m monai.bundle run` writes for the same input and seed.
- A CarcinoNet training set in MONAI Label's layout (labels 0..3) smaller than the batch size trains.
- Metadata the zoo's CI can satisfy; LICENSE, data licence and README sections in the zoo's order.

The subprocesses (8 tool calls, 3 bundle runs) start together in one module fixture.
"""

from __future__ import annotations

import csv
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import (
    BUNDLE_NAMES,
    BUNDLES,
    README_SECTIONS,
    bundle_run,
    bundle_tool,
    readme_sections,
    zoo_metadata_problems,
)
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from monai_disc.data.sicapv2 import load_sicapv2
from monai_disc.inferers import DEFAULT_GENERATOR, GENERATORS
from monai_disc.networks import carcinonet_toy, transmil_toy, vq_f4_toy
from monai_disc.visualize import to_uint8

TOY_PX = 64
LDM_STEPS, LDM_SEED = "3", "5"
DEFAULT_WEIGHTS = Path(GENERATORS[DEFAULT_GENERATOR].weights).name  # what bundle gleason_ldm loads by default
PASSING, FAILING = ("carcinonet", "transmil"), ("gleason_ldm", "gleason_ldm_disc")


def _meta(bundle: str) -> dict:
    return json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _tool_args(bundle: str, tool: str, out: Path) -> list[str]:
    common = ["network_def", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml"]
    if tool == "verify_net_in_out":
        return [*common, "--device", "cpu"]
    return [*common, "--filepath", str(out / f"{bundle}.ts"), "--ckpt_file", "models/model.pt"]


def _write_inputs(toy_root: Path, work: Path) -> dict[str, Path]:
    """Two toy tiles, two masks (labels 0..3, PNG), three feature bags of 1, 37 and 200 instances."""
    tiles, masks, bags = work / "tiles", work / "masks", work / "bags"
    for folder in (tiles, masks, bags):
        folder.mkdir()
    for item in load_sicapv2(toy_root, "Test", "Test")[:2]:
        Image.open(item["image"]).convert("RGB").save(tiles / f"{Path(item['image']).stem}.png")
    for i, (a, b) in enumerate([(0, 3), (1, 2)]):
        m = np.full((TOY_PX, TOY_PX), a, np.uint8)
        m[:, TOY_PX // 2 :] = b
        Image.fromarray(m).save(masks / f"mask{i}.png")
    g = torch.Generator().manual_seed(0)
    for n in (1, 37, 200):
        torch.save({"features": torch.randn(n, 256, generator=g).half()}, bags / f"slide_{n:03d}.pt")
    return {"tiles": tiles, "masks": masks, "bags": bags}


@pytest.fixture(scope="module")
def runs(toy_root, tmp_path_factory):
    """Every tool on every bundle, and the three inference runs, side by side."""
    work = tmp_path_factory.mktemp("zoo")
    inputs = _write_inputs(toy_root, work)
    jobs = {}
    with ThreadPoolExecutor(4) as pool:
        for bundle in BUNDLE_NAMES:
            for tool in ("verify_net_in_out", "ckpt_export"):
                jobs[bundle, tool] = pool.submit(bundle_tool, bundle, tool, *_tool_args(bundle, tool, work))
        out = {name: work / f"out_{name}" for name in ("carcinonet", "gleason_ldm", "transmil")}
        runs = {
            "carcinonet": pool.submit(
                bundle_run, "carcinonet", ["inference.yaml"], "--dataset_dir", str(inputs["tiles"]),
                "--output_dir", str(out["carcinonet"]), "--num_workers", "0",
            ),
            "gleason_ldm": pool.submit(
                bundle_run, "gleason_ldm", ["inference.yaml"], "--dataset_dir", str(inputs["masks"]),
                "--output_dir", str(out["gleason_ldm"]), "--num_inference_steps", LDM_STEPS, "--seed", LDM_SEED,
            ),
            "transmil": pool.submit(
                bundle_run, "transmil", ["inference.yaml"], "--dataset_dir", str(inputs["bags"]),
                "--output_dir", str(out["transmil"]),
            ),
        }  # fmt: skip
        results = {key: job.result() for key, job in jobs.items()}
        logs = {key: job.result() for key, job in runs.items()}
    return {"work": work, "inputs": inputs, "tools": results, "out": out, "logs": logs}


# ------------------------------------------------------------------------------------------- MONAI's tools


@pytest.mark.parametrize("bundle", PASSING)
def test_verify_net_in_out_passes(runs, bundle):
    proc = runs["tools"][bundle, "verify_net_in_out"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize("bundle", FAILING)
def test_verify_net_in_out_cannot_apply_to_the_ldm_bundles(runs, bundle):
    # the bundle's input `image` is an integer mask and the network a denoiser of (z_t, t, mask tokens): the tool's
    # random float image in, one tensor out, does not describe it (the README says so)
    proc = runs["tools"][bundle, "verify_net_in_out"]
    assert proc.returncode != 0
    assert "Long" in proc.stderr  # it cannot even draw a random integer mask


def test_ckpt_export_scripts_carcinonet_right_at_any_tile_size(runs):
    proc = runs["tools"]["carcinonet", "ckpt_export"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(runs["work"] / "carcinonet.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == _meta("carcinonet")["version"]
    net = carcinonet_toy()
    net.load_state_dict(_state(BUNDLES / "carcinonet" / "models" / "model.pt"))
    net.eval()
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 3, 64, 64), (2, 3, 70, 45)):
        x = torch.rand(*shape, generator=g) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-4)


def test_ckpt_export_scripts_transmil_right_for_every_bag_size(runs):
    proc = runs["tools"]["transmil", "ckpt_export"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripted = torch.jit.load(str(runs["work"] / "transmil.ts"))
    net = transmil_toy(256)
    net.load_state_dict(_state(BUNDLES / "transmil" / "models" / "model.pt"))
    net.eval()
    g = torch.Generator().manual_seed(1)
    for n in (1, 37, 200):  # a trace at one bag size is wrong at 37 and crashes at 200; the script is not
        x = torch.randn(1, n, 256, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bundle", FAILING)
def test_ckpt_export_fails_inside_monais_diffusion_unet(runs, bundle):
    proc = runs["tools"][bundle, "ckpt_export"]
    assert proc.returncode != 0 and not (runs["work"] / f"{bundle}.ts").exists()
    assert "diffusion_model_unet.py" in proc.stderr  # MONAI's DiffusionModelUNet does not script


# --------------------------------------------------------------------------- weights without any handler


def _parse(bundle: str, key: str):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    parser["device"] = "$torch.device('cpu')"
    return parser.get_parsed_content(key)


@pytest.mark.parametrize("bundle", FAILING)
def test_autoencoder_of_the_inference_config_is_the_trained_one(bundle):
    autoencoder = _parse(bundle, "autoencoder")
    stored = _state(BUNDLES / bundle / "models" / "autoencoder.pt")
    loaded = autoencoder.state_dict()
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[k], stored[k]) for k in stored)
    fresh = vq_f4_toy().state_dict()  # the control: an unloaded autoencoder differs
    assert any(not torch.equal(fresh[k], stored[k]) for k in stored if stored[k].is_floating_point())


def test_gleason_ldm_disc_stands_alone_with_cotrain_as_its_model():
    models = BUNDLES / "gleason_ldm_disc" / "models"
    assert (models / "model.pt").read_bytes() == (models / "model_cotrain.pt").read_bytes()
    assert (models / "autoencoder.pt").read_bytes() == (
        BUNDLES / "gleason_ldm" / "models" / "autoencoder.pt"
    ).read_bytes()
    assert _parse("gleason_ldm_disc", "ckpt_path") == str(models / "model.pt")
    assert _parse("gleason_ldm_disc", "autoencoder_path") == str(models / "autoencoder.pt")


def test_feature_extractor_of_the_transmil_inference_config_is_the_trained_one():
    extractor = _parse("transmil", "extractor_net")
    stored = _state(BUNDLES / "transmil" / "models" / "extractor.pt")
    loaded = {k.split(".", 1)[1]: v for k, v in extractor.state_dict().items() if k.startswith("backbone.")}
    matched = [k for k in loaded if k in stored]
    assert len(matched) == len(loaded) > 50  # every encoder tensor comes from the file
    assert all(torch.equal(loaded[k], stored[k]) for k in matched)


# --------------------------------------------------------------------- MONAI Label's runner vs bundle run


def _monailabel_infer(bundle: str, data: dict, model_filename: str = "model.pt") -> dict:
    """What MONAI Label's BundleInferTask does with one request: the bundle's pre-transforms on `image`, its
    inferer over the network it loads itself from models/<model_filename> (its options list every models/*.pt,
    model.pt first), its Compose post-transforms; no handler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(BUNDLES / bundle), conf={}, add_post_restore=False, post_filter=None)
    assert task.is_valid() and task.key_image == "image"
    task.bundle_config["device"] = "$torch.device('cpu')"
    data = {**data, "device": "cpu", "model_filename": model_filename}  # the server merges its config into requests
    data = task.run_pre_transforms(data, task.pre_transforms(data))
    data = task.run_inferer(data, device="cpu")
    return task.run_post_transforms(data, task.post_transforms(data))


def test_monailabel_runner_labels_tiles_as_bundle_run(runs):
    for tile in sorted(runs["inputs"]["tiles"].iterdir()):
        result = _monailabel_infer("carcinonet", {"image": str(tile)})
        labels = np.asarray(result["pred"]).reshape(TOY_PX, TOY_PX)
        written = np.asarray(Image.open(runs["out"]["carcinonet"] / "labels" / tile.name))
        assert written.shape == labels.shape and written.max() <= 3
        assert (written == labels).mean() >= 0.999


def test_monailabel_runner_draws_the_tiles_bundle_run_draws(runs):
    settings = {"num_inference_steps": int(LDM_STEPS), "guidance_scale": 1.0, "seed": int(LDM_SEED)}
    tiles = []
    for mask in sorted(runs["inputs"]["masks"].iterdir()):
        # the bundle draws with the default generator's weights; a MONAI Label user picks that file among the
        # model_filename options (the stock runner would take model.pt, SD's)
        result = _monailabel_infer("gleason_ldm", {"image": str(mask), **settings}, DEFAULT_WEIGHTS)
        tile = to_uint8(result["pred"]).astype(int)
        written = np.asarray(Image.open(runs["out"]["gleason_ldm"] / f"{mask.stem}_tile.png")).astype(int)
        assert np.abs(tile - written).max() <= 1  # the same noise (seed from the file name), up to a rounding
        tiles.append(tile)
    assert np.abs(tiles[0] - tiles[1]).mean() > 5  # two masks, two different tiles: the comparison has teeth


def test_monailabel_runner_grades_bags_as_bundle_run(runs):
    with (runs["out"]["transmil"] / "predictions.csv").open() as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["slide_001", "slide_037", "slide_200"]
    for sid, row in rows.items():
        result = _monailabel_infer("transmil", {"image": str(runs["inputs"]["bags"] / f"{sid}.pt")})
        probs = torch.as_tensor(result["pred"]).flatten().tolist()
        assert [float(row[f"prob_{n}"]) for n in ("NC", "GG3", "GG4", "GG5")] == pytest.approx(probs, abs=2e-6)
        present = [n for n, p in zip(("NC", "GG3", "GG4", "GG5"), probs) if p >= 0.5]
        assert row["labels"] == "+".join(present or [("NC", "GG3", "GG4", "GG5")[int(np.argmax(probs))]])


# ------------------------------------------------------------------------------------- training, metadata


def test_carcinonet_trains_on_monailabel_labels_smaller_than_a_batch(toy_root, tmp_path):
    folder = tmp_path / "datastore"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, item in enumerate(load_sicapv2(toy_root, "Test", "Train")[:3]):
        Image.open(item["image"]).convert("RGB").save(folder / "images" / f"t{i}.png")
        labels = np.zeros((TOY_PX, TOY_PX), np.uint8)
        labels[: TOY_PX // 2] = i + 1  # labels 1..3 as MONAI Label stores them
        Image.fromarray(labels).save(folder / "masks" / f"t{i}.png")
    configs = BUNDLES / "carcinonet" / "configs"
    wf = ConfigWorkflow(
        config_file=str(configs / "train.yaml"), meta_file=str(configs / "metadata.json"), logging_file=False,
        workflow_type="train", bundle_root=str(BUNDLES / "carcinonet"), dataset_dir=str(folder),
        output_dir=str(tmp_path / "run"), model_dir=str(tmp_path / "models"), data_format="folder",
        patch_size=TOY_PX, num_workers=0, max_epochs=1, val_interval=10,
    )  # fmt: skip
    wf.initialize()
    try:
        assert set(wf.parser.get_parsed_content("displayable_configs")) == {
            "max_epochs",
            "batch_size",
            "lr",
            "data_format",
        }
        labels = wf.train_dataset[2]["label"]
        assert sorted(torch.unique(labels).tolist()) == [0, 3]  # label 3 stays GG5 (sicapv2 snapping would not)
        with pytest.warns(UserWarning, match="has 3 items, fewer than batch_size 16"):
            wf.run()
    finally:
        wf.finalize()
    assert wf.trainer.state.iteration == 1  # one batch of 3, not "dataloader is empty"
    carcinonet_toy().load_state_dict(_state(tmp_path / "models" / "model.pt"))


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_bundle_has_zoo_metadata_licences_and_readme_sections(bundle):
    root = BUNDLES / bundle
    assert zoo_metadata_problems(_meta(bundle)) == []
    assert "Apache License" in (root / "LICENSE").read_text() and "Version 2.0" in (root / "LICENSE").read_text()
    data_licence = (root / "docs" / "data_license.txt").read_text()
    assert "CC BY 4.0" in data_licence and "procedural" in data_licence
    sections = [s for s in readme_sections(root / "docs" / "README.md") if s in README_SECTIONS]
    assert sections == list(README_SECTIONS)
    readme = (root / "docs" / "README.md").read_text()
    assert "pip install ." in readme and "verify_net_in_out" in readme and "ckpt_export" in readme
