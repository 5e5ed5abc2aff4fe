"""Why SD-DISC loses mask fidelity on the toy set: fine-tune SD on each kind of target, read the fidelity side by side.

Every arm starts from the shipped SD weights and takes the same AdamW steps (learning rate, batch, min-SNR
timesteps, seed) on one kind of clean latent under its mask; only the targets differ:

- ``real``: latents of random crops of the real training tiles (continued SD training, the control);
- ``self``: SD's own samples under random shape-bank masks (self-training, no separated conditions);
- ``fused``: the DISC targets, separated latents {z_0^k} fused by random masks (Eq. 3);
- ``uniform``: the same separated latents, unfused, each under its uniform mask (what fusion adds);
- ``self``, ``fused`` and ``uniform`` again with the targets drawn with classifier-free guidance ``--guidance-scale``;
- the DISC variants of issue 19, all on guided targets: ``finished`` (SC fused after ``--fuse-step`` of the steps and
  finished under the full mask: no latent-grid seams in the target), ``soft`` (the separated latents fused by each
  label's area share of a latent pixel, smoothed over 3 x 3 latent pixels: a softened boundary), ``fused-dropout``
  (DISC with mask dropout 0.1 during fine-tuning, so that guided sampling works; scored unguided and with guidance)
  and ``cotrain`` (half of each batch real tile latents, half fused guided latents: CoTrain's lambda 0.5).

For each arm it prints the ruler's mIoU of the targets themselves (decoded) and the comparison's row of plain
sampling with the fine-tuned weights on the comparison's held-out masks (``monai-disc compare-generators``: the
same masks and seeds): IoU per class, leak, FID on the ruler's features, seconds per tile. On one CPU thread an arm
takes about 6 minutes of fine-tuning at 1,500 iterations plus the time to draw its targets (up to 10 minutes for
the guided distillation set, shared by the arms that fuse it); ``--arms`` runs a part, ``--save`` keeps the weights.

    python bench/bench_self_training.py --data .toy --bundles bundles --sets 512 --iters 1500 --guidance-scale 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from monai.networks.schedulers import DDPMScheduler
from monai.transforms import Compose, RandFlipd, RandRotate90d, RandSpatialCropd

from monai_disc.apps.compare import compare_generators, held_out_masks
from monai_disc.bundles import AUTOENCODER_WEIGHTS, CARCINONET_WEIGHTS, bundle_file
from monai_disc.data.sicapv2 import load_sicapv2
from monai_disc.engines import (
    DISCPrepareBatch,
    DistillationSet,
    LatentDiffusionPrepareBatch,
    draw_timesteps,
    write_distillation_set,
)
from monai_disc.inferers import (
    GENERATORS,
    LDM_SCHEDULE,
    LDMGenerator,
    MaskLDMSampler,
    SeparatedConditionInferer,
    fuse_latents,
    uniform_masks,
)
from monai_disc.masks import ShapeBank
from monai_disc.metrics import MaskFidelity
from monai_disc.networks import carcinonet_toy, load_weights, mask_ldm_toy, vq_f4_toy
from monai_disc.transforms import sicapv2_tile_transforms

ARMS = (
    "real", "self", "fused", "uniform", "self-guided", "fused-guided", "uniform-guided",
    "finished-guided", "soft-guided", "fused-dropout-guided", "cotrain-guided",
)  # fmt: skip
TILE = 64  # the toy LDM's tile side
LATENT_SHAPE = (3, TILE // 4, TILE // 4)  # vq_f4_toy's latents of a tile


def real_targets(data: str, autoencoder: torch.nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and masks of ``n`` random crops (with flips) of the Test partition's Train tiles, as SD trained."""
    tiles = [sicapv2_tile_transforms()(d) for d in load_sicapv2(data, "Test", "Train")]
    keys = ["image", "mask"]
    augment = Compose(
        [
            RandSpatialCropd(keys, (TILE, TILE), random_size=False),
            RandFlipd(keys, 0.5, 0),
            RandFlipd(keys, 0.5, 1),
            RandRotate90d(keys, 0.5),
        ]
    )
    augment.set_random_state(0)
    picks = torch.randint(0, len(tiles), (n,), generator=torch.Generator().manual_seed(0))
    crops = [augment(tiles[int(i)]) for i in picks]
    images = torch.stack([torch.as_tensor(c["image"]).as_subclass(torch.Tensor).float() for c in crops])
    masks = torch.stack([torch.as_tensor(c["mask"]).as_subclass(torch.Tensor)[0].long() for c in crops])
    encode = LatentDiffusionPrepareBatch(autoencoder, DDPMScheduler(**LDM_SCHEDULE)).encode
    return torch.cat([encode(x) for x in images.split(64)]), masks


