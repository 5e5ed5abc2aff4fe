"""Regions of any size from a large Gleason mask: overlapping windows of the denoiser's native size that agree.

A denoiser trained on 64 px tiles (16 x 16 latents under an f = 4 autoencoder) draws a region of any size when
the region's latent is denoised window by window and the windows are made to agree at every solver step, so that
the windows do not cut the region into tiles (MultiDiffusion, Bar-Tal et al. 2023; DiffInfinite, Aversa et al. 2023):

- ``mode="average"``: a fixed grid of windows overlapping by ``overlap`` latent pixels; at every step each
  window predicts the noise of its crop, the predictions are averaged where windows overlap (by default with
  linear ramps that weight each window's border down where a neighbour covers it), and one DDIM step runs on
  the whole latent (DDIM's step acts on each pixel alone, so that is exact).
- ``mode="shift"``: DiffInfinite's rule. At every step the grid of (almost) non-overlapping windows is moved by
  a random offset drawn from (seed, step), so a window's border never falls on the same pixels twice; windows
  clipped by the region's edge are moved inside it and averaged with their neighbours.

Every window of a step runs through the denoiser in fixed batches of ``window_batch_size``, and its prediction
is added to the full-size sum at once, so activations do not grow with the region (only the latent, its noise
sum and weights, and the mask do: a 4096 px region is a 3 x 1024 x 1024 latent; the mask is read in place and
DDIM steps the latent in place, a band of rows at a time). Predictions are summed in window order, so
the region is the same for the same seed whatever the batch size. A region of exactly one window is the window
sampler's tile (:class:`MaskLDMSampler`, :class:`SeparatedConditionInferer`) for the same seed.

Separated conditions (SD-SC) run one region-wide branch per label: branch k is denoised under the uniform mask
k only in the windows that hold label k, and the branches are fused by the region's mask (Eq. 2) at the end
(or at the sampler's ``fuse_step``, after which the fused latent continues as SD).

Decoding runs in overlapping chunks whose outputs are blended with linear ramps, one band of chunk rows at a
time (:meth:`RegionSampler.decode_bands`), so no chunk's border shows as a cut and a slide is written as it decodes.
Neighbouring chunks still disagree a little (the decoder reads its whole chunk): at the default the window edges
read 13 % above the rest (docs/generators.md, "Seams at the default sampler").
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from monai_disc.inferers.mask_ldm import MaskLDMSampler
from monai_disc.inferers.schedulers import is_stateless, load_solver_state, solver_state
from monai_disc.inferers.separated import SeparatedConditionInferer, fuse_latents, uniform_masks

__all__ = ["REGION_MODES", "RegionSampler", "window_starts"]

REGION_MODES: tuple[str, ...] = ("average", "shift")

StepCallback = Callable[[int, Tensor], None]


def window_starts(length: int, window: int, stride: int, offset: int = 0) -> list[int]:
    """Start positions of windows of size ``window`` covering ``[0, length)`` on a grid of ``stride``.

    The grid starts at ``-offset`` (0 <= offset < stride); windows are clipped into the range by moving them
    inside it, so every window is whole and the last one ends at ``length``; duplicates are dropped.

    Args:
        length: the extent to cover (>= window).
        window: window size.
        stride: grid spacing (1..window).
        offset: grid shift.

    Returns:
        sorted start positions.

    Raises:
        ValueError: for a window larger than the extent or a stride outside 1..window.
    """
    if window > length:
        raise ValueError(f"window {window} is larger than the extent {length}.")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must lie in 1..{window} (the window), got {stride}.")
    # clamped into the extent; the last grid point (>= length - stride >= length - window) lands on length - window
    return sorted({min(max(s, 0), length - window) for s in range(-(offset % stride), length, stride)})


def _ramp(n: int, ramp_before: int, ramp_after: int) -> np.ndarray:
    """1-D blending weights: linear ramps (strictly positive) over the overlaps with neighbours, 1 elsewhere."""
    w = np.ones(n, dtype=np.float32)
    if ramp_before > 0:
        w[:ramp_before] = np.minimum(w[:ramp_before], (np.arange(ramp_before) + 1.0) / (ramp_before + 1.0))
    if ramp_after > 0:
        w[n - ramp_after :] = np.minimum(w[n - ramp_after :], (np.arange(ramp_after, 0, -1)) / (ramp_after + 1.0))
    return w


class _TokenCache:
    """Mask tokens of windows, keyed by the window's labels (uniform windows of a slide share one entry).

    Bounded (least recently used entries go), so memory stays flat on any region.
    """

    def __init__(self, denoiser: nn.Module, max_entries: int, autocast: Any = None) -> None:
        self.denoiser = denoiser
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()
        self.max_entries = max(int(max_entries), 0)
        self.entries: OrderedDict[bytes, Tensor] = OrderedDict()

    def __call__(self, windows: Sequence[Tensor]) -> Tensor:
        keys = [w.to(torch.uint8).cpu().numpy().tobytes() for w in windows]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        new: dict[bytes, Tensor] = {}
        if missing:
            device = next(self.denoiser.parameters()).device
            unique = list(dict.fromkeys(keys[i] for i in missing))
            first = {k: keys.index(k) for k in unique}
            with self.autocast:
                tokens = self.denoiser.encode_mask(torch.stack([windows[first[k]] for k in unique]).to(device))
            new = dict(zip(unique, tokens))
        out = []
        for k in keys:
            if k in new:
                out.append(new[k])
            else:
                self.entries.move_to_end(k)
                out.append(self.entries[k])
        for k, v in new.items():
            if self.max_entries:
                self.entries[k] = v.clone()  # a view would keep its whole batch of tokens alive
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return torch.stack(out)


class RegionSampler:
    """Latents of any size from a mask of that size, by overlapping windows that agree at every DDIM step.

    Holds the window sampler (scheduler, steps, guidance; SD or separated conditions) and the window rule, and
    takes the networks as arguments, so it serves every generator of the registry.

    Args:
        sampler: a :class:`MaskLDMSampler` (SD, SD-DISC, SD-DISC-CoTrain weights) or a
            :class:`SeparatedConditionInferer` (SD-SC).
        window: the denoiser's native window in latent pixels (16: 64 px tiles under an f = 4 autoencoder).
        overlap: latent pixels shared by neighbouring windows in ``"average"`` mode (stride ``window -
            overlap``); in ``"shift"`` mode the windows step by ``window - overlap`` too, usually with 0.
        mode: ``"average"`` (fixed overlapping grid, predictions averaged) or ``"shift"`` (grid moved by a
            random offset every step, DiffInfinite).
        window_batch_size: windows per denoiser call (memory, not the result, depends on it).
        decode_window: latent pixels per decoded chunk (16: the 64 px tiles the toy autoencoder was trained on;
            its decoder's attention reads larger chunks less faithfully, measured in bench/bench_region.py).
        decode_overlap: latent pixels shared by neighbouring decoded chunks, blended by linear ramps. With
            ``decode_window == window`` and ``decode_overlap == overlap`` (the defaults) the chunks lie on the
            sampling windows, which the ruler reads best (bench/bench_region.py).
        decode_batch_size: chunks per decoder call.
        token_cache_size: mask-token sets kept (windows with the same labels share tokens); 0 recomputes.
        progress: show a tqdm bar over the steps.
        blend: how overlapping predictions are averaged: ``"ramp"`` weights each window by linear ramps over its
            overlaps with neighbours (its borders, where the denoiser sees least context, count least),
            ``"uniform"`` weights every window pixel alike (MultiDiffusion's plain mean). Where one window
            covers a pixel alone its prediction is used as is, so a one-window region is the window sampler's.
            The toy denoiser biases the bottom latent rows of its window (pale horizontal streaks every stride
            under ``"uniform"``: mean latent -0.20 on those rows against +0.06 elsewhere, -0.02 with ramps).

    Raises:
        ValueError: for a blend or mode not in :data:`REGION_MODES` or window sizes that do not fit.
    """

    def __init__(
        self,
        sampler: MaskLDMSampler | SeparatedConditionInferer,
        window: int = 16,
        overlap: int = 2,
        mode: str = "average",
        window_batch_size: int = 16,
        decode_window: int = 16,
        decode_overlap: int = 2,
        decode_batch_size: int = 16,
        token_cache_size: int = 1024,
        progress: bool = False,
        blend: str = "ramp",
    ) -> None:
        if blend not in ("ramp", "uniform"):
            raise ValueError(f"blend must be 'ramp' or 'uniform', got {blend!r}.")
        self.blend = blend
        if mode not in REGION_MODES:
            raise ValueError(f"mode must be one of {REGION_MODES}, got {mode!r}.")
        if window < 1 or not 0 <= overlap < window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window {window}, overlap {overlap}.")
        if decode_window < 1 or not 0 <= decode_overlap < decode_window:
            raise ValueError(
                f"need decode_window >= 1 and 0 <= decode_overlap < decode_window, got {decode_window}, "
                f"{decode_overlap}."
            )
        if window_batch_size < 1 or decode_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {window_batch_size}, {decode_batch_size}.")
        self.separated = isinstance(sampler, SeparatedConditionInferer)
        self.sampler = sampler
        self.window_sampler: MaskLDMSampler = sampler.sampler if self.separated else sampler  # type: ignore[union-attr]
        self.fuse_step: int | None = sampler.fuse_step if self.separated else None  # type: ignore[union-attr]
        self.window = int(window)
        self.overlap = int(overlap)
        self.mode = mode
        self.window_batch_size = int(window_batch_size)
        self.decode_window = int(decode_window)
        self.decode_overlap = int(decode_overlap)
        self.decode_batch_size = int(decode_batch_size)
        self.token_cache_size = int(token_cache_size)
        self.progress = progress

    @property
    def num_inference_steps(self) -> int:
        """Solver steps of the window sampler."""
        return self.window_sampler.num_inference_steps

    @property
    def num_evaluations(self) -> int:
        """Entries of the solver's grid: network evaluations per window (PLMS: steps + 1), the steps of
        :meth:`sample_latent`'s loop and its callback."""
        scheduler = self.window_sampler.scheduler
        scheduler.set_timesteps(self.num_inference_steps)
        return len(scheduler.timesteps)

    # ------------------------------------------------------------------------------------------
    # windows
    # ------------------------------------------------------------------------------------------
    def positions(self, size: Sequence[int], step: int, seed: int) -> list[tuple[int, int]]:
        """Top-left latent positions of the windows of DDIM step ``step`` (index in the grid) of a region.

        Args:
            size: (h, w) of the region's latent.
            step: step index (0 = first).
            seed: the region's seed (draws the ``"shift"`` offsets; unused by ``"average"``).

        Returns:
            (y, x) in row-major order.
        """
        h, w = int(size[0]), int(size[1])
        stride = self.window - self.overlap
        oy = ox = 0
        if self.mode == "shift":
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step)])
            oy, ox = (int(v) for v in rng.integers(0, stride, 2))
        ys = window_starts(h, self.window, stride, oy)
        xs = window_starts(w, self.window, stride, ox)
        return [(y, x) for y in ys for x in xs]

    def _ramps(self, starts: list[int]) -> dict[int, tuple[int, int]]:
        """Per start: the lengths of the ramps of its window (overlaps with its neighbours; 0, 0 when uniform)."""
        ws = self.window
        out = {}
        for i, s in enumerate(starts):
            if self.blend == "uniform":
                out[s] = (0, 0)
                continue
            before = starts[i - 1] + ws - s if i else 0
            after = s + ws - starts[i + 1] if i + 1 < len(starts) else 0
            out[s] = (before, after)
        return out

    def check_size(self, mask_size: Sequence[int], factor: int) -> tuple[int, int]:
        """The latent size of a mask, checked: a multiple of ``factor`` and at least one window.

        Raises:
            ValueError: naming what is wrong with the size.
        """
        hh, ww = int(mask_size[0]), int(mask_size[1])
        if hh % factor or ww % factor:
            raise ValueError(
                f"mask size {hh}x{ww} is not a multiple of the autoencoder's downsampling factor {factor}."
            )
        h, w = hh // factor, ww // factor
        if h < self.window or w < self.window:
            raise ValueError(
                f"mask size {hh}x{ww} is smaller than one window ({self.window * factor} px): the region sampler "
                "needs at least the denoiser's window in each direction."
            )
        return h, w

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latent(
        self,
        mask: Tensor,
        autoencoder: nn.Module,
        denoiser: nn.Module,
        seed: int,
        background: int | None = None,
        start_step: int = 0,
        latent: Tensor | None = None,
        callback: StepCallback | None = None,
        solver_state: dict[str, Any] | None = None,
    ) -> Tensor:
        """z_0 of a region.

        Args:
            mask: integer labels (H, W) in 0..K-1 (the conditioning; K <= 255), and ``background`` on glass. Read
                a band of rows at a time: a uint8 mask on the denoiser's device is used as it is, never copied.
            autoencoder: first stage (for ``downsample_factor``).
            denoiser: a :class:`monai_disc.networks.MaskConditionedUNet`.
            seed: the noise seed; z_T is ``MaskLDMSampler.make_noise([seed], (C, h, w))``, so a one-window region
                starts from the window sampler's noise.
            background: the mask value of glass (:data:`monai_disc.masks.BACKGROUND` in slide masks; K..255):
                conditioned as NC, and windows holding nothing else are not denoised (their latent is left as is:
                the caller paints glass there). None: every pixel is tissue.
            start_step: resume at this index of the solver's grid (one entry per network evaluation; PLMS has
                steps + 1) with ``latent`` the state after entry ``start_step - 1``.
            latent: the state to resume from: (B, C, h, w) with B = 1 (SD) or K (SC before fusion).
            callback: called as ``callback(steps_done, state)`` after every network evaluation (for checkpoints;
                :meth:`solver_state` then holds the solver's history to save with it).
            solver_state: the solver history saved with ``latent`` (:meth:`solver_state`); needed to resume a
                multistep solver (PLMS).

        Returns:
            (C, h, w) z_0 on the denoiser's device, float32.

        Raises:
            ValueError: for masks that do not fit the networks, or a resume state of the wrong shape.
        """
        mask = torch.as_tensor(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be a label map (H, W), got shape {tuple(mask.shape)}.")
        k = int(denoiser.num_classes)
        if background is not None and not k <= background <= 255:
            raise ValueError(f"background must lie in {k}..255 (no label of the {k}), got {background}.")
        device = next(denoiser.parameters()).device
        factor = int(getattr(autoencoder, "downsample_factor", 4))
        h, w = self.check_size(mask.shape, factor)
        values: set[int] = set()
        tissue = np.ones((h, w), dtype=bool)  # a latent pixel holds tissue if any pixel of its block does
        for r in range(0, h, 64):  # a band of rows at a time: no full-size temporary of the mask
            band = mask[r * factor : (r + 64) * factor]
            values.update(torch.unique(band).tolist())
            if background is not None:
                glass = (band == background).reshape(-1, factor, w, factor).all(3).all(1)
                tissue[r : r + 64] = ~glass.cpu().numpy()
        bad = sorted(v for v in values if not (0 <= v < k or v == background))
        if bad:
            glass = "" if background is None else f" or the background {background}"
            raise ValueError(f"mask values must be labels 0..{k - 1}{glass}, got {bad[:8]}.")
        # integral image of tissue, read per window and step on the host (no device sync in the loop)
        live = np.zeros((h + 1, w + 1), dtype=np.int32)
        np.cumsum(np.cumsum(tissue, 0, dtype=np.int32), 1, out=live[1:, 1:])
        mask = mask.to(device=device, dtype=torch.uint8)  # one byte a pixel: a 4096 px mask is 16 MB

        def labels(crop: Tensor) -> Tensor:  # glass is conditioned as NC
            return crop if background is None else crop.masked_fill(crop == background, 0)

        if latent is not None:
            x = latent.to(device, copy=True)  # stepped in place below: the caller's state is left as it is
        elif start_step:
            raise ValueError("start_step > 0 needs the latent state to resume from.")
        else:
            x = MaskLDMSampler.make_noise([int(seed)], (denoiser.in_channels, h, w), device)
            if self.separated and (self.fuse_step is None or self.fuse_step > 0):
                x = x.expand(k, -1, -1, -1).clone()
        small = labels(mask[::factor, ::factor])  # labels_at_size's nearest rule: the top-left pixel of each block
        small_host = small.cpu().numpy() if self.separated else None  # labels per window, read on the host

        scheduler = self.window_sampler.scheduler
        scheduler.set_timesteps(self.num_inference_steps)  # resets a multistep solver's history
        steps = [int(t) for t in scheduler.timesteps]  # one entry per network evaluation (PLMS: steps + 1)
        if solver_state is not None:
            load_solver_state(scheduler, solver_state, device)
        elif 0 < start_step < len(steps) and not is_stateless(scheduler):
            raise ValueError(
                f"resuming {type(scheduler).__name__} at step {start_step} needs its history (solver_state): it keeps "
                "noise predictions across steps."
            )
        sampler = self.window_sampler
        sampler.prepare(denoiser)  # channels-last weights when the sampler asks for them
        network = sampler._compiled(denoiser) if sampler.compile else denoiser
        autocast = sampler.autocast(device)
        guidance = self.window_sampler.guidance_scale
        guided = guidance != 1.0
        null = denoiser.null_context(1).to(device)
        tokens = _TokenCache(denoiser, self.token_cache_size, autocast)
        with autocast:
            uniform = (
                denoiser.encode_mask(uniform_masks(k, (self.window * factor,) * 2, device)) if self.separated else None
            )

        weights: dict[tuple[tuple[int, int], tuple[int, int]], Tensor] = {}
        for i in tqdm(range(start_step, len(steps)), desc="region", leave=False, disable=not self.progress):
            separated = self.separated and (self.fuse_step is None or i < self.fuse_step)
            if self.separated and not separated and x.shape[0] != 1:  # the fusion step of SC with fuse_step
                x = fuse_latents(x[None], small[None])
            if separated and x.shape[0] != k or not separated and x.shape[0] != 1:
                raise ValueError(f"resume state has {x.shape[0]} branches, step {i} needs {k if separated else 1}.")
            grid = self.positions((h, w), i, seed)
            ry = self._ramps(sorted({p[0] for p in grid}))
            rx = self._ramps(sorted({p[1] for p in grid}))
            jobs = self._jobs(grid, live, small_host if separated else None)
            eps_sum = torch.zeros_like(x)
            count = torch.zeros((x.shape[0], 1, h, w), dtype=x.dtype, device=device)
            t_all = torch.full((self.window_batch_size * (2 if guided else 1),), steps[i], device=device)
            ws = self.window
            for start in range(0, len(jobs), self.window_batch_size):
                batch = jobs[start : start + self.window_batch_size]
                xb = torch.stack([x[b, :, y0 : y0 + ws, x0 : x0 + ws] for b, y0, x0 in batch])
                if separated:
                    ctx = uniform[torch.tensor([b for b, _, _ in batch], device=device)]  # type: ignore[index]
                else:
                    crops = [
                        labels(mask[y0 * factor : (y0 + ws) * factor, x0 * factor : (x0 + ws) * factor])
                        for _, y0, x0 in batch
                    ]
                    ctx = tokens(crops)
                nb = len(batch)
                if guided:
                    ctx = torch.cat([null.to(ctx).expand(nb, -1, -1), ctx])
                    xb = torch.cat([xb, xb])
                with autocast:  # the window sampler's precision and layout (bf16 autocast on CUDA)
                    eps = network(sampler._layout(xb), t_all[: xb.shape[0]], context=ctx)
                eps = eps.to(x.dtype)
                if guided:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + guidance * (eps_c - eps_u)
                for j, (b, y0, x0) in enumerate(batch):
                    key = (ry[y0], rx[x0])
                    if key == ((0, 0), (0, 0)):  # a window no neighbour overlaps: weight 1, added as is
                        eps_sum[b, :, y0 : y0 + ws, x0 : x0 + ws] += eps[j]
                        count[b, :, y0 : y0 + ws, x0 : x0 + ws] += 1
                        continue
                    if key not in weights:  # a handful of ramp shapes, built once per call
                        weights[key] = torch.from_numpy(np.outer(_ramp(ws, *key[0]), _ramp(ws, *key[1]))).to(eps)
                    eps_sum[b, :, y0 : y0 + ws, x0 : x0 + ws] += eps[j] * weights[key]
                    count[b, :, y0 : y0 + ws, x0 : x0 + ws] += weights[key]
            # normalise by the summed weights (below 1 beside a skipped glass window); 0 where no window ran
            eps_sum /= count.masked_fill_(count == 0, 1.0)
            x = self._solver_step(scheduler, eps_sum, steps[i], x)
            if callback is not None:
                callback(i + 1, x)
        if x.shape[0] != 1:
            x = fuse_latents(x[None], small[None])
        return x[0].float()

    def _jobs(
        self, grid: list[tuple[int, int]], live: np.ndarray, small_host: np.ndarray | None
    ) -> list[tuple[int, int, int]]:
        """(branch, y, x) of the windows a step denoises, in a fixed order: windows on glass alone are skipped;
        with ``small_host`` (the labels at latent size, separated steps) one job per label the window holds."""
        jobs: list[tuple[int, int, int]] = []
        ws = self.window
        for y0, x0 in grid:
            y1, x1 = y0 + ws, x0 + ws
            if live[y1, x1] - live[y0, x1] - live[y1, x0] + live[y0, x0] <= 0:
                continue
            if small_host is not None:
                jobs.extend((int(b), y0, x0) for b in np.unique(small_host[y0:y1, x0:x1]).tolist())
            else:
                jobs.append((0, y0, x0))
        return jobs

    @staticmethod
    def _solver_step(scheduler: Any, eps: Tensor, t: int, x: Tensor) -> Tensor:
        """One solver step of the whole latent: a stateless solver (DDIM) in place, a band of rows at a time; a
        solver with a history (PLMS) in one call, so its history covers the whole latent."""
        if is_stateless(scheduler):
            for r in range(0, x.shape[-2], 64):
                x[:, :, r : r + 64] = scheduler.step(eps[:, :, r : r + 64], t, x[:, :, r : r + 64])[0]
            return x
        return scheduler.step(eps, t, x)[0]

    def solver_state(self) -> dict[str, Any]:
        """The window solver's history after the last step (empty for DDIM): saved with a resumable latent."""
        return solver_state(self.window_sampler.scheduler)

    # ------------------------------------------------------------------------------------------
    # decoding
    # ------------------------------------------------------------------------------------------
    def _chunks(self, size: int) -> list[int]:
        d = min(self.decode_window, size)
        return window_starts(size, d, max(1, d - self.decode_overlap))

    def decode_rows(self, latent_height: int) -> int:
        """Number of bands :meth:`decode_bands` yields for a latent of this height."""
        return len(self._chunks(int(latent_height)))

    @torch.no_grad()
    def decode_bands(
        self, latent: Tensor, autoencoder: nn.Module, start_band: int = 0
    ) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """Decode a region's latent in overlapping chunks, blended, one band of image rows at a time.

        Chunks of ``decode_window`` latent pixels overlap by ``decode_overlap``; in the overlaps each chunk's
        pixels are weighted by linear ramps (normalised by the summed weight), so no chunk's border shows as a cut. A
        band is yielded once no later chunk touches its rows; memory holds one row of chunks.

        Args:
            latent: (C, h, w) scaled latent (as :meth:`sample_latent` returns).
            autoencoder: first stage with ``decode_stage_2_outputs`` (``scale_factor``, ``downsample_factor``).
            start_band: skip the bands before this one (resuming): the band before it is decoded again, unseen,
                to rebuild the overlap it shares with this one.

        Yields:
            (band index, first image row, end image row, uint8 RGB rows (end - first, W, 3)).
        """
        c, h, w = latent.shape
        factor = int(getattr(autoencoder, "downsample_factor", 4))
        scale = float(getattr(autoencoder, "scale_factor", 1.0))
        ys, xs = self._chunks(h), self._chunks(w)
        dy, dx = min(self.decode_window, h), min(self.decode_window, w)
        width = w * factor
        band_h = dy * factor
        acc = np.zeros((band_h, width, 3), dtype=np.float32)
        wsum = np.zeros((band_h, width, 1), dtype=np.float32)
        x_weights = []
        for j, x0 in enumerate(xs):
            before = (xs[j - 1] + dx - x0) * factor if j else 0
            after = (x0 + dx - xs[j + 1]) * factor if j + 1 < len(xs) else 0
            x_weights.append(_ramp(dx * factor, before, after))
        for i in range(max(0, start_band - 1), len(ys)):
            y0 = ys[i]
            before = (ys[i - 1] + dy - y0) * factor if i else 0
            after = (y0 + dy - ys[i + 1]) * factor if i + 1 < len(ys) else 0
            wy = _ramp(dy * factor, before, after)
            for b0 in range(0, len(xs), self.decode_batch_size):  # each batch goes into the band as it decodes
                batch = xs[b0 : b0 + self.decode_batch_size]
                z = torch.stack([latent[:, y0 : y0 + dy, x0 : x0 + dx] for x0 in batch]) / scale
                tiles = autoencoder.decode_stage_2_outputs(z).float().clamp_(-1.0, 1.0).add_(1.0).mul_(127.5)
                rgb = tiles.permute(0, 2, 3, 1).cpu().numpy()
                for j, x0 in enumerate(batch, start=b0):
                    wgt = wy[:, None, None] * x_weights[j][None, :, None]
                    acc[:, x0 * factor : (x0 + dx) * factor] += rgb[j - b0] * wgt
                    wsum[:, x0 * factor : (x0 + dx) * factor] += wgt
            done = (ys[i + 1] - y0) * factor if i + 1 < len(ys) else band_h
            if i >= start_band:
                rows = acc[:done]  # finished: normalised in place, then dropped
                np.clip(np.rint(np.divide(rows, wsum[:done], out=rows), out=rows), 0, 255, out=rows)
                yield i, y0 * factor, y0 * factor + done, rows.astype(np.uint8)
            keep = band_h - done  # the rows the next band overlaps move up; the buffers are reused
            acc[:keep], wsum[:keep] = acc[done:], wsum[done:]
            acc[keep:], wsum[keep:] = 0.0, 0.0

    def decode(self, latent: Tensor, autoencoder: nn.Module) -> np.ndarray:
        """The whole region as uint8 RGB (H, W, 3) (:meth:`decode_bands` gathered; small regions only)."""
        return np.concatenate([band for _, _, _, band in self.decode_bands(latent, autoencoder)])

    @torch.no_grad()
    def sample(
        self, mask: Tensor, autoencoder: nn.Module, denoiser: nn.Module, seed: int, background: int | None = None
    ) -> np.ndarray:
        """A region (H, W, 3) uint8 RGB for a label map (H, W): :meth:`sample_latent` then :meth:`decode`."""
        return self.decode(self.sample_latent(mask, autoencoder, denoiser, seed, background), autoencoder)

    def settings(self) -> dict[str, Any]:
        """What the region depends on besides the networks, mask and seed (for resumable jobs)."""
        return {
            "num_inference_steps": self.num_inference_steps,
            "solver": type(self.window_sampler.scheduler).__name__,
            "timestep_spacing": getattr(self.window_sampler.scheduler, "timestep_spacing", "linspace"),
            "guidance_scale": self.window_sampler.guidance_scale,
            "separated": self.separated,
            "fuse_step": self.fuse_step,
            "window": self.window,
            "overlap": self.overlap,
            "mode": self.mode,
            "blend": self.blend,
            "decode_window": self.decode_window,
            "decode_overlap": self.decode_overlap,
        }
