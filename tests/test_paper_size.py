"""The paper-size path on a CPU: full-size networks at 512 px, tiny work (marked ``paper_size``).

Each bundle's ``configs/sicapv2_512.yaml`` merges with its configs and instantiates the paper-size networks; a
CompVis-layout vq-f4 checkpoint (random weights, written here with the taming reference code) loads through the
``compvis_vq_f4`` key; one LDM training iteration at 512 px and batch 1 runs through the bundle's own trainer and
prepare batch; and the bundle's inference command draws one 512 px tile in 2 DDIM steps. Needs about 12 GB of
memory and a few minutes: ``pytest -m "not paper_size"`` skips it locally (``make test`` runs it).
"""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from taming.modules.diffusionmodules.model import Decoder as TamingDecoder
from taming.modules.diffusionmodules.model import Encoder as TamingEncoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

pytestmark = pytest.mark.paper_size

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
OVERLAY = "configs/sicapv2_512.yaml"

# parameters of the paper-size networks
VQ_F4 = 55_322_782
MASK_LDM_VQ_F4 = 409_680_931
CARCINONET_RESNET50 = 59_618_816
TRANSMIL_384 = 2_345_492
VIT_S16 = 21_665_664

# bundle, config merged before the overlay, {config id: parameters of what it instantiates}
CASES = [
    ("gleason_ldm", "train.yaml", {"network_def": MASK_LDM_VQ_F4, "autoencoder_def": VQ_F4}),
    ("gleason_ldm", "train_autoencoder.yaml", {"autoencoder_def": VQ_F4}),
    ("gleason_ldm", "inference.yaml", {"network_def": MASK_LDM_VQ_F4, "autoencoder_def": VQ_F4}),
    ("gleason_ldm_disc", "distill_set.yaml", {"network_def": MASK_LDM_VQ_F4, "autoencoder_def": VQ_F4}),
    ("gleason_ldm_disc", "train_disc.yaml", {"network_def": MASK_LDM_VQ_F4, "autoencoder_def": VQ_F4}),
    ("gleason_ldm_disc", "train_cotrain.yaml", {"network_def": MASK_LDM_VQ_F4, "autoencoder_def": VQ_F4}),
    ("gleason_ldm_disc", "inference.yaml", {"network_def": MASK_LDM_VQ_F4, "autoencoder_def": VQ_F4}),
    ("carcinonet", "train.yaml", {"network_def": CARCINONET_RESNET50}),
    ("carcinonet", "evaluate.yaml", {"network_def": CARCINONET_RESNET50}),
    ("carcinonet", "inference.yaml", {"network_def": CARCINONET_RESNET50}),
    ("transmil", "train.yaml", {"network_def": TRANSMIL_384}),
    ("transmil", "evaluate.yaml", {"network_def": TRANSMIL_384}),
    ("transmil", "extract_features.yaml", {"extractor_net": VIT_S16}),
]


class CompVisVQ(nn.Module):
    """The CompVis ``VQModel`` module layout of vq-f4 (``encoder``, ``decoder``, ``quantize``, 1x1 convs)."""

    def __init__(self) -> None:
        super().__init__()
        cfg = dict(
            double_z=False, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128,
            ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
        )  # fmt: skip
        self.encoder = TamingEncoder(**cfg)
        self.decoder = TamingDecoder(**cfg)
        self.quantize = VectorQuantizer2(8192, 3, beta=0.25)
        self.quant_conv = nn.Conv2d(3, 3, 1)
        self.post_quant_conv = nn.Conv2d(3, 3, 1)


def _parser(bundle: str, config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / config), str(BUNDLES / bundle / OVERLAY)])
    parser["bundle_root"] = str(BUNDLES / bundle)
    for key, value in overrides.items():
        parser[key] = value
    parser.parse()
    return parser


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


@pytest.fixture(scope="module")
def toy512(tmp_path_factory):
    from monai_disc.data.toy import make_toy_sicapv2

    return make_toy_sicapv2(
        tmp_path_factory.mktemp("toy512"), n_slides=5, tile_size=512, tiles_per_slide=(2, 2), n_wsi=0, num_workers=1
    )


@pytest.fixture(scope="module")
def compvis(tmp_path_factory):
    """A vq-f4 checkpoint in CompVis' Lightning layout (random weights) and the taming model that wrote it."""
    torch.manual_seed(0)
    ref = CompVisVQ().eval()
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_()
    path = tmp_path_factory.mktemp("vq-f4") / "model.ckpt"
    state = dict(ref.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)  # CompVis checkpoints carry their training loss
    torch.save({"state_dict": state}, path)
    return path, ref


