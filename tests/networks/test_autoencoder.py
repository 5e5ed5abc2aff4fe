"""VQAutoencoder: numerical parity with the CompVis/taming VQModel, shapes, MONAI latent inferer, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from monai.inferers import LatentDiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler
from taming.modules.diffusionmodules.model import Decoder as TamingDecoder
from taming.modules.diffusionmodules.model import Encoder as TamingEncoder
from taming.modules.vqvae.quantize import VectorQuantizer2

from monai_disc.networks import autoencoder as ae_module
from monai_disc.networks.autoencoder import (
    VQAutoencoder,
    compute_scale_factor,
    convert_compvis_vq_state_dict,
    load_compvis_vq_f4,
    vq_f4,
    vq_f4_toy,
)

torch.set_num_threads(1)


class CompVisVQ(nn.Module):
    """The CompVis ``VQModel`` layout (same module names) built from the taming reference code."""

    def __init__(self, ch: int = 128, resolution: int = 64, n_embed: int = 8192) -> None:
        super().__init__()
        cfg = dict(
            double_z=False, z_channels=3, resolution=resolution, in_channels=3, out_ch=3, ch=ch,
            ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
        )  # fmt: skip
        self.encoder = TamingEncoder(**cfg)
        self.decoder = TamingDecoder(**cfg)
        self.quantize = VectorQuantizer2(n_embed, 3, beta=0.25)
        self.quant_conv = nn.Conv2d(3, 3, 1)
        self.post_quant_conv = nn.Conv2d(3, 3, 1)
        # Trained codebooks are spread out; CompVis's +-1/n_embed init leaves near-ties that rounding decides.
        with torch.no_grad():
            self.quantize.embedding.weight.normal_()

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.quant_conv(self.encoder(x))
        z_q, loss, (_, _, idx) = self.quantize(h)
        return h, z_q, loss, idx.view(z_q.shape[0], *z_q.shape[2:]), self.decoder(self.post_quant_conv(z_q))


def _pair(ch: int, dtype: torch.dtype, seed: int = 0) -> tuple[CompVisVQ, VQAutoencoder]:
    torch.manual_seed(seed)
    ref = CompVisVQ(ch=ch).eval()
    ours = vq_f4(channels=(ch, 2 * ch, 4 * ch)).eval()
    ours.load_state_dict(convert_compvis_vq_state_dict(ref.state_dict()))
    return ref.to(dtype), ours.to(dtype)


def _max_diffs(ref: CompVisVQ, ours: VQAutoencoder, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        h_r, zq_r, loss_r, idx_r, dec_r = ref.run(x)
        h = ours.encode(x)
        z_q, loss, idx = ours.quantize(h)
        dec = ours.decode(h)
    assert torch.equal(idx, idx_r), "code indices differ from CompVis"
    return {
        "encode": (h - h_r).abs().max().item(),
        "z_q": (z_q - zq_r).abs().max().item(),
        "loss": (loss - loss_r).abs().item(),
        "decode": (dec - dec_r).abs().max().item(),
        "scale": dec_r.abs().max().item(),
    }


def test_matches_compvis_in_float64_small_width():
    ref, ours = _pair(ch=32, dtype=torch.float64)
    x = torch.rand(2, 3, 48, 48, dtype=torch.float64) * 2 - 1
    diffs = _max_diffs(ref, ours, x)
    assert diffs["scale"] > 0.1  # the outputs are not trivially zero
    for name in ("encode", "z_q", "loss", "decode"):
        assert diffs[name] < 1e-10, (name, diffs)


def test_matches_compvis_in_float32_within_rounding():
    ref, ours = _pair(ch=32, dtype=torch.float32)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    diffs = _max_diffs(ref, ours, x)
    assert diffs["encode"] < 1e-5 and diffs["z_q"] < 1e-5, diffs
    # ~20 random-init layers amplify float32 rounding (SiLU vs x * sigmoid(x)) to ~1e-5 of outputs of size ~2
    assert diffs["decode"] < 5e-5, diffs


def test_matches_compvis_at_true_vq_f4_config():
    ref, ours = _pair(ch=128, dtype=torch.float64, seed=1)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1
    diffs = _max_diffs(ref, ours, x)
    for name in ("encode", "z_q", "loss", "decode"):
        assert diffs[name] < 1e-10, (name, diffs)


def test_toy_model_maps_64px_to_3x16x16_latent_and_back():
    torch.manual_seed(0)
    model = vq_f4_toy().eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        h = model.encode(x)
        z_q, loss, idx = model.quantize(h)
        rec, q_loss = model(x)
    assert h.shape == z_q.shape == (2, 3, 16, 16)
    assert idx.shape == (2, 16, 16) and int(idx.max()) < 512
    assert rec.shape == x.shape and q_loss.ndim == 0
    # legacy CompVis loss: ||sg(z_q) - h||^2 + beta ||z_q - sg(h)||^2 = (1 + beta) * mse in value
    assert loss.item() == pytest.approx(1.25 * torch.mean((z_q - h) ** 2).item(), rel=1e-5)
    # decode quantises: decoding the latent equals decoding its code indices
    with torch.no_grad():
        assert torch.allclose(model.decode(h), model.decode_indices(idx), atol=1e-5)
        assert not torch.allclose(model.decode(h), model.decode(h, force_not_quantize=True), atol=1e-4)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.encode(torch.zeros(1, 3, 30, 30))


def test_straight_through_gradients_reach_encoder_and_codebook():
    torch.manual_seed(0)
    model = vq_f4_toy(channels=(32, 32, 32), n_embed=16)
    rec, loss = model(torch.rand(1, 3, 16, 16) * 2 - 1)
    (rec.abs().mean() + loss).backward()
    assert model.encoder.blocks[0].conv.weight.grad.abs().sum() > 0
    assert model.quantizer.embedding.weight.grad.abs().sum() > 0


def test_chunked_code_search_matches_single_pass(monkeypatch):
    torch.manual_seed(0)
    quantizer = ae_module.CodebookQuantizer(64, 3)
    quantizer.embedding.weight.data.normal_()
    z = torch.randn(2, 3, 8, 8)
    _, _, whole = quantizer(z)
    monkeypatch.setattr(ae_module, "_MAX_DISTANCE_ELEMENTS", 64 * 5)  # 5 rows per chunk
    _, _, chunked = quantizer(z)
    assert torch.equal(whole, chunked)


def test_latent_diffusion_inferer_accepts_the_model():
    torch.manual_seed(0)
    model = vq_f4_toy().eval()
    unet = DiffusionModelUNet(
        spatial_dims=2, in_channels=3, out_channels=3, channels=(32, 32), attention_levels=(False, False),
        num_res_blocks=1, norm_num_groups=32,
    )  # fmt: skip
    scheduler = DDIMScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(num_inference_steps=2)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=float(model.scale_factor))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        pred = inferer(x, model, unet, noise=noise, timesteps=torch.tensor([10, 50]))
        image = inferer.sample(input_noise=noise[:1], autoencoder_model=model, diffusion_model=unet, verbose=False)
    assert pred.shape == (2, 3, 8, 8)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_scale_factor_is_one_over_latent_std_and_survives_save_load(tmp_path: Path):
    torch.manual_seed(0)
    model = vq_f4_toy()
    batches = [{"image": torch.rand(2, 3, 32, 32) * 2 - 1} for _ in range(3)]
    assert float(model.scale_factor) == 1.0
    scale = compute_scale_factor(model, batches)
    with torch.no_grad():
        std = torch.cat([model.encode(b["image"]) for b in batches]).double().std().item()
    assert scale == pytest.approx(1.0 / std, rel=1e-6)
    assert float(model.scale_factor) == pytest.approx(scale, rel=1e-6)
    assert model.training  # compute_scale_factor restores the mode
    path = tmp_path / "ae.pt"
    torch.save(model.state_dict(), path)
    fresh = vq_f4_toy()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert float(fresh.scale_factor) == pytest.approx(scale, rel=1e-6)


def test_loads_compvis_lightning_checkpoint_file_dropping_loss_keys(tmp_path: Path):
    torch.manual_seed(0)
    ref = CompVisVQ(ch=32, n_embed=64).eval()
    sd = dict(ref.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(1)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 5}, path)
    model = load_compvis_vq_f4(path, channels=(32, 64, 128), n_embed=64)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model.decode(model.encode(x)), ref.run(x)[-1], atol=5e-5)
    assert float(model.scale_factor) == 1.0


def test_ldm_checkpoint_prefix_and_scale_factor_are_used():
    torch.manual_seed(0)
    ref = CompVisVQ(ch=32, n_embed=64)
    sd = {f"first_stage_model.{k}": v for k, v in ref.state_dict().items()}
    sd["model.diffusion_model.out.0.weight"] = torch.zeros(1)
    sd["scale_factor"] = torch.tensor(0.5)
    converted = convert_compvis_vq_state_dict(sd)
    model = vq_f4(channels=(32, 64, 128), n_embed=64)
    model.load_state_dict(converted)
    assert float(model.scale_factor) == 0.5


def test_unexpected_checkpoint_keys_give_clear_errors(tmp_path: Path):
    torch.manual_seed(0)
    sd = dict(CompVisVQ(ch=32, n_embed=64).state_dict())
    sd["encoder.down.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"encoder\.down\.0\.extra\.weight"):
        convert_compvis_vq_state_dict(sd)
    path = tmp_path / "bad.ckpt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"bad\.ckpt.*encoder\.down\.0\.extra\.weight"):
        load_compvis_vq_f4(path, channels=(32, 64, 128), n_embed=64)
    # right layout, wrong size: the message names the file and the tensors
    del sd["encoder.down.0.extra.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"bad\.ckpt.*quantizer\.embedding\.weight"):
        load_compvis_vq_f4(path, channels=(32, 64, 128))
    with pytest.raises(ValueError, match="not a CompVis VQModel"):
        convert_compvis_vq_state_dict({"fc.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_compvis_vq_f4(tmp_path / "missing.ckpt")
