"""Fewer sampling steps: MONAI's PNDM and DDIM with other timestep spacings at 10 and 20 steps against DDIM 50.

The shipped toy SD (``bundles/gleason_ldm/models``) draws tiles for the same held-out masks and noise seeds under
each scheduler; the CarcinoNet ruler (``bundles/carcinonet/models``) reads them, as ``monai-disc
compare-generators`` does (mIoU and pixel accuracy against the conditioning masks). Every scheduler runs on the
CompVis LDM noise schedule the denoiser was trained with (:data:`monai_disc.inferers.LDM_SCHEDULE`).

Timestep grids (1000 training steps, n sampling steps, ratio r = 1000 // n):

- ``linspace``: ``ddim_scheduler()``, the sampler's default (MONAI's DDIM with ``steps_offset=1``): n points
  from 999 to 1 spaced (998 / (n - 1)) apart, while each step jumps r back (so at 10 steps a step lands 11
  below the next grid point).
- ``leading``: CompVis / diffusers' default, ``r * (n - 1) + 1, ..., r + 1, 1``: each step lands on the next.
- ``trailing``: ``999, 999 - r, ..., r - 1``: starts at pure noise, each step lands on the next grid point.
- ``PNDM``: MONAI's PNDM as PLMS (``skip_prk_steps``, the "leading" grid), one network call per step (its second
  call re-does the first step without repeating that timestep, so later calls are told a timestep one grid step
  below their sample's); ``PLMS, timestep repeated``: :func:`monai_disc.inferers.plms_scheduler`, the same with
  the timestep repeated as CompVis and diffusers do (n + 1 calls); ``F-PNDM`` with its Runge-Kutta warm-up.

Times are seconds per tile on this machine's CPU with one thread (the toy networks); the ratio between rows is
what carries over to a GPU (the network calls dominate).

    python bench/bench_schedulers.py --data .toy --bundles bundles --masks 64 [--num-inference-steps 10 20] [--guidance-scale 1 3]
        [--seed-sets 2] [--only "PLMS, timestep repeated"]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from monai.networks.schedulers import DDIMScheduler, PNDMScheduler

from monai_disc.apps.compare import held_out_masks, ruler_features, ruler_fid
from monai_disc.inferers import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler, plms_scheduler
from monai_disc.metrics import MaskFidelity
from monai_disc.networks import carcinonet_toy, load_weights, mask_ldm_toy, vq_f4_toy

SPACINGS = ("linspace", "leading", "trailing")


class SpacedDDIMScheduler(DDIMScheduler):
    """MONAI's DDIM on the LDM schedule with a chosen timestep grid (see the module docstring).

    Args:
        timestep_spacing: "linspace" (MONAI's own grid), "leading" or "trailing".
        kwargs: ``DDIMScheduler`` arguments.
    """

    def __init__(self, timestep_spacing: str = "leading", **kwargs) -> None:
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {timestep_spacing!r}")
        self.timestep_spacing = timestep_spacing
        super().__init__(**kwargs)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)  # checks, num_inference_steps, linspace grid
        ratio = self.num_train_timesteps // num_inference_steps
        if self.timestep_spacing == "leading":
            grid = torch.arange(num_inference_steps - 1, -1, -1) * ratio + self.steps_offset
        elif self.timestep_spacing == "trailing":
            grid = torch.arange(self.num_train_timesteps, 0, -ratio)[:num_inference_steps] - 1
        else:
            return
        self.timesteps = grid.long().to(device)


def schedulers(steps: int) -> dict[str, object]:
    """The schedulers compared at ``steps`` sampling steps, by row name."""
    ddim = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **LDM_SCHEDULE)
    rows: dict[str, object] = {f"DDIM {s}": SpacedDDIMScheduler(s, **ddim) for s in SPACINGS}
    rows["PNDM (PLMS)"] = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, **LDM_SCHEDULE)
    rows["PLMS, timestep repeated"] = plms_scheduler()
    rows["F-PNDM (Runge-Kutta start)"] = PNDMScheduler(
        skip_prk_steps=False, set_alpha_to_one=False, steps_offset=1, **LDM_SCHEDULE
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the toy set (monai-disc toy-data --out DIR)")
    parser.add_argument("--bundles", default="bundles")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--num-inference-steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--seed-sets", type=int, default=2, help="noise seed sets (their spread is the noise)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--only", nargs="+", default=None, help="run only these scheduler rows (and the reference)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    bundles = Path(args.bundles)
    autoencoder = load_weights(vq_f4_toy(), bundles / "gleason_ldm/models/autoencoder.pt")
    denoiser = load_weights(mask_ldm_toy(), bundles / "gleason_ldm/models/model.pt")
    ruler = load_weights(carcinonet_toy(), bundles / "carcinonet/models/model.pt")
    masks, _ = held_out_masks(args.data, args.masks, size=64)
    _, reference = held_out_masks(args.data, 256, min_labels=1, size=64)
    reference_features = ruler_features(ruler, reference, batch_size=32)

    def measure(scheduler: object, steps: int, guidance: float, seeds: list[int]) -> tuple[float, float, float, float]:
        sampler = MaskLDMSampler(scheduler, num_inference_steps=steps, guidance_scale=guidance, progress=False)
        fidelity = MaskFidelity(ruler)
        seconds = 0.0
        drawn = []
        for b in range(0, len(masks), args.batch):
            start = time.perf_counter()
            tiles = sampler.sample(masks[b : b + args.batch], autoencoder, denoiser, seeds=seeds[b : b + args.batch])
            seconds += time.perf_counter() - start
            fidelity(tiles, masks[b : b + args.batch])
            drawn.append(tiles)
        scores = fidelity.aggregate()
        fid = ruler_fid(ruler_features(ruler, torch.cat(drawn), batch_size=32), reference_features)
        return float(scores["miou"]), float(scores["pixel_accuracy"]), seconds / len(masks), float(fid)

    print(
        f"{len(masks)} held-out 64 px masks (2+ labels), toy SD, CarcinoNet ruler; {args.seed_sets} seed sets "
        f"(mIoU: mean over sets, +- half their range); CPU, one thread"
    )
    for guidance in args.guidance_scale:
        print(f"\nguidance {guidance:g}\n")
        print("| scheduler | steps | network calls / tile | mIoU | pixel acc | FID | s/tile |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        plan = [("DDIM linspace (reference)", ddim_scheduler(), args.reference_steps)]
        plan += [
            (name, sch, n)
            for n in args.num_inference_steps
            for name, sch in schedulers(n).items()
            if not (n == args.reference_steps and name == "DDIM linspace") and (args.only is None or name in args.only)
        ]
        for name, scheduler, n in plan:
            results = [
                measure(scheduler, n, guidance, list(range(s * 100_000, s * 100_000 + len(masks))))
                for s in range(args.seed_sets)
            ]
            miou = [r[0] for r in results]
            acc = sum(r[1] for r in results) / len(results)
            sec = sum(r[2] for r in results) / len(results)
            fid = sum(r[3] for r in results) / len(results)
            scheduler.set_timesteps(n)
            calls = len(scheduler.timesteps) * (2 if guidance != 1.0 else 1)
            mean = sum(miou) / len(miou)
            spread = (max(miou) - min(miou)) / 2
            print(
                f"| {name} | {n} | {calls} | {mean:.3f} +- {spread:.3f} | {acc:.3f} | {fid:.2f} | {sec:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
