"""Paired arms of a downstream study: which real slides each seed labels, and one arm x seed cell trained and scored.

An arm is a way to train a grader: on real data only, or on real data mixed with one generator's synthetic data at
a balance lambda (Eq. 4), or (pixel level) on synthetic data only. Arms are paired: for a seed, every arm draws the
same real training and validation slides (:func:`paired_subset`, a function of the seed only) and starts from the
same initialisation (the seed seeds the network and the real loader's shuffle), so arms differ only by what they
add. A cell (arm, seed) writes its scores on the test items and then ``cell.json``, last: a cell with
``cell.json`` is finished.

* slide level (:func:`slide_cell`): TransMIL on feature bags (:func:`monai_disc.engines.mil.train_transmil`, early
  stopping on the seed's validation slides); scores of every test slide;
* pixel level (:func:`pixel_cell`): CarcinoNet on tiles for a fixed number of steps
  (:class:`monai_disc.engines.MixedSupervisedTrainer`); the confusion matrix of every test tile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from monai_disc.io import atomic_write_bytes, atomic_write_text
from monai_disc.labels import NUM_CLASSES

__all__ = [
    "CELL_FILE",
    "REAL_ONLY",
    "Arm",
    "load_labelled_tiles",
    "paired_subset",
    "pixel_cell",
    "read_cell",
    "slide_cell",
    "study_arms",
    "tile_confusions",
]

REAL_ONLY = "real"
CELL_FILE = "cell.json"
_SCORES = "scores.npz"


@dataclass(frozen=True)
class Arm:
    """One way to train a grader.

    Args:
        name: its name in tables and folders (``real``, ``sd@0.3``, ``gd-only``).
        generator: the synthetic data it adds (None: real only).
        lam: the synthetic loss weight (0: real only; 1: synthetic only).
    """

    name: str
    generator: str | None = None
    lam: float = 0.0


def study_arms(generators: Sequence[str], lambdas: Sequence[float], synthetic_only: bool = False) -> list[Arm]:
    """Real only, then every generator at every lambda, then (``synthetic_only``) every generator alone.

    Raises:
        ValueError: a lambda outside (0, 1), a generator named ``real`` or twice, or one that is not a plain name.
    """
    bad = [lam for lam in lambdas if not 0.0 < float(lam) < 1.0]
    if bad:
        raise ValueError(f"lambdas of mixed arms must lie in (0, 1), got {bad}")
    if len(set(generators)) != len(generators) or REAL_ONLY in generators:
        raise ValueError(f"generators must be distinct and not {REAL_ONLY!r}, got {list(generators)}")
    for g in generators:
        if not g or any(c in g for c in '/\\:*?"<>|@ ') or g.startswith("."):
            raise ValueError(f"generator name {g!r} is not a plain name (no separators, '@' or spaces)")
    arms = [Arm(REAL_ONLY)]
    arms += [Arm(f"{g}@{float(lam):g}", g, float(lam)) for g in generators for lam in lambdas]
    if synthetic_only:
        arms += [Arm(f"{g}-only", g, 1.0) for g in generators]
    return arms


def paired_subset(
    labels: np.ndarray, n_train: int, n_val: int, seed: int, min_positive: int = 2, tries: int = 10_000
) -> tuple[list[int], list[int]]:
    """The real slides a seed labels: disjoint training and validation draws from a pool, the same for every arm.

    Every class with enough positive slides in the pool gets at least ``min_positive`` of them in the training
    draw and one in the validation draw (a rare grade could otherwise be absent, and its AUROC undefined).

    Args:
        labels: (N, K) multi-hot labels of the pool's slides.
        n_train, n_val: slides per draw.
        seed: the seed (the draw is a function of it and the labels only).
        min_positive: positives per class wanted in the training draw.
        tries: random draws tried before giving up.

    Returns:
        Sorted pool indices of the training and the validation slides.

    Raises:
        ValueError: a pool smaller than the two draws, or no draw found with the positives asked for.
    """
    y = np.asarray(labels) > 0.5
    n = len(y)
    if n_train < 1 or n_val < 1 or n_train + n_val > n:
        raise ValueError(f"cannot draw {n_train} training and {n_val} validation slides from a pool of {n}")
    available = y.sum(axis=0)
    want_train = np.minimum(min_positive, available)
    want_val = np.minimum(1, available - want_train)
    rng = np.random.default_rng([int(seed), 26])
    for _ in range(tries):
        order = rng.permutation(n)
        train, val = order[:n_train], order[n_train : n_train + n_val]
        if (y[train].sum(0) >= want_train).all() and (y[val].sum(0) >= want_val).all():
            return sorted(int(i) for i in train), sorted(int(i) for i in val)
    raise ValueError(
        f"no draw of {n_train} + {n_val} slides holds {min_positive} positives per class (pool positives "
        f"{available.tolist()}); draw more slides or lower min_positive"
    )


def _write_cell(out: Path, arm: Arm, seed: int, arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any]) -> dict:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(out / _SCORES, buffer.getvalue())
    # CPU results are reproducible at one thread count only (the order of float sums): the cell says which it had
    record = {"arm": asdict(arm), "seed": int(seed), **summary, "torch_threads": torch.get_num_threads()}
    atomic_write_text(out / CELL_FILE, json.dumps(record, indent=1, default=float) + "\n")
    return record


def read_cell(out_dir: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]] | None:
    """A finished cell's record and arrays, or None when the cell is not finished."""
    out = Path(out_dir)
    if not (out / CELL_FILE).is_file():
        return None
    with np.load(out / _SCORES, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads((out / CELL_FILE).read_text()), arrays


def slide_cell(
    arm: Arm,
    seed: int,
    train: Sequence[Any],
    val: Sequence[Any],
    test: Any,
    synthetic: Any | None,
    out_dir: str | os.PathLike,
    **train_kwargs: Any,
) -> dict:
    """Train TransMIL for one arm and seed and score every test slide; a finished cell is read back, not redone.

    Args:
        arm: what to train on.
        seed: seeds the initialisation and the shuffles (:func:`monai_disc.engines.mil.train_transmil`).
        train, val: the seed's real feature bags (the same for every arm).
        test: the test bags (anything :func:`monai_disc.engines.mil.as_feature_bags` takes).
        synthetic: the arm generator's feature bags (unused for real only).
        out_dir: the cell folder: ``run/`` (the training, resumable), ``scores.npz`` (``scores`` (N, K) logits,
            ``targets`` (N, K), ``slide_ids``) and ``cell.json``.
        train_kwargs: passed to :func:`monai_disc.engines.mil.train_transmil`.

    Returns:
        The cell record (arm, seed, the training summary, AUROC per class and macro).
    """
    from monai_disc.engines.mil import as_feature_bags, train_transmil
    from monai_disc.metrics.slide import slide_auroc

    out = Path(out_dir)
    finished = read_cell(out)
    if finished is not None:
        return finished[0]
    model, _ = train_transmil(
        as_feature_bags(list(train)),
        synthetic if arm.lam > 0.0 else None,
        as_feature_bags(list(val)),
        lam=arm.lam,
        seed=seed,
        out_dir=out / "run",
        **train_kwargs,
    )
    bags = as_feature_bags(test)
    device = next(model.parameters()).device
    scores, targets, ids = [], [], []
    with torch.inference_mode():
        for i in range(len(bags)):
            sample = bags[i]
            scores.append(model(sample["features"][None].to(device)).float().cpu()[0].numpy())
            targets.append(sample["label"].numpy())
            ids.append(sample["slide_id"])
    result = slide_auroc(np.stack(scores), np.stack(targets))
    trained = json.loads((out / "run" / "result.json").read_text())
    summary = {
        "epochs": trained["epochs"],
        "best_epoch": trained["best_epoch"],
        "macro_auroc": result["macro_auroc"],
        "auroc": result["auroc"],
        "n_test": len(bags),
    }
    return _write_cell(
        out, arm, seed, {"scores": np.stack(scores), "targets": np.stack(targets), "slide_ids": np.array(ids)}, summary
    )


def load_labelled_tiles(items: Sequence[Mapping[str, Any]], data_format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles and label maps in memory: images (N, 3, H, W) float in [-1, 1], labels (N, H, W) uint8.

    Args:
        items: dicts with ``image`` and ``mask`` paths.
        data_format: their mask format (``sicapv2``: JPEG 0/3/4/5; ``folder``: PNG 0..3; ``panda``), as
            :func:`monai_disc.engines.evaluation.labelled_tile_transforms`.
    """
    from monai_disc.engines.evaluation import labelled_tile_transforms

    load = labelled_tile_transforms(data_format, label_key="mask")
    images, masks = [], []
    for item in items:
        loaded = load({"image": str(item["image"]), "mask": str(item["mask"])})
        image, mask = np.asarray(loaded["image"], dtype=np.float32), np.asarray(loaded["mask"], dtype=np.uint8)
        images.append(torch.from_numpy(image))
        masks.append(torch.from_numpy(mask.reshape(image.shape[-2:])))
    if not images:
        raise ValueError("no labelled tiles to load")
    sizes = {tuple(m.shape) for m in masks}
    if len(sizes) > 1:
        raise ValueError(f"labelled tiles differ in size ({sorted(sizes)}); a pixel study needs one tile size")
    return torch.stack(images), torch.stack(masks)


def tile_confusions(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix of each tile: (T, K, K) pixel counts, rows truth, columns prediction.

    Args:
        pred, target: (T, H, W) integer label maps.
    """
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"pred and target must both be (T, H, W), got {p.shape} and {t.shape}")
    k = num_classes
    tile = np.arange(p.shape[0])[:, None, None]
    flat = (tile * k * k + t * k + p).ravel()
    return np.bincount(flat, minlength=p.shape[0] * k * k).reshape(p.shape[0], k, k)


def _tile_items(images: torch.Tensor, masks: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"image": images[i], "label": masks[i].long()} for i in range(len(images))]


