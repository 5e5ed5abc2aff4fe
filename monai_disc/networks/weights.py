"""Load a weight file into a network and hand the network back, for use inside bundle config expressions.

A bundle's main network is loaded by MONAI's ``CheckpointLoader`` handler (and by MONAI Label itself); every
other network an inference config needs (the autoencoder, a ruler, a feature extractor) is loaded where it is
defined, ``$monai_disc.networks.load_network(@autoencoder_def, @autoencoder_path)``, so that
``ConfigParser.get_parsed_content("autoencoder")`` returns the trained module without any handler run.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

__all__ = ["load_network"]


def load_network(
    network: nn.Module,
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    key: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load a state dict file (``torch.load(..., weights_only=True)``) into ``network`` and return it.

    Args:
        network: the module to fill.
        path: a file holding a state dict, or a dictionary of state dicts when ``key`` is given.
        map_location: where tensors are mapped while loading.
        key: the entry of a checkpoint dictionary that holds the network's state dict (e.g. ``"model"``).
        strict: require the file's keys to match the network's exactly.

    Returns:
        ``network``, with the weights loaded.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable checkpoint, lacks ``key``, or its keys or shapes do not fit
            the network (the message names the file and the first mismatches).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot load {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"cannot load {path}: not a PyTorch checkpoint ({type(e).__name__})") from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise ValueError(f"cannot load {path}: no entry {key!r} in the checkpoint")
        state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"cannot load {path}: expected a state dict, found {type(state).__name__}")
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise ValueError(f"cannot load {path} into {type(network).__name__}: {first}") from None
    return network
