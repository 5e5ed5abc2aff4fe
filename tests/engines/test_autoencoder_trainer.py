"""VQAutoencoderTrainer: learns to reconstruct, switches the patch GAN on after adv_start, checkpoints load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler, from_engine
from monai.networks.nets import PatchDiscriminator

from monai_disc.engines.autoencoder import ScaleFactorHandler, VQAutoencoderTrainer, loss_terms
from monai_disc.networks.autoencoder import vq_f4_toy

torch.set_num_threads(1)


def _batch() -> dict[str, torch.Tensor]:
    """Two smooth 32 px images in [-1, 1] (ramps and their product, one mirrored)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    img = torch.stack([xx, yy, xx * yy])[None].repeat(2, 1, 1, 1)
    img[1] = img[1].flip(-1)
    return {"image": img}


def _trainer(n_iter: int, adv_start: int, handlers: list | None = None, **kw) -> VQAutoencoderTrainer:
    torch.manual_seed(0)
    g = vq_f4_toy()
    d = PatchDiscriminator(spatial_dims=2, num_layers_d=2, channels=8, in_channels=3, out_channels=1)
    return VQAutoencoderTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[_batch()] * n_iter,
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 1e-3),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-3),
        adv_start=adv_start,
        train_handlers=handlers,
        **kw,
    )


def _record(trainer: VQAutoencoderTrainer) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _keep(engine):
        history.append(loss_terms(engine.state.output))

    return history


def test_overfits_one_batch_and_gan_starts_after_adv_start():
    trainer = _trainer(n_iter=45, adv_start=35)
    d_before = [p.detach().clone() for p in trainer.state.d_network.parameters()]
    history = _record(trainer)
    trainer.run()
    rec = [h["reconstruction_loss"] for h in history]
    final = sum(rec[-3:]) / 3
    assert final < 0.5 * rec[0], (rec[0], final)
    # no adversarial terms (and no discriminator update) up to adv_start, both afterwards
    assert all(h["generator_loss"] == 0 and h["discriminator_loss"] == 0 for h in history[:35])
    assert all(h["generator_loss"] > 0 and h["discriminator_loss"] > 0 for h in history[35:])
    assert not trainer.adversarial_active(35) and trainer.adversarial_active(36)
    d_after = list(trainer.state.d_network.parameters())
    assert all(not torch.equal(d_before[i], p) for i, p in enumerate(d_after))
    # the total is the weighted sum (codebook weight 1, adversarial weight 0.01, perceptual off)
    last = history[-1]
    expected = last["reconstruction_loss"] + last["codebook_loss"] + 0.01 * last["generator_loss"]
    assert last["loss"] == pytest.approx(expected, rel=1e-5)


def test_perceptual_term_enters_the_loss_with_its_weight():
    seen: list[tuple[float, float]] = []

    def perceptual(pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
        seen.append((float(target01.min()), float(target01.max())))
        return nn.functional.mse_loss(pred01, target01)

    trainer = _trainer(n_iter=2, adv_start=5, perceptual_loss_function=perceptual, perceptual_weight=2.0)
    history = _record(trainer)
    trainer.run()
    assert seen and all(lo >= 0.0 and hi <= 1.0 for lo, hi in seen)  # images reach it in [0, 1]
    h = history[-1]
    assert h["perceptual_loss"] > 0
    assert h["loss"] == pytest.approx(
        h["reconstruction_loss"] + h["codebook_loss"] + 2.0 * h["perceptual_loss"], rel=1e-5
    )
    with pytest.raises(ValueError, match="perceptual_loss_function"):
        _trainer(n_iter=1, adv_start=0, perceptual_weight=1.0)


def test_monai_handlers_save_checkpoint_that_loads_with_weights_only(tmp_path: Path):
    data = [_batch()]
    scale_handler = ScaleFactorHandler(data)
    handlers = [
        StatsHandler(output_transform=from_engine(["loss"], first=True), iteration_log=True),
        TensorBoardStatsHandler(log_dir=str(tmp_path / "tb"), output_transform=from_engine(["loss"], first=True)),
        scale_handler,  # before the final checkpoint, so it holds the scale factor
    ]
    trainer = _trainer(n_iter=3, adv_start=1, handlers=handlers)
    save_dict = {
        "autoencoder": trainer.state.g_network,
        "discriminator": trainer.state.d_network,
        "g_optimizer": trainer.state.g_optimizer,
        "d_optimizer": trainer.state.d_optimizer,
        "trainer": trainer,
    }
    CheckpointSaver(save_dir=str(tmp_path / "ckpt"), save_dict=save_dict, save_final=True).attach(trainer)
    trainer.run()
    # MONAI's convention: the output is decollated per image with the scalar losses replicated
    assert isinstance(trainer.state.output, list) and len(trainer.state.output) == 2
    assert trainer.state.output[0]["pred"].shape == (3, 32, 32)
    assert float(trainer.state.output[1]["loss"]) == loss_terms(trainer.state.output)["loss"]

    files = list((tmp_path / "ckpt").glob("*.pt"))
    assert len(files) == 1
    ckpt = torch.load(files[0], weights_only=True)
    assert set(ckpt) == set(save_dict)
    assert ckpt["trainer"]["iteration"] == 3
    model = vq_f4_toy()
    model.load_state_dict(ckpt["autoencoder"])
    assert scale_handler.value is not None and scale_handler.value != 1.0
    assert float(model.scale_factor) == pytest.approx(scale_handler.value, rel=1e-6)
    for name, p in trainer.state.g_network.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name
    torch.optim.Adam(model.parameters()).load_state_dict(ckpt["g_optimizer"])
    assert list((tmp_path / "tb").iterdir())  # TensorBoard event file written


def test_trains_without_discriminator_and_rejects_half_a_gan():
    torch.manual_seed(0)
    g = vq_f4_toy()
    trainer = VQAutoencoderTrainer("cpu", 1, [_batch()] * 2, g, torch.optim.Adam(g.parameters()), adv_start=0)
    history = _record(trainer)
    trainer.run()
    assert not trainer.adversarial_active()
    assert all(h["generator_loss"] == 0 and h["discriminator_loss"] == 0 for h in history)
    d = PatchDiscriminator(spatial_dims=2, num_layers_d=2, channels=8, in_channels=3, out_channels=1)
    with pytest.raises(ValueError, match="together"):
        VQAutoencoderTrainer("cpu", 1, [_batch()], g, torch.optim.Adam(g.parameters()), d_network=d)
