"""Plain functions behind the mask transforms, shared with `monai_disc.masks` and `monai_disc.inferers`.

They work on numpy arrays and torch tensors alike (same type out as in) and carry no MONAI metadata;
the transforms in :mod:`monai_disc.transforms.array` wrap them for MONAI pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.utils import ensure_tuple_rep

from monai_disc.labels import NUM_CLASSES

__all__ = [
    "as_label_map",
    "assign_grades",
    "label_masks_at_size",
    "labels_at_size",
    "reduction_factors",
    "relabel_by_frequency",
    "snap_to_labels",
]


def _plain(x: NdarrayOrTensor) -> NdarrayOrTensor:
    """Drop MetaTensor bookkeeping: these functions compute on raw data."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def as_label_map(x: NdarrayOrTensor, num_classes: int | None = None, name: str = "mask") -> torch.Tensor:
    """Integer label maps (B, H, W) int64 from labels (B, H, W) / (B, 1, H, W) or scores (B, K, H, W).

    The one normalisation of label-map inputs (samplers, fusion, metrics): MetaTensors become plain tensors,
    scores with K == ``num_classes`` channels (logits, probabilities, one-hot) are reduced by argmax, integral
    floats become integers.

    Args:
        x: the label maps, numpy or torch.
        num_classes: K; when given, scores with K channels are accepted and labels must lie in 0..K-1.
        name: what ``x`` is, for the messages.

    Raises:
        ValueError: for other shapes, non-integer values, boolean or complex maps, or labels outside 0..K-1.
    """
    x = torch.as_tensor(_plain(x))
    if type(x) is not torch.Tensor:
        x = x.as_subclass(torch.Tensor)
    expected = "(B, H, W) or (B, 1, H, W)" + ("" if num_classes is None else f" or (B, {num_classes}, H, W)")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim == 4 and num_classes is not None and x.shape[1] == num_classes:
        x = x.argmax(dim=1)
    if x.ndim != 3:
        raise ValueError(f"{name} must be integer labels {expected}, got shape {tuple(x.shape)}.")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}.")
    if x.is_floating_point():
        if x.numel() and not torch.equal(x, x.round()):
            raise ValueError(f"{name} must hold integer labels, got non-integer values.")
    x = x.long()
    if num_classes is not None and x.numel():
        lo, hi = torch.aminmax(x)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: labels must lie in 0..{num_classes - 1}, got {int(lo)}..{int(hi)}.")
    return x


def snap_to_labels(
    mask: NdarrayOrTensor,
    values: Sequence[float] = (0, 3, 4, 5),
    labels: Sequence[int] = (0, 1, 2, 3),
    max_distance: float = 0.0,
    name: str = "mask",
    noise_distance: float | None = None,
    noise_fraction: float = 0.0,
) -> NdarrayOrTensor:
    """Map every pixel to the label of its nearest valid value (ties go to the smaller value).

    JPEG stores SICAPv2 masks with small errors around edges; nearest-value snapping undoes them. A pixel
    within `max_distance` of a valid value is that value. A pixel farther away, but within `noise_distance`,
    is compression overshoot while such pixels make at most `noise_fraction` of the mask. Any other pixel
    holds a value no label maps to, and is an error rather than a silent label.

    Args:
        mask: mask values, any shape, numpy or torch.
        values: the valid stored values.
        labels: the label of each value (same length).
        max_distance: largest |pixel - nearest value| always accepted (0: exact values only).
        name: what to call the mask in errors (e.g. its file name).
        noise_distance: largest |pixel - nearest value| accepted as rare noise; None: no such allowance.
        noise_fraction: the share of the mask's pixels such noise may cover.

    Returns:
        int64 label map of the same shape and array type.

    Raises:
        ValueError: values no label maps to; the message gives `name`, each value and its pixel count.
    """
    if len(values) != len(labels) or not values:
        raise ValueError(f"values {tuple(values)} and labels {tuple(labels)} must be non-empty and of equal length")
    order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
    sorted_values = np.asarray(values, dtype=np.float64)[order]
    sorted_labels = np.asarray(labels, dtype=np.int64)[order]
    x = _plain(mask)
    if isinstance(x, torch.Tensor):
        xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        v = torch.as_tensor(sorted_values, dtype=xf.dtype, device=xf.device)
        dist, index = (xf.unsqueeze(-1) - v).abs().min(dim=-1)
        dist, index = dist.cpu().numpy(), index.cpu().numpy()
        raw = x.detach().cpu().numpy()
    else:
        raw = np.asarray(x)
        d = np.abs(raw.astype(np.float64)[..., None] - sorted_values)
        index = d.argmin(axis=-1)
        dist = np.take_along_axis(d, index[..., None], axis=-1)[..., 0]
    bad = dist > max_distance
    if bad.any() and noise_distance is not None:
        if not (dist > noise_distance).any() and int(bad.sum()) <= noise_fraction * dist.size:
            bad[...] = False  # rare overshoot at edges: compression noise
    if bad.any():
        found, counts = np.unique(raw[bad], return_counts=True)
        shown = ", ".join(f"{v:g} ({c} px)" for v, c in zip(found[:10].tolist(), counts[:10].tolist()))
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        tolerance = f"within {max_distance:g} of " if max_distance else ""
        raise ValueError(
            f"{name}: mask value{'s' if len(found) > 1 else ''} {shown}{more} of {dist.size} px map to no Gleason "
            f"label; valid values are {tolerance}{', '.join(f'{v:g}' for v in values)}"
        )
    out = sorted_labels[index]
    return torch.as_tensor(out, device=x.device) if isinstance(x, torch.Tensor) else out


