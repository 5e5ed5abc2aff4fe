"""Evaluation and inference glue for tile graders: labelled data lists, and handlers that write results.

A pixel grader (CarcinoNet) is evaluated and run by MONAI's stock ``SupervisedEvaluator``; what the
stock handlers do not do is written here, once, so bundles stay wiring only:

- :func:`labelled_tiles` / :func:`labelled_tile_transforms`: a SICAPv2-layout or plain-folder data set
  as items whose ``label`` is the *pixel mask* (the evaluator's target), checked up front;
- :func:`list_tiles` / :func:`pending_tiles`: the tiles of an inference folder still without output;
- :class:`MetricsJSONWriter`: dictionary metrics (e.g. :class:`monai_disc.metrics.PixelGradingMetric`
  scores) to one JSON file, atomically;
- :class:`OverlayGridSaver`: a picture of the first tiles, tile | truth | prediction;
- :class:`LabelMapWriter`: one label-map PNG (values 0..3) and one colour overlay per tile, atomically,
  the label map last so its presence marks a finished tile (resume).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose

from monai_disc.data.folder import FOLDER_IMAGE_EXTENSIONS, load_folder
from monai_disc.data.sicapv2 import load_sicapv2
from monai_disc.io import atomic_write_text
from monai_disc.labels import NUM_CLASSES, PANDA_RADBOUD_VALUE_TO_LABEL
from monai_disc.transforms.functional import as_label_map
from monai_disc.transforms.pipelines import folder_tile_transforms, sicapv2_tile_transforms, tile_transforms
from monai_disc.visualize import overlay, save_grid, save_picture, to_uint8

__all__ = [
    "DATA_FORMATS",
    "LABELS_SUBDIR",
    "OVERLAYS_SUBDIR",
    "LabelMapWriter",
    "MetricsJSONWriter",
    "OverlayGridSaver",
    "labelled_tile_transforms",
    "labelled_tiles",
    "list_tiles",
    "pending_tiles",
]

# sicapv2: partition sheets, JPEG masks 0/3/4/5; folder: images/ + masks/ PNG labels 0..3 (MONAI Label's layout);
# panda: the folder layout holding tiles cut from PANDA radboud slides, masks with radboud values 0..5 (grayscale)
DATA_FORMATS: tuple[str, ...] = ("sicapv2", "folder", "panda")
LABELS_SUBDIR = "labels"
OVERLAYS_SUBDIR = "overlays"


def _check_format(data_format: str) -> str:
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}.")
    return data_format


def labelled_tiles(
    root: str | os.PathLike, data_format: str = "sicapv2", partition: str = "Test", split: str = "Test"
) -> list[dict]:
    """Tiles with pixel masks as a MONAI data list whose ``label`` is the mask file.

    MONAI's trainers and evaluators take the target from ``label``; for a pixel grader that is the mask,
    so the mask path moves there and the tile's multi-hot grades (unused here) are dropped.

    Args:
        root: a SICAPv2-layout folder (``data_format="sicapv2"``) or a plain folder with ``images/`` and
            ``masks/`` (``"folder"`` and ``"panda"``, see :func:`monai_disc.data.folder.load_folder`).
        data_format: one of :data:`DATA_FORMATS`: ``"sicapv2"``, ``"folder"`` (masks hold labels 0..3) or
            ``"panda"`` (tiles of PANDA radboud slides whose masks hold the radboud values 0..5).
        partition: SICAPv2 partition (``"Test"``, ``"Val1"`` .. ``"Val4"``); ignored for folders.
        split: SICAPv2 split (``"Train"`` or ``"Test"``); ignored for folders.

    Returns:
        Dicts with ``image`` and ``label`` (paths) and ``slide_id``.

    Raises:
        ValueError: for an unknown ``data_format``, an empty data set, or a folder without masks.
        FileNotFoundError: for a missing root or file (from the loaders, naming the path).
    """
    _check_format(data_format)
    if data_format == "sicapv2":
        items = load_sicapv2(root, partition=partition, split=split)
    else:
        items = load_folder(root)
        if items and items[0]["mask"] is None:
            raise ValueError(f"{root}: no masks/ folder; evaluating or training a pixel grader needs masks.")
    if not items:
        raise ValueError(f"{root}: no tiles found ({data_format} layout).")
    return [{"image": d["image"], "label": d["mask"], "slide_id": d["slide_id"]} for d in items]


def labelled_tile_transforms(data_format: str = "sicapv2", label_key: str = "label") -> Compose:
    """Loading pipeline of :func:`labelled_tiles` items: tile in [-1, 1], label map 0..3 under ``label_key``.

    SICAPv2 JPEG masks (0/3/4/5) are snapped to the nearest stored value; folder masks must hold 0..3 exactly;
    PANDA radboud masks map 0, 1, 2 (background, stroma, benign) to NC and 3, 4, 5 to GG3, GG4, GG5.

    Raises:
        ValueError: for an unknown ``data_format``.
    """
    data_format = _check_format(data_format)
    if data_format == "sicapv2":
        return sicapv2_tile_transforms(mask_key=label_key)
    if data_format == "panda":
        values = sorted(PANDA_RADBOUD_VALUE_TO_LABEL)
        return tile_transforms(
            mask_key=label_key, mask_values=values, mask_labels=[PANDA_RADBOUD_VALUE_TO_LABEL[v] for v in values]
        )
    return folder_tile_transforms(mask_key=label_key)


def list_tiles(folder: str | os.PathLike) -> list[Path]:
    """Tile files (png, jpg, jpeg, tif, tiff) of a folder, sorted by name.

    A folder without tiles but with an ``images/`` subfolder (the plain-folder or SICAPv2 layout) is
    read from there.

    Raises:
        FileNotFoundError: when the folder does not exist.
        ValueError: when it holds no tiles, or two tiles share a name (``a.png`` and ``a.jpg`` would
            write the same outputs).
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"tile folder not found: {path}")

    def scan(p: Path) -> list[Path]:
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FOLDER_IMAGE_EXTENSIONS)

    tiles = scan(path)
    if not tiles and (path / "images").is_dir():
        path = path / "images"
        tiles = scan(path)
    if not tiles:
        raise ValueError(f"{path}: no tiles ({', '.join(FOLDER_IMAGE_EXTENSIONS)}) found.")
    seen: dict[str, Path] = {}
    for tile in tiles:
        if tile.stem in seen:
            raise ValueError(f"{path}: two tiles named {tile.stem!r}: {seen[tile.stem].name} and {tile.name}.")
        seen[tile.stem] = tile
    return tiles


