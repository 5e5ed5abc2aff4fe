"""The MONAI Label app: ``monailabel start_server --app <this folder> --studies DIR [--conf key value ...]``.

Conf keys (``--conf key value``):
    models: comma-separated models to serve, from ``carcinonet``, ``gleason_ldm`` (default: both).
    bundles: the bundles folder with the weights (default: this repository's ``bundles/``).
    model_dir: where trained weights go (default: ``<studies>/models``); the bundles are never written.
    min_poly_area: default smallest polygon (px) of ``wsi_v2`` results (default 80).
    gleason_ldm_max_size: largest mask side ``gleason_ldm`` accepts (default 1024).
    max_region_pixels, max_region_tiles, infer_workers, region_workers, base_mpp: what one request may ask for and
        how much runs at once (:class:`monai_disc.monailabel.checks.ServerLimits`).

The HTTP routes of :mod:`monai_disc.monailabel.server` (requests checked first, work off the event loop) are put in
front of MONAI Label's when the server starts.
"""

from __future__ import annotations

import logging
import os
import sys

import monailabel
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from monai_disc.monailabel import DEFAULT_MODELS
from monai_disc.monailabel.carcinonet import GRADE_LABELS, CarcinoNetConfig
from monai_disc.monailabel.checks import ServerLimits
from monai_disc.monailabel.gleason_ldm import GleasonLDMConfig

__all__ = ["MODEL_CONFIGS", "MONAIDiscApp"]

logger = logging.getLogger(__name__)

MODEL_CONFIGS: dict[str, type[TaskConfig]] = {"carcinonet": CarcinoNetConfig, "gleason_ldm": GleasonLDMConfig}
# slides and tiles the datastore lists besides MONAI Label's defaults
EXTRA_EXTENSIONS: tuple[str, ...] = ("*.tiff", "*.jpeg", "*.svs", "*.ndpi", "*.mrxs")


class MONAIDiscApp(MONAILabelApp):
    """CarcinoNet segmentation (tiles, slide regions, training) and gleason_ldm (mask -> tile).

    Args:
        app_dir: this folder.
        studies: the datastore folder (images, and labels under ``labels/``).
        conf: the ``--conf`` pairs (see the module docstring).

    Raises:
        ValueError: an unknown model name in ``conf["models"]``.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        names = [m.strip() for m in (conf.get("models") or ",".join(DEFAULT_MODELS)).split(",") if m.strip()]
        unknown = [m for m in names if m not in MODEL_CONFIGS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; this app serves {list(MODEL_CONFIGS)}")
        self.limits = ServerLimits.from_conf(conf)
        local = not studies.startswith(("http://", "https://"))
        self.model_dir = conf.get("model_dir") or os.path.join(studies if local else app_dir, "models")
        os.makedirs(self.model_dir, exist_ok=True)
        self.models: dict[str, TaskConfig] = {}
        for name in names:
            config = MODEL_CONFIGS[name]()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
        logger.info(f"monai_disc models: {list(self.models)}; weights written to {self.model_dir}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"monai_disc - Gleason grading (MONAI Label {monailabel.__version__})",
            description="CarcinoNet Gleason segmentation and mask-conditioned tile synthesis",
            version="0.1.0",
            labels=list(GRADE_LABELS),
        )

    def on_init_complete(self) -> None:
        super().on_init_complete()
        if "monailabel.app" in sys.modules:  # served (not a training subprocess): checked, threaded routes first
            from monai_disc.monailabel.server import install_routes

            install_routes(sys.modules["monailabel.app"].app)
        logger.info(f"request limits: {self.limits}")

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *EXTRA_EXTENSIONS]))
        return LocalDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, config in self.models.items():
            task = config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, config in self.models.items():
            task = config.trainer()
            if task is not None:
                trainers[name] = task
        return trainers