def relabel_by_frequency(labels: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
    """Replace each label by its frequency rank: most frequent -> 0, ties broken by the smaller label.

    This is the "m_freq" shape of a mask: it keeps the drawing and drops the grades.

    Args:
        labels: integer label map, any shape, numpy or torch.

    Returns:
        (ranks, order): `ranks` has the shape, array type and dtype of `labels`; `order[r]` is the
        label that got rank `r` (so `order[ranks] == labels`).
    """
    x = _plain(labels)
    if isinstance(x, torch.Tensor):
        unique, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
        order = torch.sort(-counts, stable=True).indices  # unique is ascending, so ties keep the smaller label
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return rank[inverse].to(x.dtype), unique[order]
    x = np.asarray(x)
    unique, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    order = np.lexsort((unique, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(x.shape)].astype(x.dtype, copy=False), unique[order]


def assign_grades(
    num_ranks: int,
    rng: np.random.RandomState | np.random.Generator,
    labels: Sequence[int] = (0, 1, 2, 3),
    weights: Sequence[float] | None = None,
    concentration: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """Draw `num_ranks` distinct grades from `labels`, rank 0 first, by weighted sampling without replacement.

    The paper's random-weight assignment: a mask shape's frequency ranks get grade labels so that no two
    ranks share a grade. Rank 0 takes the first draw (probability proportional to the weights), rank 1 the
    next draw from the labels left (weights renormalised), and so on.

    Args:
        num_ranks: how many ranks need a grade.
        rng: numpy random state (MONAI's `Randomizable.R`) or Generator.
        labels: the grades allowed (distinct).
        weights: one non-negative weight per label, fixed; None draws the weights from
            Dirichlet(`concentration`) on every call.
        concentration: Dirichlet concentration (scalar or one per label), used when `weights` is None.

    Returns:
        int64 array of length `num_ranks`: the grade of each rank.

    Raises:
        ValueError: duplicate labels, bad weights, or more ranks than labels that can be drawn.
    """
    labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(set(labels_arr.tolist())) != labels_arr.size:
        raise ValueError(f"labels must be distinct, got {tuple(labels)}")
    if num_ranks < 0:
        raise ValueError(f"num_ranks must be >= 0, got {num_ranks}")
    if num_ranks > labels_arr.size:
        raise ValueError(
            f"{num_ranks} ranks need distinct grades but only {labels_arr.size} labels {tuple(labels)} are allowed"
        )
    if weights is None:
        alpha = np.broadcast_to(np.asarray(concentration, dtype=np.float64), labels_arr.shape)
        if np.any(alpha <= 0):
            raise ValueError(f"concentration must be > 0, got {concentration}")
        w = rng.dirichlet(alpha)
        strict = False
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != labels_arr.size:
            raise ValueError(f"weights {tuple(weights)} must have one entry per label {tuple(labels)}")
        if np.any(~np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and non-negative, got {tuple(weights)}")
        if np.count_nonzero(w) < num_ranks:
            raise ValueError(
                f"{num_ranks} ranks need distinct grades but only {np.count_nonzero(w)} labels have a "
                f"positive weight in {tuple(weights)}"
            )
        strict = True
    left = np.ones(labels_arr.size, dtype=bool)
    out = np.empty(num_ranks, dtype=np.int64)
    for r in range(num_ranks):
        p = np.where(left, w, 0.0)
        total = p.sum()
        if total <= 0:  # a Dirichlet draw can underflow to exact zeros for tiny concentrations
            if strict:  # pragma: no cover - excluded by the positive-weight check above
                raise ValueError("no positive weight left")
            p = left.astype(np.float64)
            total = p.sum()
        i = int(rng.choice(labels_arr.size, p=p / total))
        out[r] = labels_arr[i]
        left[i] = False
    return out


def reduction_factors(in_size: Sequence[int], size: int | Sequence[int]) -> tuple[int, int]:
    """Integer factors (fh, fw) taking spatial size `in_size` (H, W) down to `size` (h, w).

    Raises:
        ValueError: when `size` does not divide `in_size` (or is not positive).
    """
    h, w = (int(s) for s in ensure_tuple_rep(size, 2))
    H, W = int(in_size[0]), int(in_size[1])
    if h <= 0 or w <= 0 or H % h or W % w:
        raise ValueError(f"target size {(h, w)} must be positive and divide the label map size {(H, W)}")
    return H // h, W // w


def labels_at_size(labels: NdarrayOrTensor, size: int | Sequence[int]) -> NdarrayOrTensor:
    """Nearest-neighbour reduction of a label map to `size`, exactly as `torch.nn.functional.interpolate(
    mode="nearest")` (and MONAI's `Resize(mode="nearest")`) would do it: output pixel (i, j) is input pixel
    (i * fh, j * fw), the top-left pixel of its fh x fw block.

    Args:
        labels: (B, H, W) or (B, 1, H, W), numpy or torch.
        size: (h, w) or one int for both; must divide (H, W).

    Returns:
        (B, h, w) of the same array type and dtype (a contiguous copy).

    Raises:
        ValueError: for other shapes or a size that does not divide the input.
    """
    x = _plain(labels)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"label map must be (B, H, W) or (B, 1, H, W), got shape {tuple(labels.shape)}")
    fh, fw = reduction_factors(x.shape[-2:], size)
    out = x[:, ::fh, ::fw]
    return out.contiguous() if isinstance(out, torch.Tensor) else np.ascontiguousarray(out)


def label_masks_at_size(
    labels: NdarrayOrTensor, num_classes: int = NUM_CLASSES, size: int | Sequence[int] | None = None
) -> torch.Tensor:
    """Binary float masks m_k (B, K, h, w) of the labels reduced by :func:`labels_at_size` (Eq. 2's masks).

    Args:
        labels: (B, H, W) or (B, 1, H, W) integer labels in 0..num_classes-1, numpy or torch.
        num_classes: K.
        size: target (h, w); None keeps (H, W).

    Returns:
        float32 tensor on the device of `labels` (CPU for numpy); masks sum to 1 at every pixel.

    Raises:
        ValueError: labels outside 0..num_classes-1, bad shape or size.
    """
    x = torch.as_tensor(_plain(labels))
    if size is None:
        size = tuple(x.shape[-2:])
    small = labels_at_size(x, size).long()
    if small.numel() and (int(small.min()) < 0 or int(small.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {int(small.min())}..{int(small.max())}")
    return torch.nn.functional.one_hot(small, num_classes).permute(0, 3, 1, 2).to(torch.float32).contiguous()
