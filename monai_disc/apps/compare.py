"""Compare mask-to-tile generators on the same held-out masks and the same noise seeds.

Every generator (SD, SD-SC, SD-DISC, SD-DISC-CoTrain, or any callable ``masks, seeds -> tiles``) draws one tile
per mask from the same seed, so differences between rows come from the generator alone. Three figures per
generator:

- mask fidelity: a trained segmenter (the CarcinoNet "ruler") grades each tile, and its label map is scored
  against the mask the tile was drawn from (:class:`monai_disc.metrics.MaskFidelity`: IoU per class, mIoU,
  pixel accuracy);
- realism: FID (MONAI ``FIDMetric``) between the ruler's pooled encoder features of the generated tiles and of
  real tiles; with fewer tiles than feature dimensions the estimate is biased upwards, so compare FIDs only at
  the same tile counts;
- cost: seconds per tile of generation alone (the ruler's work is not timed).

When the real tiles under the masks are given, a ``real`` row scores the ruler on them: the ceiling of mask
fidelity with this ruler, against which the generators' mIoU reads.

Outputs in ``out_dir``: ``compare.md`` (the table), ``compare.json`` (all figures) and ``compare_grid.png``
(mask | [real] | one column per generator, one row per mask, as in Figure 5 of the DISC paper). Each
generator's results are kept in ``out_dir/.compare_parts/`` as it finishes, so a killed run with
``resume=True`` redoes only the generators it had not finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric
from scipy.linalg import LinAlgWarning
from torch import Tensor, nn

from monai_disc.bundles import CARCINONET_WEIGHTS, bundle_file
from monai_disc.data import load_sicapv2
from monai_disc.inferers import GENERATORS, load_generator
from monai_disc.io import atomic_torch_save, atomic_write_text
from monai_disc.labels import LABEL_NAMES, NUM_CLASSES, colorize
from monai_disc.metrics import MaskFidelity
from monai_disc.networks import load_weights
from monai_disc.transforms import as_label_map, sicapv2_tile_transforms
from monai_disc.visualize import save_grid, to_uint8

__all__ = [
    "compare_generators",
    "format_comparison",
    "held_out_masks",
    "ruler_features",
    "ruler_fid",
    "run_comparison",
]

Generator = Callable[[Tensor, Sequence[int]], Tensor]
_PARTS_DIR = ".compare_parts"
_PART_FORMAT = 3  # 2: scores hold leak and foreign; 3: counted network evaluations
_SCORES = ("iou", "miou", "pixel_accuracy", "leak", "foreign", "confusion_matrix")


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
def _label_fractions(mask: Tensor, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """(K, nh, nw): the share of each label in every window of the mask, windows on a grid of the given stride."""
    one_hot = F.one_hot(mask.long(), NUM_CLASSES).permute(2, 0, 1).float()[None]
    return F.avg_pool2d(one_hot, window, stride)[0]


def _best_window(mask: Tensor, window: tuple[int, int], min_fraction: float) -> tuple[int, int, int]:
    """(labels, y, x) of the window holding the most labels (each >= min_fraction), the most even split next."""
    stride = (max(1, window[0] // 4), max(1, window[1] // 4))
    fractions = _label_fractions(mask, window, stride)
    counted = fractions >= min_fraction
    labels = counted.sum(0)
    smallest = torch.where(counted, fractions, torch.ones_like(fractions)).amin(0)
    score = labels * 2.0 + torch.where(labels > 1, smallest, torch.zeros_like(smallest))  # labels first
    best = int(score.flatten().argmax())
    y, x = divmod(best, score.shape[1])
    return int(labels.flatten()[best]), y * stride[0], x * stride[1]


def held_out_masks(
    root: str | os.PathLike,
    n: int,
    min_labels: int = 2,
    size: int | None = None,
    min_fraction: float = 0.05,
    partition: str = "Test",
) -> tuple[Tensor, Tensor]:
    """Masks of held-out (test split) tiles with at least ``min_labels`` labels, and the real tiles under them.

    A label counts only where it covers at least ``min_fraction`` of the mask, so it survives the reduction to
    latent size and a generator has room to draw it. With ``size``, each mask is cropped to the size x size
    window (on a grid of stride size / 4) that holds the most labels, the most even split breaking ties, since a
    fixed crop can cut a label away. Masks with the most labels come first, then data-list order.

    Args:
        root: a SICAPv2-layout folder (real or :func:`monai_disc.data.make_toy_sicapv2`).
        n: how many masks to return at most.
        min_labels: the fewest labels a mask (or its crop) must hold.
        size: crop side in pixels (the generator's tile size, e.g. 64 for the toy LDM); None keeps whole tiles.
        min_fraction: the share of the mask a label must cover to count.
        partition: the SICAPv2 partition whose ``Test`` split is held out.

    Returns:
        masks (n', H, W) int64 labels and tiles (n', 3, H, W) float in [-1, 1], n' <= n.

    Raises:
        ValueError: if n < 1, a tile is smaller than ``size``, or no mask holds ``min_labels`` labels.
        FileNotFoundError: if ``root`` or its files are missing.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction}.")
    transform = sicapv2_tile_transforms()
    chosen: list[tuple[int, int, Tensor, Tensor]] = []  # (-labels, order, mask, tile)
    for order, item in enumerate(load_sicapv2(root, partition, "Test")):
        data = transform(item)
        mask = data["mask"].as_subclass(Tensor)[0].long()
        tile = data["image"].as_subclass(Tensor)
        h, w = mask.shape
        window = (h, w) if size is None else (int(size), int(size))
        if window[0] > h or window[1] > w:
            raise ValueError(f"{item['mask']}: mask of {h}x{w} px is smaller than the crop size {size}.")
        labels, y, x = _best_window(mask, window, min_fraction)
        if labels < min_labels:
            continue
        crop = (slice(y, y + window[0]), slice(x, x + window[1]))
        chosen.append((-labels, order, mask[crop].clone(), tile[:, crop[0], crop[1]].clone()))
    if not chosen:
        where = "" if size is None else f" in any {size} px crop"
        raise ValueError(f"{root}: no {partition}/Test mask holds {min_labels} labels{where}.")
    chosen.sort(key=lambda c: (c[0], c[1]))
    chosen = chosen[:n]
    return torch.stack([c[2] for c in chosen]), torch.stack([c[3] for c in chosen])


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------
def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def ruler_features(ruler: nn.Module, tiles: Tensor, batch_size: int) -> Tensor:
    """(N, C) pooled encoder features (``ruler.encode``) of tiles, in eval mode, on the CPU as float64."""
    if not callable(getattr(ruler, "encode", None)):
        raise TypeError(f"the ruler {type(ruler).__name__} has no encode(tiles) -> (B, C) features method.")
    was_training = ruler.training
    ruler.eval()
    try:
        device = _device_of(ruler)
        feats = [ruler.encode(chunk.to(device)).flatten(1).double().cpu() for chunk in tiles.split(batch_size)]
    finally:
        ruler.train(was_training)
    return torch.cat(feats)


