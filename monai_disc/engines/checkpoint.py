"""Resume a killed run from the newest checkpoint in its folder, so long jobs lose no finished work."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

__all__ = ["latest_checkpoint", "ResumeFromLatest"]

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


class ResumeFromLatest:
    """Load the newest interval checkpoint of `ckpt_dir` into `load_dict` when the engine starts.

    A fresh run (no checkpoint yet) starts from scratch; a killed run continues at the saved
    iteration with its optimizer and engine state, because the engine itself is in `load_dict`.

    Args:
        ckpt_dir: folder that ``CheckpointSaver`` writes to.
        load_dict: objects to restore, e.g. ``{"network": net, "optimizer": opt, "trainer": trainer}``.
        prefix: checkpoint file prefix (``CheckpointSaver`` uses "checkpoint" for several objects).
        map_location: passed to ``torch.load``.
    """

    def __init__(
        self, ckpt_dir: str | Path, load_dict: dict, prefix: str = "checkpoint", map_location: str | None = "cpu"
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = load_dict
        self.prefix = prefix
        self.map_location = map_location
        self.logger = logging.getLogger(self.__class__.__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is None:
            return
        # MONAI's loader restores the objects (weights_only=True) and keeps the configured max_epochs.
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=self.map_location)(engine)
        self.logger.info(f"resumed from {path} at iteration {engine.state.iteration}")