@pytest.mark.parametrize("bundle,config,expected", CASES, ids=[f"{b}/{c}" for b, c, _ in CASES])
def test_overlay_merges_and_instantiates_paper_size_networks(bundle, config, expected, toy512, compvis, tmp_path):
    extractor = tmp_path / "dino_vit_small_patch16_ep200.torch"
    if "extractor_net" in expected:  # a ViT-S/16 state dict in the benchmark's released layout (random weights)
        import timm

        torch.save(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict(), extractor)
    parser = _parser(
        bundle, config, dataset_dir=str(toy512), output_dir=str(tmp_path / "out"), extractor_weights=str(extractor)
    )
    assert parser["patch_size" if "patch_size" in parser else "network_def"] is not None
    for key, count in expected.items():
        meta = key != "extractor_net"  # the extractor loads a real file: build it on the CPU
        with torch.device("meta") if meta else torch.device("cpu"):
            net = parser.get_parsed_content(key)
        assert sum(p.numel() for p in net.parameters()) == count, f"{bundle}/{config} {key}"
    if bundle.startswith("gleason_ldm"):
        assert parser.get_parsed_content("patch_size") == 512
        assert parser.get_parsed_content("compvis_vq_f4") is None


def test_compvis_checkpoint_loads_through_the_config_key(compvis, toy512, tmp_path):
    path, ref = compvis
    parser = _parser("gleason_ldm", "train.yaml", dataset_dir=str(toy512), compvis_vq_f4=str(path))
    autoencoder = parser.get_parsed_content("autoencoder")
    assert parser.get_parsed_content("load_autoencoder") is None  # nothing reloads over the CompVis weights
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(autoencoder.encode(x), ref.quant_conv(ref.encoder(x)), atol=1e-4, rtol=1e-4)
    # inference: the same key replaces the autoencoder file loader
    parser = _parser("gleason_ldm", "inference.yaml", dataset_dir=str(toy512), compvis_vq_f4=str(path))
    loaders = [h for h in parser.get_parsed_content("handlers", lazy=True) if type(h).__name__ == "CheckpointLoader"]
    assert [sorted(h.load_dict) for h in loaders] == [["model"]]


def test_one_training_iteration_and_a_two_step_tile_at_512_px(compvis, toy512, tmp_path, capsys):
    """The LDM trains one iteration at 512 px batch 1 (bundle trainer and prepare batch), then the bundle's
    inference command draws one 512 px tile in 2 DDIM steps with those weights (on up to 8 threads)."""
    path, _ = compvis
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, min(os.cpu_count() or 1, 8)))  # 4 TFLOP of work: use the machine
    try:
        _train_then_sample(path, toy512, tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def _train_then_sample(path: Path, toy512: Path, tmp_path: Path, capsys) -> None:
    parser = _parser(
        "gleason_ldm",
        "train.yaml",
        dataset_dir=str(toy512),
        compvis_vq_f4=str(path),
        output_dir=str(tmp_path / "runs"),
        model_dir=str(tmp_path / "models"),
        batch_size=1,
        num_workers=0,
        max_epochs=1,
        epoch_length=1,
        **{"train#trainer#train_handlers": []},
    )
    network = parser.get_parsed_content("network")
    probe = network.unet.out[2].conv.weight.detach().clone()  # zero-initialised by MONAI: moves in one step
    trainer = parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    loss = trainer.state.output[0]["loss"] if isinstance(trainer.state.output, list) else trainer.state.output["loss"]
    assert torch.isfinite(torch.as_tensor(loss))
    assert trainer.state.iteration == 1
    assert not torch.equal(network.unet.out[2].conv.weight, probe)
    with capsys.disabled():
        print(f"\n[paper_size] one LDM iteration, 512 px, batch 1: {seconds:.1f} s, peak RSS {_rss_gb():.1f} GB")

    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    torch.save(network.state_dict(), models / "model.pt")
    del trainer, network, parser, probe
    gc.collect()

    masks = tmp_path / "masks"
    masks.mkdir()
    label = np.zeros((512, 512), np.uint8)
    label[:, 256:] = 2
    label[300:, :200] = 3
    Image.fromarray(label).save(masks / "m0.png")
    out = tmp_path / "tiles"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    start = time.perf_counter()
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", "['configs/inference.yaml','configs/sicapv2_512.yaml']",
        "--meta_file", "configs/metadata.json",
        "--dataset_dir", str(masks), "--output_dir", str(out), "--model_dir", str(models),
        "--ckpt_path", str(models / "model.pt"),  # the network trained above, not the default generator's file
        "--compvis_vq_f4", str(path), "--num_inference_steps", "2", "--batch_size", "1",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=BUNDLES / "gleason_ldm",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    tiles = [p for p in out.rglob("*.png") if "overlay" not in p.name and "overlay" not in p.parent.name]
    assert tiles, f"no tile written under {out}: {sorted(p.name for p in out.rglob('*'))}"
    tile = np.asarray(Image.open(tiles[0]))
    assert tile.shape == (512, 512, 3)
    assert tile.std() > 0
    with capsys.disabled():
        print(
            f"[paper_size] bundle inference, one 512 px tile, 2 solver steps of the default generator (whole command): {seconds:.1f} s"
        )
