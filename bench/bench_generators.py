"""Seconds per tile of the registered generators, interleaved in one process so that load hits all alike.

Each round draws the same held-out masks and seeds with every generator in turn (the order rotating from round to
round); the median over rounds of each generator's seconds per tile and its ratio to SD are printed. SD, SD-DISC,
SD-DISC-CoTrain and SD-GD make one network evaluation per solver grid entry (their ratios measure only noise),
SD-SC one per label present, guidance two. Each generator samples with its registry entry's solver and steps unless
``--num-inference-steps`` / ``--solver`` are given; a generator may be ``name:solver:steps`` to pin its own (e.g.
``gd:ddim:50``, SD-GD at the earlier default). The network evaluations per tile are counted while drawing.

    python bench/bench_generators.py --data .toy --masks 16 --rounds 5 [--generators sd gd sc] [--guidance-scale 1]
    python bench/bench_generators.py --data .toy --masks 16 --rounds 5 --generators gd:ddim:50 gd gd2 gd1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from monai_disc.apps.compare import EvaluationCounter, held_out_masks
from monai_disc.inferers import SOLVERS, load_generator, split_generator_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--generators", nargs="+", default=["sd", "gd"], help="name or name:solver:steps")
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: each generator's own")
    parser.add_argument("--solver", default=None, choices=sorted(SOLVERS), help="default: each generator's own")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generators = {}
    for spec in args.generators:
        name, knobs = split_generator_spec(spec)
        knobs = knobs or {"solver": args.solver, "num_inference_steps": args.num_inference_steps}
        generators[spec] = load_generator(name, args.bundles, device="cpu", guidance_scale=args.guidance_scale, **knobs)
    masks, _ = held_out_masks(args.data, args.masks, min_labels=2, size=64)
    seeds = list(range(len(masks)))
    for gen in generators.values():  # first-call costs belong to no generator
        gen.sample(masks[:1], seeds[:1])
    times: dict[str, list[float]] = {name: [] for name in generators}
    evaluations: dict[str, float] = {}
    names = list(generators)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            with EvaluationCounter(generators[name].denoiser) as counter:
                start = time.perf_counter()
                generators[name].sample(masks, seeds)
                times[name].append((time.perf_counter() - start) / len(masks))
            evaluations[name] = counter.samples / len(masks)
    base = statistics.median(times[names[0]])
    print(
        f"{len(masks)} masks of 64 px, guidance {args.guidance_scale:g}, {args.threads} thread(s), median of "
        f"{args.rounds} interleaved rounds"
    )
    print(f"| generator | sampler | evaluations / tile | s/tile | vs {names[0]} |\n|---|---|---|---|---|")
    for name in names:
        median = statistics.median(times[name])
        window = generators[name].ldm_sampler
        sampler = f"{type(window.scheduler).__name__} {window.num_inference_steps}"
        print(
            f"| {generators[name].name} ({name}) | {sampler} | {evaluations[name]:.1f} | {median:.3f} "
            f"| {median / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
