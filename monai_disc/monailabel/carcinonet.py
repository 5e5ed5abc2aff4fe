"""MONAI Label model ``carcinonet``: Gleason segmentation of tiles and whole-slide regions, trained on user labels.

One implementation with the ``carcinonet`` bundle: the network factory, the preprocessing and the
postprocessing come from the bundle's ``configs/inference.yaml``, the training pipeline and loss from its
``configs/train.yaml``, and the first weights are the bundle's ``models/model.pt``.

- ``POST /infer/carcinonet`` (a tile of the datastore or an uploaded PNG/JPEG/TIFF tile) -> an 8-bit PNG label
  map of the tile's size: 0 NC, 1 GG3, 2 GG4, 3 GG5.
- ``POST /infer/wsi_v2/carcinonet`` (a region of a whole slide, level 0) -> polygons per grade (NC is the
  background and gets none), as QuPath's MONAI Label extension expects.
- ``POST /train/carcinonet`` -> fine-tunes the latest weights on the datastore's final labels (8-bit PNG label
  maps 0..3, the folder format of :mod:`monai_disc.data.folder`); each run writes its own weight version under
  ``<model_dir>/carcinonet/<run name>/`` and publishes the best one as ``<model_dir>/carcinonet.pt``, which
  inference picks up at its next request. Labels are only read.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.config import KeysCollection
from monai.data import DataLoader, MetaTensor, WSIReader
from monai.inferers import SimpleInferer
from monai.transforms import AsDiscreted, MapTransform, RandSpatialCropd, SqueezeDimd, ToNumpyd
from monai.utils import optional_import
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.transform.writer import PolygonWriter
from monailabel.utils.others.label_colors import get_color
from PIL import Image
from scipy.ndimage import binary_fill_holes
from skimage.measure import approximate_polygon, find_contours

from monai_disc.engines.evaluation import labelled_tile_transforms
from monai_disc.labels import LABEL_COLORS, LABEL_NAMES, NUM_CLASSES, GleasonLabel
from monai_disc.monailabel.checks import ClientError
from monai_disc.monailabel.task_params import (
    SERVER_KEYS,
    WSI_KEYS,
    as_float,
    as_int,
    bundle_config,
    bundles_dir,
    check_params,
    http_errors,
)
from monai_disc.transforms import LoadPILImaged
from monai_disc.visualize import save_picture

openslide, _ = optional_import("openslide")

__all__ = [
    "CarcinoNetConfig",
    "CarcinoNetInfer",
    "CarcinoNetTrain",
    "GradePolygonsd",
    "LoadSlideRegiond",
    "is_slide",
]

logger = logging.getLogger(__name__)

#: grades drawn as polygons and listed in /info; NC (0) is the background
GRADE_LABELS: dict[str, int] = {name: int(GleasonLabel[name]) for name in LABEL_NAMES if GleasonLabel[name] != 0}
GRADE_COLORS: dict[str, tuple[int, int, int]] = {name: LABEL_COLORS[GleasonLabel[name]] for name in GRADE_LABELS}
PUBLISHED_NAME = "carcinonet.pt"


def is_slide(path: str | os.PathLike) -> bool:
    """True when OpenSlide recognises ``path`` as a whole slide (a pyramidal or tiled TIFF, SVS, NDPI, ...)."""
    if openslide is None or not os.path.isfile(path):
        return False
    try:
        return openslide.OpenSlide.detect_format(os.fspath(path)) is not None
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a slide
        return False


class LoadSlideRegiond(MapTransform):
    """Read the request's region of a whole slide as a channel-first float32 RGB MetaTensor (3, H, W).

    The region is the one of a ``wsi_v2`` request: ``location`` (x, y) of its top-left pixel and ``size``
    (width, height), both at level 0, read at level 0 through MONAI's ``WSIReader`` (OpenSlide). The result
    matches what :class:`monai_disc.transforms.LoadPILImaged` gives for a tile file, so the bundle's
    preprocessing after its loader applies unchanged.

    Args:
        keys: key of the slide path.
        location_key: key of the region's (x, y).
        size_key: key of the region's (width, height).
        level_key: key of the pyramid level (only 0 is served: the network works at the slide's base resolution).

    Raises (when called):
        ValueError: a level other than 0, an empty region or one outside the slide (the message says which).
    """

    def __init__(
        self,
        keys: KeysCollection,
        location_key: str = "location",
        size_key: str = "size",
        level_key: str = "level",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.location_key, self.size_key, self.level_key = location_key, size_key, level_key
        self.reader = WSIReader(backend="openslide", channel_dim=0)

    def __call__(self, data: Any) -> dict[str, Any]:
        d = dict(data)
        level = as_int("level", d.get(self.level_key, 0) or 0)
        if level != 0:
            raise ValueError(f"wsi_v2 regions are read at level 0 only, got level {level}")
        x, y = (as_int("location", v, low=0) for v in d.get(self.location_key, (0, 0)))
        w, h = (as_int("size", v, low=1) for v in d[self.size_key])
        for key in self.key_iterator(d):
            path = d[key]
            slide = self.reader.read(path)
            width, height = self.reader.get_size(slide, 0)[::-1]
            if x + w > width or y + h > height:
                raise ValueError(
                    f"region x={x} y={y} w={w} h={h} lies outside slide {Path(path).name} of {width} x {height} px"
                )
            region, _ = self.reader.get_data(slide, location=(y, x), size=(h, w), level=0, mode="RGB")
            d[key] = MetaTensor(torch.as_tensor(np.asarray(region, dtype=np.float32)), meta={"filename_or_obj": path})
        return d


class GradePolygonsd(MapTransform):
    """A label map (H, W) -> one outline polygon per connected region of each grade, in slide coordinates.

    MONAI Label's ``FindContoursd`` lists the outline of every hole as one more polygon of the region's grade,
    which QuPath then draws as a region of that grade. Here holes are filled first, so each polygon outlines
    one region; a region of another grade inside it is its own polygon, drawn on top.

    The result has the structure MONAI Label's ``PolygonWriter`` and ``wsi_v2`` merging read:
    ``d[result]["annotation"] = {"location", "size", "elements": [{"label": name, "contours": [[[x, y], ...]]}],
    "labels": {name: colour}}``, points at level 0 (``location`` of the request added, clipped to the region).

    Args:
        keys: key of the label map.
        labels: grade name -> label value; values not listed (NC) get no polygon.
        colors: grade name -> RGB colour shown by clients.
        min_poly_area: smallest polygon area in px (a request's ``min_poly_area`` wins).
        tolerance: polygon simplification tolerance in px (``skimage.measure.approximate_polygon``).
        result: key of the result dictionary.
    """

    def __init__(
        self,
        keys: KeysCollection,
        labels: Mapping[str, int],
        colors: Mapping[str, Sequence[int]] | None = None,
        min_poly_area: float = 80,
        tolerance: float = 0.5,
        result: str = "result",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.labels = dict(labels)
        self.colors = dict(colors or {})
        self.min_poly_area = float(min_poly_area)
        self.tolerance = float(tolerance)
        self.result = result

    def polygons(self, region: np.ndarray) -> list[np.ndarray]:
        """Outlines (N, 2) as (x, y) pixel positions of the connected parts of a boolean mask, holes filled."""
        filled = np.pad(binary_fill_holes(region), 1)
        h, w = region.shape
        out = []
        for contour in find_contours(filled.astype(np.float32), 0.5):
            contour = approximate_polygon(contour - 1.0, self.tolerance)
            if len(contour) < 4:  # closed outlines repeat their first point: fewer than 3 corners
                continue
            rows = np.clip(np.round(contour[:, 0]), 0, h - 1)
            cols = np.clip(np.round(contour[:, 1]), 0, w - 1)
            out.append(np.stack([cols, rows], axis=1).astype(np.int64))
        return out

    def __call__(self, data: Any) -> dict[str, Any]:
        d = dict(data)
        x0, y0 = (int(v) for v in d.get("location", (0, 0)))
        min_area = float(d.get("min_poly_area", self.min_poly_area) or 0)
        for key in self.key_iterator(d):
            labels = np.asarray(d[key])
            elements, names = [], []
            for name, value in self.labels.items():
                for xy in self.polygons(labels == value):
                    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
                    if 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) < min_area:
                        continue
                    elements.append({"label": name, "contours": [(xy + (x0, y0)).tolist()]})
                    names.append(name)
            if elements:
                d.setdefault(self.result, {})["annotation"] = {
                    "location": d.get("location"),
                    "size": d.get("size"),
                    "elements": elements,
                    "labels": {n: get_color(n, self.colors) for n in dict.fromkeys(names)},
                }
        return d


class CarcinoNetInfer(BasicInferTask):
    """Tile and region inference with the carcinonet bundle's network, transforms and (latest) weights.

    Args:
        bundle: the carcinonet bundle folder.
        published: where training publishes new weights; used once it exists.
        min_poly_area: default smallest polygon area (px) of region results.
    """

    def __init__(self, bundle: str | os.PathLike, published: str | os.PathLike, min_poly_area: int = 80) -> None:
        parser = bundle_config(bundle, "inference")
        preprocessing = list(parser.get_parsed_content("preprocessing").flatten().transforms)
        if not preprocessing or not isinstance(preprocessing[0], LoadPILImaged):
            raise ValueError(f"{bundle}: configs/inference.yaml preprocessing must start with LoadPILImaged")
        self._loader, self._preprocessing = preprocessing[0], preprocessing[1:]
        self._postprocessing = parser.get_parsed_content("postprocessing")
        super().__init__(
            path=[str(parser.get_parsed_content("ckpt_path")), os.fspath(published)],
            network=parser.get_parsed_content("network_def"),
            type=InferType.SEGMENTATION,
            labels=dict(GRADE_LABELS),
            dimension=2,
            description="CarcinoNet Gleason segmentation (GG3, GG4, GG5; NC is the background)",
            # multi_gpu off without GPUs: MONAI Label 0.8.5 would split a region over an empty GPU list
            config={
                "label_colors": dict(GRADE_COLORS),
                "min_poly_area": int(min_poly_area),
                "multi_gpu": torch.cuda.device_count() > 1,
            },
            load_strict=True,
        )

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["pathology"] = True
        return info

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict]:
        with http_errors("carcinonet"):
            check_params(request, {}, {}, allowed=SERVER_KEYS | WSI_KEYS | set(self._config))
            return super().__call__(request, callbacks)

    @staticmethod
    def _is_region(data: dict[str, Any]) -> bool:
        return "location" in data or "size" in data

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        data = data or {}
        if self._is_region(data) and is_slide(data.get("image", "")):
            return [LoadSlideRegiond("image"), *self._preprocessing]
        if is_slide(data.get("image", "")):
            raise ValueError("the image is a whole slide: segment regions of it with POST /infer/wsi_v2/carcinonet")
        if self._is_region(data):  # a plain tile sent to wsi_v2: the whole tile, at the origin
            data["location"], data["size"] = [0, 0], [0, 0]
        return [self._loader, *self._preprocessing]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        steps: list[Callable] = [self._postprocessing, ToNumpyd("pred"), SqueezeDimd("pred", dim=0)]
        if data is not None and self._is_region(data):
            steps.append(GradePolygonsd("pred", labels=self.labels, colors=GRADE_COLORS))
        return steps

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        if self._is_region(data):
            return PolygonWriter(label=self.output_label_key, json=self.output_json_key)(data)
        labels = np.asarray(data[self.output_label_key]).astype(np.uint8)
        fd, path = tempfile.mkstemp(suffix=".png", prefix="carcinonet_")
        os.close(fd)
        save_picture(labels, path)
        return path, {"shape": list(labels.shape), "labels": {n: i for i, n in enumerate(LABEL_NAMES)}}


class CarcinoNetTrain(BasicTrainTask):
    """Fine-tuning of the latest CarcinoNet weights on the datastore's final labels (0..3 PNG label maps).

    Request parameters (also the defaults shown in /info): ``max_epochs``, ``train_batch_size`` (at least 2:
    the network's batch norm after a 1x1 pooled grid needs two samples; smaller last batches are dropped),
    ``learning_rate`` (Adam, with the bundle's weight decay), ``val_split`` (share of labelled tiles kept for
    validation; the best validation Dice is published, or the best training Dice without validation), ``name``
    (the run folder; default ``run_<date>_<time>``, so every run keeps its own weight version).

    Args:
        bundle: the carcinonet bundle folder.
        model_dir: folder of the run folders (``<model_dir>/<run name>/model.pt``) and ``train_stats.json``.
        published: the file new weights are published to (what inference reads once it exists).
    """

    def __init__(self, bundle: str | os.PathLike, model_dir: str | os.PathLike, published: str | os.PathLike) -> None:
        self._bundle = Path(bundle)
        self._published = os.fspath(published)
        # MONAI Label copies new weights in place; they go to a staging file that one rename then publishes,
        # so inference never loads a half-copied file
        staging = os.path.join(os.path.dirname(self._published), f".{os.path.basename(self._published)}.staging")
        parser = bundle_config(bundle, "train")
        self._weight_decay = float(parser.get_parsed_content("weight_decay"))
        #: side training crops tiles to (brought down to the smallest labelled tile)
        self.patch_size = int(parser.get_parsed_content("patch_size"))
        self._loss = parser.get_parsed_content("loss")
        self._train_transforms = parser.get_parsed_content("synthetic_preprocessing")  # the folder-format pipeline
        bundle_weights = bundle_config(bundle, "inference").get_parsed_content("ckpt_path")
        super().__init__(
            model_dir=os.fspath(model_dir),
            description="Fine-tune CarcinoNet on the final labels (8-bit PNG label maps 0..3)",
            config={
                "max_epochs": 10,
                "train_batch_size": 4,
                "val_batch_size": 1,
                "learning_rate": 1e-4,
                "val_split": 0.2,
                "multi_gpu": False,
                "dataset": "CacheDataset",
                "dataloader": "DataLoader",
                "tracking": "None",
            },
            amp=torch.cuda.is_available(),
            load_path=str(bundle_weights),
            publish_path=staging,
            labels=dict(GRADE_LABELS),
            n_saved=1,
            tracking=None,
        )
        self._config.pop("name", None)  # each run gets its own folder unless the request names one

    def check_request(self, request: Mapping[str, Any], datastore: Any) -> dict[str, Any]:
        """The training request with its parameters parsed, and the datastore's labels checked, before any run.

        Raises:
            ClientError: 400 for an unknown or invalid parameter (named), or labels training cannot use (the file
                and the problem named).
        """
        known = set(self._config) | {"name", "model"}
        unknown = sorted(k for k in request if k not in known)
        if unknown:
            raise ClientError(400, f"carcinonet: unknown training parameter(s) {unknown}; it takes {sorted(known)}")
        try:
            request = self.parse_request(request)
        except ValueError as err:
            raise ClientError(400, str(err)) from None
        self._check_labels(datastore, request["val_split"])
        return request

    def parse_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request with ``name`` set and every training parameter parsed and in range.

        ``train_batch_size`` below 2 is raised to 2 (QuPath's Train dialog offers 1; CarcinoNet's pyramid-pooling
        batch norm needs two samples).

        Raises:
            ValueError: an invalid value (the message names the parameter).
        """
        request = dict(request)
        name = str(request.setdefault("name", time.strftime("run_%Y%m%d_%H%M%S")))
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
            raise ValueError(f"carcinonet: run name {name!r} must be a plain folder name (letters, digits, . _ -)")
        params = {**self._config, **request}
        try:
            batch = as_int("train_batch_size", params["train_batch_size"], low=1)
            if batch < 2:
                logger.info(f"carcinonet: train_batch_size {batch} raised to 2 (the network's batch norm needs two)")
            request["train_batch_size"] = max(batch, 2)
            for key, low in (("max_epochs", 1), ("val_batch_size", 1)):
                request[key] = as_int(key, params[key], low=low)
            request["learning_rate"] = as_float("learning_rate", params["learning_rate"], low=0.0)
            request["val_split"] = as_float("val_split", params["val_split"], low=0.0, high=0.9)
        except ValueError as err:
            raise ValueError(f"carcinonet: {err}") from None
        return request

    def _check_labels(self, datastore: Any, val_split: float) -> None:
        datalist = datastore.datalist()
        for item in datalist:
            label, image = Path(item["label"]), Path(item["image"])
            try:
                with Image.open(label) as im:
                    values = np.asarray(im)
                with Image.open(image) as im:
                    size = im.size
            except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
                raise ClientError(
                    400, f"carcinonet: cannot read label {label.name} or image {image.name}: {err}"
                ) from None
            wrong = sorted({int(v) for v in np.unique(values)} - set(range(NUM_CLASSES)))
            if values.ndim != 2 or wrong or values.shape[::-1] != size:
                raise ClientError(
                    400,
                    f"carcinonet: label {label} is not a single-channel map of values 0..{NUM_CLASSES - 1} of its "
                    f"image's {size[0]} x {size[1]} px (found shape {values.shape}, values {wrong or 'ok'})",
                )
        n_train = len(datalist) - (round(len(datalist) * val_split) if val_split > 0 else 0)
        if n_train < 2:
            raise ClientError(
                400,
                f"carcinonet: training needs at least 2 tiles with final labels after val_split {val_split}; "
                f"the datastore holds {len(datalist)} labelled tile(s)",
            )

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        return super().__call__(self.parse_request(request), datastore)

    def network(self, context: Context) -> torch.nn.Module:
        return bundle_config(self._bundle, "train").get_parsed_content("network_def")

    def optimizer(self, context: Context) -> torch.optim.Optimizer:
        lr = as_float("learning_rate", context.request["learning_rate"], low=0.0)
        return torch.optim.Adam(context.network.parameters(), lr=lr, weight_decay=self._weight_decay)

    def loss_function(self, context: Context) -> Callable:
        return self._loss

    def load_path(self, output_dir: str, pretrained: bool = True) -> str | None:
        """The weights training starts from: the latest published version, else the bundle's."""
        if os.path.exists(self._published):
            return self._published
        return self._load_path if pretrained else None

    def finalize(self, context: Context) -> None:
        super().finalize(context)
        if context.local_rank == 0:
            engine = context.evaluator or context.trainer
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)  # after MONAI Label's publisher

    def _publish(self, engine: Any = None) -> None:
        if os.path.exists(self._publish_path):
            os.replace(self._publish_path, self._published)
            logger.info(f"published {self._published}")

    def pre_process(self, request: dict[str, Any], datastore: Any) -> list[dict[str, Any]]:
        datalist = datastore.datalist()
        if not datalist:
            raise ValueError("carcinonet: the datastore holds no final labels to train on")
        return datalist

    def partition_datalist(self, context: Context, shuffle: bool = False) -> tuple[list, list]:
        context.request["val_split"] = as_float("val_split", context.request.get("val_split", 0.0), 0.0, 0.9)
        train, val = super().partition_datalist(context, shuffle=shuffle)
        if len(train) < 2:
            raise ValueError(
                f"carcinonet: training needs at least 2 tiles with final labels, {len(train)} left after "
                f"val_split {context.request['val_split']} of {len(context.datalist)}"
            )
        return train, val

    def train_data_loader(self, context: Context, num_workers: int = 0, shuffle: bool = True) -> DataLoader:
        dataset, datalist = self._dataset(context, context.train_datalist, is_train=True)
        batch_size = min(as_int("train_batch_size", context.train_batch_size, low=2), len(datalist))
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=True, num_workers=num_workers)

    def train_pre_transforms(self, context: Context) -> Any:
        """The bundle's training pipeline, its crop brought down to the smallest labelled tile side (tiles of
        several sizes, such as QuPath's patches, then share batches)."""
        sides = []
        for item in context.train_datalist:
            with Image.open(item["image"]) as im:
                sides.append(min(im.size))
        side = min([self.patch_size, *sides])
        for t in self._train_transforms.transforms:
            if isinstance(t, RandSpatialCropd):
                t.cropper.roi_size = (side, side)
        if side < self.patch_size:
            logger.info(
                f"carcinonet: training crops of {side} px (the smallest labelled tile; patch_size {self.patch_size})"
            )
        return self._train_transforms

    def val_pre_transforms(self, context: Context) -> Any:
        return labelled_tile_transforms("folder")

    def train_post_transforms(self, context: Context) -> list[Callable]:
        return [AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=NUM_CLASSES)]

    def val_inferer(self, context: Context) -> SimpleInferer:
        return SimpleInferer()


class CarcinoNetConfig(TaskConfig):
    """The ``carcinonet`` model of the app: the bundle from ``--conf bundles`` (default: the repository's)."""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.bundle_path = str(bundles_dir(conf) / "carcinonet")
        self.labels = dict(GRADE_LABELS)
        self.label_colors = dict(GRADE_COLORS)
        self.published = os.path.join(model_dir, PUBLISHED_NAME)
        self.path = [str(Path(self.bundle_path) / "models" / "model.pt"), self.published]

    def infer(self) -> InferTask | dict[str, InferTask]:
        return CarcinoNetInfer(self.bundle_path, self.published, min_poly_area=int(self.conf.get("min_poly_area", 80)))

    def trainer(self) -> TrainTask | None:
        return CarcinoNetTrain(self.bundle_path, os.path.join(self.model_dir, self.name), self.published)
