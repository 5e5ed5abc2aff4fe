"""Our two extensions, measured on held-out toy masks with the shipped weights (a script, not a test).

1. Fusing separated conditions at an intermediate DDIM step (``SeparatedConditionInferer(fuse_step=n)``)
   instead of at the end: does it remove seams at label boundaries, and does it cost mask fidelity?
2. Classifier-free guidance (mask dropout in training, guidance scale at sampling): does it help fidelity?

Seams are read as the ratio of the tile's mean gradient magnitude in a 2 px band around label boundaries to
that elsewhere; the real tiles under the same masks give the reference ratio. Fidelity is the CarcinoNet
ruler's mIoU against the conditioning masks, realism the FID on the ruler's encoder features against 256 held-out
real tiles (as ``monai-disc compare-generators``). All variants share masks and noise seeds.

    python bench/bench_variants.py --data demo_out/toy --bundles bundles --masks 16 --num-inference-steps 50 [--cfg-weights W]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from monai_disc.apps.compare import held_out_masks, ruler_features, ruler_fid
from monai_disc.bundles import AUTOENCODER_WEIGHTS, CARCINONET_WEIGHTS, bundle_file
from monai_disc.inferers import GENERATORS, MaskLDMSampler, SeparatedConditionInferer
from monai_disc.metrics import MaskFidelity
from monai_disc.networks import carcinonet_toy, load_weights, mask_ldm_toy, vq_f4_toy


def boundary_ratio(tiles: torch.Tensor, masks: torch.Tensor, band: int = 2) -> float:
    """Mean gradient magnitude near label boundaries over that elsewhere (1: no seam contrast)."""
    grey = tiles.mean(dim=1, keepdim=True)
    gx = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(), (0, 0, 0, 1))
    grad = (gx + gy)[:, 0]
    m = masks.float()[:, None]
    edge = torch.zeros_like(m, dtype=torch.bool)
    edge[..., :, 1:] |= m[..., :, 1:] != m[..., :, :-1]
    edge[..., 1:, :] |= m[..., 1:, :] != m[..., :-1, :]
    near = F.max_pool2d(edge.float(), 2 * band + 1, stride=1, padding=band)[:, 0] > 0
    return float(grad[near].mean() / grad[~near].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--cfg-weights", default=None, help="a denoiser trained with cond_drop_prob > 0")
    args = parser.parse_args()
    torch.set_num_threads(2)

    bundles = Path(args.bundles)
    autoencoder = load_weights(vq_f4_toy(), bundle_file(AUTOENCODER_WEIGHTS, bundles))
    sd = load_weights(mask_ldm_toy(), bundle_file(GENERATORS["sd"].weights, bundles))
    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, bundles))
    masks, real = held_out_masks(args.data, args.masks, size=64)
    _, reference = held_out_masks(args.data, 256, min_labels=1, size=64)
    reference_features = ruler_features(ruler, reference, batch_size=32)

    def fid(tiles: torch.Tensor) -> float:
        return ruler_fid(ruler_features(ruler, tiles, batch_size=32), reference_features)

    seeds = list(range(len(masks)))

    def plain(guidance: float = 1.0) -> MaskLDMSampler:
        return MaskLDMSampler(num_inference_steps=args.num_inference_steps, guidance_scale=guidance, progress=False)

    variants = {
        "SD": (plain(), sd),
        "SD-SC, fused at the end (paper)": (SeparatedConditionInferer(plain()), sd),
        f"SD-SC, fused after {args.num_inference_steps * 3 // 4} steps": (
            SeparatedConditionInferer(plain(), args.num_inference_steps * 3 // 4),
            sd,
        ),
        f"SD-SC, fused after {args.num_inference_steps // 2} steps": (
            SeparatedConditionInferer(plain(), args.num_inference_steps // 2),
            sd,
        ),
    }
    if args.cfg_weights:
        cfg = load_weights(mask_ldm_toy(), args.cfg_weights)
        variants.update({f"CFG-trained, guidance {g}": (plain(g), cfg) for g in (1.0, 2.0, 3.0, 4.0)})

    print(f"{len(masks)} held-out 64 px masks with two or more labels, {args.num_inference_steps} DDIM steps, CPU")
    print("| variant | mIoU | pixel accuracy | FID | boundary/interior gradient | s/tile |")
    print("| --- | --- | --- | --- | --- | --- |")
    fidelity = MaskFidelity(ruler)
    fidelity(real, masks)
    scores = fidelity.aggregate()
    print(
        f"| real tiles | {scores['miou']:.3f} | {scores['pixel_accuracy']:.3f} | {fid(real):.2f} "
        f"| {boundary_ratio(real, masks):.3f} | - |"
    )
    for name, (sampler, denoiser) in variants.items():
        start = time.perf_counter()
        tiles = sampler.sample(masks, autoencoder, denoiser, seeds=seeds)
        seconds = (time.perf_counter() - start) / len(masks)
        fidelity = MaskFidelity(ruler)
        fidelity(tiles, masks)
        scores = fidelity.aggregate()
        ratio = boundary_ratio(tiles, masks)
        print(
            f"| {name} | {scores['miou']:.3f} | {scores['pixel_accuracy']:.3f} | {fid(tiles):.2f} | {ratio:.3f} "
            f"| {seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