@torch.no_grad()
def autoencoded(autoencoder: nn.Module, tiles: Tensor, batch_size: int) -> Tensor:
    """Tiles in [-1, 1] encoded and decoded by the first stage (on its device; returned on the CPU), clamped."""
    device = _device_of(autoencoder)
    out = [
        autoencoder.decode_stage_2_outputs(autoencoder.encode_stage_2_inputs(chunk.to(device))).clamp(-1, 1).cpu()
        for chunk in tiles.float().split(batch_size)
    ]
    return torch.cat(out)


def ruler_fid(features: Tensor, real_features: Tensor) -> float:
    """FID (MONAI ``FIDMetric``) between two sets of feature vectors (N, C); NaN with fewer than 2 in a set.

    Tiny negative values from rounding are returned as 0.
    """
    if features.shape[0] < 2 or real_features.shape[0] < 2:
        return float("nan")
    with warnings.catch_warnings():  # fewer samples than features: singular covariances are expected
        warnings.simplefilter("ignore", LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...) inside MONAI
        return max(0.0, float(FIDMetric()(features.double(), real_features.double())))


def _digest(*parts: Any) -> str:
    """sha256 of tensors (their bytes), modules (their state) and plain values, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, nn.Module):
            for key, value in sorted(part.state_dict().items()):
                h.update(key.encode())
                h.update(_digest(value).encode())
        elif isinstance(part, Tensor):
            t = part.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(part.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def _settings(obj: Any) -> list[tuple[str, Any]]:
    """The plain (number, string, None) attributes of a sampler and of the sampler it wraps, if any."""
    plain = (int, float, str, bool, type(None))
    found = [(k, v) for k, v in sorted(vars(obj).items()) if isinstance(v, plain)] if hasattr(obj, "__dict__") else []
    inner = getattr(obj, "sampler", None)
    return found + (_settings(inner) if inner is not None and inner is not obj else [])


def _generator_digest(generator: Any) -> str:
    """Identity of a generator for resuming: its class or function, its sampler's settings, its networks' weights.

    A plain function is known by its qualified name only.
    """
    owner = getattr(generator, "__self__", generator)  # a bound method's object, e.g. LDMGenerator
    attrs = sorted(vars(owner).items()) if hasattr(owner, "__dict__") else []
    modules = [v for _, v in attrs if isinstance(v, nn.Module)]
    sampler = getattr(owner, "sampler", None)
    name = getattr(owner, "__qualname__", type(owner).__qualname__)
    return _digest(name, type(sampler).__qualname__, _settings(sampler) if sampler is not None else [], *modules)


def _as_callable(name: str, generator: Any) -> Generator:
    if callable(generator):
        return generator
    if callable(getattr(generator, "sample", None)):
        return generator.sample
    raise TypeError(f"generator {name!r} is neither a callable (masks, seeds) -> tiles nor has a sample method.")


def _sync() -> None:
    """Wait for queued GPU work, so wall-clock time covers what was launched."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _run_generator(
    name: str,
    generator: Generator,
    masks: Tensor,
    seeds: list[int],
    ruler: nn.Module,
    batch_size: int,
    grid_rows: int,
    warmup: bool,
) -> dict[str, Any]:
    """Draw every mask's tile in batches, time the drawing, and measure the tiles with the ruler."""
    fidelity = MaskFidelity(ruler, batch_size=batch_size)
    features: list[Tensor] = []
    grid: list[Tensor] = []
    if warmup:  # first-call costs (allocations, kernel selection) belong to no generator
        generator(masks[:1], seeds[:1])
    seconds = 0.0
    with EvaluationCounter(getattr(getattr(generator, "__self__", generator), "denoiser", None)) as counter:
        for start in range(0, len(masks), batch_size):
            seconds += _draw_batch(name, generator, masks, seeds, start, batch_size, fidelity, features, grid, ruler)
            grid = grid[:grid_rows]
    scores = fidelity.aggregate()
    return {
        "scores": {k: scores[k] for k in _SCORES},
        "features": torch.cat(features),
        "grid": torch.stack(grid) if grid else torch.zeros(0, 3, *masks.shape[-2:]),
        "seconds": seconds,
        "evaluations": None if counter.samples is None else counter.samples / len(masks),
    }


