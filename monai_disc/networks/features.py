"""Tile feature extractors for slide-level grading, and bags of tiles cached as bags of features.

TransMIL never sees pixels: each tile of a slide is embedded once by a frozen extractor and the slide becomes
an (N, D) feature bag. An extractor carries the normalisation its weights were trained with (like timm's
``pretrained_cfg``), so callers always pass package tiles (float RGB in [-1, 1]) and never normalise twice.

Named extractors (weights only from local files; nothing is ever downloaded):

============================  =============================  ======  ==============================
name                          network                        D       normalisation, input size
============================  =============================  ======  ==============================
``vit_small_dino``            timm ``vit_small_patch16_224`` 384     Lunit, resized to 224
``resnet50_mocov2``           ResNet-50, fc removed          2048    Lunit, tile size kept
``resnet50_imagenet``         ResNet-50, fc removed          2048    ImageNet, tile size kept
``carcinonet_toy`` (default)  toy CarcinoNet encoder         256     ImageNet, tile size kept
any timm model name           ``num_classes=0``              its own its ``pretrained_cfg``
============================  =============================  ======  ==============================

The Lunit files (Kang et al., CVPR 2023) are ``dino_vit_small_patch16_ep200.torch`` and
``mocov2_rn50_ep200.torch``: plain state dicts with timm / torchvision key names (the two agree for ResNets).

Cached bags (:func:`extract_bag_features`) are laid out as::

    out_dir/
      settings.json       extractor (name, width, normalisation, weights digest), dtype and bag listing: a cache is
                          resumed only with the same ones (monai_disc.io.job_settings)
      <slide_id>.pt       {"features": (N, D), "label": (4,) multi-hot, "source", "slide_id", "n_tiles"}
      manifest.csv        slide_id, file, source, n_tiles, NC, GG3, GG4, GG5; written once every slide is there

Each slide file is written atomically, so a killed run resumes by skipping the slides already there; under
torchrun rank ``r`` of ``W`` takes slides r, r + W, ..., and whichever rank sees every slide file present writes
the manifest (no collective, as :func:`monai_disc.apps.generate_slides.generate_slides`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from monai_disc.bundles import CARCINONET_WEIGHTS, bundle_file
from monai_disc.errors import failure_message, raise_failures
from monai_disc.io import atomic_torch_save, atomic_write_text, job_settings
from monai_disc.labels import LABEL_NAMES, NUM_CLASSES
from monai_disc.networks.carcinonet import (
    _KEY_PREFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    carcinonet_toy,
    load_encoder_weights,
)
from monai_disc.networks.weights import load_weights, read_state_dict

__all__ = [
    "DEFAULT_CARCINONET_WEIGHTS",
    "DEFAULT_EXTRACTOR",
    "EXTRACTORS",
    "FEATURE_MANIFEST",
    "LUNIT_MEAN",
    "LUNIT_STD",
    "ExtractorSpec",
    "FeatureBagDataset",
    "FeatureExtractor",
    "build_extractor",
    "extract_bag_features",
    "feature_manifest",
]

LUNIT_MEAN: tuple[float, float, float] = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD: tuple[float, float, float] = (0.21716536, 0.26081574, 0.20723464)

DEFAULT_EXTRACTOR = "carcinonet_toy"
# The toy CarcinoNet the carcinonet bundle trains (a plain state dict of the whole network).
DEFAULT_CARCINONET_WEIGHTS = bundle_file(CARCINONET_WEIGHTS)
FEATURE_MANIFEST = "manifest.csv"
_CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.", "classifier.")


@dataclass(frozen=True)
class ExtractorSpec:
    """A named extractor: the timm model it builds and what its weights expect.

    Attributes:
        model: timm model name (built with ``pretrained=False, num_classes=0``).
        mean: per-channel mean in [0, 1] units the weights were trained with.
        std: per-channel standard deviation in [0, 1] units.
        input_size: square side tiles are resized to; None keeps the tile size (convolutional networks).
        weights_hint: the weight file it is released as, named in errors.
    """

    model: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int | None
    weights_hint: str


EXTRACTORS: dict[str, ExtractorSpec] = {
    "vit_small_dino": ExtractorSpec(
        "vit_small_patch16_224", LUNIT_MEAN, LUNIT_STD, 224, "dino_vit_small_patch16_ep200.torch"
    ),
    "resnet50_mocov2": ExtractorSpec("resnet50", LUNIT_MEAN, LUNIT_STD, None, "mocov2_rn50_ep200.torch"),
    "resnet50_imagenet": ExtractorSpec(
        "resnet50", IMAGENET_MEAN, IMAGENET_STD, None, "a torchvision/timm ResNet-50 ImageNet file (resnet50-*.pth)"
    ),
}


class FeatureExtractor(nn.Module):
    """Package tiles (B, 3, H, W) in [-1, 1] -> features (B, D), through the backbone's own normalisation.

    Args:
        backbone: module mapping normalised tiles to (B, D) features.
        num_features: D.
        mean: per-channel mean in [0, 1] units the backbone expects.
        std: per-channel standard deviation in [0, 1] units.
        input_size: square side to resize tiles to (bilinear, antialiased) when they differ; None keeps them.
        name: the extractor's name, recorded with cached features.
        min_size: smallest tile side accepted (one 16 px ViT patch; a ResNet's stem alone reduces by 4).

    Raises:
        ValueError: for a mean/std that is not 3 values, a non-positive std or input size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int | None = None,
        name: str = "",
        min_size: int = 16,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got {tuple(mean)} and {tuple(std)}.")
        if input_size is not None and int(input_size) < 1:
            raise ValueError(f"input_size must be a positive integer or None, got {input_size}.")
        self.backbone = backbone
        self.num_features = int(num_features)
        self.input_size = None if input_size is None else int(input_size)
        self.name = name
        self.min_size = int(min_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The normalisation and sizes, as timm reports them for its models."""
        side = self.input_size
        return {
            "name": self.name,
            "mean": tuple(self.mean.flatten().tolist()),
            "std": tuple(self.std.flatten().tolist()),
            "input_size": None if side is None else (3, side, side),
            "num_features": self.num_features,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed tiles.

        Args:
            x: (B, 3, H, W) float tiles in [-1, 1].

        Returns:
            (B, num_features) float features.

        Raises:
            ValueError: for a tensor that is not (B, 3, H, W), or tiles under ``min_size`` px a side.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name or 'FeatureExtractor'} expects tiles (B, 3, H, W), got {tuple(x.shape)}.")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{self.name or 'FeatureExtractor'} needs tiles of at least {self.min_size} px a side, "
                f"got {tuple(x.shape[-2:])}."
            )
        x = (x.to(self.mean.dtype) + 1.0) * 0.5
        side = self.input_size
        if side is not None and tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return self.backbone((x - self.mean) / self.std)


class _PooledEncoder(nn.Module):
    """A ``features_only`` encoder -> its deepest level, globally average-pooled (as ``CarcinoNet.encode``)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1].mean(dim=(-2, -1))


def _load_strict(module: nn.Module, path: Path, what: str) -> None:
    """Load a weight file into ``module``, ignoring classifier keys it lacks; errors name the file."""
    load_weights(module, path, ignore=_CLASSIFIER_PREFIXES, strip_prefixes=_KEY_PREFIXES, what=what)


def _carcinonet_extractor(weights: Path, input_size: int | None) -> FeatureExtractor:
    net = carcinonet_toy()
    state = read_state_dict(weights, strip_prefixes=_KEY_PREFIXES)
    if any(k.startswith(("bridge.", "decoder.", "head.")) for k in state):
        _load_strict(net, weights, "the toy CarcinoNet (carcinonet_toy)")
    else:  # an encoder-only file (ResNet names)
        load_encoder_weights(net.encoder, weights)
    mean = tuple(net.mean.flatten().tolist())
    std = tuple(net.std.flatten().tolist())
    return FeatureExtractor(_PooledEncoder(net.encoder), net.num_features, mean, std, input_size, "carcinonet_toy")


def build_extractor(
    name: str = DEFAULT_EXTRACTOR,
    weights: str | os.PathLike | None = None,
    input_size: int | None | str = "default",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> FeatureExtractor:
    """A frozen tile feature extractor by name, with weights from a local file, in eval mode.

    Args:
        name: a name of :data:`EXTRACTORS`, ``"carcinonet_toy"``, or any timm model name.
        weights: the local weight file. Required for every extractor but ``"carcinonet_toy"``, which defaults to
            :data:`DEFAULT_CARCINONET_WEIGHTS` (the carcinonet bundle's toy weights).
        input_size: square side tiles are resized to; ``"default"`` takes the extractor's own (224 for ViTs,
            none for ResNets and CarcinoNet, timm's ``pretrained_cfg`` for other timm models); None keeps tiles.
        mean: override of the normalisation mean ([0, 1] units); None keeps the extractor's.
        std: override of the normalisation standard deviation.

    Returns:
        A :class:`FeatureExtractor` with ``requires_grad`` off.

    Raises:
        ValueError: an unknown name, a missing ``weights`` argument, or a weight file that does not fit (the
            message names the file and the first mismatching keys).
        FileNotFoundError: a weight file that does not exist.
    """
    if name == "carcinonet_toy":
        size = None if input_size == "default" else input_size
        extractor = _carcinonet_extractor(Path(weights or DEFAULT_CARCINONET_WEIGHTS).expanduser(), size)  # type: ignore[arg-type]
    else:
        spec = EXTRACTORS.get(name)
        model_name = spec.model if spec else name
        if not timm.is_model(model_name):
            raise ValueError(
                f"unknown extractor {name!r}: not one of {sorted([*EXTRACTORS, 'carcinonet_toy'])} nor a timm model"
            )
        if weights is None:
            hint = spec.weights_hint if spec else f"a {model_name} state dict"
            raise ValueError(
                f"extractor {name!r} needs a local weight file (weights=PATH, e.g. {hint}); nothing is downloaded."
            )
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        _load_strict(model, Path(weights).expanduser(), f"extractor {name!r} ({model_name})")
        cfg = model.pretrained_cfg
        if spec is not None:
            default_mean, default_std, default_size = spec.mean, spec.std, spec.input_size
        else:
            default_mean, default_std = tuple(cfg["mean"]), tuple(cfg["std"])
            default_size = int(cfg["input_size"][-1]) if cfg.get("fixed_input_size") else None
        size = default_size if input_size == "default" else input_size
        extractor = FeatureExtractor(model, model.num_features, default_mean, default_std, size, name)  # type: ignore[arg-type]
    if mean is not None or std is not None:
        cfg = extractor.pretrained_cfg
        extractor = FeatureExtractor(
            extractor.backbone,
            extractor.num_features,
            cfg["mean"] if mean is None else mean,
            cfg["std"] if std is None else std,
            extractor.input_size,
            extractor.name,
            extractor.min_size,
        )
    extractor.requires_grad_(False)
    return extractor.eval()


# ----------------------------------------------------------------------------------------------
# cached feature bags
# ----------------------------------------------------------------------------------------------
def _check_slide_ids(bags: Sequence[Mapping]) -> None:
    seen: set[str] = set()
    for i, bag in enumerate(bags):
        missing = [k for k in ("slide_id", "tiles", "label") if k not in bag]
        if missing:
            raise ValueError(f"bag {i} lacks key(s) {missing}")
        sid = str(bag["slide_id"])
        if not sid or sid != sid.strip() or sid.startswith(".") or any(c in sid for c in '/\\:*?"<>|'):
            raise ValueError(f"bag {i}: slide id {sid!r} is not a plain file name (no separators, no leading dot)")
        if sid in seen:
            raise ValueError(f"slide id {sid!r} appears twice in the bags")
        if not bag["tiles"]:
            raise ValueError(f"bag {i} (slide {sid}) has no tile")
        if np.asarray(bag["label"]).shape != (NUM_CLASSES,):
            raise ValueError(f"bag {i} (slide {sid}): label must be {NUM_CLASSES} values, got {bag['label']!r}")
        seen.add(sid)


def _state_digest(module: nn.Module) -> str:
    """A short digest of a module's weights: a cache records which weights made its features."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _cache_settings(bags: Sequence[Mapping], extractor: FeatureExtractor, dtype: torch.dtype) -> dict[str, Any]:
    """What a feature cache depends on: the extractor (name, width, normalisation, weights), dtype and the bags."""
    listing = hashlib.sha256()
    for bag in bags:
        listing.update(json.dumps([str(bag["slide_id"]), [str(t) for t in bag["tiles"]]]).encode())
    cfg = extractor.pretrained_cfg
    return {
        "extractor": extractor.name,
        "num_features": extractor.num_features,
        "mean": [round(v, 8) for v in cfg["mean"]],
        "std": [round(v, 8) for v in cfg["std"]],
        "input_size": extractor.input_size,
        "weights": _state_digest(extractor),
        "dtype": str(dtype).replace("torch.", ""),
        "bags": f"{len(bags)} slides, listing {listing.hexdigest()[:16]}",
    }


class _TileList(Dataset):
    """(tile, slide index, path, error) of the pending slides, in order, so batches may span slides.

    A tile that cannot be read, or is smaller than ``min_size``, comes back as (None, slide, path, message): one
    bad file fails its slide, not the job.
    """

    def __init__(self, items: list[tuple[int, Any]], loader: Callable[[Any], torch.Tensor], min_size: int) -> None:
        self.items = items
        self.loader = loader
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str, str | None]:
        slide, path = self.items[index]
        try:
            tile = torch.as_tensor(self.loader(path))
        except Exception as err:  # any reader error fails this tile only; the message names the file
            return None, slide, path, failure_message(err)
        if min(tile.shape[-2:]) < self.min_size:
            h, w = tile.shape[-2:]
            return None, slide, path, f"{path}: the tile is {h}x{w} px; the extractor needs at least {self.min_size} px"
        return tile, slide, path, None


def _as_list(batch: list) -> list:  # keep items apart: tiles of other sizes and failures cannot be stacked
    return batch


def feature_manifest(bags: Sequence[Mapping], out_dir: str | os.PathLike) -> list[dict]:
    """The manifest entries of ``bags`` cached in ``out_dir``: slide_id, features (path), label, source, n_tiles."""
    out = Path(out_dir).expanduser()
    return [
        {
            "slide_id": str(bag["slide_id"]),
            "features": str(out / f"{bag['slide_id']}.pt"),
            "label": np.asarray(bag["label"], dtype=np.float32),
            "source": str(bag.get("source", "real")),
            "n_tiles": len(bag["tiles"]),
        }
        for bag in bags
    ]


def _write_manifest(out: Path, manifest: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "file", "source", "n_tiles", *LABEL_NAMES])
    for entry in manifest:
        label = [int(round(float(v))) for v in entry["label"]]
        writer.writerow([entry["slide_id"], Path(entry["features"]).name, entry["source"], entry["n_tiles"], *label])
    atomic_write_text(out / FEATURE_MANIFEST, buffer.getvalue())


def extract_bag_features(
    bags: Sequence[Mapping],
    extractor: FeatureExtractor,
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float16,
    loader: Callable[[str], torch.Tensor] | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
) -> list[dict]:
    """Embed every tile of every bag once and cache one feature file per slide (resumable, rank-sharded).

    Args:
        bags: slide bags (:func:`monai_disc.data.load_sicapv2_bags`, :func:`monai_disc.data.load_synthetic_bags`).
        extractor: from :func:`build_extractor`.
        out_dir: the cache folder (layout in the module docstring); one folder per extractor.
        batch_size: tiles per forward pass; batches span slide boundaries.
        rank, world_size: this process's shard (rank r takes slides r, r + W, ...); None reads torch.distributed
            or torchrun's ``RANK``/``WORLD_SIZE`` (see :func:`monai_disc.distributed.resolve_rank`).
        progress: show a tqdm bar over this rank's tiles.
        device: where the extractor runs; None keeps the extractor's device.
        dtype: storage type of the features (float16 halves the cache; TransMIL casts them back).
        loader: tile -> (3, H, W) tensor in [-1, 1]; defaults to :func:`monai_disc.data.tile_loader` (tile
            paths). Tiles that are dicts (slide coordinates, :func:`monai_disc.data.wsi.load_wsi_bags`) are passed
            as they are, e.g. to :class:`monai_disc.data.wsi.SlideTileLoader`.
        num_workers: DataLoader workers that read tiles.
        overwrite: start the cache over instead of resuming it (see :func:`monai_disc.io.job_settings`).

    Returns:
        The manifest of all ``bags`` (see :func:`feature_manifest`); ``manifest.csv`` is written once every
        slide's file exists (by this or another rank).

    Raises:
        ValueError: bad bags (missing keys, duplicate or unsafe slide ids, no tile, wrong label size), or a cache
            made with other settings (another extractor, weights, dtype or bags; the message names them).
        monai_disc.errors.FailedFilesError: tiles that cannot be read or are under the extractor's ``min_size``,
            each named with its problem, raised after every other slide is cached (theirs are not).
    """
    from monai_disc.data.tilesets import tile_loader
    from monai_disc.distributed import resolve_rank

    _check_slide_ids(bags)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rank, world_size = resolve_rank(rank, world_size)
    out = Path(out_dir).expanduser()
    job_settings(out, _cache_settings(bags, extractor, dtype), overwrite=overwrite)
    manifest = feature_manifest(bags, out)

    mine = list(range(rank, len(bags), world_size))
    pending = [i for i in mine if not Path(manifest[i]["features"]).is_file()]
    items = [(i, p if isinstance(p, Mapping) else str(p)) for i in pending for p in bags[i]["tiles"]]
    if device is not None:
        extractor = extractor.to(device)
    run_device = next(iter(extractor.buffers())).device
    extractor.eval()
    failures: dict[str, str] = {}
    failed_slides: set[int] = set()

    if items:
        from tqdm.auto import tqdm

        tiles = DataLoader(
            _TileList(items, loader or tile_loader(), extractor.min_size),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_as_list,
        )
        done: dict[int, list[torch.Tensor]] = {i: [] for i in pending}
        counts = {i: 0 for i in pending}
        bar = tqdm(total=len(items), desc=f"features rank {rank}/{world_size}", unit="tile", disable=not progress)
        with torch.inference_mode():
            for batch in tiles:
                feats: list[torch.Tensor | None] = [None] * len(batch)
                by_size: dict[tuple[int, ...], list[int]] = {}
                for j, (tile, slide, path, error) in enumerate(batch):
                    if error is not None:
                        failures[path] = error
                        failed_slides.add(slide)
                    else:
                        by_size.setdefault(tuple(tile.shape), []).append(j)
                for group in by_size.values():  # tiles of one size embed together
                    stacked = torch.stack([batch[j][0] for j in group]).to(run_device)
                    for j, f in zip(group, extractor(stacked).to("cpu", dtype)):
                        feats[j] = f
                for j, (_, slide, _, _) in enumerate(batch):
                    if slide in failed_slides:
                        done.pop(slide, None)
                        continue
                    done[slide].append(feats[j])
                    counts[slide] += 1
                    if counts[slide] == len(bags[slide]["tiles"]):
                        entry = manifest[slide]
                        atomic_torch_save(
                            {
                                "features": torch.stack(done.pop(slide)).contiguous(),
                                "label": torch.as_tensor(entry["label"]),
                                "source": entry["source"],
                                "slide_id": entry["slide_id"],
                                "n_tiles": entry["n_tiles"],
                            },
                            Path(entry["features"]),
                        )
                bar.update(len(batch))
        bar.close()

    if all(Path(e["features"]).is_file() for e in manifest):
        _write_manifest(out, manifest)
    written = sum(Path(manifest[i]["features"]).is_file() for i in mine)
    raise_failures(
        failures,
        done=f"{written} of {len(mine)} slides cached in {out}; the {len(failed_slides)} with bad tiles are not",
    )
    return manifest


def _read_manifest(out: Path) -> list[dict]:
    path = out / FEATURE_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"feature manifest not found: {path} (is the feature extraction finished?)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    entries = []
    for line, row in enumerate(rows, start=2):
        missing = [c for c in ("slide_id", "file", *LABEL_NAMES) if not row.get(c)]
        if missing:
            raise ValueError(f"{path} line {line}: missing value(s) for {missing}")
        try:
            label = np.array([float(row[c]) for c in LABEL_NAMES], dtype=np.float32)
        except ValueError:
            raise ValueError(f"{path} line {line}: label columns must be 0 or 1") from None
        entries.append(
            {
                "slide_id": row["slide_id"],
                "features": str(out / row["file"]),
                "label": label,
                "source": row.get("source") or "real",
            }
        )
    return entries


class FeatureBagDataset(Dataset):
    """Cached feature bags as a torch Dataset: one ``{"features": (N, D), "label": (4,), ...}`` per slide.

    Args:
        bags: a cache folder written by :func:`extract_bag_features` (read through its ``manifest.csv``), or a
            list whose items are feature files (``<slide_id>.pt``) or dicts with ``features`` (a file or an
            (N, D) tensor) and optionally ``label`` (else read from the file), ``slide_id``, ``source``.
        cache: keep loaded bags in memory (feature bags are small; epochs then read no file).

    Raises:
        FileNotFoundError: a folder without a manifest, or a listed feature file that does not exist.
        ValueError: an item of an unknown kind, or an empty list.
    """

    def __init__(self, bags: str | os.PathLike | Sequence[Any], cache: bool = True) -> None:
        if isinstance(bags, (str, os.PathLike)):
            entries = _read_manifest(Path(bags).expanduser())
        else:
            entries = []
            for i, item in enumerate(bags):
                if isinstance(item, (str, os.PathLike)):
                    item = {"features": str(item)}
                if not isinstance(item, Mapping) or "features" not in item:
                    raise ValueError(f"feature bag {i}: expected a .pt path or a dict with 'features', got {item!r}")
                entries.append(dict(item))
        if not entries:
            raise ValueError(f"no feature bags in {bags!r}")
        for entry in entries:
            feats = entry["features"]
            if isinstance(feats, (str, os.PathLike)) and not Path(feats).is_file():
                raise FileNotFoundError(f"feature file not found: {feats}")
        self.entries = entries
        self.cache = cache
        self._cached: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, index: int) -> dict:
        entry = self.entries[index]
        feats = entry["features"]
        stored: Mapping[str, Any] = {}
        if isinstance(feats, (str, os.PathLike)):
            try:
                stored = torch.load(feats, map_location="cpu", weights_only=True)
            except Exception as err:
                raise ValueError(f"{feats}: cannot be read as a feature file ({type(err).__name__}: {err}).") from err
            if not isinstance(stored, Mapping) or "features" not in stored:
                raise ValueError(f"{feats}: expected a dict with 'features', got {type(stored).__name__}")
            feats = stored["features"]
        feats = torch.as_tensor(feats)
        if feats.ndim != 2 or feats.shape[0] < 1:
            raise ValueError(
                f"feature bag {entry.get('slide_id', index)}: features must be (N >= 1, D), got {tuple(feats.shape)}"
            )
        label = entry.get("label", stored.get("label"))
        if label is None:
            raise ValueError(f"feature bag {entry.get('slide_id', index)} has no label")
        sid = entry.get("slide_id", stored.get("slide_id", Path(str(entry["features"])).stem))
        return {
            "features": feats,
            "label": torch.as_tensor(np.asarray(label, dtype=np.float32)),
            "slide_id": str(sid),
            "source": str(entry.get("source", stored.get("source", "real"))),
        }

    def __getitem__(self, index: int) -> dict:
        sample = self._cached.get(index)
        if sample is None:
            sample = self._load(index)
            if self.cache:
                self._cached[index] = sample
        return {**sample, "features": sample["features"].float()}

    @property
    def num_features(self) -> int:
        """D, the width of the first bag's features."""
        return int(self[0]["features"].shape[-1])
