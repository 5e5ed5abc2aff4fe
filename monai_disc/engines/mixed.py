"""Real + synthetic training with a balance weight: L = (1 - lambda) L_real + lambda L_synth (Eq. 4).

One implementation serves every grader (CarcinoNet on tiles, TransMIL on slide bags): the trainer
is MONAI's ``SupervisedTrainer`` with an iteration that draws one batch from the real loader (which
defines the epoch, as usual) and one from a separate, independently cycled synthetic loader,
computes the loss of each, and backpropagates their weighted sum. ``lam = 0`` is the real-only
baseline and never touches the synthetic loader; ``lam = 1`` trains on synthetic data only.
All MONAI handlers (checkpoints, stats, TensorBoard, validation) work unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys

__all__ = ["LOSS_REAL", "LOSS_SYNTH", "MixedSupervisedTrainer", "loss_parts", "mix_losses"]

# Keys of ``engine.state.output`` next to MONAI's ``Keys.LOSS`` (the mixed total).
LOSS_REAL = "loss_real"
LOSS_SYNTH = "loss_synth"


def mix_losses(loss_real: torch.Tensor | None, loss_synth: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Eq. 4: ``(1 - lam) * loss_real + lam * loss_synth``; a term whose weight is 0 may be None.

    Args:
        loss_real: loss on the real batch (None allowed when ``lam == 1``).
        loss_synth: loss on the synthetic batch (None allowed when ``lam == 0``).
        lam: balance weight in [0, 1].

    Raises:
        ValueError: when ``lam`` is outside [0, 1] or a term with non-zero weight is missing.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}.")
    total: torch.Tensor | None = None
    for weight, loss, name in ((1.0 - lam, loss_real, "loss_real"), (lam, loss_synth, "loss_synth")):
        if weight == 0.0:
            continue
        if loss is None:
            raise ValueError(f"{name} is needed for lam={lam}.")
        total = weight * loss if total is None else total + weight * loss
    assert total is not None  # one of the weights is always > 0
    return total


def loss_parts(output: dict | list[dict]) -> dict[str, float]:
    """``{"loss", "loss_real", "loss_synth"}`` as floats from a trainer output (decollated or not).

    The ``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler`` that logs the
    mixed loss and both of its parts.
    """
    first = output[0] if isinstance(output, list) else output
    return {k: float(first[k]) for k in (Keys.LOSS, LOSS_REAL, LOSS_SYNTH)}


class _Cycle:
    """Endless iterator over a loader, restarting it (and its sampler's epoch) after each pass."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.passes = 0
        self._it: Iterator | None = None

    def _restart(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new order per pass, same on every rank
            sampler.set_epoch(self.passes)
        self.passes += 1
        self._it = iter(self.loader)

    def __next__(self) -> Any:
        if self._it is None:
            self._restart()
        try:
            return next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            self._restart()
            try:
                return next(self._it)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError("synthetic_loader yields no batches.") from None


class MixedSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss mixes a real and a synthetic batch per iteration (Eq. 4).

    ``engine.state.output`` holds ``Keys.LOSS`` (the mixed loss that is backpropagated),
    ``"loss_real"`` and ``"loss_synth"`` (each detached; NaN when its weight is 0 and it was
    therefore not computed), and ``Keys.IMAGE`` / ``Keys.LABEL`` / ``Keys.PRED`` of the real batch
    (of the synthetic batch when ``lam == 1``). The two batches go through the network in separate
    forward passes, so they may differ in size or shape (slide bags of different lengths); each
    part is backpropagated as soon as its loss is known (the gradient of the sum, with one batch's
    activations in memory at a time), so ``FORWARD_COMPLETED``, ``LOSS_COMPLETED`` and
    ``BACKWARD_COMPLETED`` fire together after both parts, and ``Keys.LOSS`` is detached.

    The synthetic loader's position is not part of a checkpoint: after a resume it starts a new
    pass (a fresh shuffle), which is what a random sampler would give anyway.

    Args:
        device: device to train on.
        max_epochs: epochs to run; an epoch is one pass over ``train_data_loader``.
        train_data_loader: the real data.
        network: the model.
        optimizer: its optimizer.
        loss_function: loss of the real batch, ``loss(pred, target)``.
        synthetic_loader: the synthetic data; may be None when ``lam == 0``.
        lam: balance weight lambda in [0, 1]; may be changed between iterations (``engine.lam``).
        synthetic_loss_function: loss of the synthetic batch; defaults to ``loss_function``.
        synthetic_prepare_batch: ``prepare_batch`` for the synthetic batches; defaults to the
            trainer's ``prepare_batch``.
        kwargs: any other ``SupervisedTrainer`` argument (``epoch_length``, ``prepare_batch``,
            ``inferer``, ``train_handlers``, ``amp``, ``accumulation_steps``, ...), except
            ``iteration_update``, which would replace the mixing.

    Raises:
        ValueError: when ``lam`` is outside [0, 1], ``lam > 0`` without a synthetic loader, or
            ``iteration_update`` is given.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        synthetic_loader: Iterable | None = None,
        lam: float = 0.0,
        synthetic_loss_function: Callable | None = None,
        synthetic_prepare_batch: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("iteration_update") is not None:
            raise ValueError("MixedSupervisedTrainer computes its own iteration; iteration_update is not supported.")
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}.")
        if lam > 0.0 and synthetic_loader is None:
            raise ValueError(f"lam={lam} mixes in synthetic data but synthetic_loader is None.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.lam = lam
        self.synthetic_loader = synthetic_loader
        self.synthetic_loss_function = loss_function if synthetic_loss_function is None else synthetic_loss_function
        self.synthetic_prepare_batch = synthetic_prepare_batch or kwargs.get("prepare_batch", default_prepare_batch)
        self._synthetic = _Cycle(synthetic_loader) if synthetic_loader is not None else None

    def _forward_loss(
        self, engine: MixedSupervisedTrainer, batchdata: Any, prepare_batch: Callable, loss_function: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prepare one batch, run the inferer and the loss; returns (inputs, targets, pred, loss)."""
        batch = prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        if self.compile and isinstance(inputs, MetaTensor):  # torch.compile and MetaTensor do not mix
            inputs = inputs.as_tensor()
        pred = engine.inferer(inputs, engine.network, *args, **kwargs)
        return inputs, targets, pred, loss_function(pred, targets).mean()

    def _iteration(self, engine: MixedSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One optimisation step on the mixed loss of a real batch and a synthetic batch.

        Args:
            engine: this trainer.
            batchdata: the real batch drawn by Ignite.

        Raises:
            ValueError: when ``batchdata`` is None, or ``engine.lam`` needs a missing synthetic loader.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        lam = float(engine.lam)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}.")
        if lam > 0.0 and engine._synthetic is None:
            raise ValueError(f"lam={lam} mixes in synthetic data but synthetic_loader is None.")

        acc = engine.accumulation_steps
        should_zero_grad, should_step = True, True
        if acc > 1:
            epoch_length = engine.state.epoch_length
            local_iter = engine.state.iteration - 1
            if epoch_length is not None:
                local_iter %= epoch_length
            should_zero_grad = local_iter % acc == 0
            should_step = (local_iter + 1) % acc == 0 or (epoch_length is not None and local_iter + 1 == epoch_length)

        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_scaler = engine.amp and engine.scaler is not None

        def run_part(data: Any, prepare: Callable, loss_fn: Callable, weight: float) -> tuple:
            # backpropagate each part at once: one batch's activations live at a time, same gradient as the sum
            with torch.autocast("cuda", **engine.amp_kwargs) if use_scaler else contextlib.nullcontext():
                inputs, targets, pred, loss = self._forward_loss(engine, data, prepare, loss_fn)
            scaled = loss * (weight / acc)
            (engine.scaler.scale(scaled) if use_scaler else scaled).backward()
            return inputs, targets, pred.detach(), loss.detach()

        real = synth = None
        if lam < 1.0:
            real = run_part(batchdata, engine.prepare_batch, engine.loss_function, 1.0 - lam)
        if lam > 0.0:
            synth_data = next(engine._synthetic)  # type: ignore[call-overload]
            synth = run_part(synth_data, engine.synthetic_prepare_batch, engine.synthetic_loss_function, lam)
        shown = real if real is not None else synth
        assert shown is not None
        nan = torch.tensor(float("nan"), device=shown[3].device)
        engine.state.output = {Keys.IMAGE: shown[0], Keys.LABEL: shown[1], Keys.PRED: shown[2]}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = mix_losses(
            None if real is None else real[3], None if synth is None else synth[3], lam
        )
        engine.state.output[LOSS_REAL] = nan if real is None else real[3]
        engine.state.output[LOSS_SYNTH] = nan if synth is None else synth[3]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if use_scaler:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
