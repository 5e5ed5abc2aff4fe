"""How a sampler runs its networks fast: compute precision, memory layout and compilation of the denoiser.

Three options, each independent of the sampling algorithm, so every sampler (SD, SC, the distillation set, slide
generation, the bundles' inference) takes them through :class:`monai_disc.inferers.MaskLDMSampler`:

- ``dtype``: the precision of the network calls. ``None`` ("auto") runs bfloat16 autocast on CUDA and float32
  elsewhere (bf16 autocast on a CPU is slower than float32 there; it serves to test the code path). The scheduler
  step always runs in float32.
- ``channels_last``: convolution weights and latents in NHWC order (cuDNN's fastest layout for 16-bit
  convolutions). It converts the networks' parameters in place, once.
- ``compile``: ``torch.compile`` the denoiser (options such as ``{"mode": "reduce-overhead"}``, which replays CUDA
  graphs: the shapes of a sampling loop are static, so the graph is captured once per batch size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["DTYPE_NAMES", "CompiledCache", "autocast_for", "resolve_dtype", "to_channels_last"]

# spellings a config or command line may use for a precision
DTYPE_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """The compute precision of the network calls on `device`.

    Args:
        dtype: a ``torch.dtype``, one of :data:`DTYPE_NAMES` (also ``"torch.bfloat16"`` spellings), or ``None`` /
            ``"auto"``: bfloat16 on CUDA devices that support it, float32 elsewhere.
        device: where the networks run.

    Returns:
        ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.

    Raises:
        ValueError: for an unknown name or a dtype that is not a floating-point precision autocast supports.
    """
    device = torch.device(device)
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(DTYPE_NAMES)}.")
        return DTYPE_NAMES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}.")
    return dtype


def autocast_for(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`; for float32, autocast switched off (an outer autocast does not leak in).

    Args:
        device: the device of the tensors the networks see.
        dtype: a precision from :func:`resolve_dtype`.

    Returns:
        a context manager.
    """
    device_type = torch.device(device).type
    if dtype == torch.float32:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def to_channels_last(*modules: nn.Module) -> None:
    """Put the 4-D parameters and buffers of `modules` in channels-last order, in place (values unchanged).

    Args:
        modules: networks whose convolutions should read NHWC.
    """
    for module in modules:
        module.to(memory_format=torch.channels_last)


class CompiledCache:
    """One ``torch.compile`` wrapper per network, built on first use and reused by later calls.

    The wrapper shares the network's parameters, so later weight changes (e.g. a checkpoint loaded after the
    sampler was built) are seen. Keyed by the network's identity; a sampler rarely sees more than one.

    Args:
        options: keyword arguments of ``torch.compile`` (``mode``, ``backend``, ``fullgraph``, ``dynamic``).
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self._entries: dict[int, tuple[nn.Module, nn.Module]] = {}

    def __call__(self, network: nn.Module) -> nn.Module:
        """The compiled wrapper of `network`."""
        entry = self._entries.get(id(network))
        if entry is None or entry[0] is not network:
            entry = (network, torch.compile(network, **self.options))
            self._entries[id(network)] = entry
        return entry[1]