def _draw_batch(
    name: str,
    generator: Generator,
    masks: Tensor,
    seeds: list[int],
    start: int,
    batch_size: int,
    fidelity: MaskFidelity,
    features: list[Tensor],
    grid: list[Tensor],
    ruler: nn.Module,
) -> float:
    """Draw one batch (timed), score it into ``fidelity``, add its ruler features and grid tiles; the seconds."""
    batch, batch_seeds = masks[start : start + batch_size], seeds[start : start + batch_size]
    _sync()  # no queued ruler work in the generator's time
    begin = time.perf_counter()
    tiles = generator(batch, batch_seeds)
    _sync()
    seconds = time.perf_counter() - begin
    if not isinstance(tiles, Tensor) or tuple(tiles.shape) != (len(batch), 3, *batch.shape[-2:]):
        got = tuple(tiles.shape) if isinstance(tiles, Tensor) else type(tiles).__name__
        raise ValueError(f"generator {name!r} returned {got} for {len(batch)} masks of {tuple(batch.shape[-2:])}.")
    tiles = tiles.detach().float()
    fidelity(tiles, batch)
    features.append(ruler_features(ruler, tiles, batch_size))
    grid.extend(t.cpu() for t in tiles)
    return seconds


class EvaluationCounter:
    """Counts the samples a network is evaluated on while the context is open (a forward hook): a generator's
    network evaluations, as run, not as computed from its settings. Guidance counts two per step (the conditional
    and the unconditional half), separated conditions one per branch.

    Args:
        network: the denoiser to count; None counts nothing (``samples`` stays None).
    """

    def __init__(self, network: nn.Module | None) -> None:
        self.network = network if isinstance(network, nn.Module) else None
        self.samples: int | None = None if self.network is None else 0
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        self.samples += int(x.shape[0])  # type: ignore[operator]

    def __enter__(self) -> EvaluationCounter:
        if self.network is not None:
            self._handle = self.network.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()


