"""Speed options of the samplers (precision, channels-last, compile, fused attention) keep the tiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support import CallLog, PoolAutoencoder, tiny_denoiser

from monai_disc.inferers import MaskLDMSampler, SeparatedConditionInferer
from monai_disc.inferers.acceleration import CompiledCache, resolve_dtype
from monai_disc.networks import load_weights, mask_ldm_toy, vq_f4_toy

MODELS = Path(__file__).resolve().parents[2] / "bundles" / "gleason_ldm" / "models"
SEEDS = [0, 1, 2, 3]


def _masks(n: int = 4, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 4, (n, 1, 4, 4), generator=g).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()


@pytest.fixture(scope="module")
def shipped():
    """The shipped toy SD (trained weights: bf16 rounding acts as on a real model, not on random outputs)."""
    autoencoder = load_weights(vq_f4_toy(), MODELS / "autoencoder.pt")
    denoiser = load_weights(mask_ldm_toy(), MODELS / "model.pt")
    return autoencoder, denoiser


def _assert_within_bf16_tolerance(tiles: torch.Tensor, reference: torch.Tensor, q99: float = 0.1) -> None:
    """bf16 keeps 8 bits of mantissa: tiles in [-1, 1] differ by about one 8-bit grey level on average, and 99 % of
    the values by less than `q99` (5 % of the range; guidance multiplies the noise predictions' differences)."""
    diff = (tiles - reference).abs()
    assert diff.mean() < 0.02, f"mean difference {diff.mean():.4f}"
    q = torch.quantile(diff.flatten(), 0.99)
    assert q < q99, f"1 % of the values moved by more than {q:.3f}"


def test_auto_precision_is_float32_on_cpu_and_names_resolve():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("torch.float16", "cuda") == torch.float16
    assert resolve_dtype(torch.float32, "cuda") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        MaskLDMSampler(dtype="int8")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        resolve_dtype(torch.int64, "cpu")


def test_bf16_sd_tiles_equal_fp32_tiles_within_bf16_tolerance(shipped):
    autoencoder, denoiser = shipped
    masks = _masks()
    fp32 = MaskLDMSampler(num_inference_steps=8, progress=False, dtype="fp32").sample(
        masks, autoencoder, denoiser, seeds=SEEDS
    )
    bf16 = MaskLDMSampler(num_inference_steps=8, progress=False, dtype="bf16").sample(
        masks, autoencoder, denoiser, seeds=SEEDS
    )
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # the option really changed the arithmetic
    _assert_within_bf16_tolerance(bf16, fp32)


def test_bf16_sc_tiles_with_guidance_equal_fp32_within_bf16_tolerance(shipped):
    autoencoder, denoiser = shipped
    masks = _masks(2)
    tiles = {
        dtype: SeparatedConditionInferer(
            MaskLDMSampler(num_inference_steps=4, guidance_scale=3.0, progress=False, dtype=dtype)
        ).sample(masks, autoencoder, denoiser, seeds=SEEDS[:2])
        for dtype in ("fp32", "bf16")
    }
    assert not torch.equal(tiles["bf16"], tiles["fp32"])
    _assert_within_bf16_tolerance(tiles["bf16"], tiles["fp32"], q99=0.2)


def test_fp32_option_switches_off_an_outer_autocast():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    masks = _masks(2, 32)
    sampler = MaskLDMSampler(num_inference_steps=4, progress=False, dtype="fp32")
    plain = sampler.sample(masks, ae, net, seeds=[1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sampler.sample(masks, ae, net, seeds=[1, 2])
    assert torch.equal(plain, inside)


def test_channels_last_gives_the_same_tiles_and_converts_the_weights(shipped):
    autoencoder, _ = shipped
    denoiser = load_weights(mask_ldm_toy(), MODELS / "model.pt")  # converted in place: not the shared fixture
    masks = _masks()
    reference = MaskLDMSampler(num_inference_steps=4, progress=False).sample(masks, autoencoder, denoiser, seeds=SEEDS)
    sampler = MaskLDMSampler(num_inference_steps=4, progress=False, channels_last=True)
    tiles = sampler.sample(masks, autoencoder, denoiser, seeds=SEEDS)
    conv = denoiser.unet.conv_in.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert tiles.is_contiguous()
    torch.testing.assert_close(tiles, reference, atol=2e-5, rtol=0)
    autoencoder.to(memory_format=torch.contiguous_format)  # leave the shared fixture as it was


def test_compiled_denoiser_gives_the_same_tiles_and_is_compiled_once():
    net, ae = tiny_denoiser(), PoolAutoencoder()
    masks = _masks(2, 32)
    reference = MaskLDMSampler(num_inference_steps=3, progress=False).sample(masks, ae, net, seeds=[1, 2])
    # the eager backend runs TorchDynamo's graph capture of the denoiser without a C++ toolchain
    sampler = MaskLDMSampler(num_inference_steps=3, progress=False, compile=True, compile_options={"backend": "eager"})
    log = CallLog(net)
    tiles = sampler.sample(masks, ae, net, seeds=[1, 2])
    again = sampler.sample(masks, ae, net, seeds=[1, 2])
    torch.testing.assert_close(tiles, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(again, reference, atol=1e-6, rtol=0)
    assert log.batches == [2] * 8  # the compiled wrapper calls the same module, once per evaluation (PLMS: 3 + 1)
    assert sampler._compiled(net) is sampler._compiled(net)
    assert type(sampler._compiled(net)).__name__ == "OptimizedModule"


def test_compiled_cache_rebuilds_for_another_network():
    cache = CompiledCache({"backend": "eager"})
    a, b = tiny_denoiser(0), tiny_denoiser(1)
    assert cache(a) is cache(a)
    assert cache(a) is not cache(b)


def test_fused_attention_equals_explicit_attention_in_autoencoder_and_denoiser():
    torch.manual_seed(0)
    explicit_ae, fused_ae = vq_f4_toy(use_flash_attention=False).eval(), vq_f4_toy().eval()
    fused_ae.load_state_dict(explicit_ae.state_dict())
    explicit_net, fused_net = mask_ldm_toy(use_flash_attention=False).eval(), mask_ldm_toy().eval()
    fused_net.load_state_dict(explicit_net.state_dict())
    with torch.no_grad():  # MONAI zero-initialises the output layers: give them weights to compare
        for p_explicit, p_fused in zip(explicit_net.parameters(), fused_net.parameters()):
            if not p_explicit.any():
                p_explicit.normal_(0, 0.05)
                p_fused.copy_(p_explicit)
    assert all(m.use_flash_attention for m in fused_net.modules() if hasattr(m, "use_flash_attention"))
    assert all(m.use_flash_attention for m in fused_ae.modules() if hasattr(m, "use_flash_attention"))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    x, t, masks = torch.randn(2, 3, 16, 16), torch.tensor([900, 20]), _masks(2)
    with torch.no_grad():
        z = explicit_ae.encode(images)
        torch.testing.assert_close(fused_ae.encode(images), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused_ae.decode(z, True), explicit_ae.decode(z, True), atol=1e-4, rtol=1e-4)
        eps = explicit_net(x, t, mask=masks)
        assert eps.abs().mean() > 0.01
        torch.testing.assert_close(fused_net(x, t, mask=masks), eps, atol=1e-5, rtol=1e-5)
