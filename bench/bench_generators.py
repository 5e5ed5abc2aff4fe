"""Seconds per tile of the registered generators, interleaved in one process so that load hits all alike.

Each round draws the same held-out masks and seeds with every generator in turn (the order rotating from round to
round); the median over rounds of each generator's seconds per tile and its ratio to SD are printed. SD, SD-DISC,
SD-DISC-CoTrain and SD-GD make one network evaluation per DDIM step (their ratios measure only noise), SD-SC one
per label present, guidance two.

    python bench/bench_generators.py --data .toy --masks 16 --rounds 5 [--generators sd gd sc] [--guidance-scale 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from monai_disc.apps.compare import held_out_masks
from monai_disc.inferers import DEFAULT_NUM_INFERENCE_STEPS, GENERATORS, load_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--generators", nargs="+", default=["sd", "gd"], choices=list(GENERATORS))
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-inference-steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sampling = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale}
    generators = {name: load_generator(name, args.bundles, device="cpu", **sampling) for name in args.generators}
    masks, _ = held_out_masks(args.data, args.masks, min_labels=2, size=64)
    seeds = list(range(len(masks)))
    for gen in generators.values():  # first-call costs belong to no generator
        gen.sample(masks[:1], seeds[:1])
    times: dict[str, list[float]] = {name: [] for name in generators}
    names = list(generators)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            generators[name].sample(masks, seeds)
            times[name].append((time.perf_counter() - start) / len(masks))
    base = statistics.median(times[names[0]])
    print(
        f"{len(masks)} masks of 64 px, {args.num_inference_steps} DDIM steps, guidance {args.guidance_scale:g}, "
        f"{args.threads} thread(s), median of {args.rounds} interleaved rounds"
    )
    print(f"| generator | s/tile | vs {GENERATORS[names[0]].display} |\n|---|---|---|")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {GENERATORS[name].display} | {median:.3f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
