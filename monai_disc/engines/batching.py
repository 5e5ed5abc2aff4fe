"""How many items a training batch can take: a set smaller than the batch trains, with a warning, instead of
giving an empty data loader (``drop_last`` would drop its only, partial batch)."""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["fit_batch_size"]


def fit_batch_size(num_items: int, batch_size: int, name: str = "training set") -> int:
    """The batch size a ``drop_last`` loader over ``num_items`` items can use: ``batch_size``, or fewer.

    Under ``torch.distributed`` each rank sees ``ceil(num_items / world_size)`` items (a
    ``DistributedSampler`` with even shards), so the bound is per rank.

    Args:
        num_items: items in the data set.
        batch_size: the configured batch size.
        name: what the data set is, for the warning.

    Returns:
        ``min(batch_size, items per rank)``; a ``UserWarning`` says so when it is smaller than ``batch_size``.

    Raises:
        ValueError: when the data set is empty or ``batch_size`` is not positive.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if num_items < 1:
        raise ValueError(f"the {name} is empty: nothing to train on.")
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    per_rank = math.ceil(num_items / world)
    if per_rank >= batch_size:
        return int(batch_size)
    where = f" per process ({world} processes)" if world > 1 else ""
    warnings.warn(
        f"the {name} has {per_rank} items{where}, fewer than batch_size {batch_size}: training with batches of "
        f"{per_rank}.",
        stacklevel=2,
    )
    return per_rank
