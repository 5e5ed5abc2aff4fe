"""The distillation set of DISC: sets of separated latents {z_0^k, k = 0..K-1}, one shared noise per set, in shards.

Set ``i`` is the noise of seed ``distill_seed(seed, i)`` denoised under each of the K uniform masks
(:meth:`SeparatedConditionInferer.separated_latents`), so it depends on (seed, i) and the model only: the shards
can be written in any order, by any number of ranks, and a killed job resumes by writing the shards that are
missing. Shard ``j`` holds sets ``[j * shard_size, (j + 1) * shard_size)``; rank ``r`` of ``W`` writes shards
``r, r + W, ...``. Each shard is written to a temp file and renamed, so a shard that exists is complete.

Layout of ``out_dir``::

    settings.json       the settings the set is made with (a rerun with others stops, naming them)
    manifest.json       format, sizes, sampler settings and the shard list (file, first and last set)
    manifest.csv        set_index, seed, shard: one row per set
    shard_00000.pt      {"latents": (n, K, C, h, w) float16, "indices": (n,), "seeds": (n,)}
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import ensure_tuple_rep
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from monai_disc.distributed import resolve_rank
from monai_disc.inferers.mask_ldm import MaskLDMSampler
from monai_disc.inferers.separated import SeparatedConditionInferer
from monai_disc.io import atomic_torch_save, atomic_write_text, job_settings

__all__ = [
    "DISTILL_MANIFEST",
    "DISTILL_SEEDS_CSV",
    "DistillationSet",
    "distill_seed",
    "shard_name",
    "write_distillation_set",
]

DISTILL_MANIFEST = "manifest.json"
DISTILL_SEEDS_CSV = "manifest.csv"
_FORMAT = 1
# manifest entries that must agree when a run resumes into an existing folder (its settings record)
_IDENTITY = (
    "format",
    "n_sets",
    "shard_size",
    "seed",
    "num_classes",
    "latent_shape",
    "image_size",
    "dtype",
    "num_inference_steps",
    "guidance_scale",
    "scale_factor",
)


def distill_seed(seed: int, index: int) -> int:
    """Noise seed of set ``index``: a function of (seed, index) only, an int in [0, 2**31)."""
    state = np.random.SeedSequence(int(seed), spawn_key=(3, int(index))).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def shard_name(shard: int) -> str:
    """File name of shard ``shard``: ``shard_00000.pt``."""
    return f"shard_{int(shard):05d}.pt"


def _write_manifest(root: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Record the set's settings (:func:`monai_disc.io.job_settings`), then write the manifest and seed table."""
    job_settings(root, {k: manifest[k] for k in _IDENTITY}, overwrite=overwrite)
    if (root / DISTILL_MANIFEST).is_file():  # written by this set's first run (or another rank)
        return
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["set_index", "seed", "shard"])
    for entry in manifest["shards"]:
        for i in range(entry["start"], entry["stop"]):
            writer.writerow([i, distill_seed(manifest["seed"], i), entry["file"]])
    atomic_write_text(root / DISTILL_SEEDS_CSV, table.getvalue())
    # every rank may get here first: the content is the same, and the rename is atomic
    atomic_write_text(root / DISTILL_MANIFEST, json.dumps(manifest, indent=1))


