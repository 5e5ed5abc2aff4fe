"""Cost of separated-condition sampling (SD-SC) over plain SD, and batched against looped branches.

For masks holding 1, 2 and 4 labels, times in one process, interleaved so that machine load hits all alike:

* SD: :meth:`MaskLDMSampler.sample_latents` under the masks' own tokens;
* SC: :meth:`SeparatedConditionInferer.sample_latents` (absent labels skipped, all branches in one batch per step);
* SC looped: the same branches run label by label, one sampling per label present (what a naive SC does);
* SC all K: every label denoised whatever the mask holds (no skipping).

The denoising loop is timed (decoding costs SD and SC the same); the toy networks (``mask_ldm_toy``,
``vq_f4_toy``) at random init run on the CPU. Ratios are medians of the repeats; the goal for SC/SD is about the
number of labels present, not K = 4.

    python bench/bench_separated.py [--num-inference-steps 10] [--batch 2] [--size 64] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from monai_disc.inferers.mask_ldm import MaskLDMSampler
from monai_disc.inferers.separated import SeparatedConditionInferer, fuse_latents, present_labels, uniform_masks
from monai_disc.networks.autoencoder import vq_f4_toy
from monai_disc.networks.denoiser import mask_ldm_toy

__all__ = ["main"]

QUADRANTS = {1: [[2, 2], [2, 2]], 2: [[0, 0], [3, 3]], 4: [[0, 1], [2, 3]]}


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _masks(n_labels: int, batch: int, size: int) -> torch.Tensor:
    coarse = torch.tensor(QUADRANTS[n_labels], dtype=torch.float32)[None, None].expand(batch, 1, 2, 2)
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()


def _variants(
    masks: torch.Tensor, noise: torch.Tensor, denoiser: torch.nn.Module, inferer: SeparatedConditionInferer
) -> dict[str, Callable[[], torch.Tensor]]:
    """The four ways to draw fused latents for `masks` from `noise`."""
    sampler = inferer.sampler
    k = denoiser.num_classes

    @torch.no_grad()
    def sd() -> torch.Tensor:
        return sampler.sample_latents(noise, denoiser.encode_mask(masks), denoiser)

    def sc() -> torch.Tensor:
        return inferer.sample_latents(noise, masks, denoiser)  # type: ignore[return-value]

    @torch.no_grad()
    def looped() -> torch.Tensor:
        present = present_labels(masks, noise.shape[-2:], k)
        tokens = denoiser.encode_mask(uniform_masks(k, masks.shape[-2:]))
        separated = noise.new_zeros((noise.shape[0], k, *noise.shape[1:]))
        for label in range(k):
            who = present[:, label].nonzero()[:, 0]
            if who.numel():
                context = tokens[label : label + 1].expand(who.numel(), -1, -1)
                separated[who, label] = sampler.sample_latents(noise[who], context, denoiser)
        return fuse_latents(separated, masks)

    def all_k() -> torch.Tensor:
        return fuse_latents(inferer.separated_latents(noise, denoiser, masks.shape[-2:]), masks)

    return {"sd": sd, "sc": sc, "looped": looped, "all_k": all_k}


def bench(steps: int, batch: int, size: int, repeats: int) -> list[dict[str, float]]:
    """One row per label count: median seconds of each variant, ratios, and the batched/looped difference."""
    torch.manual_seed(0)
    denoiser, autoencoder = mask_ldm_toy().eval(), vq_f4_toy().eval()
    with torch.no_grad():  # MONAI zero-initialises output layers; give them weights so latents differ per label
        for p in denoiser.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    sampler = MaskLDMSampler(num_inference_steps=steps, progress=False)
    inferer = SeparatedConditionInferer(sampler)
    f = autoencoder.downsample_factor
    noise = sampler.make_noise(range(batch), (denoiser.in_channels, size // f, size // f))

    rows = []
    for n_labels in (1, 2, 4):
        variants = _variants(_masks(n_labels, batch, size), noise, denoiser, inferer)
        diff = float((variants["sc"]() - variants["looped"]()).abs().max())  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                times[name].append(_timed(fn))
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            {
                "labels": n_labels,
                **med,
                "sc/sd": med["sc"] / med["sd"],
                "looped/sc": med["looped"] / med["sc"],
                "all_k/sd": med["all_k"] / med["sd"],
                "max_abs_diff": diff,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-inference-steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--batch", type=int, default=2, help="masks per sampling")
    parser.add_argument("--size", type=int, default=64, help="tile size in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = bench(args.num_inference_steps, args.batch, args.size, args.repeats)
    print(
        f"SC vs SD, toy networks, CPU ({args.threads} thread), {args.size} px, batch {args.batch}, "
        f"{args.num_inference_steps} DDIM steps, median of {args.repeats}\n"
    )
    print("| labels in mask | SD s | SC s | SC/SD | looped s | looped/SC | all-K s | all-K/SD | max |SC-looped| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['labels']} | {r['sd']:.3f} | {r['sc']:.3f} | {r['sc/sd']:.2f} | {r['looped']:.3f} | "
            f"{r['looped/sc']:.2f} | {r['all_k']:.3f} | {r['all_k/sd']:.2f} | {r['max_abs_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
