"""Slide-level grading scores: AUROC per Gleason label and their macro mean (the paper's table).

During training, MONAI's ``ROCAUCMetric(average="none")`` accumulates the same numbers; this
function scores a finished set of predictions (a report, a bench run) in one call.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

__all__ = ["slide_auroc"]


def slide_auroc(scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """AUROC of each class of multi-label slide predictions and their macro mean.

    Args:
        scores: (N, K) slide scores (logits or probabilities: AUROC only needs their order).
        targets: (N, K) multi-hot slide labels ([NC, GG3, GG4, GG5]).

    Returns:
        ``auroc``: K per-class values (NaN for a class whose targets are all 0 or all 1);
        ``macro_auroc``: their mean over the defined classes (NaN if none is defined).

    Raises:
        ValueError: when shapes differ or are not (N, K).
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    t = torch.as_tensor(targets, dtype=torch.float64)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be (N, K), got {tuple(s.shape)} and {tuple(t.shape)}.")
    with warnings.catch_warnings():  # MONAI warns for undefined classes; NaN already says it
        warnings.simplefilter("ignore", UserWarning)
        values = compute_roc_auc(s, t, average="none")
    per_class = [float(v) for v in (values if isinstance(values, list) else [values])]  # K == 1 gives a float
    defined = [v for v in per_class if not np.isnan(v)]
    return {"auroc": per_class, "macro_auroc": float(np.mean(defined)) if defined else float("nan")}