def pending_tiles(folder: str | os.PathLike, output_dir: str | os.PathLike) -> list[dict]:
    """Data list (``{"image": path}``) of the tiles in ``folder`` whose label map is not yet written.

    A tile is done when ``output_dir/labels/<name>.png`` exists (:class:`LabelMapWriter` writes it last,
    atomically), so a killed run resumes without redoing finished tiles.
    """
    done = Path(output_dir) / LABELS_SUBDIR
    return [{"image": str(t)} for t in list_tiles(folder) if not (done / f"{t.stem}.png").is_file()]


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors and arrays to lists, NaN and infinities to None (strict JSON)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON with one line per list of numbers (a confusion matrix stays readable), strict (no NaN)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict) and value:
        body = ",\n".join(f"{inner}{json.dumps(k)}: {_dumps(v, indent + 2)}" for k, v in value.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 2) for v in value) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def _is_main_rank() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _items(output: Any) -> list[dict]:
    """Per-tile dicts from an engine output (decollated list, or one batch dict)."""
    if isinstance(output, Mapping):
        keys = [k for k, v in output.items() if isinstance(v, torch.Tensor)]
        n = len(output[keys[0]]) if keys else 0
        return [{k: (v[i] if isinstance(v, torch.Tensor) else v) for k, v in output.items()} for i in range(n)]
    return list(output or [])


