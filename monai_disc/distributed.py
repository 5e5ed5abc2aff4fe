"""Which share of a rank-sharded job this process does: from arguments, a process group, or torchrun's env."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_rank"]


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
