"""ResumableCheckpoint: a second run continues where the first stopped, with the same weights."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from monai_disc.engines import ResumableCheckpoint, latest_checkpoint


def _trainer(max_epochs, ckpt_dir, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(123)  # the same data in every run
    data = [{"image": torch.randn(4, 2, generator=g), "label": torch.randn(4, 1, generator=g)} for _ in range(4)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        train_handlers=[ResumableCheckpoint(ckpt_dir, {"network": net, "optimizer": opt}, interval=2)],
    )
    return trainer, net


def test_latest_checkpoint_picks_highest_iteration(tmp_path):
    for n in (2, 10, 4):
        (tmp_path / f"checkpoint_iteration={n}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "checkpoint_iteration=10.pt"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_resumed_run_continues_from_saved_iteration_and_weights(tmp_path):
    first, net1 = _trainer(max_epochs=1, ckpt_dir=tmp_path)
    first.run()
    assert latest_checkpoint(tmp_path).name == "checkpoint_iteration=4.pt"
    saved = {k: v.clone() for k, v in net1.state_dict().items()}

    # a new process would build everything afresh (other seed: other init) and must pick up the saved state
    second, net2 = _trainer(max_epochs=2, ckpt_dir=tmp_path, seed=1)
    started_at = []
    second.add_event_handler(Events.ITERATION_STARTED, lambda e: started_at.append(e.state.iteration))
    second.run()
    assert started_at[0] == 5  # the resumed run's first iteration follows the saved iteration 4
    assert second.state.iteration == 8
    assert latest_checkpoint(tmp_path).name == "checkpoint_iteration=8.pt"
    # weights moved on from the saved ones, not from the fresh init
    uninterrupted, net3 = _trainer(max_epochs=2, ckpt_dir=tmp_path / "straight")
    uninterrupted.run()
    for key in saved:
        assert torch.allclose(net2.state_dict()[key], net3.state_dict()[key], atol=1e-6)


def test_a_run_stopped_between_intervals_saves_where_it_stopped(tmp_path):
    trainer, _ = _trainer(max_epochs=1, ckpt_dir=tmp_path)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())  # e.g. a time limit
    trainer.run()
    assert latest_checkpoint(tmp_path).name == "checkpoint_iteration=3.pt"
    resumed, _ = _trainer(max_epochs=1, ckpt_dir=tmp_path)
    resumed.run()
    assert resumed.state.iteration == 4
