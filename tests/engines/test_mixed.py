"""MixedSupervisedTrainer: Eq. 4 weighting, lambda = 0 / 1 edge cases, resume, and real training."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import CommonKeys as Keys

from monai_disc.engines.mixed import LOSS_REAL, LOSS_SYNTH, MixedSupervisedTrainer, loss_parts, mix_losses
from monai_disc.engines.segmentation import SegmentationLoss
from monai_disc.networks.carcinonet import carcinonet_toy

torch.set_num_threads(1)


def _linear_data(n: int, seed: int, slope: float) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return [{"image": x[i], "label": x[i].sum(0, keepdim=True) * slope} for i in range(n)]


class _Counting:
    """An iterable loader that counts how often it is iterated (a real loader, not a mock)."""

    def __init__(self, data: list[dict], batch_size: int) -> None:
        self.loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        self.iterations = 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _one_step(lam: float, synthetic: bool = True):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    start = copy.deepcopy(net)
    real = DataLoader(_linear_data(4, 1, 1.0), batch_size=4)
    synth = DataLoader(_linear_data(4, 2, -2.0), batch_size=4) if synthetic else None
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = MixedSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=real,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        synthetic_loader=synth,
        lam=lam,
        decollate=False,
    )
    trainer.run()
    return trainer, net, start, real, synth


@pytest.mark.parametrize("lam", [0.3, 0.75])
def test_loss_and_gradient_follow_eq4(lam):
    trainer, net, start, real, synth = _one_step(lam)
    rb, sb = next(iter(real)), next(iter(synth))
    mse = torch.nn.MSELoss()
    lr_ = mse(start(rb["image"]), rb["label"])
    ls_ = mse(start(sb["image"]), sb["label"])
    expected = (1 - lam) * lr_ + lam * ls_
    expected.backward()
    out = trainer.state.output
    assert out[Keys.LOSS].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out[LOSS_REAL].item() == pytest.approx(lr_.item(), rel=1e-6)
    assert out[LOSS_SYNTH].item() == pytest.approx(ls_.item(), rel=1e-6)
    # one SGD step: w1 = w0 - lr * grad of the mixed loss
    assert torch.allclose(net.weight, start.weight - 0.1 * start.weight.grad, atol=1e-6)
    assert torch.allclose(net.bias, start.bias - 0.1 * start.bias.grad, atol=1e-6)


def test_lambda_zero_trains_on_real_only_without_synthetic_loader():
    trainer, net, start, real, _ = _one_step(0.0, synthetic=False)
    rb = next(iter(real))
    loss = torch.nn.MSELoss()(start(rb["image"]), rb["label"])
    loss.backward()
    assert trainer.state.output[Keys.LOSS].item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.isnan(trainer.state.output[LOSS_SYNTH])
    assert torch.allclose(net.weight, start.weight - 0.1 * start.weight.grad, atol=1e-6)


def test_lambda_zero_never_iterates_the_synthetic_loader():
    synth = _Counting(_linear_data(4, 2, -2.0), 2)
    trainer = MixedSupervisedTrainer(
        "cpu",
        2,
        DataLoader(_linear_data(4, 1, 1.0), batch_size=2),
        torch.nn.Linear(3, 1),
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
        torch.nn.MSELoss(),
        synthetic_loader=synth,
        lam=0.0,
    )
    trainer.run()
    assert synth.iterations == 0


def test_lambda_one_ignores_real_labels():
    """With lam = 1, garbage real labels change nothing: the step equals a synthetic-only step."""
    trainer, net, start, _, synth = _one_step(1.0)
    sb = next(iter(synth))
    loss = torch.nn.MSELoss()(start(sb["image"]), sb["label"])
    loss.backward()
    assert trainer.state.output[Keys.LOSS].item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.isnan(trainer.state.output[LOSS_REAL])
    assert torch.allclose(net.weight, start.weight - 0.1 * start.weight.grad, atol=1e-6)


def test_synthetic_loader_cycles_independently_of_the_real_epoch():
    real = DataLoader(_linear_data(6, 1, 1.0), batch_size=2)  # 3 iterations per epoch
    synth = _Counting(_linear_data(4, 2, -2.0), 2)  # 2 batches per pass
    net = torch.nn.Linear(3, 1)
    trainer = MixedSupervisedTrainer(
        "cpu",
        2,
        real,
        net,
        torch.optim.SGD(net.parameters(), lr=0.01),
        torch.nn.MSELoss(),
        synthetic_loader=synth,
        lam=0.5,
    )
    trainer.run()
    assert trainer.state.iteration == 6  # the real loader defines the epoch
    assert synth.iterations == 3  # 6 synthetic batches = 3 passes of 2


def test_bad_lambda_and_missing_loader_are_rejected():
    args = (
        "cpu",
        1,
        [],
        torch.nn.Linear(1, 1),
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1),
        torch.nn.MSELoss(),
    )
    with pytest.raises(ValueError, match="synthetic_loader is None"):
        MixedSupervisedTrainer(*args, lam=0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MixedSupervisedTrainer(*args, synthetic_loader=[], lam=1.5)
    with pytest.raises(ValueError, match="iteration_update"):
        MixedSupervisedTrainer(*args, iteration_update=lambda e, b: None)
    with pytest.raises(ValueError, match="loss_synth"):
        mix_losses(torch.tensor(1.0), None, 0.5)
    assert mix_losses(torch.tensor(2.0), None, 0.0).item() == 2.0


def test_resume_restores_epoch_iteration_and_weights(tmp_path):
    def make(max_epochs: int):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        trainer = MixedSupervisedTrainer(
            "cpu",
            max_epochs,
            DataLoader(_linear_data(6, 1, 1.0), batch_size=2),
            net,
            opt,
            torch.nn.MSELoss(),
            synthetic_loader=DataLoader(_linear_data(4, 2, -2.0), batch_size=2),
            lam=0.4,
        )
        return trainer, net, opt

    first, net1, opt1 = make(2)
    CheckpointSaver(
        str(tmp_path), {"net": net1, "opt": opt1, "trainer": first}, save_final=True, final_filename="ckpt.pt"
    ).attach(first)
    first.run()
    saved_weight = net1.weight.detach().clone()

    second, net2, opt2 = make(3)
    CheckpointLoader(str(tmp_path / "ckpt.pt"), {"net": net2, "opt": opt2, "trainer": second}).attach(second)
    ran = []
    second.add_event_handler(Events.ITERATION_STARTED, lambda e: ran.append((e.state.epoch, e.state.iteration)))
    loaded = {}
    second.add_event_handler(Events.STARTED, lambda e: loaded.setdefault("w", net2.weight.detach().clone()))
    second.run()
    assert torch.equal(loaded["w"], saved_weight)
    assert ran == [(3, 7), (3, 8), (3, 9)]  # only the third epoch ran, numbering continued
    assert second.state.epoch == 3 and second.state.iteration == 9


def test_mixed_training_reduces_segmentation_loss():
    """Ten iterations of CarcinoNet on tiny real + synthetic tiles lower the Dice-focal loss."""
    torch.manual_seed(0)

    def tiles(n: int, seed: int) -> list[dict]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for i in range(n):
            mask = torch.zeros(1, 32, 32, dtype=torch.long)
            mask[:, :, 16:] = 1 + (i % 3)
            img = torch.full((3, 32, 32), -0.7) + 0.05 * torch.randn(3, 32, 32, generator=g)
            img[i % 3, :, 16:] = 0.9
            out.append({"image": img, "label": mask})
        return out

    net = carcinonet_toy()
    trainer = MixedSupervisedTrainer(
        "cpu",
        5,
        DataLoader(tiles(8, 1), batch_size=4, shuffle=True),
        net,
        torch.optim.Adam(net.parameters(), lr=3e-3),
        SegmentationLoss(),
        synthetic_loader=DataLoader(tiles(6, 2), batch_size=4, shuffle=True),
        lam=0.5,
    )
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0][Keys.LOSS])))
    trainer.run()
    assert len(losses) == 10
    assert sum(losses[-2:]) / 2 < 0.85 * sum(losses[:2]) / 2


def test_monai_handlers_log_both_losses_and_validate_with_pixel_metric(tmp_path):
    """StatsHandler / TensorBoard read the loss parts; a ValidationHandler runs a pixel-metric evaluator."""
    from monai.engines import SupervisedEvaluator
    from monai.handlers import (
        IgniteMetricHandler,
        StatsHandler,
        TensorBoardStatsHandler,
        ValidationHandler,
        from_engine,
    )

    from monai_disc.metrics import PixelGradingMetric

    def tiles(n: int) -> list[dict]:
        g = torch.Generator().manual_seed(n)
        return [
            {"image": torch.rand(3, 8, 8, generator=g) * 2 - 1, "label": torch.randint(0, 4, (1, 8, 8), generator=g)}
            for _ in range(n)
        ]

    net = torch.nn.Conv2d(3, 4, 1)
    evaluator = SupervisedEvaluator(
        "cpu",
        DataLoader(tiles(4), batch_size=2),
        net,
        key_val_metric={
            "val_miou": IgniteMetricHandler(
                PixelGradingMetric(key="miou"), output_transform=from_engine(["pred", "label"])
            )
        },
        additional_metrics={
            "val_pixel": IgniteMetricHandler(PixelGradingMetric(), output_transform=from_engine(["pred", "label"]))
        },
    )
    seen = []
    trainer = MixedSupervisedTrainer(
        "cpu",
        2,
        DataLoader(tiles(4), batch_size=2),
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        SegmentationLoss(),
        synthetic_loader=DataLoader(tiles(2), batch_size=2),
        lam=0.5,
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=1),
            StatsHandler(tag_name="train_loss", output_transform=from_engine([Keys.LOSS], first=True)),
            TensorBoardStatsHandler(log_dir=str(tmp_path), tag_name="loss_parts", output_transform=loss_parts),
        ],
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(loss_parts(e.state.output)))
    trainer.run()
    assert len(seen) == 4
    for parts in seen:
        assert parts[Keys.LOSS] == pytest.approx(0.5 * parts[LOSS_REAL] + 0.5 * parts[LOSS_SYNTH], rel=1e-5)
    assert 0.0 <= evaluator.state.metrics["val_miou"] <= 1.0
    assert evaluator.state.metrics["val_pixel"]["miou"] == pytest.approx(evaluator.state.metrics["val_miou"])
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