def pixel_cell(
    arm: Arm,
    seed: int,
    real: tuple[torch.Tensor, torch.Tensor],
    synthetic: tuple[torch.Tensor, torch.Tensor] | None,
    test: tuple[torch.Tensor, torch.Tensor],
    out_dir: str | os.PathLike,
    network: Callable[[], nn.Module] | None = None,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
) -> dict:
    """Train CarcinoNet for one arm and seed for ``steps`` steps and score every test tile; a finished cell is read
    back, not redone.

    Args:
        arm: what to train on (``lam`` 1: synthetic only).
        seed: seeds the initialisation and both shuffles.
        real: the seed's real tiles and label maps (:func:`load_labelled_tiles`).
        synthetic: the arm generator's tiles and label maps (unused for real only).
        test: the real test tiles and label maps.
        out_dir: the cell folder: ``scores.npz`` (``confusion`` (T, K, K)) and ``cell.json``.
        network: factory of the network (default: the toy CarcinoNet).
        steps: optimisation steps (each a real and, for lambda > 0, a synthetic batch).
        batch_size: tiles per batch.
        lr: Adam's learning rate (cosine schedule to 0).
        device: where to train; None takes CUDA when available.

    Returns:
        The cell record (arm, seed, IoU per class and mIoU on the test tiles).
    """
    from ignite.engine import Events
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from monai_disc.engines.mixed import MixedSupervisedTrainer
    from monai_disc.engines.segmentation import SegmentationLoss
    from monai_disc.metrics.bootstrap import iou_columns
    from monai_disc.networks import carcinonet_toy

    out = Path(out_dir)
    finished = read_cell(out)
    if finished is not None:
        return finished[0]
    if arm.lam > 0.0 and synthetic is None:
        raise ValueError(f"arm {arm.name} needs synthetic tiles")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    set_determinism(seed=seed)
    net = (network or carcinonet_toy)().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    def loader(data: tuple[torch.Tensor, torch.Tensor], offset: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed + offset)
        size = min(batch_size, len(data[0]))
        return DataLoader(_tile_items(*data), batch_size=size, shuffle=True, drop_last=True, generator=generator)

    trainer = MixedSupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=steps,
        train_data_loader=loader(real, 0),
        network=net,
        optimizer=optimizer,
        loss_function=SegmentationLoss(),
        synthetic_loader=loader(synthetic, 1) if arm.lam > 0.0 and synthetic is not None else None,
        lam=arm.lam,
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: scheduler.step())
    trainer.run()
    net.eval()
    preds = []
    with torch.inference_mode():
        for start in range(0, len(test[0]), 64):
            preds.append(net(test[0][start : start + 64].to(device)).argmax(1).cpu())
    confusion = tile_confusions(torch.cat(preds).numpy(), test[1].numpy())
    iou = iou_columns(confusion.sum(0))
    summary = {"iou": [float(v) for v in iou], "miou": float(np.nanmean(iou)), "n_test": len(test[0]), "steps": steps}
    return _write_cell(out, arm, seed, {"confusion": confusion}, summary)
