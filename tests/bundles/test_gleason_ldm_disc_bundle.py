"""Bundle gleason_ldm_disc through `python -m monai.bundle run`: distillation set, SD-DISC, CoTrain, inference."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, bundle_run, missing_metadata
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from monai_disc.engines import distill_seed, mask_seed
from monai_disc.inferers import MaskLDMSampler, SeparatedConditionInferer
from monai_disc.masks import ShapeBank
from monai_disc.networks import mask_ldm_toy, vq_f4_toy
from monai_disc.visualize import to_uint8

BUNDLE = "gleason_ldm_disc"
ROOT = BUNDLES / BUNDLE
CONFIGS = ROOT / "configs"
TINY = ["--batch_size", "2", "--num_workers", "0", "--max_epochs", "1", "--epoch_length", "2"]


def _sd_networks(folder):
    """The SD model of the bundle gleason_ldm, untrained: autoencoder.pt and model.pt state dicts.

    MONAI zero-initialises the UNet's output and residual branches, which would make the noise prediction 0 for any
    mask; small random values there make the untrained denoiser depend on its mask, as a trained one does.
    """
    torch.manual_seed(123)
    autoencoder, denoiser = vq_f4_toy().eval(), mask_ldm_toy().eval()
    with torch.no_grad():
        for p in denoiser.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(autoencoder.state_dict(), folder / "autoencoder.pt")
    torch.save(denoiser.state_dict(), folder / "model.pt")
    return autoencoder, denoiser


@pytest.fixture(scope="module")
def distilled(toy_root, tmp_path_factory):
    """A random-init SD model and its distillation set (4 sets, 2 DDIM steps, 2 shards) plus the shape bank."""
    out = tmp_path_factory.mktemp("gleason_ldm_disc")
    autoencoder, denoiser = _sd_networks(out / "sd")
    args = ["--dataset_dir", str(toy_root), "--output_dir", str(out / "runs"), "--sd_model_dir", str(out / "sd"),
            "--n_sets", "4", "--num_inference_steps", "2", "--shard_size", "2", "--batch_size", "2"]  # fmt: skip
    log = bundle_run(BUNDLE, ["distill_set.yaml"], *args)
    return {"out": out, "args": args, "log": log, "autoencoder": autoencoder, "denoiser": denoiser}


def test_metadata_has_every_mandatory_field():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert missing_metadata(meta) == []


def test_distill_set_config_initialises_with_metadata_properties(tmp_path):
    # neither a train nor an infer workflow: check the metadata properties and the wiring of the sampler
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "distill_set.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        output_dir=str(tmp_path),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.parser.get_parsed_content("sampler").num_inference_steps == 50
    assert workflow.parser.get_parsed_content("distill_dir") == f"{tmp_path}/distill"
    assert not (tmp_path / "shape_bank.npz").exists()  # nothing is built before run


@pytest.mark.parametrize(
    "config, workflow_type",
    [("train_disc.yaml", "train"), ("train_cotrain.yaml", "train"), ("inference.yaml", "infer")],
)
def test_config_workflows_have_required_properties(config, workflow_type, distilled, toy_root, tmp_path):
    runs = distilled["out"] / "runs"
    paths = {"distill_dir": str(runs / "distill"), "shape_bank_path": str(runs / "shape_bank.npz")}
    dataset_dir = toy_root
    if workflow_type == "infer":  # a folder of masks
        dataset_dir = tmp_path
        paths = {}
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "mask.png")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        dataset_dir=str(dataset_dir),
        output_dir=str(tmp_path / "out"),
        bundle_root=str(ROOT),
        sd_model_dir=str(distilled["out"] / "sd"),
        **paths,
    )
    workflow.initialize()
    try:
        assert workflow.check_properties() in (None, [])
    finally:
        workflow.finalize()


@pytest.mark.parametrize(
    "generator, weights, separated",
    [("sd", "sd/model.pt", False), ("sc", "sd/model.pt", True), ("disc", "models/model_disc.pt", False),
     ("cotrain", "models/model.pt", False), ("gd", "sd/model_gd.pt", False)],
)  # fmt: skip
def test_inference_generator_switch_picks_weights_and_sampler(generator, weights, separated, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser.update({"generator": generator, "sd_model_dir": str(tmp_path / "sd"), "model_dir": str(tmp_path / "models")})
    parser["autoencoder_path"] = str(ROOT / "models" / "autoencoder.pt")  # loaded when the inferer is parsed
    assert parser.get_parsed_content("ckpt_path") == str(tmp_path / weights)
    sampler = parser.get_parsed_content("inferer").sampler
    assert isinstance(sampler, SeparatedConditionInferer) is separated
    assert parser.get_parsed_content("output_dir").endswith(f"/eval/{generator}")
    # an explicit `--separated false` arrives as a string and must not switch SC on
    parser.update({"separated": "false"})
    assert isinstance(parser.get_parsed_content("inferer", lazy=False).sampler, MaskLDMSampler)


def test_distill_set_writes_the_sd_models_separated_latents_and_the_shape_bank(distilled, toy_root):
    runs = distilled["out"] / "runs"
    manifest = json.loads((runs / "distill" / "manifest.json").read_text())
    assert (manifest["n_sets"], manifest["num_inference_steps"], manifest["image_size"]) == (4, 2, [64, 64])
    assert [s["file"] for s in manifest["shards"]] == ["shard_00000.pt", "shard_00001.pt"]
    shard = torch.load(runs / "distill" / "shard_00001.pt", weights_only=True)
    assert shard["latents"].shape == (2, 4, 3, 16, 16) and shard["latents"].dtype == torch.float16
    assert shard["indices"].tolist() == [2, 3]
    assert "wrote 4 sets in 2 shards" in distilled["log"]

    # set 2 is the SD model's SC branches from the noise of distill_seed(0, 2), under each uniform mask
    # the distillation set's solver is pinned to DDIM (the published recipe), not the registry's default
    inferer = SeparatedConditionInferer(MaskLDMSampler("ddim", num_inference_steps=2, progress=False))
    noise = MaskLDMSampler.make_noise([distill_seed(0, 2)], (3, 16, 16))
    expected = inferer.separated_latents(noise, distilled["denoiser"], (64, 64))[0]
    torch.testing.assert_close(shard["latents"][0].float(), expected, atol=2e-3, rtol=2e-3)
    assert (expected[1:] - expected[0]).abs().amax() > 0.01  # each uniform mask gave its own latent

    bank = ShapeBank.load(runs / "shape_bank.npz")
    assert len(bank) == 150 and bank.spatial_size == (128, 128)  # the 150 Train masks of the toy partition


def test_distill_set_rerun_skips_finished_shards(distilled):
    runs = distilled["out"] / "runs"
    files = [runs / "distill" / "shard_00000.pt", runs / "distill" / "shard_00001.pt", runs / "shape_bank.npz"]
    stamps = [f.stat().st_mtime_ns for f in files]
    log = bundle_run(BUNDLE, ["distill_set.yaml"], *distilled["args"])
    assert "wrote 0 sets in 0 shards" in log and "2 shards were already done" in log
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_distill_set_under_torchrun_shards_by_rank_and_writes_the_same_sets(distilled, tmp_path):
    args = [*distilled["args"], "--output_dir", str(tmp_path), "--shard_size", "1", "--progress", "False"]
    log = bundle_run(BUNDLE, ["distill_set.yaml"], *args, torchrun=2)
    assert "rank 0/2 wrote 2 sets in 2 shards" in log and "rank 1/2 wrote 2 sets in 2 shards" in log
    single = torch.load(distilled["out"] / "runs" / "distill" / "shard_00001.pt", weights_only=True)["latents"]
    for j in (2, 3):  # sets 2 and 3, written by ranks 0 and 1, equal the single-process ones
        shard = torch.load(tmp_path / "distill" / f"shard_0000{j}.pt", weights_only=True)
        assert shard["indices"].tolist() == [j]
        torch.testing.assert_close(shard["latents"][0], single[j - 2], atol=1e-3, rtol=1e-3)
    assert ShapeBank.load(tmp_path / "shape_bank.npz").spatial_size == (128, 128)  # built once, by rank 0


@pytest.fixture(scope="module")
def fine_tuned(distilled, toy_root):
    """SD-DISC and SD-DISC-CoTrain, two iterations each, run side by side."""
    out = distilled["out"]
    common = ["--dataset_dir", str(toy_root), "--output_dir", str(out / "runs"), "--sd_model_dir", str(out / "sd"),
              "--model_dir", str(out / "models"), *TINY, "--lr", "0.001", "--ema_momentum", "0.5",
              "--save_interval", "2", "--sample_interval", "100000"]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        disc = pool.submit(bundle_run, BUNDLE, ["train_disc.yaml"], *common)
        cotrain = pool.submit(bundle_run, BUNDLE, ["train_cotrain.yaml"], *common)
        return {"disc": disc.result(), "cotrain": cotrain.result()}


@pytest.mark.parametrize("name", ["disc", "cotrain"])
def test_fine_tuning_starts_from_the_sd_weights_and_writes_ema_weights(fine_tuned, distilled, name):
    out = distilled["out"]
    sd = torch.load(out / "sd" / "model.pt", weights_only=True)
    tuned = torch.load(out / "models" / f"model_{name}.pt", weights_only=True)
    assert tuned.keys() == sd.keys()
    moved = max(float((tuned[k].float() - sd[k].float()).abs().max()) for k in sd if sd[k].is_floating_point())
    # moved by two small steps from SD (a fresh initialisation would differ by far more than 0.02)
    assert 0.0 < moved < 0.02
    assert (out / "runs" / name / "checkpoints" / "checkpoint_iteration=2.pt").is_file()
    assert list((out / "runs" / name / "tensorboard").glob("events.out.tfevents.*"))
    log = fine_tuned[name]
    assert "Epoch: 1/1, Iter: 2/2" in log and "val_mse" in log
    if name == "cotrain":  # both halves of the CoTrain loss are logged
        assert "loss_real" in log and "loss_synth" in log


def test_inference_with_separated_conditions_matches_the_library_sampler(distilled, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    labels = []
    for i, (a, b) in enumerate([(0, 1), (2, 3)]):
        m = np.full((64, 64), a, np.uint8)
        m[:, 32:] = b
        Image.fromarray(m).save(masks / f"mask{i}.png")
        labels.append(m)
    out = tmp_path / "tiles"
    bundle_run(BUNDLE, ["inference.yaml"], "--dataset_dir", str(masks), "--output_dir", str(out),
               "--sd_model_dir", str(distilled["out"] / "sd"), "--generator", "sc", "--num_inference_steps", "2",
               "--solver", "ddim",  # DDIM at 2 steps tells SC from SD apart with these barely trained weights
               "--autoencoder_path", str(distilled["out"] / "sd" / "autoencoder.pt"))  # fmt: skip
    assert sorted(p.name for p in out.glob("*_tile.png")) == ["mask0_tile.png", "mask1_tile.png"]
    tiles = np.stack([np.asarray(Image.open(out / f"mask{i}_tile.png")) for i in range(2)]).astype(int)

    seeds = [mask_seed(masks / f"mask{i}.png") for i in range(2)]
    mask_batch = torch.from_numpy(np.stack(labels)).long()
    nets = (distilled["autoencoder"], distilled["denoiser"])
    sampler = MaskLDMSampler("ddim", num_inference_steps=2, progress=False)
    sc = SeparatedConditionInferer(sampler).sample(mask_batch, *nets, seeds=seeds)
    sd = sampler.sample(mask_batch, *nets, seeds=seeds)
    expected_sc = np.stack([to_uint8(t) for t in sc]).astype(int)
    expected_sd = np.stack([to_uint8(t) for t in sd]).astype(int)
    assert np.abs(tiles - expected_sc).max() <= 1  # the SC tiles, up to a rounding level
    assert np.abs(tiles - expected_sd).max() > 1  # not plain SD sampling