def _sampler_of(generator: Any) -> dict[str, Any]:
    """The solver (scheduler class and grid), steps and guidance a generator samples with, read from its sampler;
    empty for generators that do not expose one (e.g. plain callables)."""
    sampler = getattr(getattr(generator, "__self__", generator), "ldm_sampler", None)
    if sampler is None:
        return {}
    scheduler = sampler.scheduler
    spacing = getattr(scheduler, "timestep_spacing", None)
    return {
        "solver": type(scheduler).__name__ + (f" ({spacing})" if spacing else ""),
        "num_inference_steps": int(sampler.num_inference_steps),
        "guidance_scale": float(sampler.guidance_scale),
    }


def _sampler_record(generators: Mapping[str, Any]) -> tuple[int | None, float | None]:
    """(steps, guidance scale) shared by the generators' samplers, read from the samplers themselves; None for a
    setting the generators do not share or do not expose (e.g. plain callables)."""
    records = [_sampler_of(g) for g in generators.values()]
    steps = {r.get("num_inference_steps") for r in records}
    guidance = {r.get("guidance_scale") for r in records}
    return (
        steps.pop() if len(steps) == 1 and None not in steps else None,
        guidance.pop() if len(guidance) == 1 and None not in guidance else None,
    )


def _ruler_name(ruler: nn.Module) -> str:
    params = sum(p.numel() for p in ruler.parameters())
    return f"{type(ruler).__name__} ({params / 1e6:.2f} M parameters, weights {_digest(ruler)[:8]})"


