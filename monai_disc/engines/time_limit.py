"""Stop training gracefully after a wall-clock budget, so a fixed-length lease still ends with final weights."""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import TimeLimit

__all__ = ["TimeLimitHandler"]


class TimeLimitHandler:
    """MONAI-style handler (``attach``) around ignite's ``TimeLimit``.

    The engine terminates after `limit_sec`; ``Events.COMPLETED`` still fires, so ``CheckpointSaver(save_final=True)``
    and other completion handlers run as after a normal end.

    Args:
        limit_sec: seconds of training before the engine terminates; None disables the limit.
    """

    def __init__(self, limit_sec: int | None = None) -> None:
        self.limit_sec = limit_sec

    def attach(self, engine: Engine) -> None:
        if self.limit_sec is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(int(self.limit_sec)))