def self_targets(sd: torch.nn.Module, masks: torch.Tensor, sampler: MaskLDMSampler) -> torch.Tensor:
    """SD's own latents under ``masks`` (seeds 10,000 + i)."""
    out = []
    for start in range(0, len(masks), 32):
        batch = masks[start : start + 32]
        noise = sampler.make_noise(range(10_000 + start, 10_000 + start + len(batch)), LATENT_SHAPE, "cpu")
        out.append(sampler.sample_latents(noise, sd.encode_mask(batch), sd))
    return torch.cat(out)


def soft_fuse(latents: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Separated latents (B, K, C, h, w) mixed by each label's area share of a latent pixel, smoothed over 3 x 3
    latent pixels (a softened boundary; :func:`fuse_latents` takes the top-left pixel's label, a hard one)."""
    k, (h, w) = latents.shape[1], latents.shape[-2:]
    onehot = torch.nn.functional.one_hot(masks, k).permute(0, 3, 1, 2).float()
    share = torch.nn.functional.adaptive_avg_pool2d(onehot, (h, w))
    share = torch.nn.functional.avg_pool2d(share, 3, stride=1, padding=1, count_include_pad=False)
    return (share.unsqueeze(2) * latents).sum(1)


def fine_tune(
    init: str, targets, iters: int, lr: float, scheduler: DDPMScheduler, cond_drop_prob: float = 0.0
) -> torch.nn.Module:
    """AdamW steps from the SD weights on one target source: ``targets(batch_index) -> (z_0, masks)``."""
    torch.manual_seed(0)
    net = load_weights(mask_ldm_toy(cond_drop_prob=cond_drop_prob), init).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    for i in range(iters):
        z0, masks = targets(i)
        noise = torch.randn_like(z0)
        t = draw_timesteps(scheduler, len(z0), None, snr_gamma=1.0)
        loss = torch.nn.functional.mse_loss(net(scheduler.add_noise(z0, noise, t), t, mask=masks), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--bank", default=None, help="shape bank (.npz); default: built from the Test/Train masks")
    parser.add_argument("--sets", type=int, default=512, help="target latents (or separated sets) per arm")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--fuse-step", type=int, default=25, help="the finished arm's fusion step")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="which targets to fine-tune on")
    parser.add_argument("--masks", type=int, default=64, help="held-out masks (the comparison's) to score each arm on")
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--save", type=Path, default=None, help="folder for each arm's fine-tuned weights")
    args = parser.parse_args()
    torch.set_num_threads(1)

    bundles = Path(args.bundles)
    init = bundle_file(GENERATORS["sd"].weights, bundles)
    autoencoder = load_weights(vq_f4_toy(), bundle_file(AUTOENCODER_WEIGHTS, bundles))
    sd = load_weights(mask_ldm_toy(), init)
    ruler = load_weights(carcinonet_toy(), bundle_file(CARCINONET_WEIGHTS, bundles))
    scheduler = DDPMScheduler(**LDM_SCHEDULE)
    if args.bank is None:
        bank = ShapeBank.from_data_list(load_sicapv2(args.data, "Test", "Train"), size=128)
    else:
        bank = ShapeBank.load(args.bank)
    # the DISC batch preparation draws the training masks of every arm but "real" (its masks are the tiles')
    draw = DISCPrepareBatch(scheduler, bank, image_size=TILE, crop=True, seed=1)
    held, _ = held_out_masks(args.data, args.masks, min_labels=2, size=TILE)
    _, real_tiles = held_out_masks(args.data, 256, min_labels=1, size=TILE)

    def sampler(guidance: float = 1.0) -> MaskLDMSampler:
        return MaskLDMSampler(num_inference_steps=args.num_inference_steps, guidance_scale=guidance, progress=False)

    def miou(latents: torch.Tensor, masks: torch.Tensor) -> float:
        with torch.no_grad():
            tiles = autoencoder.decode_stage_2_outputs(latents / autoencoder.scale_factor).clamp(-1, 1)
        fidelity = MaskFidelity(ruler)
        fidelity(tiles, masks)
        return float(fidelity.aggregate()["miou"])

    def scored(net: torch.nn.Module, guidance: float = 1.0) -> dict:
        """The comparison's row of plain (or guided) sampling with ``net`` on the held-out masks."""
        generator = LDMGenerator(sampler(guidance), autoencoder, net.eval())
        with tempfile.TemporaryDirectory() as out:
            result = compare_generators({"x": generator}, held, range(len(held)), ruler, real_tiles, out)
        return result["generators"]["x"]

    def pairs(latents: torch.Tensor, masks: torch.Tensor):
        order = torch.Generator().manual_seed(0)

        def batch(_: int, size: int = args.batch) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.randint(0, len(latents), (size,), generator=order)
            return latents[index], masks[index]

        return batch, miou(latents[:256], masks[:256])

    def fused(separated: torch.Tensor, fuse=fuse_latents):
        def batch(_: int, size: int = args.batch) -> tuple[torch.Tensor, torch.Tensor]:
            masks = draw.masks(size)
            return fuse(separated[torch.randint(0, len(separated), (size,))], masks), masks

        shown = separated[:256]
        masks = DISCPrepareBatch(scheduler, bank, image_size=TILE, crop=True, seed=3).masks(len(shown))
        return batch, miou(fuse(shown, masks), masks)

    def uniform(separated: torch.Tensor):
        n, k = separated.shape[:2]
        return pairs(separated.flatten(0, 1), uniform_masks(k, (TILE, TILE)).repeat(n, 1, 1))

    def finished(guidance: float):
        """SC under random masks, fused after ``--fuse-step`` steps and finished under the full mask."""
        masks = draw.masks(args.sets)
        inferer = SeparatedConditionInferer(sampler(guidance), fuse_step=args.fuse_step)
        out = []
        for start in range(0, len(masks), 32):
            batch = masks[start : start + 32]
            noise = inferer.sampler.make_noise(range(20_000 + start, 20_000 + start + len(batch)), LATENT_SHAPE)
            out.append(inferer.sample_latents(noise, batch, sd))
        return pairs(torch.cat(out), masks)

    def cotrain(separated: torch.Tensor, guidance: float):
        """Half of each batch real tile latents, half fused separated latents (CoTrain with lambda 0.5)."""
        real_batch, _ = pairs(*real_targets(args.data, autoencoder, args.sets))
        fused_batch, target_miou = fused(separated)

        def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            (zr, mr), (zf, mf) = real_batch(i, args.batch // 2), fused_batch(i, args.batch - args.batch // 2)
            return torch.cat([zr, zf]), torch.cat([mr, mf])

        return batch, target_miou

    separated_sets: dict[float, torch.Tensor] = {}

    def separated_set(guidance: float, root: Path) -> torch.Tensor:
        """The distillation set drawn at ``guidance``, written once and shared by the arms that fuse or unfuse it."""
        if guidance in separated_sets:
            return separated_sets[guidance]
        sets = write_distillation_set(
            root,
            sd,
            args.sets,
            LATENT_SHAPE,
            autoencoder,
            shard_size=args.sets,
            sampler=sampler(guidance),
            progress=False,
        )
        dataset = DistillationSet(root)
        separated_sets[guidance] = torch.stack([dataset[i]["latents"] for i in range(sets["sets"])])
        return separated_sets[guidance]

    def targets(name: str, guidance: float, tmp: Path):
        """(batch function, the targets' own mIoU) of an arm."""
        if name == "real":
            return pairs(*real_targets(args.data, autoencoder, args.sets))
        if name == "self":
            masks = draw.masks(args.sets)
            return pairs(self_targets(sd, masks, sampler(guidance)), masks)
        if name == "finished":
            return finished(guidance)
        separated = separated_set(guidance, tmp / f"distill_{guidance:g}")
        if name == "uniform":
            return uniform(separated)
        if name == "cotrain":
            return cotrain(separated, guidance)
        return fused(separated, soft_fuse if name == "soft" else fuse_latents)

    head = "| fine-tuned on | targets' mIoU | mIoU | IoU NC | GG3 | GG4 | GG5 | leak | FID | s/tile |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))

    def line(label: str, target_miou: float | None, row: dict) -> None:
        cells = [label, "-" if target_miou is None else f"{target_miou:.3f}", f"{row['miou']:.3f}"]
        cells += [f"{v:.3f}" for v in row["iou"]] + [f"{row['leak']:.3f}", f"{row['fid']:.2f}"]
        cells.append(f"{row['seconds_per_tile']:.3f}")
        print("| " + " | ".join(cells) + " |", flush=True)

    line("nothing (SD as shipped)", None, scored(sd))
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            name, guided = arm.removesuffix("-guided"), arm.endswith("-guided")
            dropout = name.endswith("-dropout")
            name = name.removesuffix("-dropout")
            guidance = args.guidance_scale if guided else 1.0
            with torch.no_grad():
                batches, target_miou = targets(name, guidance, Path(tmp))
            net = fine_tune(str(init), batches, args.iters, args.lr, scheduler, cond_drop_prob=0.1 if dropout else 0.0)
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), args.save / f"{arm}.pt")
            label = f"{name}{', mask dropout' if dropout else ''}{f', guided {guidance:g}' if guided else ''}"
            with torch.no_grad():
                line(label, target_miou, scored(net))
                if dropout:
                    line(
                        f"{label}; sampled with guidance {args.guidance_scale:g}",
                        None,
                        scored(net, args.guidance_scale),
                    )


if __name__ == "__main__":
    main()