class MetricsJSONWriter:
    """At the end of an evaluation, write ``engine.state.metrics`` entries to a JSON file and print it.

    Dictionary-valued metrics (the full :func:`monai_disc.metrics.grading_scores` of a
    :class:`~monai_disc.metrics.PixelGradingMetric` wrapped in MONAI's ``IgniteMetricHandler``) are
    written whole; NaN becomes ``null``. The file is replaced atomically; in distributed runs only
    rank 0 writes.

    Args:
        path: the JSON file.
        metric_names: which ``engine.state.metrics`` entries to write (all when None).
        extra: constant entries written next to them (class names, the model file, ...).
        echo: also print the JSON to stdout.

    Raises:
        KeyError: (when run) a requested metric the engine did not compute; the message lists those it did.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metric_names: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        echo: bool = True,
    ) -> None:
        self.path = Path(path)
        self.metric_names = None if metric_names is None else list(metric_names)
        self.extra = dict(extra or {})
        self.echo = echo

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> dict:
        metrics = engine.state.metrics
        names = sorted(metrics) if self.metric_names is None else self.metric_names
        missing = [n for n in names if n not in metrics]
        if missing:
            raise KeyError(f"{self.path}: metrics {missing} were not computed; available: {sorted(metrics)}.")
        data = _jsonable({**self.extra, **{n: metrics[n] for n in names}})
        if _is_main_rank():
            text = _dumps(data)
            atomic_write_text(self.path, text + "\n")
            if self.echo:
                print(text, file=sys.stdout, flush=True)
        return data


class OverlayGridSaver:
    """Save one picture of the first ``num_tiles`` evaluated tiles: tile | truth | prediction.

    Truth and prediction are drawn as label colours over the tile (:func:`monai_disc.visualize.overlay`);
    predictions may be label maps or class scores (argmax). Without a truth (``label_key=None`` or a
    missing label) the row shows tile | prediction.

    Args:
        path: the picture (``.png``), replaced atomically at the end of every run.
        num_tiles: rows of the grid.
        image_key: output key of the (3, H, W) tile in [-1, 1].
        label_key: output key of the true label map, or None.
        pred_key: output key of the prediction.
        alpha: opacity of the label colours.
        num_classes: K, for reducing class scores to labels.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_tiles: int = 8,
        image_key: str = "image",
        label_key: str | None = "label",
        pred_key: str = "pred",
        alpha: float = 0.4,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        if num_tiles < 1:
            raise ValueError(f"num_tiles must be >= 1, got {num_tiles}.")
        self.path = Path(path)
        self.num_tiles = num_tiles
        self.image_key = image_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.alpha = alpha
        self.num_classes = num_classes
        self.rows: list[list[np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = []

    def collect(self, engine: Engine) -> None:
        for item in _items(engine.state.output):
            if len(self.rows) >= self.num_tiles:
                return
            tile = to_uint8(item[self.image_key])
            pred = as_label_map(torch.as_tensor(item[self.pred_key])[None], self.num_classes, "pred")[0]
            row = [tile]
            truth = item.get(self.label_key) if self.label_key is not None else None
            if truth is not None:
                row.append(
                    overlay(tile, as_label_map(torch.as_tensor(truth)[None], self.num_classes, "label")[0], self.alpha)
                )
            row.append(overlay(tile, pred, self.alpha))
            self.rows.append(row)

    def save(self, engine: Engine | None = None) -> Path | None:
        """Write the grid (rank 0 only); returns its path, or None when nothing was collected."""
        if not self.rows or not _is_main_rank():
            return None
        titles = ["tile", "truth", "prediction"] if len(self.rows[0]) == 3 else ["tile", "prediction"]
        return save_grid(self.rows, self.path, titles=titles, legend_colors=True)


class LabelMapWriter:
    """Write each tile's predicted label map (PNG, values 0..3) and a colour overlay, atomically.

    Outputs go to ``output_dir/labels/<tile name>.png`` and ``output_dir/overlays/<tile name>.png``;
    the label map is written last, so its presence means the tile is done (see :func:`pending_tiles`).
    The tile name comes from the image's MetaTensor metadata (``filename_or_obj``), which MONAI's
    loaders set.

    Args:
        output_dir: output folder.
        image_key: output key of the (3, H, W) tile in [-1, 1].
        pred_key: output key of the prediction (label map or class scores).
        alpha: opacity of the overlay colours.
        overlays: also write colour overlays.
        num_classes: K, for reducing class scores to labels.
        name_fn: optional ``item -> name`` used instead of the metadata.

    Raises:
        ValueError: (when run) an item whose tile name cannot be found.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        pred_key: str = "pred",
        alpha: float = 0.4,
        overlays: bool = True,
        num_classes: int = NUM_CLASSES,
        name_fn: Callable[[dict], str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.pred_key = pred_key
        self.alpha = alpha
        self.overlays = overlays
        self.num_classes = num_classes
        self.name_fn = name_fn
        self.written = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _name(self, item: dict) -> str:
        if self.name_fn is not None:
            return str(self.name_fn(item))
        meta = getattr(item.get(self.image_key), "meta", None) or {}
        source = meta.get("filename_or_obj")
        if not source:
            raise ValueError(f"cannot name the output: the {self.image_key!r} tensor carries no 'filename_or_obj'.")
        return Path(str(source)).stem

    def __call__(self, engine: Engine) -> None:
        for item in _items(engine.state.output):
            name = self._name(item)
            labels = as_label_map(torch.as_tensor(item[self.pred_key])[None], self.num_classes, "pred")[0]
            labels_u8 = labels.cpu().numpy().astype(np.uint8)
            if self.overlays:
                save_picture(
                    overlay(item[self.image_key], labels_u8, self.alpha),
                    self.output_dir / OVERLAYS_SUBDIR / f"{name}.png",
                )
            save_picture(labels_u8, self.output_dir / LABELS_SUBDIR / f"{name}.png")
            self.written += 1
