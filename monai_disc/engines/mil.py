"""Slide-level grading: TransMIL trained on cached feature bags, real and synthetic mixed by lambda (Eq. 4).

The official TransMIL recipe on MONAI/Ignite parts: one bag per step, BCE-with-logits on the multi-hot
[NC, GG3, GG4, GG5] label, RAdam (lr 2e-4, weight decay 1e-5) inside Lookahead (alpha 0.5, k 6; timm's),
validation every epoch on the macro AUROC (MONAI ``ROCAUCMetric``), early stopping on it (Ignite
``EarlyStopping``, patience 10) and the best weights kept. Real and synthetic bags come from two loaders
mixed by :class:`monai_disc.engines.MixedSupervisedTrainer`; ``lam = 0`` never reads the synthetic bags.

A run folder holds::

    model.pt            best-validation weights (plain state dict), written atomically when the score improves
    history.csv         one row per epoch: epoch, loss, loss_real, loss_synth, val_macro_auroc
    result.json         written when training ends: epochs, best_epoch, best_val_macro_auroc, stopped_early, ...
    checkpoints/        the epoch-end checkpoint a killed run resumes from (weights, optimizer, early stopping)
    tensorboard/        losses per step and the validation AUROC per epoch

Calling :func:`train_transmil` again on a finished folder loads the result instead of training; on a killed one
it resumes at the last finished epoch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, TensorBoardStatsHandler, ValidationHandler, from_engine
from monai.metrics import ROCAUCMetric
from monai.utils import CommonKeys as Keys
from monai.utils import set_determinism
from timm.optim import Lookahead

from monai_disc.engines.checkpoint import ResumableCheckpoint
from monai_disc.engines.mixed import LOSS_REAL, LOSS_SYNTH, MixedSupervisedTrainer, loss_parts
from monai_disc.io import atomic_torch_save, atomic_write_text
from monai_disc.labels import LABEL_NAMES, GleasonLabel
from monai_disc.metrics.slide import slide_auroc
from monai_disc.networks.features import FeatureBagDataset
from monai_disc.networks.transmil import transmil, transmil_toy
from monai_disc.networks.weights import load_weights

__all__ = [
    "HISTORY_COLUMNS",
    "MIL_KEY_METRIC",
    "MacroAUROCMetric",
    "as_feature_bags",
    "evaluate_transmil",
    "mil_prepare_batch",
    "train_transmil",
    "transmil_optimizer",
]

MIL_KEY_METRIC = "val_macro_auroc"
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", str(Keys.LOSS), LOSS_REAL, LOSS_SYNTH, MIL_KEY_METRIC)
_NETWORKS: dict[str, Callable[..., nn.Module]] = {"transmil": transmil, "transmil_toy": transmil_toy}
_MODEL, _HISTORY, _RESULT, _CKPT = "model.pt", "history.csv", "result.json", "checkpoints"


def mil_prepare_batch(
    batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI ``prepare_batch`` for feature bags: ``(features (B, N, D), label (B, 4))`` on ``device``."""
    return (
        batchdata["features"].to(device=device, non_blocking=non_blocking, **kwargs),
        batchdata["label"].to(device=device, non_blocking=non_blocking, **kwargs),
    )


def transmil_optimizer(
    network: nn.Module, lr: float = 2e-4, weight_decay: float = 1e-5, alpha: float = 0.5, k: int = 6
) -> torch.optim.Optimizer:
    """The official TransMIL optimizer: ``torch.optim.RAdam`` wrapped in timm's ``Lookahead``.

    Its ``state_dict`` is the inner RAdam's, which also holds Lookahead's slow weights, so checkpoints resume it.
    """
    return Lookahead(torch.optim.RAdam(network.parameters(), lr=lr, weight_decay=weight_decay), alpha=alpha, k=k)


