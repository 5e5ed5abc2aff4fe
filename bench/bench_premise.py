"""The paper's premise: SD lets one pattern leak into another region of a mask, and separated conditions do not.

Reads, on the comparison's held-out masks (2-4 labels, the same seeds), how often a generator's tile shows a label
of the mask in another label's region (``leak``, :class:`monai_disc.metrics.MaskFidelity`) beside mIoU, for:

- the shipped SD, plain and with separated conditions (SD-SC), and DISC / CoTrain as shipped;
- the setting the paper's SD comes from: SD trained, as on SICAPv2's 512 px tiles, mostly on tiles dominated by one
  pattern. Here the shipped SD is fine-tuned for ``--iters`` AdamW steps on 64 px crops of the real training tiles
  in which one label covers at least ``--dominance`` of the pixels (SD-dominant), then read plain and with separated
  conditions, and SD-DISC is made from it as the paper does (a distillation set of its separated latents, drawn
  plainly, fused by random masks, the same fine-tuning steps): does SD-SC beat SD there, and does DISC match SC?

On one CPU thread: about 7 minutes of fine-tuning per 1,500 iterations, 5 minutes for 512 distillation sets.

    python bench/bench_premise.py --data .toy --iters 1500 --sets 512
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from monai.networks.schedulers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).parent))
from bench_self_training import LATENT_SHAPE, TILE, fine_tune, real_targets  # noqa: E402

from monai_disc.apps.compare import compare_generators, held_out_masks  # noqa: E402
from monai_disc.bundles import AUTOENCODER_WEIGHTS, CARCINONET_WEIGHTS, bundle_file  # noqa: E402
from monai_disc.data.sicapv2 import load_sicapv2  # noqa: E402
from monai_disc.engines import DISCPrepareBatch, DistillationSet, write_distillation_set  # noqa: E402
from monai_disc.inferers import (  # noqa: E402
    GENERATORS,
    LDM_SCHEDULE,
    LDMGenerator,
    MaskLDMSampler,
    SeparatedConditionInferer,
    fuse_latents,
)
from monai_disc.masks import ShapeBank  # noqa: E402
from monai_disc.networks import carcinonet_toy, load_weights, mask_ldm_toy, vq_f4_toy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sets", type=int, default=512, help="distillation sets of SD-dominant for its DISC")
    parser.add_argument("--dominance", type=float, default=0.9, help="share of a crop its main label covers")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--num-inference-steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)

    bundles = Path(args.bundles)
    autoencoder = load_weights(vq_f4_toy(), bundle_file(AUTOENCODER_WEIGHTS, bundles))
    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, bundles))
    init = str(bundle_file(GENERATORS["sd"].weights, bundles))
    scheduler = DDPMScheduler(**LDM_SCHEDULE)
    held, _ = held_out_masks(args.data, args.masks, min_labels=2, size=TILE)
    _, real_tiles = held_out_masks(args.data, 256, min_labels=1, size=TILE)
    sampler = MaskLDMSampler(num_inference_steps=args.num_inference_steps, progress=False)

    def row(name: str, net: torch.nn.Module, separated: bool = False) -> None:
        plain = SeparatedConditionInferer(sampler) if separated else sampler
        generator = LDMGenerator(plain, autoencoder, net.eval())
        with tempfile.TemporaryDirectory() as out:
            r = compare_generators({name: generator}, held, range(len(held)), ruler, real_tiles, out)
        r = r["generators"][name]
        iou = " | ".join(f"{v:.3f}" for v in r["iou"])
        print(
            f"| {name} | {r['miou']:.3f} | {iou} | {r['leak']:.3f} | {r['foreign']:.3f} | {r['fid']:.2f} |", flush=True
        )

    print(
        "| generator | mIoU | IoU NC | GG3 | GG4 | GG5 | leak | foreign | FID |\n|---|---|---|---|---|---|---|---|---|"
    )
    sd = load_weights(mask_ldm_toy(), init)
    row("SD", sd)
    row("SD-SC", sd, separated=True)
    for key in ("disc", "cotrain"):
        path = bundle_file(GENERATORS[key].weights, bundles)
        if path.is_file():
            row(f"{GENERATORS[key].display} (shipped)", load_weights(mask_ldm_toy(), path))

    # SD-dominant: fine-tuned on crops that one pattern dominates, as SICAPv2's tiles are
    latents, masks = real_targets(args.data, autoencoder, 8 * args.sets)
    share = torch.nn.functional.one_hot(masks.flatten(1), 4).float().mean(1).amax(1)
    keep = share >= args.dominance
    latents, masks = latents[keep], masks[keep]
    print(f"\n{int(keep.sum())} of {len(keep)} crops are dominated by one label (>= {args.dominance:.0%})", flush=True)
    order = torch.Generator().manual_seed(0)

    def dominant(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, len(latents), (args.batch,), generator=order)
        return latents[index], masks[index]

    sd_dom = fine_tune(init, dominant, args.iters, args.lr, scheduler)
    row("SD-dominant", sd_dom)
    row("SD-dominant-SC", sd_dom, separated=True)

    # its DISC, as the paper makes it: plain separated latents fused by random masks
    bank = ShapeBank.from_data_list(load_sicapv2(args.data, "Test", "Train"), size=128)
    draw = DISCPrepareBatch(scheduler, bank, image_size=TILE, crop=True, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            sets = write_distillation_set(
                tmp, sd_dom, args.sets, LATENT_SHAPE, autoencoder, shard_size=args.sets, sampler=sampler, progress=False
            )
        data = DistillationSet(tmp)
        separated = torch.stack([data[i]["latents"] for i in range(sets["sets"])])
    with tempfile.NamedTemporaryFile(suffix=".pt") as weights:
        torch.save(sd_dom.state_dict(), weights.name)

        def fused(_: int) -> tuple[torch.Tensor, torch.Tensor]:
            m = draw.masks(args.batch)
            return fuse_latents(separated[torch.randint(0, len(separated), (args.batch,))], m), m

        row("SD-dominant-DISC", fine_tune(weights.name, fused, args.iters, args.lr, scheduler))


if __name__ == "__main__":
    main()
