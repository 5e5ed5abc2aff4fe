"""Tiles per second of the paper-size mask-conditioned LDM (mask_ldm_vq_f4 + vq_f4, random init) on one device.

Times :meth:`MaskLDMSampler.sample` (mask encoding, DDIM loop, decoding) at each step count and precision, with
CUDA-synchronised wall clocks, on a batch sized to fit a memory budget (probed with a one-step run), and prints a
table with the denoiser's achieved TFLOP/s. Variants: ``fp32`` (torch defaults: TF32 convolutions, fp32
matmuls), ``bf16`` (autocast), ``bf16-cl`` (autocast with channels-last weights and noise).

    python bench/gpu_sampling.py                                 # 512 px, 50 and 200 steps, on cuda
    python bench/gpu_sampling.py --device cpu --size 64 --steps 2  # smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from torch.utils.flop_counter import FlopCounterMode

from monai_disc.inferers.mask_ldm import MaskLDMSampler, ddim_scheduler
from monai_disc.networks.denoiser import mask_ldm_vq_f4

try:
    from monai_disc.networks.autoencoder import vq_f4
except ImportError as e:  # written by another part of the project
    raise SystemExit(f"gpu_sampling needs monai_disc.networks.autoencoder.vq_f4, which is missing here ({e}).") from e

__all__ = ["main"]

VARIANTS = ("fp32", "bf16", "bf16-cl")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _masks(batch: int, size: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 4, (batch, 1, 8, 8), generator=g).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long().to(device)


def denoiser_flops(latent_size: int) -> float:
    """FLOPs of one denoiser forward on one latent (counted on the meta device: no memory, no time)."""
    with torch.device("meta"):
        net = mask_ldm_vq_f4(use_flash_attention=False)
        x = torch.empty(1, 3, latent_size, latent_size)
        ctx = torch.empty(1, net.mask_encoder.num_tokens, net.mask_encoder.context_dim)
        with FlopCounterMode(display=False) as counter:
            net(x, torch.zeros(1, dtype=torch.long), context=ctx)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def _precision(variant: str, device: torch.device) -> Iterator[None]:
    if variant.startswith("bf16"):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def _sample(sampler, masks, autoencoder, denoiser, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return sampler.sample(masks, autoencoder, denoiser, seeds=range(len(masks)))
    f = autoencoder.downsample_factor
    shape = (denoiser.in_channels, masks.shape[-2] // f, masks.shape[-1] // f)
    noise = sampler.make_noise(range(len(masks)), shape, masks.device).contiguous(memory_format=torch.channels_last)
    return sampler.sample(masks, autoencoder, denoiser, noise=noise)


def probe_batch(denoiser, autoencoder, size: int, device: torch.device, mem_gb: float, decode_batch: int) -> int:
    """Largest batch whose fp32 sampling peak fits ``mem_gb``: one-step runs at batch 1 and 3 give the slope.

    cuDNN's algorithm search (which takes large one-off workspaces for every new shape) is off while probing,
    and the first run only warms up.
    """
    if device.type != "cuda":
        return 1
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    sampler = MaskLDMSampler(num_inference_steps=1, progress=False, decode_batch_size=decode_batch)
    base = torch.cuda.memory_allocated(device)
    peaks = {}
    for b in (1, 1, 3):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        _sample(sampler, _masks(b, size, device), autoencoder, denoiser, channels_last=False)
        peaks[b] = torch.cuda.max_memory_allocated(device) - base
    torch.backends.cudnn.benchmark = benchmark
    per_sample = max((peaks[3] - peaks[1]) / 2, 1.0)
    fixed = peaks[1] - per_sample
    return max(1, int((mem_gb * 1e9 - base - fixed) // per_sample))


@torch.no_grad()
def compare_with_monai(denoiser, masks, device: torch.device, variant: str, steps: int) -> dict[str, object]:
    """Seconds of our DDIM loop and of MONAI's ``DiffusionInferer.sample`` on the same noise, context, steps."""
    denoiser.to(memory_format=torch.contiguous_format)
    sampler = MaskLDMSampler(num_inference_steps=steps, progress=False)
    latent = masks.shape[-1] // 4
    noise = sampler.make_noise(range(len(masks)), (denoiser.in_channels, latent, latent), device)
    scheduler = ddim_scheduler()
    inferer = DiffusionInferer(scheduler)
    times: dict[str, object] = {"variant": variant, "steps": steps}
    with _precision(variant, device):
        context = denoiser.encode_mask(masks)
        for name in ("ours", "monai", "ours", "monai"):  # second pair timed: the first warms both paths
            _sync(device)
            t0 = time.perf_counter()
            if name == "ours":
                sampler.sample_latents(noise, context, denoiser)
            else:
                scheduler.set_timesteps(steps)
                inferer.sample(noise, denoiser, conditioning=context, verbose=False)
            _sync(device)
            times[name] = time.perf_counter() - t0
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=512, help="tile size in px (latents are size/4)")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 200])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=None, help="fixed batch (default: probe to fit --mem-gb)")
    p.add_argument("--mem-gb", type=float, default=70.0)
    p.add_argument("--max-batch", type=int, default=32, help="cap on the probed batch (throughput saturates)")
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--no-monai", dest="monai", action="store_false", help="skip the loop comparison with MONAI")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available here; use --device cpu --size 64 --steps 2 for a smoke check.")
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    denoiser = mask_ldm_vq_f4().to(device).eval()
    autoencoder = vq_f4(use_flash_attention=True).to(device).eval()
    n_params = sum(q.numel() for q in denoiser.parameters())
    flops = denoiser_flops(args.size // autoencoder.downsample_factor)

    fit = probe_batch(denoiser, autoencoder, args.size, device, args.mem_gb, args.decode_batch)
    batch = args.batch or min(fit, args.max_batch)
    masks = _masks(batch, args.size, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# {name}, torch {torch.__version__}; denoiser {n_params / 1e6:.0f} M params, "
        f"{flops / 1e12:.3f} TFLOP per latent forward; {args.size} px tiles"
    )
    print(
        f"# batch {batch} (fits {fit} in {args.mem_gb:g} GB by probe, cap {args.max_batch}); "
        f"decode in chunks of {args.decode_batch}"
    )
    header = (
        f"{'variant':<9}{'steps':>6}{'batch':>6}{'seconds':>10}{'tiles/s':>9}{'s/tile':>8}{'TFLOP/s':>9}{'peak GB':>9}"
    )
    print(header)
    rows = []
    for variant in args.variants:
        channels_last = variant.endswith("-cl")
        denoiser.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with _precision(variant, device):
            warm = MaskLDMSampler(num_inference_steps=2, progress=False, decode_batch_size=args.decode_batch)
            _sample(warm, masks, autoencoder, denoiser, channels_last)  # kernels chosen, caches filled
            for steps in args.steps:
                if variant == "bf16-cl" and steps != min(args.steps):
                    continue  # layout check at the shortest run only
                sampler = MaskLDMSampler(num_inference_steps=steps, progress=False, decode_batch_size=args.decode_batch)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                t0 = time.perf_counter()
                tiles = _sample(sampler, masks, autoencoder, denoiser, channels_last)
                _sync(device)
                dt = time.perf_counter() - t0
                if not torch.isfinite(tiles).all():
                    raise RuntimeError(f"non-finite tiles in variant {variant}")
                peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
                row = {
                    "variant": variant,
                    "steps": steps,
                    "batch": batch,
                    "seconds": dt,
                    "tiles_per_s": batch / dt,
                    "tflops": steps * batch * flops / dt / 1e12,
                    "peak_gb": peak,
                }
                rows.append(row)
                print(
                    f"{variant:<9}{steps:>6}{batch:>6}{dt:>10.2f}{batch / dt:>9.3f}{dt / batch:>8.2f}"
                    f"{row['tflops']:>9.1f}{peak:>9.1f}",
                    flush=True,
                )
    loop = (
        compare_with_monai(
            denoiser, masks, device, "bf16" if "bf16" in args.variants else args.variants[0], min(args.steps)
        )
        if args.monai
        else None
    )
    if loop:
        print(
            f"# DDIM loop alone (no decode), {loop['variant']}, {loop['steps']} steps, batch {batch}: "
            f"ours {loop['ours']:.2f} s, MONAI DiffusionInferer.sample {loop['monai']:.2f} s, "
            f"ratio ours/MONAI {loop['ours'] / loop['monai']:.3f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": name, "size": args.size, "rows": rows, "loop_vs_monai": loop}, f, indent=1)


if __name__ == "__main__":
    main()
