"""Rank shards of long jobs: which share this process does (arguments, a process group, torchrun's env), and
waiting for the file another rank writes last."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_rank", "wait_for_file"]


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size) of this process: the arguments, else torch.distributed, else torchrun's RANK and
    WORLD_SIZE variables, else (0, 1).

    Raises:
        ValueError: a world size below 1 or a rank outside [0, world size).
    """
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", 1))
    if rank is None:
        rank = dist.get_rank() if initialised else int(os.environ.get("RANK", 0))
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return rank, world_size


def wait_for_file(path: str | os.PathLike, what: str, timeout_s: float = 24 * 3600.0, poll_s: float = 2.0) -> None:
    """Wait until another rank has written ``path`` (the last file of a sharded step, such as a manifest).

    Rank-sharded steps need no collective: the rank that finishes the last shard writes the step's last file, and
    every rank waits for it before it reads the whole step's output.

    Raises:
        TimeoutError: ``path`` did not appear within ``timeout_s`` (the message names it and ``what``).
    """
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout_s
    target = Path(path)
    while not target.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} ({what}) did not appear within {timeout_s:.0f} s; is another rank stuck?")
        time.sleep(poll_s)
