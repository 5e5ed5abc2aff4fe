"""Ignite workflow that trains the VQ autoencoder: L1 + codebook loss, optional perceptual loss, patch GAN.

:class:`VQAutoencoderTrainer` is MONAI's ``AdversarialTrainer`` with its own iteration, because the stock one
cannot carry the codebook loss (it expects the generator to return only the image), has no warm-up before the
adversarial term, feeds a ``PatchDiscriminator``'s list of feature maps to the loss as if each were a
discriminator, and puts the networks themselves into the engine's ``state_dict`` (so a checkpoint holding the
trainer could not be read with ``weights_only=True``). The objective follows CompVis's ``VQLPIPSWithDiscriminator``
without the adaptive weight (a fixed ``adv_weight`` instead, as MONAI's tutorials do).

:class:`ScaleFactorHandler` sets the autoencoder's ``scale_factor`` once training ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import AdversarialTrainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.losses import PatchAdversarialLoss
from monai.utils import AdversarialIterationEvents, AdversarialKeys
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_disc.networks.autoencoder import compute_scale_factor

__all__ = [
    "VQAutoencoderTrainer",
    "ScaleFactorHandler",
    "compute_scale_factor",
    "loss_terms",
    "LOSS_KEYS",
    "CODEBOOK_LOSS",
    "PERCEPTUAL_LOSS",
]

CODEBOOK_LOSS = "codebook_loss"
PERCEPTUAL_LOSS = "perceptual_loss"
LOSS_KEYS = (
    str(Keys.LOSS),
    str(AdversarialKeys.RECONSTRUCTION_LOSS),
    CODEBOOK_LOSS,
    PERCEPTUAL_LOSS,
    str(AdversarialKeys.GENERATOR_LOSS),
    str(AdversarialKeys.DISCRIMINATOR_LOSS),
)


def loss_terms(output: Any) -> dict[str, float]:
    """The scalar loss terms of a :class:`VQAutoencoderTrainer` output, for ``StatsHandler`` and friends.

    Works on the dict and on its decollated list form, e.g.
    ``StatsHandler(output_transform=monai_disc.engines.autoencoder.loss_terms)`` logs every term.
    """
    first = output[0] if isinstance(output, list) else output
    return {k: float(first[k]) for k in LOSS_KEYS if k in first}


def _logits(d_out: Any) -> torch.Tensor:
    """Final map of a discriminator output (``PatchDiscriminator`` returns its intermediate maps, logits last)."""
    while isinstance(d_out, (list, tuple)):
        d_out = d_out[-1]
    return d_out


class VQAutoencoderTrainer(AdversarialTrainer):
    """Train a :class:`~monai_disc.networks.autoencoder.VQAutoencoder` (or any network returning
    ``(reconstruction, quantisation_loss)``) with a patch discriminator switched on after `adv_start` iterations.

    Generator loss per iteration::

        recon_loss(x_hat, x) + codebook_weight * q_loss
            + perceptual_weight * perceptual(x_hat01, x01) + adv_weight * adv(D(x_hat), real)

    where the adversarial term is 0 until ``iteration > adv_start``; after it the discriminator is also trained
    on ``0.5 * (adv(D(x), real) + adv(D(x_hat.detach()), fake))``. The perceptual loss receives images mapped from
    [-1, 1] to [0, 1] (MONAI's ``PerceptualLoss`` expects that; build it with ``pretrained_path`` pointing to a local
    torchvision ResNet-50 state dict so nothing is downloaded).

    ``engine.state.output`` holds detached tensors: ``loss`` (total generator loss), ``reconstruction_loss``,
    ``codebook_loss``, ``perceptual_loss``, ``generator_loss`` (adversarial term for the generator),
    ``discriminator_loss``, ``image`` and ``pred``; decollated into a list of per-image dicts (scalars replicated)
    after ``IterationEvents.MODEL_COMPLETED`` as in MONAI's ``SupervisedTrainer``, so the usual
    ``StatsHandler(output_transform=from_engine(["loss"], first=True))`` works; :func:`loss_terms` gives all
    terms. Networks and optimizers are not part of the engine's ``state_dict``: put them into
    ``CheckpointSaver``'s ``save_dict`` next to the trainer.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: batches as dicts with `image_key` (float [-1, 1], (B, C, H, W)).
        g_network: the autoencoder.
        g_optimizer: its optimizer.
        d_network: patch discriminator (e.g. ``monai.networks.nets.PatchDiscriminator``); None trains without GAN.
        d_optimizer: its optimizer (required with `d_network`).
        epoch_length: iterations per epoch (default: ``len(train_data_loader)``).
        image_key: key of the images in a batch.
        recon_loss_function: pixel loss (default ``L1Loss``).
        adv_loss_function: adversarial criterion called as ``(logits, target_is_real=..., for_discriminator=...)``
            (default ``PatchAdversarialLoss(criterion="least_squares")``).
        adv_weight: weight of the generator's adversarial term.
        adv_start: iterations before the adversarial terms (generator and discriminator) start.
        codebook_weight: weight of the quantisation loss.
        perceptual_loss_function: optional ``(pred01, target01) -> loss``; used only if `perceptual_weight` > 0.
        perceptual_weight: weight of the perceptual loss (0: off).
        non_blocking: non-blocking host-to-device copies.
        train_handlers: Ignite/MONAI handlers (``CheckpointSaver``, ``StatsHandler``, ...), attached in order.
        amp: mixed precision (CUDA).
        key_train_metric: optional key metric on the output.
        additional_metrics: more Ignite metrics.
        metric_cmp_fn: comparison for the key metric.
        event_names: extra events to register.
        event_to_attr: event to state-attribute map.
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        to_kwargs: extra arguments of ``Tensor.to`` for the batch.
        amp_kwargs: arguments of ``torch.autocast``.
        decollate: decollate the output into per-image dicts after each iteration (MONAI's default).

    Raises:
        ValueError: `d_network` without `d_optimizer`, a negative weight or `adv_start`, or `perceptual_weight` > 0
            without `perceptual_loss_function`.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        d_network: nn.Module | None = None,
        d_optimizer: Optimizer | None = None,
        epoch_length: int | None = None,
        image_key: str = "image",
        recon_loss_function: Callable | None = None,
        adv_loss_function: Callable | None = None,
        adv_weight: float = 0.01,
        adv_start: int = 0,
        codebook_weight: float = 1.0,
        perceptual_loss_function: Callable | None = None,
        perceptual_weight: float = 0.0,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        decollate: bool = True,
    ) -> None:
        if (d_network is None) != (d_optimizer is None):
            raise ValueError("d_network and d_optimizer must be given together (or both left out)")
        if min(adv_weight, codebook_weight, perceptual_weight) < 0 or adv_start < 0:
            raise ValueError(
                f"weights and adv_start must be >= 0, got adv_weight={adv_weight}, codebook_weight={codebook_weight}, "
                f"perceptual_weight={perceptual_weight}, adv_start={adv_start}"
            )
        if perceptual_weight > 0 and perceptual_loss_function is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual_loss_function")
        recon = nn.L1Loss() if recon_loss_function is None else recon_loss_function
        adv = PatchAdversarialLoss(criterion="least_squares") if adv_loss_function is None else adv_loss_function
        self.image_key = image_key
        self.adv_weight = float(adv_weight)
        self.adv_start = int(adv_start)
        self.codebook_weight = float(codebook_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual_loss_function = perceptual_loss_function
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            g_network=g_network,
            g_optimizer=g_optimizer,
            g_loss_function=adv,
            recon_loss_function=recon,
            d_network=d_network,  # type: ignore[arg-type]
            d_optimizer=d_optimizer,  # type: ignore[arg-type]
            d_loss_function=adv,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )

    def _complete_state_dict_user_keys(self) -> None:
        """Keep networks, optimizers and losses out of the engine's ``state_dict``.

        The parent adds them as raw objects, which would pickle whole modules into a checkpoint that holds the
        trainer; they are saved through their own ``state_dict`` in ``CheckpointSaver``'s ``save_dict`` instead.
        """

    def adversarial_active(self, iteration: int | None = None) -> bool:
        """Whether the adversarial terms are on at `iteration` (default: the current one)."""
        it = self.state.iteration if iteration is None else iteration
        return self.state.d_network is not None and it > self.adv_start

    def _images(self, batchdata: Any) -> torch.Tensor:
        if isinstance(batchdata, Mapping):
            if self.image_key not in batchdata:
                raise ValueError(f"batch has no key {self.image_key!r}; keys are {sorted(batchdata)}")
            images = batchdata[self.image_key]
        elif isinstance(batchdata, (list, tuple)):
            images = batchdata[0]
        else:
            images = batchdata
        images = torch.as_tensor(images)
        return images.to(self.state.device, non_blocking=self.non_blocking, **self.to_kwargs)

    def _step(self, loss: torch.Tensor, optimizer: Any, scaler: Any, backward_event: Any) -> None:
        """Backward and optimiser step of one network, through its grad scaler when mixed precision is on."""
        (scaler.scale(loss) if scaler is not None else loss).backward()
        self.fire_event(backward_event)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def _iteration(self, engine: Engine, batchdata: Any) -> Any:  # type: ignore[override]
        """One generator step, then (once adversarial training is on) one discriminator step."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        state = self.state
        images = self._images(batchdata)
        adv_on = self.adversarial_active()
        device_type = torch.device(state.device).type
        amp_on = self.amp and state.g_scaler is not None
        zero = torch.zeros((), device=images.device)

        state.g_network.train()
        state.g_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with torch.autocast(device_type, enabled=amp_on, **self.amp_kwargs):
            recon, q_loss = state.g_network(images)
            self.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
            rec_loss = state.recon_loss_function(recon.float(), images.float()).mean()
            self.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)
            p_loss = zero
            if self.perceptual_weight > 0 and self.perceptual_loss_function is not None:
                p_loss = self.perceptual_loss_function((recon.float() + 1) / 2, (images.float() + 1) / 2).mean()
            g_adv = zero
            if adv_on:
                fake_logits = _logits(state.d_network(recon.float().contiguous()))
                self.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
                g_adv = state.g_loss_function(fake_logits, target_is_real=True, for_discriminator=False).mean()
            self.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            loss = (
                rec_loss
                + self.codebook_weight * q_loss.mean()
                + self.perceptual_weight * p_loss
                + self.adv_weight * g_adv
            )
        self._step(
            loss,
            state.g_optimizer,
            state.g_scaler if amp_on else None,
            AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED,
        )
        self.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)

        d_loss = zero
        if adv_on:
            state.d_network.train()
            state.d_network.zero_grad(set_to_none=self.optim_set_to_none)
            with torch.autocast(device_type, enabled=amp_on, **self.amp_kwargs):
                real_logits = _logits(state.d_network(images.float().contiguous()))
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
                fake_logits = _logits(state.d_network(recon.detach().float().contiguous()))
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
                d_loss = 0.5 * (
                    state.d_loss_function(real_logits, target_is_real=True, for_discriminator=True).mean()
                    + state.d_loss_function(fake_logits, target_is_real=False, for_discriminator=True).mean()
                )
                self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
            self._step(
                d_loss,
                state.d_optimizer,
                state.d_scaler if amp_on else None,
                AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED,
            )
            self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_MODEL_COMPLETED)

        state.output = {
            Keys.IMAGE: images.detach(),
            Keys.PRED: recon.detach(),
            Keys.LOSS: loss.detach(),
            AdversarialKeys.RECONSTRUCTION_LOSS: rec_loss.detach(),
            CODEBOOK_LOSS: q_loss.detach().mean(),
            PERCEPTUAL_LOSS: p_loss.detach(),
            AdversarialKeys.GENERATOR_LOSS: g_adv.detach(),
            AdversarialKeys.DISCRIMINATOR_LOSS: d_loss.detach(),
        }
        self.fire_event(IterationEvents.MODEL_COMPLETED)  # decollation and metrics hang on this event
        return state.output


class ScaleFactorHandler:
    """Set the autoencoder's ``scale_factor`` (1 / latent std) from `data` when training completes.

    List it *before* ``CheckpointSaver(save_final=True)`` in ``train_handlers`` so the final checkpoint holds the
    new value (handlers of one event run in the order they were attached).

    Args:
        data: batches to measure (e.g. the training loader).
        network: the autoencoder; default ``engine.state.g_network``.
        image_key: key of the images in dict batches.
        max_batches: number of batches to use (None: all).
        event: when to compute it.
    """

    def __init__(
        self,
        data: Iterable,
        network: nn.Module | None = None,
        image_key: str = "image",
        max_batches: int | None = 50,
        event: Events = Events.COMPLETED,
    ) -> None:
        self.data = data
        self.network = network
        self.image_key = image_key
        self.max_batches = max_batches
        self.event = event
        self.value: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine) -> None:
        model = self.network if self.network is not None else engine.state.g_network
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        self.value = compute_scale_factor(
            model, self.data, image_key=self.image_key, max_batches=self.max_batches, device=engine.state.device
        )
        engine.logger.info(f"autoencoder scale_factor set to {self.value:.6f}")