class MacroAUROCMetric(ROCAUCMetric):
    """MONAI's ``ROCAUCMetric`` averaged over the classes a set can score (both positives and negatives present).

    Equal to ``ROCAUCMetric(average="macro")`` when every class is defined; a small validation set without, say,
    a GG5 slide still gets a score from the other classes instead of NaN (as :func:`slide_auroc`).
    """

    def __init__(self) -> None:
        super().__init__(average="none")

    def aggregate(self, average: Any = None) -> float:  # type: ignore[override]
        with warnings.catch_warnings():  # MONAI warns for undefined classes; they are skipped here
            warnings.simplefilter("ignore", UserWarning)
            values = super().aggregate(average="none")
        values = values if isinstance(values, list) else [values]
        defined = [float(v) for v in values if not math.isnan(float(v))]
        return float(np.mean(defined)) if defined else float("nan")


def as_feature_bags(bags: FeatureBagDataset | str | os.PathLike | Sequence[Any]) -> FeatureBagDataset:
    """A :class:`FeatureBagDataset` from a dataset, a feature cache folder, or a list of feature bags."""
    return bags if isinstance(bags, FeatureBagDataset) else FeatureBagDataset(bags)


def _check_val_scorable(val: FeatureBagDataset) -> None:
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    defined = [(labels[:, k].min() < 0.5) & (labels[:, k].max() > 0.5) for k in range(labels.shape[1])]
    if not any(bool(d) for d in defined):
        raise ValueError(
            f"the validation bags ({len(val)} slides) cannot score any class: each class needs slides with and "
            "without it for an AUROC"
        )


class _BestWeights:
    """Evaluator handler: save the network's weights atomically whenever the key metric improves (resumable)."""

    def __init__(self, network: nn.Module, path: Path, metric: str = MIL_KEY_METRIC) -> None:
        self.network = network
        self.path = path
        self.metric = metric
        self.best = -math.inf
        self.epoch = 0

    def __call__(self, engine: Engine) -> None:
        score = float(engine.state.metrics[self.metric])
        if score > self.best or not self.path.is_file():
            self.best = score if not math.isnan(score) else self.best
            self.epoch = int(engine.state.epoch)
            atomic_torch_save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, self.path)

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "epoch": float(self.epoch)}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best, self.epoch = float(state["best"]), int(state["epoch"])


class _EpochLog:
    """Mean losses of each epoch and the validation score, appended to ``history.csv`` after each validation."""

    def __init__(self, trainer: Engine, path: Path) -> None:
        self.trainer = trainer
        self.path = path
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def reset(self, engine: Engine) -> None:
        self._sums = {k: 0.0 for k in HISTORY_COLUMNS[1:4]}
        self._count = 0

    def accumulate(self, engine: Engine) -> None:
        for k, v in loss_parts(engine.state.output).items():
            self._sums[str(k)] += v
        self._count += 1

    def restore(self, engine: Engine) -> None:
        """After a resume: keep the rows of the epochs the checkpoint holds (a kill may leave one more)."""
        self.rows = [r for r in _read_history(self.path) if r["epoch"] <= engine.state.epoch]

    def record(self, evaluator: Engine) -> None:
        row = {"epoch": float(self.trainer.state.epoch)}
        row.update({k: v / max(self._count, 1) for k, v in self._sums.items()})
        row[MIL_KEY_METRIC] = float(evaluator.state.metrics[MIL_KEY_METRIC])
        self.rows.append(row)
        _write_history(self.path, self.rows)


def _write_history(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: int(row[k]) if k == "epoch" else row[k] for k in HISTORY_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(row[k]) for k in HISTORY_COLUMNS} for row in csv.DictReader(f)]


def _build_network(network: str | Callable[..., nn.Module], in_features: int, kwargs: Mapping[str, Any]) -> nn.Module:
    if isinstance(network, str):
        if network not in _NETWORKS:
            raise ValueError(f"unknown network {network!r}; choose one of {sorted(_NETWORKS)} or pass a factory")
        network = _NETWORKS[network]
    return network(in_features, len(GleasonLabel), **dict(kwargs))


def _load_model(net: nn.Module, path: Path) -> nn.Module:
    was_training = net.training
    return load_weights(net, path).train(was_training)