def compare_generators(
    generators: Mapping[str, Generator],
    masks: Tensor,
    seeds: Sequence[int],
    ruler: nn.Module,
    real_tiles: Tensor,
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    ruler_name: str | None = None,
    grid_rows: int = 6,
    warmup: bool = True,
    resume: bool = False,
    references: Mapping[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Draw a tile per mask and seed with every generator; score fidelity, realism and cost; write the results.

    Args:
        generators: name -> callable ``(masks (B, H, W), seeds) -> tiles (B, 3, H, W)`` in [-1, 1] (or an
            object with such a ``sample`` method), e.g. :func:`monai_disc.inferers.load_generator`'s. Tile i must
            depend on
            ``masks[i]`` and ``seeds[i]`` only. The table records each one's solver, steps and guidance.
        masks: (N, H, W) or (N, 1, H, W) integer labels 0..3, the same for every generator.
        seeds: N noise seeds, mask i drawn from seed i by every generator.
        ruler: trained segmenter (CarcinoNet): ``forward`` gives (B, 4, H, W) logits, ``encode`` (B, C) features.
        real_tiles: (M, 3, H', W') real tiles in [-1, 1], M >= 2, the FID reference (best at the generators'
            tile size, since pooled features change with the field of view).
        out_dir: where ``compare.md``, ``compare.json`` and ``compare_grid.png`` go.
        batch_size: masks per generator call and tiles per ruler call.
        ruler_name: how the table names the ruler; defaults to its class, size and a digest of its weights.
        grid_rows: masks shown in the picture grid.
        warmup: run each generator once on the first mask, untimed, before timing it.
        resume: reuse a generator's stored results from an earlier run in ``out_dir`` when its name, class,
            network weights, the masks, seeds, steps and the ruler all match.
        references: name -> (N, 3, H, W) tiles under the masks that no generator drew, scored like the generated
            ones as reference rows without timing, each with a grid column: e.g. ``real``, the tiles the masks were
            drawn on (the ruler's own score on real tiles, the ceiling a generator can reach), and the same tiles
            encoded and decoded by the autoencoder (the ceiling of a generator with that first stage).

    Returns:
        ``generators`` (name -> ``miou``, ``iou`` per class, ``pixel_accuracy``, ``leak``, ``foreign`` (see
        :meth:`monai_disc.metrics.MaskFidelity.aggregate`), ``fid``, ``seconds_per_tile``, ``network_evaluations_per_tile`` (counted by
        :class:`EvaluationCounter` around the generator's ``denoiser``; None without one), ``solver``,
        ``num_inference_steps``, ``guidance_scale`` (when the generator exposes its sampler), ``confusion_matrix``),
        ``order``, ``references`` (name -> such a row, no timing),
        ``num_masks``, ``mask_size``, ``labels_per_mask`` (min, mean, max), ``seeds``, ``steps``, ``ruler``,
        ``feature_dim``, ``num_real_tiles``, ``device``, ``files``. ``compare.json`` holds the same, with
        undefined numbers (NaN) as null.

    Raises:
        ValueError: for no generators, mismatched masks and seeds, bad real tiles or generator outputs.
    """
    if not generators:
        raise ValueError("no generators to compare.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    masks = as_label_map(masks, NUM_CLASSES, "masks").cpu()
    steps, guidance_scale = _sampler_record(generators)
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(masks) or not len(masks):
        raise ValueError(f"need one seed per mask and at least one mask, got {len(seeds)} seeds, {len(masks)} masks.")
    real_tiles = torch.as_tensor(real_tiles).as_subclass(Tensor)
    if real_tiles.ndim != 4 or real_tiles.shape[1] != 3 or real_tiles.shape[0] < 2:
        raise ValueError(f"real_tiles must be (M, 3, H, W) with M >= 2, got shape {tuple(real_tiles.shape)}.")
    references = {name: torch.as_tensor(t).as_subclass(Tensor).float() for name, t in (references or {}).items()}
    for name, tiles in references.items():
        if tuple(tiles.shape) != (len(masks), 3, *masks.shape[-2:]):
            raise ValueError(
                f"reference {name!r} must be (N, 3, H, W) = {(len(masks), 3, *masks.shape[-2:])} like the masks, "
                f"got {tuple(tiles.shape)}."
            )
    out = Path(out_dir)
    parts_dir = out / _PARTS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)

    real_features = ruler_features(ruler, real_tiles.float(), batch_size)
    ruler_digest = _digest(ruler)
    data_digest = _digest(masks, seeds, steps, ruler_digest, grid_rows)
    rows: dict[str, dict[str, Any]] = {}
    grids: dict[str, Tensor] = {}
    for index, (name, generator) in enumerate(generators.items()):
        run = _as_callable(name, generator)
        key = _digest(name, _generator_digest(run), data_digest)
        part_path = parts_dir / f"{index:02d}.pt"
        part = None
        if resume and part_path.is_file():
            stored = torch.load(part_path, map_location="cpu", weights_only=True)
            part = stored if stored.get("key") == key and stored.get("format") == _PART_FORMAT else None
        if part is None:
            part = _run_generator(name, run, masks, seeds, ruler, batch_size, grid_rows, warmup)
            part.update(key=key, format=_PART_FORMAT)
            atomic_torch_save(part, part_path)
        rows[name] = {
            **part["scores"],
            "fid": ruler_fid(part["features"], real_features),
            "seconds_per_tile": part["seconds"] / len(masks),
            "network_evaluations_per_tile": part["evaluations"],
            **_sampler_of(run),
        }
        grids[name] = part["grid"]
    reference_rows = {}
    for name, tiles in references.items():
        fidelity = MaskFidelity(ruler, batch_size=batch_size)
        fidelity(tiles, masks)
        scores = fidelity.aggregate()
        reference_rows[name] = {k: scores[k] for k in _SCORES}
        reference_rows[name]["fid"] = ruler_fid(ruler_features(ruler, tiles, batch_size), real_features)
        reference_rows[name]["seconds_per_tile"] = None
        reference_rows[name]["network_evaluations_per_tile"] = None

    label_counts = [len(torch.unique(m)) for m in masks]
    files = {"table": out / "compare.md", "json": out / "compare.json", "grid": out / "compare_grid.png"}
    result: dict[str, Any] = {
        "generators": rows,
        "order": list(rows),
        "references": reference_rows,
        "num_masks": len(masks),
        "mask_size": list(masks.shape[-2:]),
        "labels_per_mask": [min(label_counts), float(np.mean(label_counts)), max(label_counts)],
        "seeds": seeds,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "ruler": ruler_name or _ruler_name(ruler),
        "feature_dim": int(real_features.shape[1]),
        "num_real_tiles": int(real_tiles.shape[0]),
        "device": "GPU" if any(p.is_cuda for p in ruler.parameters()) else "CPU",
        "files": {k: str(v) for k, v in files.items()},
    }
    columns = {**{name: tiles[:grid_rows] for name, tiles in references.items()}, **grids}
    _save_grid(masks, columns, files["grid"], grid_rows)
    atomic_write_text(files["table"], "# Generator comparison\n\n" + format_comparison(result) + "\n")
    atomic_write_text(files["json"], json.dumps(_finite_or_none(result), indent=1))
    return result


def _finite_or_none(value: Any) -> Any:
    """The result with NaN and infinities as None, so ``compare.json`` is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _save_grid(masks: Tensor, grids: Mapping[str, Tensor], path: Path, grid_rows: int) -> None:
    """Figure 5 layout: mask | one column per entry of ``grids``; cells enlarged to >= 128 px so titles fit."""
    rows = min(grid_rows, len(masks))
    if rows < 1:
        return
    zoom = max(1, math.ceil(128 / max(masks.shape[-2:])))

    def big(picture: np.ndarray) -> np.ndarray:
        return picture.repeat(zoom, axis=0).repeat(zoom, axis=1)

    pictures = [
        [big(colorize(masks[i].numpy())), *(big(to_uint8(grids[name][i])) for name in grids)] for i in range(rows)
    ]
    save_grid(pictures, path, titles=["mask", *grids], legend_colors=True)


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------
def _cell(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; n/a for undefined ones."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_comparison(result: Mapping[str, Any], timing: bool = True) -> str:
    """The Markdown table of :func:`compare_generators`'s result and a line saying how it was measured.

    Args:
        result: what :func:`compare_generators` returned (or its ``compare.json``).
        timing: include the seconds-per-tile column (leave it out to compare runs on other machines).
    """
    head = ["generator", "mIoU", *(f"IoU {n}" if i == 0 else n for i, n in enumerate(LABEL_NAMES)), "pixel acc"]
    head += ["leak", "FID", "evaluations/tile"]
    head += ["s/tile"] if timing else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    named = [(name, result["generators"][name]) for name in result["order"]]
    named += [(f"{name} (reference)", row) for name, row in (result.get("references") or {}).items()]
    for name, row in named:
        cells = [name, _cell(row["miou"]), *(_cell(v) for v in row["iou"]), _cell(row["pixel_accuracy"])]
        cells.append(_cell(row.get("leak")))
        cells.append(_cell(row["fid"], 2))
        cells.append(_cell(row.get("network_evaluations_per_tile"), 1))
        cells += [_cell(row["seconds_per_tile"])] if timing else []
        lines.append("| " + " | ".join(cells) + " |")
    lo, mean, hi = result["labels_per_mask"]
    solvers = {row.get("solver") for row in result["generators"].values()}
    solver = solvers.pop() if len(solvers) == 1 and None not in solvers else None
    if result.get("steps") is None:
        steps = "each generator at its own solver and steps (its registry entry's)"
    else:
        steps = f"{result['steps']} {solver or 'solver'} steps"
    if result.get("guidance_scale") not in (None, 1.0):
        steps += f", guidance {result['guidance_scale']:g}"
    h, w = result["mask_size"]
    lines += [
        "",
        f"Ruler: {result['ruler']}; {steps}; {result['num_masks']} held-out masks of {h}x{w} px with {lo}-{hi} "
        f"labels (mean {mean:.2f}), the same seeds for every generator; leak: the share of pixels the ruler reads as "
        f"another label of the same mask; FID on the ruler's {result['feature_dim']}-d "
        f"encoder features against {result['num_real_tiles']} real tiles; s/tile: generation only, on "
        f"{result.get('device', 'CPU')}; evaluations/tile: denoiser evaluations counted while drawing, per tile.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the shipped toy weights, end to end (what `monai-disc compare-generators` runs)
# ----------------------------------------------------------------------------------------------
def run_comparison(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    bundles_dir: str | os.PathLike | None = None,
    num_masks: int = 16,
    num_inference_steps: int | None = None,
    guidance_scale: float = 1.0,
    solver: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    size: int | None = 64,
    num_real: int = 256,
    device: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Compare every registered generator (:data:`monai_disc.inferers.GENERATORS`) whose weights exist.

    The generators are :func:`monai_disc.inferers.load_generator`'s, from the weights under ``bundles_dir``;
    those whose weights are missing (e.g. SD-DISC before it is trained) are skipped. The ruler is the CarcinoNet
    of :data:`monai_disc.bundles.CARCINONET_WEIGHTS`. Masks are :func:`held_out_masks` (>= 2 labels, cropped to
    ``size``); their real tiles give the ``real`` reference row and, encoded and decoded by SD's autoencoder, the
    ``real, autoencoded`` one (the part of the gap to real tiles that the first stage alone makes). The FID
    reference is up to ``num_real`` held-out real tiles cropped the same way.

    Args:
        data_root: a SICAPv2-layout folder (e.g. the toy set of ``monai-disc toy-data``).
        out_dir: output folder.
        bundles_dir: folder holding ``gleason_ldm``, ``gleason_ldm_disc`` and ``carcinonet``; None: the source
            checkout's ``bundles/``.
        num_masks: held-out masks to draw for.
        num_inference_steps: solver steps of every generator; None: each generator's own (its registry entry's,
            else :data:`monai_disc.inferers.DEFAULT_NUM_INFERENCE_STEPS`).
        guidance_scale: classifier-free guidance weight of every generator (1: plain sampling, the paper's).
        solver: the solver of every generator (a name of :data:`monai_disc.inferers.SOLVERS`); None: each
            generator's own.
        seed: seed of the first mask; mask i uses ``seed + i``.
        batch_size: masks per generator call.
        size: tile size the generators draw (64 for the toy LDM); None keeps whole tiles.
        num_real: real tiles for the FID reference.
        device: "cuda" or "cpu"; None picks the GPU when there is one.
        resume: reuse generators finished by an earlier run into ``out_dir``.

    Returns:
        :func:`compare_generators`'s result.

    Raises:
        FileNotFoundError: when the SD, autoencoder or ruler weights are missing.
    """
    from monai_disc.networks import carcinonet_toy

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ruler_path = bundle_file(CARCINONET_WEIGHTS, bundles_dir)
    ruler = load_weights(carcinonet_toy(), ruler_path).to(dev)
    generators = {
        entry.display: load_generator(
            key,
            bundles_dir,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            solver=solver,
            device=dev,
        )
        for key, entry in GENERATORS.items()
        if key in ("sd", "sc") or bundle_file(entry.weights, bundles_dir).is_file()
    }
    sd = generators[GENERATORS["sd"].display]
    masks, mask_tiles = held_out_masks(data_root, num_masks, min_labels=2, size=size)
    _, real_tiles = held_out_masks(data_root, num_real, min_labels=1, size=size)
    return compare_generators(
        generators,
        masks,
        range(seed, seed + len(masks)),
        ruler,
        real_tiles,
        out_dir,
        batch_size=batch_size,
        ruler_name=f"CarcinoNet toy ({ruler_path})",
        resume=resume,
        references={"real": mask_tiles, "real, autoencoded": autoencoded(sd.autoencoder, mask_tiles, batch_size)},
    )
