"""Seconds per 512 px tile of the paper-size SD generator on one GPU: precision, compilation and CUDA graphs.

One prepared command for a GPU machine. It builds the paper-size networks (``mask_ldm_vq_f4``, 409.7 M
parameters, and ``vq_f4``; random weights: speed does not depend on them), sizes the batch to a memory budget by a
probe, and times :meth:`MaskLDMSampler.sample` (mask encoding, DDIM loop, decoding) with CUDA-synchronised wall
clocks for each variant and sampler. Samplers are ``solver:steps`` (names of :data:`monai_disc.inferers.SOLVERS`):
by default the earlier default (``ddim:50``), ``ddim:20``, the default now (PLMS 3 steps, 4 network evaluations)
and the step-distilled student's (``ddim-leading:2``, 2 evaluations; random weights time the same as trained
ones). It prints one table: seconds per tile, tiles/s, network evaluations per tile, the denoiser's achieved
TFLOP/s (FLOPs counted once on the meta device) and its share of the GPU's dense bf16 peak, peak memory, and the
largest difference of the variant's tiles from the fp32 tiles (bf16 tolerance: about 1e-2 mean, per the CPU
tests). Then it draws a 100-tile synthetic slide with the fastest variant at each of ``--slide-samplers`` (the
default sampler and the student's).

Variants (each a :class:`MaskLDMSampler` option set, the same the bundles and the CLI use):

- ``fp32``: ``dtype="fp32"`` (TF32 convolutions as torch defaults).
- ``bf16``: ``dtype="bf16"`` (autocast; the sampler's default on CUDA).
- ``bf16-cl``: bf16 with ``channels_last=True``.
- ``bf16-compile``: bf16 with ``compile=True`` (TorchInductor, default mode).
- ``bf16-graphs``: bf16 with ``compile=True, compile_options={"mode": "reduce-overhead"}`` (CUDA graphs; shapes
  are static within a batch size).

    python bench/gpu_sampling.py                          # 512 px, every sampler and variant, on cuda
    python bench/gpu_sampling.py --json gpu_sampling.json # also write the rows
    python bench/gpu_sampling.py --device cpu --tiny      # smoke check: toy networks, 64 px, 2 steps

``--tiny`` swaps in the toy networks at 64 px (the default and student samplers, 4 slide tiles) and compiles with
the ``eager`` backend (TorchDynamo only), so it
runs in about a minute on a CPU and checks the script end to end; its numbers are not GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from monai_disc.inferers import DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_SOLVER, GENERATORS, MaskLDMSampler, make_scheduler
from monai_disc.networks import mask_ldm_toy, mask_ldm_vq_f4, vq_f4, vq_f4_toy

__all__ = ["PEAK_BF16_TFLOPS", "VARIANTS", "main"]

# dense bf16 tensor-core peak (TFLOP/s) by a substring of torch.cuda.get_device_name; --peak-tflops overrides
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A6000": 155.0,
    "A10G": 70.0,
    "L4": 121.0,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"dtype": "fp32"},
    "bf16": {"dtype": "bf16"},
    "bf16-cl": {"dtype": "bf16", "channels_last": True},
    "bf16-compile": {"dtype": "bf16", "compile": True},
    "bf16-graphs": {"dtype": "bf16", "compile": True, "compile_options": {"mode": "reduce-overhead"}},
}


DEFAULT_SAMPLER = f"{DEFAULT_SOLVER}:{DEFAULT_NUM_INFERENCE_STEPS}"
STUDENT_SAMPLER = "{solver}:{num_inference_steps}".format(**GENERATORS["gd2"].options)


def _parse_sampler(spec: str) -> tuple[str, int]:
    solver, _, steps = spec.partition(":")
    make_scheduler(solver)  # an unknown name fails here
    return solver, int(steps)


def _set_sampler(sampler: MaskLDMSampler, spec: str) -> int:
    """Give the sampler this solver and step count (its compiled denoiser is kept); the evaluations per tile."""
    solver, steps = _parse_sampler(spec)
    sampler.scheduler = make_scheduler(solver)
    sampler.num_inference_steps = steps
    sampler.scheduler.set_timesteps(steps)
    return len(sampler.scheduler.timesteps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _masks(batch: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (batch, 1, 8, 8), generator=g).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long().to(device)


def denoiser_flops(build: Any, latent_size: int) -> float:
    """FLOPs of one denoiser forward on one latent (counted on the meta device: no memory, no time)."""
    with torch.device("meta"):
        net = build(use_flash_attention=False)  # the counter sees the attention matmuls; SDPA does the same work
        x = torch.empty(1, net.in_channels, latent_size, latent_size)
        ctx = torch.empty(1, net.mask_encoder.num_tokens, net.mask_encoder.context_dim)
        with FlopCounterMode(display=False) as counter:
            net(x, torch.zeros(1, dtype=torch.long), context=ctx)
    return float(counter.get_total_flops())


def peak_tflops(name: str, override: float | None) -> float | None:
    """The device's dense bf16 peak from :data:`PEAK_BF16_TFLOPS` (or `override`); None when unknown."""
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def probe_batch(denoiser, autoencoder, size: int, device: torch.device, mem_gb: float, decode_batch: int) -> int:
    """Largest batch whose fp32 sampling peak fits ``mem_gb``: one-step runs at batch 1 and 3 give the slope."""
    if device.type != "cuda":
        return 2
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    sampler = MaskLDMSampler(num_inference_steps=1, progress=False, decode_batch_size=decode_batch, dtype="fp32")
    base = torch.cuda.memory_allocated(device)
    peaks = {}
    for b in (1, 1, 3):  # the first run warms up
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        sampler.sample(_masks(b, size, device), autoencoder, denoiser, seeds=range(b))
        peaks[b] = torch.cuda.max_memory_allocated(device) - base
    torch.backends.cudnn.benchmark = benchmark
    per_sample = max((peaks[3] - peaks[1]) / 2, 1.0)
    fixed = peaks[1] - per_sample
    return max(1, int((mem_gb * 1e9 - base - fixed) // per_sample))


def _options(variant: str, tiny: bool) -> dict[str, Any]:
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VARIANTS[variant].items()}
    if tiny and options.get("compile"):
        options["compile_options"] = {"backend": "eager"}  # graph capture only: no C++ toolchain, seconds
    return options


def _time(sampler: MaskLDMSampler, masks, autoencoder, denoiser, device) -> tuple[float, torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    tiles = sampler.sample(masks, autoencoder, denoiser, seeds=range(len(masks)))
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    return seconds, tiles, peak


def _slide(args, variant, spec, denoiser, autoencoder, size, batch, slide_tiles, device) -> dict[str, Any]:
    """Seconds and evaluations per tile of a ``slide_tiles``-tile synthetic slide in batches (after a warm batch)."""
    options = _options(variant, args.tiny)
    if options.get("channels_last"):
        denoiser.to(memory_format=torch.channels_last)
        autoencoder.to(memory_format=torch.channels_last)
    sampler = MaskLDMSampler(progress=False, decode_batch_size=args.decode_batch, **options)
    evaluations = _set_sampler(sampler, spec)
    slide_masks = _masks(slide_tiles, size, device, seed=1)
    sampler.sample(slide_masks[:batch], autoencoder, denoiser, seeds=range(min(batch, slide_tiles)))  # warm
    _sync(device)
    start = time.perf_counter()
    for b in range(0, slide_tiles, batch):
        sampler.sample(slide_masks[b : b + batch], autoencoder, denoiser, seeds=range(b, min(b + batch, slide_tiles)))
    _sync(device)
    seconds = time.perf_counter() - start
    if options.get("channels_last"):
        denoiser.to(memory_format=torch.contiguous_format)
        autoencoder.to(memory_format=torch.contiguous_format)
    return {"seconds": seconds, "evaluations": evaluations}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy networks at 64 px, 2 steps: a smoke check of the script")
    p.add_argument("--size", type=int, default=None, help="tile size in px (default 512; 64 with --tiny)")
    p.add_argument(
        "--samplers", nargs="+", default=None, help="solver:steps (default ddim:50 ddim:20, the default, the student's)"
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batch", type=int, default=None, help="fixed batch (default: probe to fit --mem-gb)")
    p.add_argument("--mem-gb", type=float, default=70.0)
    p.add_argument("--max-batch", type=int, default=32, help="cap on the probed batch (throughput saturates)")
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--slide-tiles", type=int, default=100)
    p.add_argument("--slide-samplers", nargs="+", default=[DEFAULT_SAMPLER, STUDENT_SAMPLER], help="solver:steps")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available here; use --device cpu --tiny for a smoke check.")
        torch.backends.cudnn.benchmark = True
    size = args.size or (64 if args.tiny else 512)
    samplers = args.samplers or (
        [DEFAULT_SAMPLER, STUDENT_SAMPLER] if args.tiny else ["ddim:50", "ddim:20", DEFAULT_SAMPLER, STUDENT_SAMPLER]
    )
    slide_tiles = min(args.slide_tiles, 4) if args.tiny else args.slide_tiles
    variants = [v for v in args.variants if device.type == "cuda" or v != "bf16-graphs"]  # graphs are CUDA-only

    torch.manual_seed(0)
    build = mask_ldm_toy if args.tiny else mask_ldm_vq_f4
    denoiser = build().to(device).eval()
    autoencoder = (vq_f4_toy() if args.tiny else vq_f4()).to(device).eval()
    with torch.no_grad():  # MONAI zero-initialises the output layers: give them weights so tiles can differ
        for q in denoiser.parameters():
            if not q.any():
                q.normal_(0.0, 0.02)
    n_params = sum(q.numel() for q in denoiser.parameters())
    flops = denoiser_flops(build, size // autoencoder.downsample_factor)

    fit = probe_batch(denoiser, autoencoder, size, device, args.mem_gb, args.decode_batch)
    batch = args.batch or min(fit, args.max_batch)
    masks = _masks(batch, size, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops) if device.type == "cuda" else None
    print(
        f"# {name}, torch {torch.__version__}; denoiser {n_params / 1e6:.1f} M params, "
        f"{flops / 1e12:.4f} TFLOP per latent forward; {size} px tiles; dense bf16 peak "
        f"{'unknown (--peak-tflops)' if peak is None else f'{peak:g} TFLOP/s'}"
    )
    if device.type != "cuda":
        print("# CPU run: a check that the script works, NOT a GPU measurement")
    print(
        f"# batch {batch} (fits {fit} in {args.mem_gb:g} GB by probe, cap {args.max_batch}); decode {args.decode_batch}"
    )
    print(
        "| variant | sampler | evaluations / tile | batch | s/tile | tiles/s | TFLOP/s | % of peak | peak GB | "
        "max diff vs fp32 | mean diff vs fp32 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows: list[dict[str, Any]] = []
    reference: dict[str, torch.Tensor] = {}
    for variant in variants:
        options = _options(variant, args.tiny)
        if options.get("channels_last"):
            denoiser.to(memory_format=torch.channels_last)
            autoencoder.to(memory_format=torch.channels_last)
        sampler = MaskLDMSampler(num_inference_steps=2, progress=False, decode_batch_size=args.decode_batch, **options)
        sampler.sample(masks, autoencoder, denoiser, seeds=range(batch))  # kernels chosen, graphs compiled, captured
        for spec in samplers:
            evaluations = _set_sampler(sampler, spec)  # the same sampler: its compiled denoiser is reused
            seconds, tiles, peak_gb = _time(sampler, masks, autoencoder, denoiser, device)
            if not torch.isfinite(tiles).all():
                raise RuntimeError(f"non-finite tiles in variant {variant}")
            if variant == "fp32":
                reference[spec] = tiles
            diff = (tiles - reference[spec]).abs() if spec in reference else None
            tflops = evaluations * batch * flops / seconds / 1e12
            row = {
                "variant": variant,
                "sampler": spec,
                "evaluations_per_tile": evaluations,
                "batch": batch,
                "s_per_tile": seconds / batch,
                "tiles_per_s": batch / seconds,
                "tflops": tflops,
                "share_of_peak": None if peak is None else tflops / peak,
                "peak_gb": peak_gb,
                "max_diff_vs_fp32": None if diff is None else float(diff.max()),
                "mean_diff_vs_fp32": None if diff is None else float(diff.mean()),
            }
            rows.append(row)
            share = "-" if peak is None else f"{100 * tflops / peak:.1f}"
            gb = "-" if math.isnan(peak_gb) else f"{peak_gb:.1f}"
            dmax = "-" if diff is None else f"{row['max_diff_vs_fp32']:.3f}"
            dmean = "-" if diff is None else f"{row['mean_diff_vs_fp32']:.4f}"
            print(
                f"| {variant} | {spec} | {evaluations} | {batch} | {seconds / batch:.3f} | {batch / seconds:.2f} | {tflops:.3g} "
                f"| {share} | {gb} | {dmax} | {dmean} |",
                flush=True,
            )
        if options.get("channels_last"):
            denoiser.to(memory_format=torch.contiguous_format)
            autoencoder.to(memory_format=torch.contiguous_format)

    # a synthetic slide: slide_tiles masks in batches, the fastest variant, at each slide sampler
    slides = []
    for spec in args.slide_samplers:
        at = [r for r in rows if r["sampler"] == spec] or rows
        best = min(at, key=lambda r: r["s_per_tile"])["variant"]
        slides.append(
            {
                "sampler": spec,
                "variant": best,
                "tiles": slide_tiles,
                **_slide(args, best, spec, denoiser, autoencoder, size, batch, slide_tiles, device),
            }
        )
        print(
            f"# {slide_tiles}-tile synthetic slide, {spec} ({slides[-1]['evaluations']} evaluations per tile, "
            f"{slides[-1]['evaluations'] * slide_tiles} per slide), {best}, batch {batch}: {slides[-1]['seconds']:.1f} s"
        )

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "device": name,
                    "size": size,
                    "batch": batch,
                    "tflop_per_forward": flops / 1e12,
                    "rows": rows,
                    "slides": slides,
                },
                f,
                indent=1,
            )
    return rows


if __name__ == "__main__":
    main()