def train_transmil(
    real_train: FeatureBagDataset | str | os.PathLike | Sequence[Any],
    synth_train: FeatureBagDataset | str | os.PathLike | Sequence[Any] | None,
    val: FeatureBagDataset | str | os.PathLike | Sequence[Any],
    lam: float = 0.0,
    seed: int = 0,
    max_epochs: int = 200,
    patience: int = 10,
    out_dir: str | os.PathLike = "transmil_run",
    network: str | Callable[..., nn.Module] = "transmil",
    network_kwargs: Mapping[str, Any] | None = None,
    lr: float = 2e-4,
    weight_decay: float = 1e-5,
    lookahead_alpha: float = 0.5,
    lookahead_k: int = 6,
    device: str | torch.device | None = None,
    amp: bool = False,
    tensorboard: bool = True,
    progress: bool = False,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train TransMIL on real (+ lambda-weighted synthetic) feature bags with early stopping on validation AUROC.

    Args:
        real_train: real training bags (:class:`FeatureBagDataset`, a feature cache folder, or a list of bags).
            One epoch is one pass over them.
        synth_train: synthetic training bags, drawn alongside (cycled independently); unused (not even opened)
            when ``lam == 0``, so it may be None then.
        val: validation bags for the macro AUROC that early stopping and the best weights follow.
        lam: balance weight lambda in [0, 1] (Eq. 4).
        seed: seeds the network's initialisation and both shuffles (:func:`monai.utils.set_determinism`).
        max_epochs: at most this many epochs.
        patience: validations without improvement before stopping.
        out_dir: the run folder (layout in the module docstring).
        network: ``"transmil"`` (the paper's size), ``"transmil_toy"``, or a factory ``(in_features, num_classes,
            **network_kwargs) -> nn.Module``.
        network_kwargs: extra arguments of the network factory.
        lr, weight_decay: RAdam's.
        lookahead_alpha, lookahead_k: Lookahead's.
        device: where to train; None takes CUDA when available.
        amp: mixed precision (CUDA only).
        tensorboard: log to ``out_dir/tensorboard``.
        progress: show a progress bar per epoch.

    Returns:
        The network with its best-validation weights (eval mode), and the history (one dict per epoch with
        :data:`HISTORY_COLUMNS`).

    Raises:
        ValueError: ``lam`` outside [0, 1], ``lam > 0`` without synthetic bags, bag sets of different feature
            widths, or validation bags that cannot score any class.
        FileNotFoundError: a feature cache or feature file that does not exist.
    """
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}.")
    if lam > 0.0 and synth_train is None:
        raise ValueError(f"lam={lam} mixes in synthetic bags but synth_train is None.")
    if max_epochs < 1 or patience < 1:
        raise ValueError(f"max_epochs and patience must be positive, got {max_epochs} and {patience}.")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    real_set, val_set = as_feature_bags(real_train), as_feature_bags(val)
    synth_set = as_feature_bags(synth_train) if lam > 0.0 else None  # type: ignore[arg-type]
    in_features = real_set.num_features
    for name, dataset in (("val", val_set), ("synth_train", synth_set)):
        if dataset is not None and dataset.num_features != in_features:
            raise ValueError(f"{name} bags have {dataset.num_features} features, real_train bags {in_features}.")

    set_determinism(seed=seed)
    net = _build_network(network, in_features, network_kwargs or {})

    result_path = out / _RESULT
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result.get("stopped_early") or int(result.get("epochs", 0)) >= max_epochs:
            return _load_model(net, out / _MODEL).to(device).eval(), _read_history(out / _HISTORY)
    _check_val_scorable(val_set)

    net = net.to(device)
    optimizer = transmil_optimizer(net, lr, weight_decay, lookahead_alpha, lookahead_k)
    real_loader = DataLoader(real_set, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(seed))
    synth_loader = (
        DataLoader(synth_set, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(seed + 1))
        if synth_set is not None
        else None
    )
    loss = nn.BCEWithLogitsLoss()
    trainer = MixedSupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=real_loader,
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        synthetic_loader=synth_loader,
        lam=lam,
        prepare_batch=mil_prepare_batch,
        amp=amp,
        decollate=False,
    )
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=DataLoader(val_set, batch_size=1, shuffle=False),
        network=net,
        prepare_batch=mil_prepare_batch,
        key_val_metric={
            MIL_KEY_METRIC: IgniteMetricHandler(
                metric_fn=MacroAUROCMetric(), output_transform=from_engine([Keys.PRED, Keys.LABEL]), save_details=False
            )
        },
        amp=amp,
    )
    best = _BestWeights(net, out / _MODEL)
    stopper = EarlyStopping(
        patience=patience, score_function=lambda e: e.state.metrics[MIL_KEY_METRIC], trainer=trainer
    )
    # ignite gives the handler its own stderr handler at INFO; its "Stop training" goes to the history and
    # result.json instead, and the application's logging configuration decides what else is printed
    stopper.logger = logging.getLogger(f"{__name__}.EarlyStopping")
    log = _EpochLog(trainer, out / _HISTORY)
    evaluator.add_event_handler(Events.COMPLETED, best)
    evaluator.add_event_handler(Events.COMPLETED, stopper)
    evaluator.add_event_handler(Events.COMPLETED, log.record)

    # order matters within ITERATION_COMPLETED: losses -> validation at the epoch's last step -> checkpoint
    epoch_length = len(real_loader)
    trainer.add_event_handler(Events.EPOCH_STARTED, log.reset)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, log.accumulate)
    ValidationHandler(interval=epoch_length, validator=evaluator, epoch_level=False).attach(trainer)
    ResumableCheckpoint(
        out / _CKPT,
        {"network": net, "optimizer": optimizer, "early_stopping": stopper, "best": best},
        interval=epoch_length,
        n_saved=1,
    ).attach(trainer)
    trainer.add_event_handler(Events.STARTED, log.restore)

    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        TensorBoardStatsHandler(writer, output_transform=loss_parts, epoch_log=False).attach(trainer)
        TensorBoardStatsHandler(
            writer,
            iteration_log=False,
            output_transform=lambda x: None,
            global_epoch_transform=lambda _: trainer.state.epoch,
        ).attach(evaluator)
    if progress:
        from ignite.handlers import ProgressBar

        ProgressBar(desc=f"TransMIL lam={lam:g} seed={seed}").attach(
            trainer, output_transform=lambda o: {"loss": float(o[Keys.LOSS])}
        )

    def finish(engine: Engine) -> None:
        result = {
            "epochs": int(engine.state.epoch),
            "max_epochs": int(max_epochs),
            "best_epoch": int(best.epoch),
            f"best_{MIL_KEY_METRIC}": float(best.best),
            "stopped_early": bool(stopper.counter >= patience),
            "lam": lam,
            "seed": int(seed),
        }
        atomic_write_text(result_path, json.dumps(result, indent=1) + "\n")

    trainer.add_event_handler(Events.COMPLETED, finish)
    try:
        trainer.run()
    finally:
        if writer is not None:
            writer.close()
    return _load_model(net, out / _MODEL).eval(), list(log.rows)


def evaluate_transmil(
    model: nn.Module,
    bags: FeatureBagDataset | str | os.PathLike | Sequence[Any],
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Slide AUROC of a trained TransMIL on feature bags: per class, macro, and GG5 on its own.

    Args:
        model: (1, N, D) -> (1, 4) logits.
        bags: the test bags (any form :func:`as_feature_bags` takes).
        device: where to run; None keeps the model's device.

    Returns:
        ``auroc`` (per class [NC, GG3, GG4, GG5], NaN where a class is all positive or all negative),
        ``macro_auroc`` (mean over defined classes), ``gg5_auroc``, ``auroc_<NAME>`` per class, ``n_slides``.
    """
    dataset = as_feature_bags(bags)
    if device is not None:
        model = model.to(device)
    run_device = next(model.parameters()).device
    model.eval()
    scores, targets = [], []
    with torch.inference_mode():
        for i in range(len(dataset)):
            sample = dataset[i]
            scores.append(model(sample["features"][None].to(run_device)).float().cpu()[0])
            targets.append(sample["label"])
    result = slide_auroc(torch.stack(scores), torch.stack(targets))
    result["gg5_auroc"] = result["auroc"][int(GleasonLabel.GG5)]
    result.update({f"auroc_{name}": v for name, v in zip(LABEL_NAMES, result["auroc"])})
    result["n_slides"] = len(dataset)
    return result