@torch.no_grad()
def write_distillation_set(
    out_dir: str | os.PathLike,
    denoiser: nn.Module,
    n_sets: int,
    latent_shape: Sequence[int],
    autoencoder: nn.Module | None = None,
    image_size: int | Sequence[int] | None = None,
    shard_size: int = 256,
    seed: int = 0,
    sampler: MaskLDMSampler | None = None,
    batch_size: int = 8,
    rank: int | None = None,
    world_size: int | None = None,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write N sets of separated latents {z_0^k} in shards, resuming where a previous run stopped.

    Args:
        out_dir: folder of the shards and the manifest (created).
        denoiser: the trained :class:`monai_disc.networks.MaskConditionedUNet` (put in eval mode while writing).
        n_sets: number of sets (the paper: 20,000).
        latent_shape: (C, h, w) of one latent.
        autoencoder: the first stage, for its ``downsample_factor`` (the tile size of the uniform masks) and its
            ``scale_factor`` (recorded in the manifest); may be omitted when ``image_size`` is given.
        image_size: (H, W) or side of the tiles, the size of the uniform masks the mask encoder reads.
        shard_size: sets per shard file.
        seed: the one seed of the set (see :func:`distill_seed`).
        sampler: the sampler (solver, steps, guidance); defaults to ``MaskLDMSampler(progress=False)`` (the default
            solver and steps).
        batch_size: sets per denoiser batch (each set is K rows of the batch).
        rank: this process's rank; None reads ``torch.distributed`` or torchrun's ``RANK``.
        world_size: number of ranks; None reads ``torch.distributed`` or ``WORLD_SIZE``.
        dtype: storage dtype of the latents.
        progress: show a progress bar.
        overwrite: start over in a folder that holds a set (of any settings) instead of resuming it.

    Returns:
        ``{"rank", "world_size", "written", "skipped", "sets", "seconds", "sets_per_s"}``: this rank's shard
        files written now and found done, the sets written and the throughput.

    Raises:
        ValueError: bad sizes, or ``out_dir`` holding a set of other settings (the message names the settings that
            differ; see :func:`monai_disc.io.job_settings`).
    """
    if n_sets < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(
            f"n_sets, shard_size and batch_size must be >= 1, got {n_sets}, {shard_size} and {batch_size}."
        )
    shape = [int(s) for s in latent_shape]
    if len(shape) != 3:
        raise ValueError(f"latent_shape must be (C, h, w), got {tuple(latent_shape)}.")
    if image_size is None:
        factor = getattr(autoencoder, "downsample_factor", None)
        if factor is None:
            raise ValueError("give image_size, or an autoencoder with a downsample_factor, to size the uniform masks.")
        size = [shape[1] * int(factor), shape[2] * int(factor)]
    else:
        size = [int(s) for s in ensure_tuple_rep(image_size, 2)]
    if size[0] % shape[1] or size[1] % shape[2]:
        raise ValueError(f"image_size {tuple(size)} is not a multiple of the latent size {tuple(shape[1:])}.")
    rank, world_size = resolve_rank(rank, world_size)
    sampler = sampler if sampler is not None else MaskLDMSampler(progress=False)
    inferer = SeparatedConditionInferer(sampler)
    num_classes = int(denoiser.num_classes)
    scale = getattr(autoencoder, "scale_factor", None) if autoencoder is not None else None

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    n_shards = -(-int(n_sets) // int(shard_size))
    shards = [
        {"file": shard_name(j), "start": j * shard_size, "stop": min((j + 1) * shard_size, n_sets)}
        for j in range(n_shards)
    ]
    manifest = {
        "format": _FORMAT,
        "n_sets": int(n_sets),
        "shard_size": int(shard_size),
        "seed": int(seed),
        "num_classes": num_classes,
        "latent_shape": shape,
        "image_size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "num_inference_steps": sampler.num_inference_steps,
        "solver": type(sampler.scheduler).__name__ + str(getattr(sampler.scheduler, "timestep_spacing", "")),
        "guidance_scale": sampler.guidance_scale,
        "scale_factor": None if scale is None else float(scale),
        "shards": shards,
    }
    _write_manifest(root, manifest, overwrite)

    mine = shards[rank::world_size]
    todo = [s for s in mine if not (root / s["file"]).is_file()]
    skipped = [s["file"] for s in mine if s not in todo]
    device = next(denoiser.parameters()).device
    was_training = denoiser.training
    denoiser.eval()
    bar = tqdm(
        total=sum(s["stop"] - s["start"] for s in todo),
        desc=f"distillation set (rank {rank}/{world_size})",
        unit="set",
        disable=not progress,
    )
    written: list[str] = []
    start_time = time.perf_counter()
    try:
        for entry in todo:
            indices = list(range(entry["start"], entry["stop"]))
            seeds = [distill_seed(seed, i) for i in indices]
            parts = []
            for b in range(0, len(indices), batch_size):
                noise = sampler.make_noise(seeds[b : b + batch_size], tuple(shape), device)
                parts.append(inferer.separated_latents(noise, denoiser, size).to("cpu", dtype))
                bar.update(noise.shape[0])
            content = {
                "latents": torch.cat(parts),
                "indices": torch.tensor(indices, dtype=torch.int64),
                "seeds": torch.tensor(seeds, dtype=torch.int64),
            }
            atomic_torch_save(content, root / entry["file"])
            written.append(entry["file"])
    finally:
        bar.close()
        denoiser.train(was_training)
    seconds = time.perf_counter() - start_time
    n_written = sum(s["stop"] - s["start"] for s in todo)
    rate = n_written / seconds if seconds > 0 else float("inf")
    print(
        f"distillation set {root}: rank {rank}/{world_size} wrote {n_written} sets in {len(written)} shards "
        f"in {seconds:.1f} s ({rate:.3f} sets/s); {len(skipped)} shards were already done.",
        flush=True,
    )
    return {
        "rank": rank,
        "world_size": world_size,
        "written": written,
        "skipped": skipped,
        "sets": n_written,
        "seconds": seconds,
        "sets_per_s": rate,
    }


class DistillationSet(Dataset):
    """The sets of a distillation folder: item ``i`` is ``{"latents": (K, C, h, w), "index": i}``.

    Shards are opened lazily and memory-mapped (``torch.load(mmap=True)``), so a shuffled loader reads only the
    sets it draws, and each DataLoader worker opens its own maps.

    Args:
        root: folder written by :func:`write_distillation_set`.
        dtype: dtype of the returned latents (stored as float16 by default).
        allow_partial: serve the finished shards of an unfinished set instead of raising.

    Raises:
        FileNotFoundError: no manifest, or missing shards without ``allow_partial`` (the message names them).
        ValueError: a manifest that cannot be read.
    """

    def __init__(self, root: str | os.PathLike, dtype: torch.dtype = torch.float32, allow_partial: bool = False):
        self.root = Path(root)
        path = self.root / DISTILL_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no distillation set in {self.root}: {DISTILL_MANIFEST} is missing.")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
            shards = self.manifest["shards"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a distillation-set manifest: {err}") from None
        self.dtype = dtype
        present = [s for s in shards if (self.root / s["file"]).is_file()]
        missing = [s["file"] for s in shards if s not in present]
        if missing and not allow_partial:
            raise FileNotFoundError(
                f"distillation set {self.root} is unfinished: {len(missing)} of {len(shards)} shards are missing "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); resume write_distillation_set or "
                "pass allow_partial=True."
            )
        self.shards = present
        self._starts = np.cumsum([0] + [s["stop"] - s["start"] for s in present])
        self._open: dict[int, Tensor] = {}

    @property
    def num_classes(self) -> int:
        """K, the latents per set."""
        return int(self.manifest["num_classes"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        c, h, w = self.manifest["latent_shape"]
        return int(c), int(h), int(w)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the tiles (and masks) the latents belong to."""
        h, w = self.manifest["image_size"]
        return int(h), int(w)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _latents(self, j: int) -> Tensor:
        if j not in self._open:
            entry = self.shards[j]
            path = self.root / entry["file"]
            try:
                latents = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["latents"]
            except Exception as err:
                raise ValueError(f"cannot read distillation shard {path}: {err}") from err
            want = (entry["stop"] - entry["start"], self.num_classes, *self.latent_shape)
            if tuple(latents.shape) != want:
                raise ValueError(f"{path} holds latents of shape {tuple(latents.shape)}, the manifest says {want}.")
            self._open[j] = latents
        return self._open[j]

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} sets.")
        index %= n
        j = int(np.searchsorted(self._starts, index, side="right") - 1)
        offset = index - int(self._starts[j])
        return {
            "latents": self._latents(j)[offset].to(self.dtype),
            "index": self.shards[j]["start"] + offset,
        }

    def __getstate__(self) -> dict[str, Any]:  # workers open their own memory maps
        state = self.__dict__.copy()
        state["_open"] = {}
        return state
