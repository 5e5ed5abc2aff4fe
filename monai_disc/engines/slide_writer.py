"""Per-slide probabilities of a slide-level grader as one CSV: probability and predicted presence per class."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from monai_disc.io import atomic_write_text, csv_text
from monai_disc.labels import LABEL_NAMES

__all__ = ["SlideProbabilityWriter", "slide_prediction_rows"]


def slide_prediction_rows(
    slide_ids: Sequence[str], probabilities: torch.Tensor, threshold: float = 0.5, names: Sequence[str] = LABEL_NAMES
) -> list[dict[str, Any]]:
    """One row per slide: its probabilities, the classes predicted present, and their names.

    Args:
        slide_ids: the slides, in the order of ``probabilities``.
        probabilities: (S, K) sigmoid outputs.
        threshold: a class is predicted present when its probability is at least this.
        names: the K class names (NC, GG3, GG4, GG5).

    Returns:
        Dicts with ``slide_id``, ``prob_<name>`` (6 decimals), ``pred_<name>`` (0 or 1) and ``labels``: the
        present classes joined by ``+``, or the most probable class when none reaches the threshold (a slide
        always gets a label).

    Raises:
        ValueError: when the shapes of ``slide_ids``, ``probabilities`` and ``names`` disagree.
    """
    probs = torch.as_tensor(probabilities, dtype=torch.float32).reshape(len(slide_ids), -1)
    if probs.shape[1] != len(names):
        raise ValueError(f"expected {len(names)} probabilities per slide ({', '.join(names)}), got {probs.shape[1]}")
    rows = []
    for sid, p in zip(slide_ids, probs.tolist()):
        present = [v >= threshold for v in p]
        label = [n for n, on in zip(names, present) if on] or [names[max(range(len(p)), key=p.__getitem__)]]
        row: dict[str, Any] = {"slide_id": str(sid)}
        row.update({f"prob_{n}": f"{v:.6f}" for n, v in zip(names, p)})
        row.update({f"pred_{n}": int(on) for n, on in zip(names, present)})
        row["labels"] = "+".join(label)
        rows.append(row)
    return rows


class SlideProbabilityWriter:
    """Collect each slide's probabilities during an evaluator run; write them as one CSV when it completes.

    The file is replaced atomically (temp file + rename), so it never holds a partial run. The evaluator's
    ``postprocessing`` should turn the logits into probabilities (``Activationsd(sigmoid=True)``).

    Args:
        output_file: the CSV path.
        pred_key: output key of the (K,) probabilities of a slide.
        id_key: batch key of the slide id.
        threshold: presence threshold (see :func:`slide_prediction_rows`).
    """

    def __init__(
        self, output_file: str | os.PathLike, pred_key: str = "pred", id_key: str = "slide_id", threshold: float = 0.5
    ) -> None:
        self.output_file = Path(output_file)
        self.pred_key = pred_key
        self.id_key = id_key
        self.threshold = threshold
        self.ids: list[str] = []
        self.probs: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.ids, self.probs = [], []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        items = output if isinstance(output, list) else [output]
        batches = batch if isinstance(batch, list) else [batch]
        for b, o in zip(batches, items):
            ids = b[self.id_key]
            ids = [ids] if isinstance(ids, str) else list(ids)
            self.ids += [str(i) for i in ids]
            self.probs.append(torch.as_tensor(o[self.pred_key]).detach().float().cpu().reshape(len(ids), -1))

    def _write(self, engine: Engine) -> None:
        rows = slide_prediction_rows(
            self.ids, torch.cat(self.probs) if self.probs else torch.zeros(0, 4), self.threshold
        )
        fields = ["slide_id", *(f"prob_{n}" for n in LABEL_NAMES), *(f"pred_{n}" for n in LABEL_NAMES), "labels"]
        atomic_write_text(self.output_file, csv_text(fields, rows))
        print(f"wrote the probabilities of {len(rows)} slides to {self.output_file}")
