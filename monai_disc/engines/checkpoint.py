"""Interval checkpoints that a killed run resumes from, so long jobs lose no finished work."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

__all__ = ["latest_checkpoint", "ResumableCheckpoint"]

_ITER_RE = re.compile(r"_(?:iteration|epoch)=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> Path | None:
    """Return the checkpoint with the highest iteration (or epoch) number in `ckpt_dir`, or None.

    Files are those MONAI's ``CheckpointSaver`` writes with ``save_interval``:
    ``<prefix>_iteration=<n>.pt`` (or ``_epoch=<n>``); ignite writes them atomically, so a file that
    exists is complete.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{prefix}_*.pt"):
        match = _ITER_RE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


class ResumableCheckpoint:
    """Save `save_dict` plus the engine every `interval` iterations and at the end; at start, resume from the newest.

    The engine joins the saved objects when the handler is attached, so a bundle config can list this
    handler among the trainer's own handlers without a circular reference. A fresh run starts from
    scratch; a killed run continues at the saved iteration with its optimizer and engine state.

    Args:
        ckpt_dir: folder of the interval checkpoints.
        save_dict: objects to save and restore, e.g. ``{"network": net, "optimizer": opt}``.
        interval: iterations between saves.
        n_saved: how many interval checkpoints to keep.
        engine_key: key of the engine in the checkpoint.
        map_location: passed to ``torch.load`` when resuming.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        save_dict: dict,
        interval: int = 500,
        n_saved: int = 2,
        engine_key: str = "trainer",
        map_location: str | None = "cpu",
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be a positive number of iterations, got {interval}")
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.interval = interval
        self.n_saved = n_saved
        self.engine_key = engine_key
        self.map_location = map_location
        self.logger = logging.getLogger(self.__class__.__name__)

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, self.engine_key: engine}
        # ignite's DiskSaver with atomic writes (MONAI's CheckpointSaver writes in place, so a kill mid-save
        # would leave a truncated newest checkpoint to resume from)
        saver = Checkpoint(
            objects,
            DiskSaver(str(self.ckpt_dir), atomic=True, require_empty=False),
            filename_prefix="",  # ignite names a multi-object checkpoint "checkpoint"
            score_function=lambda e: e.state.iteration,
            score_name="iteration",
            n_saved=self.n_saved,
        )
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), saver)
        # a run that ends early (time limit, early stopping) saves where it stopped, so a longer rerun loses nothing
        engine.add_event_handler(Events.COMPLETED, self._save_last, saver)
        engine.add_event_handler(Events.STARTED, self.resume, objects)

    def _save_last(self, engine: Engine, saver: Checkpoint) -> None:
        if engine.state.iteration % self.interval:
            saver(engine)

    def resume(self, engine: Engine, objects: dict) -> None:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return
        # MONAI's loader restores the objects (weights_only=True) and keeps the configured max_epochs.
        CheckpointLoader(load_path=str(path), load_dict=objects, map_location=self.map_location)(engine)
        self.logger.info(f"resumed from {path} at iteration {engine.state.iteration}")
