"""Sampler and training-step speed of the toy mask-conditioned LDM, side by side with MONAI's inferer.

Runs our :class:`MaskLDMSampler` and MONAI's ``LatentDiffusionInferer.sample`` on the same networks
(``mask_ldm_toy`` and ``vq_f4_toy`` at random init), noise, DDIM scheduler and step count, interleaved in one
process so that load on the machine hits both alike; reports the median of the repeats and ours/MONAI ratios.
Then times training iterations of the toy denoiser (forward, backward, Adam) on batches of 64 px tiles.

    python bench/bench_sampler.py [--num-inference-steps 50] [--batch 8] [--size 64] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDPMScheduler

from monai_disc.inferers.mask_ldm import LDM_SCHEDULE, MaskLDMSampler, ddim_scheduler
from monai_disc.networks.denoiser import mask_ldm_toy

try:
    from monai_disc.networks.autoencoder import vq_f4_toy
except ImportError as e:  # written by another part of the project
    raise SystemExit(f"bench_sampler needs monai_disc.networks.autoencoder.vq_f4_toy ({e}).") from e

__all__ = ["main"]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _masks(batch: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 4, (batch, 1, 4, 4), generator=g).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()


def bench_sampling(steps: int, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Median seconds per batch for ours and MONAI's sampler, and the largest difference between their tiles."""
    torch.manual_seed(0)
    denoiser, autoencoder = mask_ldm_toy().eval(), vq_f4_toy().eval()
    with torch.no_grad():  # MONAI zero-initialises output layers; give them weights so the tiles compare something
        for p in denoiser.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    masks = _masks(batch, size)
    sampler = MaskLDMSampler(num_inference_steps=steps, progress=False)
    shape = (denoiser.in_channels, size // autoencoder.downsample_factor, size // autoencoder.downsample_factor)
    noise = sampler.make_noise(range(batch), shape, "cpu")
    scheduler = ddim_scheduler()
    inferer = LatentDiffusionInferer(scheduler, scale_factor=float(autoencoder.scale_factor))

    def ours() -> torch.Tensor:
        return sampler.sample(masks, autoencoder, denoiser, noise=noise)

    @torch.no_grad()
    def monai() -> torch.Tensor:
        scheduler.set_timesteps(steps)
        context = denoiser.encode_mask(masks)
        return inferer.sample(noise, autoencoder, denoiser, conditioning=context, verbose=False).clamp(-1, 1)

    diff = float((ours() - monai()).abs().max())  # also the warm-up
    t_ours, t_monai = [], []
    for _ in range(repeats):
        t_ours.append(_timed(ours))
        t_monai.append(_timed(monai))
    return {"ours": statistics.median(t_ours), "monai": statistics.median(t_monai), "max_abs_diff": diff}


def bench_training(batch: int, size: int, iters: int) -> float:
    """Training iterations per second of the toy denoiser on (batch, 3, size/4, size/4) latents."""
    torch.manual_seed(0)
    denoiser = mask_ldm_toy().train()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    scheduler = DDPMScheduler(**LDM_SCHEDULE)
    latents = torch.randn(batch, 3, size // 4, size // 4)
    masks = _masks(batch, size)

    def step() -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.num_train_timesteps, (batch,))
        noisy = scheduler.add_noise(latents, noise, t)
        loss = F.mse_loss(denoiser(noisy, t, mask=masks), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    seconds = [_timed(step) for _ in range(iters)]
    return 1.0 / statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-inference-steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    s = bench_sampling(args.num_inference_steps, args.batch, args.size, args.repeats)
    ips = bench_training(args.train_batch, args.size, args.train_iters)

    print(f"# toy LDM on CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(
        f"# sampling: {args.batch} tiles of {args.size} px, DDIM {args.num_inference_steps} steps, median of {args.repeats}"
    )
    print(f"{'what':<34}{'seconds/batch':>14}{'tiles/s':>10}")
    for name, key in (("ours  MaskLDMSampler.sample", "ours"), ("MONAI LatentDiffusionInferer.sample", "monai")):
        print(f"{name:<34}{s[key]:>14.3f}{args.batch / s[key]:>10.2f}")
    print(f"ratio ours/MONAI (time): {s['ours'] / s['monai']:.3f}   max |tile difference|: {s['max_abs_diff']:.2e}")
    print(f"# training: mask_ldm_toy, batch {args.train_batch}, fwd+bwd+Adam, median of {args.train_iters}")
    print(f"train it/s: {ips:.2f}   ({ips * args.train_batch:.1f} samples/s)")


if __name__ == "__main__":
    main()
