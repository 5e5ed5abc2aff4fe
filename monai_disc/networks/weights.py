"""One weight loader for every door (CLI, generators, bundles, feature extractors).

It returns the network, so a bundle config loads its secondary networks where they are defined,
``$monai_disc.networks.load_weights(@autoencoder_def, @autoencoder_path)``, and
``ConfigParser.get_parsed_content("autoencoder")`` is the trained module without any handler run.

Weight files are read with ``torch.load(weights_only=True)`` and checked against the network before anything
is loaded, so a file that is not a checkpoint, or whose keys do not fit, fails with one line that names the
file and the first mismatching keys: ``cannot load models/model.pt: does not fit MaskConditionedUNet:
2 missing keys: [...]; 1 shape mismatch: [...]``. torch's own text for such files (a pickle error, advice to
pass ``weights_only=False``, or a dump of every missing key) names no file and suggests an unsafe load.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["WeightsError", "load_weights", "read_state_dict", "weights_mismatch"]

# entries a checkpoint may nest its state dict under (MONAI/Ignite, Lightning, DINO teacher files)
NESTED_KEYS: tuple[str, ...] = ("state_dict", "model", "network", "teacher")
# wrapper prefixes (DistributedDataParallel, torch.compile) removed when every key carries them
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
_MAX_LISTED = 5


class WeightsError(ValueError):
    """A weight file that cannot be loaded into a network; the message starts ``cannot load <file>:``."""


def _listed(items: Sequence[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{list(items[:_MAX_LISTED])}{more}"


def _torch_reason(path: Path, err: BaseException) -> str:
    """torch's complaint in a few words, without its advice to load unsafely."""
    text = str(err)
    if not zipfile.is_zipfile(path) and ("Weights only load failed" in text or "load key" in text):
        return "not a PyTorch weight file (neither a torch.save archive nor a tensor pickle)"
    if "Weights only load failed" in text:
        return "it holds Python objects besides tensors, which are not loaded (save its state_dict() instead)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"not a PyTorch weight file ({type(err).__name__}: {first})"


def read_state_dict(
    path: str | os.PathLike,
    nested_keys: Sequence[str] = NESTED_KEYS,
    strip_prefixes: Sequence[str] = WRAPPER_PREFIXES,
) -> dict[str, torch.Tensor]:
    """A weight file as a flat state dict of tensors (CPU): nested entries unwrapped, wrapper prefixes stripped.

    Args:
        path: a file written by ``torch.save`` (a state dict, or a checkpoint holding one).
        nested_keys: entries to descend into when the file holds a dict of dicts.
        strip_prefixes: key prefixes removed while every key starts with one of them.

    Returns:
        The state dict.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: the file is not a torch checkpoint, or holds no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot load {path}: no such file")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not checkpoints
        raise WeightsError(f"cannot load {path}: {_torch_reason(path, err)}") from None
    for key in nested_keys:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, Mapping) else f"a dict with keys {_listed(list(obj))}"
        raise WeightsError(f"cannot load {path}: expected a state dict of tensors, found {found}")
    state = {str(k): v for k, v in obj.items()}
    changed = True
    while changed:
        changed = False
        for prefix in strip_prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def weights_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into a network whose state dict is ``own``; "" when it fits.

    BatchNorm batch counters (``num_batches_tracked``) may be absent: they carry no learnt information.
    """
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {label}{'' if len(items) == 1 else plural}: {_listed(items)}"
        for label, plural, items in (
            ("missing key", "s", missing),
            ("unexpected key", "s", unexpected),
            ("shape mismatch", "es", mismatched),
        )
        if items
    ]
    return "; ".join(parts)


def load_weights(
    network: nn.Module,
    path: str | os.PathLike,
    ignore: Sequence[str] = (),
    strip_prefixes: Sequence[str] = WRAPPER_PREFIXES,
    what: str | None = None,
) -> nn.Module:
    """Load the weight file ``path`` into ``network`` (strictly, after a key and shape check) and set eval mode.

    Args:
        network: the module to fill (its device is kept: tensors are copied onto it).
        path: a state dict file, or a checkpoint holding one (see :func:`read_state_dict`).
        ignore: key prefixes of the file that are dropped when the network has no such key (e.g. ``"fc."`` for
            a classifier an encoder lacks).
        strip_prefixes: wrapper prefixes removed when every key of the file carries them.
        what: the network's name in messages; defaults to its class name.

    Returns:
        ``network``, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: not a checkpoint, or keys/shapes that do not fit (the first of each are listed).
    """
    own = network.state_dict()
    state = read_state_dict(path, strip_prefixes=strip_prefixes)
    if ignore:
        state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(ignore))}
    problem = weights_mismatch(own, state)
    if problem:
        raise WeightsError(f"cannot load {path}: does not fit {what or type(network).__name__}: {problem}")
    for k, v in own.items():  # keep the network's own counters where the file has none
        state.setdefault(k, v)
    network.load_state_dict(state, strict=True)
    return network.eval()
