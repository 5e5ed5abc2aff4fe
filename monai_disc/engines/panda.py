"""The PANDA evaluation: a trained TransMIL on PANDA feature bags, slide AUROC overall and per data provider.

Labels are the slides' ``gleason_score`` (:func:`monai_disc.data.panda.load_panda`: ``3+4`` -> GG3 and GG4;
``negative`` and ``0+0`` -> NC), whatever the bags were cached with; the provider (radboud, karolinska) comes from
the same table. Bags are the feature files of ``monai-disc extract-features --wsi`` (``<slide_id>.pt``); PANDA
slides without a feature file (``empty`` or ``error`` when tiled) are counted and left out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from monai_disc.data.panda import PANDA_PROVIDERS, load_panda
from monai_disc.io import atomic_write_text
from monai_disc.labels import LABEL_NAMES
from monai_disc.metrics.slide import slide_auroc
from monai_disc.networks.features import FeatureBagDataset

__all__ = ["evaluate_panda", "format_panda_auroc", "load_transmil", "panda_slide_logits", "write_panda_metrics"]


def load_transmil(weights: str | os.PathLike, in_features: int, network: str = "transmil_toy") -> nn.Module:
    """A TransMIL (``"transmil"`` or ``"transmil_toy"``) with weights from a plain state dict, in eval mode.

    Raises:
        FileNotFoundError: a missing weight file.
        ValueError: an unknown network, or weights that do not fit it (names the file).
    """
    from monai_disc.networks.transmil import transmil, transmil_toy

    factories = {"transmil": transmil, "transmil_toy": transmil_toy}
    if network not in factories:
        raise ValueError(f"unknown network {network!r}; choose one of {sorted(factories)}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"TransMIL weights not found: {path}")
    net = factories[network](in_features, len(LABEL_NAMES))
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as err:
        raise ValueError(f"{path}: does not fit {network} with {in_features} input features ({err})") from None
    return net.eval()


def _scores(result: Mapping[str, Any], n: int) -> dict[str, Any]:
    entry = {"n_slides": n, "macro_auroc": result["macro_auroc"]}
    entry.update({f"auroc_{name}": v for name, v in zip(LABEL_NAMES, result["auroc"])})
    return entry


def panda_slide_logits(
    model: nn.Module,
    features: str | os.PathLike,
    panda_root: str | os.PathLike,
    device: str | torch.device | None = None,
) -> tuple[list[dict], torch.Tensor, list[str]]:
    """``model``'s logits for every PANDA slide that has a feature bag.

    Args:
        model: a TransMIL, (1, N, D) -> (1, 4) logits.
        features: a feature folder of ``extract-features --wsi`` on a PANDA tiling (``<slide_id>.pt`` files).
        panda_root: the PANDA root (``train.csv``) giving the labels and providers.
        device: where to run; None keeps the model's.

    Returns:
        (the slides with features, as :func:`monai_disc.data.load_panda` lists them; their logits (S, 4) on the CPU;
        the slide ids without features).

    Raises:
        FileNotFoundError: a missing feature folder or PANDA file.
        ValueError: no PANDA slide has a feature file.
    """
    folder = Path(features).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"feature folder not found: {folder}")
    slides = load_panda(panda_root)
    has = {s["slide_id"]: (folder / f"{s['slide_id']}.pt").is_file() for s in slides}
    present = [s for s in slides if has[s["slide_id"]]]
    missing = [sid for sid, found in has.items() if not found]
    if not present:
        raise ValueError(f"{folder}: no feature file of any of the {len(slides)} slides of {panda_root}")
    bags = FeatureBagDataset(
        [
            {"features": str(folder / f"{s['slide_id']}.pt"), "label": s["label"], "slide_id": s["slide_id"]}
            for s in present
        ],
        cache=False,
    )
    if device is not None:
        model = model.to(device)
    run_device = next(model.parameters()).device
    model.eval()
    scores = []
    with torch.inference_mode():
        for i in range(len(bags)):
            scores.append(model(bags[i]["features"][None].to(run_device)).float().cpu()[0])
    return present, torch.stack(scores), missing


def evaluate_panda(
    model: nn.Module,
    features: str | os.PathLike,
    panda_root: str | os.PathLike,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Slide AUROC of ``model`` on PANDA feature bags: per class and macro, over all slides and per provider.

    Args:
        model: a TransMIL, (1, N, D) -> (1, 4) logits.
        features: a feature folder of ``extract-features --wsi`` on a PANDA tiling (``<slide_id>.pt`` files).
        panda_root: the PANDA root (``train.csv``) giving the labels and providers.
        device: where to run; None keeps the model's.

    Returns:
        ``{"overall": scores, "radboud": scores, "karolinska": scores, "missing": [slide ids without features]}``
        where scores hold ``n_slides``, ``macro_auroc`` and ``auroc_NC`` .. ``auroc_GG5`` (NaN where a class is
        all positive or all negative, or no slide is there).

    Raises:
        FileNotFoundError: a missing feature folder or PANDA file.
        ValueError: no PANDA slide has a feature file.
    """
    present, logits, missing = panda_slide_logits(model, features, panda_root, device)
    targets = torch.as_tensor(np.stack([s["label"] for s in present]))
    providers = np.array([s["provider"] for s in present])
    result: dict[str, Any] = {"overall": _scores(slide_auroc(logits, targets), len(present))}
    for provider in PANDA_PROVIDERS:
        keep = torch.as_tensor(providers == provider)
        if keep.any():
            result[provider] = _scores(slide_auroc(logits[keep], targets[keep]), int(keep.sum()))
        else:
            nan = {"auroc": [math.nan] * len(LABEL_NAMES), "macro_auroc": math.nan}
            result[provider] = _scores(nan, 0)
    result["missing"] = missing
    return result


def format_panda_auroc(result: Mapping[str, Any]) -> str:
    """A markdown table of :func:`evaluate_panda`: one row per slide set that holds slides, AUROC per class and
    macro."""

    def cell(v: float) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    names = ["overall", *PANDA_PROVIDERS]
    lines = [
        "| slides | n | " + " | ".join(f"AUROC {n}" for n in LABEL_NAMES) + " | macro AUROC |",
        "|---" * (len(LABEL_NAMES) + 3) + "|",
    ]
    for name in names:
        s = result[name]
        if not s["n_slides"]:
            continue
        per_class = " | ".join(cell(s[f"auroc_{n}"]) for n in LABEL_NAMES)
        lines.append(f"| {name} | {s['n_slides']} | {per_class} | {cell(s['macro_auroc'])} |")
    if result.get("missing"):
        lines.append(f"\n{len(result['missing'])} PANDA slide(s) without features (empty or failed tiling) left out.")
    return "\n".join(lines)


def write_panda_metrics(
    model: nn.Module,
    features: str | os.PathLike,
    panda_root: str | os.PathLike,
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    extra: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_panda` written to a JSON file (atomically; NaN as null) and printed as a table.

    Args:
        model, features, panda_root, device: see :func:`evaluate_panda`.
        path: the JSON file.
        extra: constant entries written before the scores (the model file, ...).
        weights: a plain state dict loaded into ``model`` first (as the bundle's ``models/model.pt``).

    Raises:
        FileNotFoundError: missing weights, features or PANDA files.
    """
    from monai_disc.engines.evaluation import _dumps, _jsonable

    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"TransMIL weights not found: {weights}")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    result = evaluate_panda(model, features, panda_root, device)
    atomic_write_text(path, _dumps(_jsonable({"test": "panda", **dict(extra or {}), **result})) + "\n")
    print(format_panda_auroc(result), flush=True)
    return result
