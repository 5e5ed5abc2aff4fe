"""Steps against fidelity: the shipped SD at several DDIM step counts, unguided and guided, in one table.

Every row draws the same held-out masks from the same seeds (``monai-disc compare-generators``'s masks and
ruler), so the rows differ in the step count and guidance alone; s/tile are measured side by side in the same
run. The table chooses ``monai_disc.inferers.DEFAULT_NUM_INFERENCE_STEPS``: the fewest steps within 0.005 mIoU
of the most steps on the same masks and seeds, unguided and guided. Two more seed sets at the default show how
much a table moves with the seeds alone (far more than the paired step-to-step differences).

    python bench/bench_steps.py --data .toy --masks 64 [--num-inference-steps 10 20 50 100 200] [--guidance-scale 1 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from monai_disc.apps.compare import compare_generators, held_out_masks
from monai_disc.bundles import CARCINONET_WEIGHTS, bundle_file
from monai_disc.inferers import DEFAULT_NUM_INFERENCE_STEPS, load_generator
from monai_disc.networks import carcinonet_toy, load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a SICAPv2-layout toy set (monai-disc toy-data)")
    parser.add_argument("--bundles", default=None, help="bundles folder (default: the checkout's)")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--num-inference-steps", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, args.bundles))
    masks, _ = held_out_masks(args.data, args.masks, min_labels=2, size=64)
    _, real = held_out_masks(args.data, 256, min_labels=1, size=64)
    generators = {
        f"SD, {s} steps, guidance {g:g}": load_generator("sd", args.bundles, num_inference_steps=s, guidance_scale=g)
        for g in args.guidance_scale
        for s in args.num_inference_steps
    }
    with tempfile.TemporaryDirectory() as out:
        result = compare_generators(generators, masks, range(len(masks)), ruler, real, out)
        print(f"{len(masks)} held-out 64 px masks, seeds 0..{len(masks) - 1}, CPU, {args.threads} thread(s)")
        print("| DDIM steps | guidance | mIoU | pixel acc | FID | s/tile |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in result["order"]:
            row = result["generators"][name]
            steps, guidance = name.split(", ")[1].split()[0], name.split()[-1]
            print(
                f"| {steps} | {guidance} | {row['miou']:.3f} | {row['pixel_accuracy']:.3f} | {row['fid']:.2f} "
                f"| {row['seconds_per_tile']:.3f} |"
            )
        for g in args.guidance_scale:  # seed-to-seed spread at the default step count
            sd = load_generator("sd", args.bundles, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS, guidance_scale=g)
            mious = [
                compare_generators({"SD": sd}, masks, range(k * len(masks), (k + 1) * len(masks)), ruler, real, out)[
                    "generators"
                ]["SD"]["miou"]
                for k in range(3)
            ]
            print(
                f"guidance {g:g}, {DEFAULT_NUM_INFERENCE_STEPS} steps, three seed sets: mIoU "
                f"{' / '.join(f'{m:.3f}' for m in mious)} (spread {max(mious) - min(mious):.3f}, "
                f"sd {statistics.stdev(mious):.3f})"
            )


if __name__ == "__main__":
    main()
