"""Fidelity against network evaluations per tile: rows of (generator, solver, steps, guidance) on the comparison's masks.

Every row draws the same held-out masks with the same seeds (``compare-generators``' masks; seed set s uses seeds
``s * 64 + i``) and is scored by :func:`monai_disc.apps.compare.compare_generators`: mIoU, leak, FID and the network
evaluations per tile counted while drawing. A row is ``generator:solver:steps[:guidance]``; ``--weights`` swaps the
denoiser of every row for another file (e.g. a checkpoint's EMA, to follow a distillation run).

    python bench/bench_evaluations.py --data .toy --masks 64 --rows gd:plms:3 gd:ddim:50 gd2:ddim-leading:2 \
        sd:plms:3:3 [--seed-sets 0 1 2] [--weights runs/gd2/checkpoints/checkpoint_iteration=500.pt]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from monai_disc.apps.compare import compare_generators, held_out_masks
from monai_disc.bundles import CARCINONET_WEIGHTS, bundle_file
from monai_disc.inferers import load_generator, split_generator_spec
from monai_disc.networks import carcinonet_toy, load_weights


def _row(spec: str, bundles: str, weights: str | None):
    parts = spec.split(":")
    try:
        name, knobs = split_generator_spec(":".join(parts[:3]))
    except ValueError:
        knobs = {}
    if not knobs or len(parts) > 4:
        raise SystemExit(f"row {spec!r}: expected generator:solver:steps[:guidance]")
    guidance = float(parts[3]) if len(parts) == 4 else 1.0
    gen = load_generator(name, bundles, guidance_scale=guidance, **knobs)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        gen.denoiser.load_state_dict(state.get("ema", state.get("model", state)))
    return gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--rows", nargs="+", required=True, help="generator:solver:steps[:guidance]")
    parser.add_argument("--seed-sets", type=int, nargs="+", default=[0])
    parser.add_argument("--weights", default=None, help="denoiser weights for every row (a checkpoint's EMA)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, args.bundles))
    masks, _ = held_out_masks(args.data, args.masks, min_labels=2, size=64)
    _, real = held_out_masks(args.data, 256, min_labels=1, size=64)
    print("| row | seeds | evaluations / tile | mIoU | leak | FID | s/tile |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.rows:
        gen = _row(spec, args.bundles, args.weights)
        for s in args.seed_sets:
            seeds = list(range(s * len(masks), (s + 1) * len(masks)))
            with tempfile.TemporaryDirectory() as out:
                result = compare_generators({spec: gen}, masks, seeds, ruler, real, out, batch_size=16, grid_rows=0)
            row = result["generators"][spec]
            print(
                f"| {spec} | {seeds[0]}..{seeds[-1]} | {row['network_evaluations_per_tile']:.1f} | {row['miou']:.3f} "
                f"| {row['leak']:.3f} | {row['fid']:.2f} | {row['seconds_per_tile']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
