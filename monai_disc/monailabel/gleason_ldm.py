"""MONAI Label model ``gleason_ldm``: paint an H&E tile from a Gleason mask.

``POST /infer/gleason_ldm`` with an uploaded mask (``file``) and a ``params`` JSON form field returns an RGB PNG
tile of the mask's size, drawn by a generator of the registry (:data:`monai_disc.inferers.GENERATORS`) with the bundles'
weights: exactly the tile the Python API draws for the same generator, steps, guidance and seed.

Parameters: ``generator`` (a name of the registry; :data:`monai_disc.inferers.DEFAULT_GENERATOR` when left out),
``solver`` (a name of :data:`monai_disc.inferers.SOLVERS`; ``"default"``, the default, is the generator's own),
``num_inference_steps`` (0, the default: the generator's own), ``guidance_scale``,
``seed``, and ``mask_values``: what the mask stores for NC, GG3, GG4, GG5: ``"labels"`` (0, 1, 2, 3; the
default, an 8-bit PNG), ``"sicapv2"`` (0, 3, 4, 5; JPEG noise of 2 grey levels tolerated) or a list of four
values. The model is listed in /info with type ``generator``, so segmentation clients leave it alone.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.basic_infer import BasicInferTask

from monai_disc.inferers import DEFAULT_GENERATOR, GENERATORS, SOLVERS, load_generator
from monai_disc.labels import LABEL_NAMES, NUM_CLASSES, SICAPV2_MASK_VALUES
from monai_disc.monailabel.task_params import (
    SERVER_KEYS,
    as_float,
    as_int,
    bundles_dir,
    check_params,
    http_errors,
    one_of,
)
from monai_disc.transforms import LoadPILImaged, SnapMaskToLabelsd
from monai_disc.visualize import save_picture, to_uint8

__all__ = ["MASK_VALUE_SETS", "GleasonLDMConfig", "GleasonLDMInfer"]

#: named mask encodings: stored values of NC, GG3, GG4, GG5, and the tolerated distance to them
MASK_VALUE_SETS: dict[str, tuple[tuple[int, ...], float]] = {
    "labels": (tuple(range(NUM_CLASSES)), 0.0),
    "sicapv2": (tuple(SICAPV2_MASK_VALUES), 2.0),
}
#: the registry's generators, the default first (a MONAI Label client shows a list's first entry as its default)
GENERATOR_CHOICES = [DEFAULT_GENERATOR, *(name for name in GENERATORS if name != DEFAULT_GENERATOR)]
#: "default": the generator's own solver (its registry entry's, else monai_disc.inferers.DEFAULT_SOLVER)
SOLVER_CHOICES = ["default", *sorted(SOLVERS)]
INFER_DEFAULTS: dict[str, Any] = {
    "generator": GENERATOR_CHOICES,
    "solver": SOLVER_CHOICES,
    "num_inference_steps": 0,  # 0: the generator's own steps
    "guidance_scale": 1.0,
    "seed": 0,
    "mask_values": list(MASK_VALUE_SETS),
}


def _mask_values(value: Any) -> tuple[tuple[float, ...], float]:
    if isinstance(value, (list, tuple)) and list(value) == list(MASK_VALUE_SETS):
        value = next(iter(MASK_VALUE_SETS))
    if isinstance(value, str):
        if value not in MASK_VALUE_SETS:
            raise ValueError(
                f"parameter 'mask_values' must be one of {list(MASK_VALUE_SETS)} or four values, got {value!r}"
            )
        return MASK_VALUE_SETS[value]
    if not isinstance(value, (list, tuple)) or len(value) != NUM_CLASSES:
        raise ValueError(f"parameter 'mask_values' must name an encoding or list {NUM_CLASSES} values, got {value!r}")
    values = tuple(as_float("mask_values", v, 0, 255) for v in value)
    if len(set(values)) != NUM_CLASSES:
        raise ValueError(f"parameter 'mask_values' must list {NUM_CLASSES} different values, got {value!r}")
    return values, 0.0


PARAM_PARSERS: dict[str, Callable[[Any], Any]] = {
    "generator": lambda v: one_of("generator", v, GENERATOR_CHOICES),
    "solver": lambda v: one_of("solver", v, SOLVER_CHOICES),
    "num_inference_steps": lambda v: as_int("num_inference_steps", v, 0, 1000),
    "guidance_scale": lambda v: as_float("guidance_scale", v, 0.0, 100.0),
    "seed": lambda v: as_int("seed", v, 0, 2**63 - 1),
    "mask_values": _mask_values,
}


class GleasonLDMInfer(BasicInferTask):
    """Mask -> tile with the registry's generators; the networks of the last few settings stay loaded.

    Args:
        bundles: the bundles folder holding ``gleason_ldm`` and ``gleason_ldm_disc``.
        max_size: largest mask side served (a guard against requests that would take hours on a CPU).
        cache_size: how many (generator, steps, guidance) settings keep their loaded networks.
    """

    def __init__(self, bundles: str | os.PathLike, max_size: int = 1024, cache_size: int = 4) -> None:
        self.bundles = Path(bundles)
        self.max_size = int(max_size)
        self.cache_size = int(cache_size)
        self._generators: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        # the first-stage and SD weights every generator needs; the fine-tuned weights (GD, DISC) come after them
        models = self.bundles / "gleason_ldm" / "models"
        self._required = [models / name for name in ("autoencoder.pt", "model.pt")]
        weights = self._required + sorted(models.glob("model_*.pt"))
        weights += sorted((self.bundles / "gleason_ldm_disc" / "models").glob("*.pt"))
        super().__init__(
            path=[str(p) for p in weights],
            network=None,
            type="generator",
            labels={name: i for i, name in enumerate(LABEL_NAMES)},
            dimension=2,
            description="Paint an H&E tile from a Gleason mask ("
            + ", ".join(e.display for e in GENERATORS.values())
            + ")",
            config=dict(INFER_DEFAULTS),
        )

    def is_valid(self) -> bool:
        return all(p.is_file() for p in self._required)

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict]:
        with http_errors("gleason_ldm"):
            if "location" in request or "tile_size" in request:
                raise ValueError("takes an uploaded mask on POST /infer/gleason_ldm, not a wsi_v2 region")
            request = {**request, "gleason_ldm": check_params(request, PARAM_PARSERS, INFER_DEFAULTS, SERVER_KEYS)}
            return super().__call__(request, callbacks)

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        values, distance = data["gleason_ldm"]["mask_values"]
        return [
            LoadPILImaged("image", mode="L"),
            SnapMaskToLabelsd("image", values=values, labels=tuple(range(NUM_CLASSES)), max_distance=distance),
        ]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return []

    def generator(self, name: str, num_inference_steps: int, guidance_scale: float, solver: str = "default") -> Any:
        """The loaded generator of these settings (loaded once, kept among the last ``cache_size``); steps 0 and
        solver ``"default"`` are the generator's own (its registry entry's)."""
        key = (name, num_inference_steps, guidance_scale, solver)
        if key not in self._generators:
            self._generators[key] = load_generator(
                name,
                self.bundles,
                num_inference_steps=num_inference_steps or None,
                guidance_scale=guidance_scale,
                solver=None if solver == "default" else solver,
            )
            while len(self._generators) > self.cache_size:
                self._generators.popitem(last=False)
        self._generators.move_to_end(key)
        return self._generators[key]

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        params = data["gleason_ldm"]
        mask = torch.as_tensor(data["image"]).reshape(data["image"].shape[-2:]).long()
        with self._lock:  # a sampler's scheduler holds its timestep grid: one sampling at a time
            generator = self.generator(
                params["generator"], params["num_inference_steps"], params["guidance_scale"], params["solver"]
            )
            multiple = generator.size_multiple
            h, w = mask.shape
            if h % multiple or w % multiple or max(h, w) > self.max_size:
                raise ValueError(
                    f"mask of {h} x {w} px: the autoencoder and denoiser take sides that are multiples of "
                    f"{multiple} px, at most {self.max_size} px"
                )
            tiles = generator.sample(mask[None], seeds=[params["seed"]])
        data[self.output_label_key] = to_uint8(tiles[0])
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        fd, path = tempfile.mkstemp(suffix=".png", prefix="gleason_ldm_")
        os.close(fd)
        save_picture(data[self.output_label_key], path)
        params = data["gleason_ldm"]
        info = {k: params[k] for k in ("generator", "solver", "num_inference_steps", "guidance_scale", "seed")}
        return path, {**info, "size": list(data[self.output_label_key].shape[:2])}


class GleasonLDMConfig(TaskConfig):
    """The ``gleason_ldm`` model of the app (inference only: the generators train through their bundles)."""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.bundle_path = str(bundles_dir(conf))
        self.labels = {name: i for i, name in enumerate(LABEL_NAMES)}

    def infer(self) -> InferTask | dict[str, InferTask]:
        return GleasonLDMInfer(self.bundle_path, max_size=int(self.conf.get("gleason_ldm_max_size", 1024)))

    def trainer(self) -> TrainTask | None:
        return None
