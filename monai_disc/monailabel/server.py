"""The app's HTTP front: MONAI Label 0.8.5's routes for inference, training, labels and images, checked first and
computed off the event loop.

MONAI Label 0.8.5's endpoints are ``async def`` functions that run inference, file copies and training submission
synchronously, so while one region computes the event loop serves nobody (``/info/`` waited 17-30 s), and a bad
field ends as a 500 from deep inside. The routes here take the same paths, methods and fields (they are matched
before MONAI Label's) and

- check every request before work starts: JSON fields, the model (404 listing the models), the image id, the
  uploaded file, the region against the caps (413 naming the cap and the ``--conf`` key that raises it), label
  values and size, training parameters and labels. A refusal is a 4xx with a one-line ``detail`` naming the
  field, file, image id or model.
- run the work in threads: inference in pools of ``infer_workers`` threads, one for each model's regions and
  one for its tiles (bounded: inference is compute bound, and more at once only queue inside torch; apart, so
  long regions or a generator's long sampling never hold up a tile), everything else (datastore writes, training submission,
  active learning) in anyio's default thread pool, so ``/info/``, datastore calls and small tiles are answered
  while a region runs.

Why threads, not several server processes or a job queue: MONAI Label keeps the loaded networks and the training
state (one training at a time) per process, so several uvicorn workers would hold every network N times and each
would start its own training on the same weights; a job queue would change the answers QuPath waits for (it reads
the ASAP XML from the response). Torch releases the GIL in its kernels, so threads share one copy of the
weights and still compute in parallel.

Serve it with ``monai-disc label-server`` (which passes ``--uvicorn_app monai_disc.monailabel.server:app``); the
app also installs these routes at start-up when MONAI Label's own ``start_server`` serves it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, BackgroundTasks, FastAPI, File, Form, HTTPException, Request, UploadFile
from monailabel.config import settings
from monailabel.endpoints import activelearning as ml_activelearning
from monailabel.endpoints import datastore as ml_datastore
from monailabel.endpoints import infer as ml_infer
from monailabel.endpoints import train as ml_train
from monailabel.endpoints import wsi_infer as ml_wsi_infer
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import remove_file
from pydantic import ValidationError

from monai_disc.labels import LABEL_NAMES
from monai_disc.monailabel.checks import (
    IGNORED_PARAMS,
    ClientError,
    ServerLimits,
    check_label_file,
    check_region,
    image_size,
    json_field,
    label_upload_kind,
    rasterize_asap,
    read_asap,
)
from monai_disc.visualize import save_picture

__all__ = ["install_routes", "router"]

logger = logging.getLogger(__name__)

router = APIRouter()
_LIMITERS: dict[str, anyio.CapacityLimiter] = {}


def _limits(instance: Any) -> ServerLimits:
    return getattr(instance, "limits", None) or ServerLimits()


def _infer_limiter(instance: Any, model: str, kind: str) -> anyio.CapacityLimiter:
    """The limiter of a model's inference pool for ``kind`` ``"regions"`` or ``"tiles"`` (made at first use).

    Each model has a pool of ``infer_workers`` threads for regions and one for tiles, so long regions, or a
    generator's long sampling, never hold up a tile of another pool.

    Raises:
        HTTPException: 404 for an unknown model (no pool is made for it).
    """
    try:
        _infer_task(instance, model)
    except ClientError as err:
        raise _fail(err) from None
    pool = f"{model} {kind}"
    if pool not in _LIMITERS:
        _LIMITERS[pool] = anyio.CapacityLimiter(_limits(instance).infer_workers)
    return _LIMITERS[pool]


def _client_error(err: BaseException) -> ClientError | None:
    """The 4xx a failure inside the work means, or None for a server fault."""
    if isinstance(err, ClientError):
        return err
    if isinstance(err, MONAILabelException) and err.error == MONAILabelError.INVALID_INPUT:
        return ClientError(400, err.msg)
    name = type(err).__name__
    if type(err).__module__.startswith("openslide") or name in ("UnidentifiedImageError", "DecompressionBombError"):
        return ClientError(400, f"cannot read the image: {name}: {err}")
    return None


async def _work(func: Callable[..., Any], *args: Any, limiter: anyio.CapacityLimiter | None = None) -> Any:
    """``func(*args)`` in a worker thread; client errors become their 4xx, HTTP errors pass through."""
    try:
        return await anyio.to_thread.run_sync(partial(func, *args), limiter=limiter)
    except HTTPException:
        raise
    except Exception as err:
        client = _client_error(err)
        if client is None:
            raise
        raise HTTPException(status_code=client.status, detail=client.detail) from err


def _fail(err: ClientError) -> HTTPException:
    return HTTPException(status_code=err.status, detail=err.detail)


def _infer_task(instance: Any, model: str) -> Any:
    tasks = instance._infers
    if model not in tasks:
        raise ClientError(404, f"model {model!r} not found; this server has {sorted(tasks)}")
    return tasks[model]


def _image_path(instance: Any, image: str) -> str:
    path = instance.datastore().get_image_uri(image)
    if not path or not os.path.exists(path):
        raise ClientError(404, f"image {image!r} not found in the datastore {instance.studies}")
    return path


def _save_upload(upload: UploadFile, background_tasks: BackgroundTasks, default_ext: str) -> str:
    """An uploaded file copied to a temporary file (removed after the answer), named with the upload's extension."""
    ext = "".join(Path(upload.filename).suffixes) if upload.filename else default_ext
    fd, path = tempfile.mkstemp(suffix=ext or default_ext)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    background_tasks.add_task(remove_file, path)
    return path


def _output(value: str | None, choices: type) -> Any:
    if value is None:
        return None
    try:
        return choices(value)
    except ValueError:
        raise ClientError(400, f"query 'output' must be one of {[c.value for c in choices]}, got {value!r}") from None


# ----------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------
def _wsi_request(wsi: dict[str, Any], limits: ServerLimits, model: str) -> dict[str, Any]:
    """The ``wsi`` body with the client's interaction fields dropped and the server's region workers set."""
    unknown = sorted(set(wsi) - set(ml_wsi_infer.WSIInput.model_fields))
    if unknown:
        raise ClientError(
            400, f"unknown wsi field(s) {unknown}; a region takes {list(ml_wsi_infer.WSIInput.model_fields)}"
        )
    raw = wsi.get("params") or {}
    if not isinstance(raw, dict):
        raise ClientError(400, f"field 'wsi.params' must be a JSON object, got {raw!r}")
    params = dict(raw)
    dropped = {k: params.pop(k) for k in IGNORED_PARAMS if k in params}
    if dropped:
        logger.info(f"{model}: ignored {sorted(dropped)} (carcinonet takes no clicks; region workers are the server's)")
    params["max_workers"] = limits.region_workers
    try:
        return ml_wsi_infer.WSIInput.model_validate({**wsi, "params": params}).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        raise ClientError(400, f"field 'wsi.{field}': {first.get('msg')}, got {first.get('input')!r}") from None


def _run_wsi(
    background_tasks: BackgroundTasks,
    model: str,
    image: str,
    session_id: str,
    upload: UploadFile | None,
    wsi: dict[str, Any],
    output: str | None,
) -> Any:
    """A region request after its checks (runs in the inference pool)."""
    instance = app_instance()
    _infer_task(instance, model)
    limits = _limits(instance)
    out = _output(output, ml_wsi_infer.ResultType)
    request = _wsi_request(wsi, limits, model)
    if upload is not None and upload.filename:
        path, name = _save_upload(upload, background_tasks, ".png"), upload.filename
    elif image:
        path, name = _image_path(instance, image), f"image {image!r}"
    elif session_id:
        return ml_wsi_infer.run_wsi_inference(
            background_tasks, model, image, session_id, None, ml_wsi_infer.WSIInput(**request), out
        )
    else:
        raise ClientError(400, f"{model}: no image: send image=ID of the datastore or a file")
    width, height, is_slide = image_size(path, name, limits.base_mpp)
    region = check_region(request, width, height, name, limits, is_slide)
    if is_slide:  # MONAI Label reads [0, 0] as the whole slide; the checked region is the same
        request.update(location=region["location"], size=region["size"])
    logger.info(
        f"{model}: region {region['size'][0]} x {region['size'][1]} px at {region['location']} of {name} in "
        f"{region['tiles']} tile(s) of {region['tile_size']} px (caps: {limits.max_region_pixels} px, "
        f"{limits.max_region_tiles} tiles); progress per tile follows"
    )
    try:
        return ml_wsi_infer.run_wsi_inference(
            background_tasks, model, path, "", None, ml_wsi_infer.WSIInput(**request), out
        )
    except Exception as err:  # a tile the slide cannot decode: the slide is named
        if type(err).__module__.startswith("openslide"):
            raise ClientError(400, f"cannot read slide {name}: {type(err).__name__}: {err}") from err
        raise


@router.post("/infer/wsi/{model}", include_in_schema=False)
async def infer_wsi(
    request: Request,
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    output: str | None = None,
) -> Any:
    """QuPath's region request when the server holds the image: the ``wsi`` fields as a JSON body."""
    return await _region(background_tasks, model, image, session_id, None, "body", await request.body(), output)


@router.post("/infer/wsi_v2/{model}")
async def infer_wsi_v2(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    file: UploadFile = File(None),  # noqa: B008 - FastAPI declares form fields by defaults
    wsi: str = Form("{}"),
    output: str | None = None,
) -> Any:
    """A region of a datastore slide (``image``) or of an uploaded file; ``wsi`` is a JSON form field."""
    return await _region(background_tasks, model, image, session_id, file, "wsi", wsi, output)


async def _region(
    background_tasks: BackgroundTasks,
    model: str,
    image: str,
    session_id: str,
    upload: UploadFile | None,
    field: str,
    wsi: str | bytes,
    output: str | None,
) -> Any:
    """Both region doors: the ``wsi`` fields parsed as JSON (a 400 naming ``field`` otherwise), then the region on
    the model's region pool."""
    try:
        parsed = json_field(field, wsi)
    except ClientError as err:
        raise _fail(err) from None
    limiter = _infer_limiter(app_instance(), model, "regions")
    return await _work(_run_wsi, background_tasks, model, image, session_id, upload, parsed, output, limiter=limiter)


def _run_infer(
    background_tasks: BackgroundTasks,
    model: str,
    image: str,
    session_id: str,
    params: dict[str, Any],
    file: UploadFile | None,
    label: UploadFile | None,
    output: str | None,
) -> Any:
    instance = app_instance()
    _infer_task(instance, model)
    out = _output(output, ml_infer.ResultType)
    if out == ml_infer.ResultType.dicom_seg:
        raise ClientError(400, "query 'output' dicom_seg needs a DICOM datastore; use image or json")
    if not (file and file.filename) and not image and not session_id:
        raise ClientError(400, f"{model}: no input: send a file (multipart 'file') or image=ID of the datastore")
    if image and not (file and file.filename):
        _image_path(instance, image)
    return ml_infer.run_inference(background_tasks, model, image, session_id, json.dumps(params), file, label, out)


@router.post("/infer/{model}")
async def infer(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),  # noqa: B008 - FastAPI declares form fields by defaults
    label: UploadFile = File(None),  # noqa: B008 - FastAPI declares form fields by defaults
    output: str | None = None,
) -> Any:
    """A tile of the datastore (``image``) or an uploaded file; ``params`` is a JSON form field."""
    try:
        parsed = json_field("params", params)
    except ClientError as err:
        raise _fail(err) from None
    instance = app_instance()
    return await _work(
        _run_infer, background_tasks, model, image, session_id, parsed, file, label, output,
        limiter=_infer_limiter(instance, model, "tiles"),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# training, active learning
# ----------------------------------------------------------------------------------------------
def _run_train(model: str, params: dict[str, Any], run_sync: bool, enqueue: bool) -> Any:
    instance = app_instance()
    trainers = instance._trainers
    if model not in trainers:
        raise ClientError(404, f"model {model!r} has no training; trainers: {sorted(trainers)}")
    check = getattr(trainers[model], "check_request", None)
    if check is not None:  # what the training subprocess would refuse, refused before it starts
        params = check(params, instance.datastore())
    return ml_train.run_model(model, params, run_sync, enqueue)


@router.post("/train/{model}")
async def train(request: Request, model: str, run_sync: bool = False, enqueue: bool = False) -> Any:
    """Start training ``model``; parameters as a JSON body (QuPath sends max_epochs and the batch sizes)."""
    try:
        params = json_field("body", await request.body())
    except ClientError as err:
        raise _fail(err) from None
    return await _work(_run_train, model, params, run_sync, enqueue)


def _run_sample(strategy: str, params: dict[str, Any], user: str | None) -> Any:
    instance = app_instance()
    strategies = instance._strategies
    if strategy not in strategies:
        raise ClientError(404, f"strategy {strategy!r} not found; this server has {sorted(strategies)}")
    return ml_activelearning.sample(strategy, params, user)


@router.post("/activelearning/{strategy}")
async def activelearning(request: Request, strategy: str) -> Any:
    """The next image to label (QuPath's Next Sample): ``{id, path, ...}``."""
    try:
        params = json_field("body", await request.body())
    except ClientError as err:
        raise _fail(err) from None
    return await _work(_run_sample, strategy, params, None)


# ----------------------------------------------------------------------------------------------
# datastore
# ----------------------------------------------------------------------------------------------
def _span(low: float, high: float, least: int, limit: int) -> tuple[int, int]:
    """[start, stop) around [low, high], widened about its centre to ``least`` px, kept within [0, limit)."""
    start, stop = max(0, int(np.floor(low))), min(limit, int(np.ceil(high)))
    width = max(stop - start, min(least, limit))
    start = min(max(0, (start + stop - width) // 2), max(0, limit - width))
    return start, min(limit, start + width)


def _slide_patch(
    instance: Any, image: str, path: str, polygons: list, name: str
) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The slide region the polygons cover (at least a training patch), added to the datastore as a PNG tile
    (named as QuPath names patches).

    Returns:
        the new image id, the patch's level-0 top-left (x, y) and its (width, height).
    """
    import openslide

    points = np.concatenate([p for _, p in polygons])
    trainer = instance._trainers.get("carcinonet")
    least = int(getattr(trainer, "patch_size", 1))  # a training patch at least, so tiles can share batches
    with openslide.OpenSlide(path) as slide:
        width, height = slide.dimensions
        (x0, x1), (y0, y1) = (
            _span(points[:, i].min(), points[:, i].max(), least, n) for i, n in enumerate((width, height))
        )
        if x1 - x0 < 1 or y1 - y0 < 1 or points[:, 0].min() >= width or points[:, 1].min() >= height:
            raise ClientError(400, f"label {name}: its polygons lie outside slide {image!r} of {width} x {height} px")
        w, h = x1 - x0, y1 - y0
        check_region({"location": [x0, y0], "size": [w, h], "tile_size": [w, h]}, width, height, f"slide {image!r}",
                     _limits(instance), True)  # fmt: skip
        rgb = np.asarray(slide.read_region((x0, y0), 0, (w, h)).convert("RGB"))
    fd, png = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        save_picture(rgb, png)
        patch = f"{image}-patch-{x0}_{y0}_{w}_{h}"
        info = {"source": image, "location": [x0, y0], "size": [w, h]}
        return instance.datastore().add_image(patch, png, info), (x0, y0), (w, h)
    finally:
        remove_file(png)


def _run_save_label(
    background_tasks: BackgroundTasks, image: str, params: dict[str, Any], tag: str, label: UploadFile
) -> Any:
    instance = app_instance()
    path = _image_path(instance, image)
    width, height, is_slide = image_size(path, f"image {image!r}", _limits(instance).base_mpp)
    upload = _save_upload(label, background_tasks, ".png")
    name = label.filename or "label"
    values = {n: i for i, n in enumerate(LABEL_NAMES)}  # NC 0, GG3 1, GG4 2, GG5 3
    target = image
    if label_upload_kind(upload) == "xml":
        polygons = read_asap(upload, values, name)
        offset: tuple[int, int] = (0, 0)
        if is_slide:  # carcinonet trains on tiles: the annotated region becomes one
            target, offset, (width, height) = _slide_patch(instance, image, path, polygons, name)
        labels = rasterize_asap(polygons, width, height, offset)
    else:
        labels = check_label_file(upload, name, image, (width, height), sorted(set(values.values())))
    fd, png = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    save_picture(np.ascontiguousarray(labels), png)
    background_tasks.add_task(remove_file, png)
    label_id = instance.datastore().save_label(target, png, tag or "final", params)
    result = instance.on_save_label(target, label_id) or {}
    return {**result, "image": target, "label": label_id, **({"source": image} if target != image else {})}


@router.put("/datastore/label")
async def save_label(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = Form("{}"),
    tag: str = "final",
    label: UploadFile = File(...),  # noqa: B008 - FastAPI declares form fields by defaults
) -> Any:
    """A final label of a datastore image: a label map (0 NC, 1 GG3, 2 GG4, 3 GG5) or QuPath's ASAP XML.

    An ASAP XML label of a whole slide (QuPath's Submit Label on an image the server holds) becomes a new tile,
    ``<image>-patch-<x>_<y>_<w>_<h>``: the slide region its polygons cover, with their label map.
    """
    try:
        parsed = json_field("params", params)
    except ClientError as err:
        raise _fail(err) from None
    return await _work(_run_save_label, background_tasks, image, parsed, tag, label)


@router.put("/datastore/image")
async def add_image(
    background_tasks: BackgroundTasks,
    image: str | None = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),  # noqa: B008 - FastAPI declares form fields by defaults
) -> Any:
    """A new datastore image (QuPath uploads a patch as PNG)."""
    try:
        json_field("params", params)
    except ClientError as err:
        raise _fail(err) from None
    return await _work(ml_datastore.add_image, background_tasks, image, params, file, None)


# ----------------------------------------------------------------------------------------------
# installing
# ----------------------------------------------------------------------------------------------
def install_routes(app: FastAPI) -> None:
    """Put this module's routes in front of MONAI Label's own on ``app`` (once; later calls do nothing)."""
    if getattr(app.state, "monai_disc_routes", False):
        return
    before = len(app.router.routes)
    app.include_router(router, prefix=settings.MONAI_LABEL_API_STR)
    ours = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = ours
    changed = getattr(app.router, "_mark_routes_changed", None)  # FastAPI >= 0.16x caches its route tables
    if changed is not None:
        changed()
    app.state.monai_disc_routes = True
    logger.info(f"monai_disc routes in front of MONAI Label's: {sorted({r.path for r in router.routes})}")


def _served_app() -> FastAPI:
    from monailabel.app import app as monailabel_app

    install_routes(monailabel_app)
    return monailabel_app


#: what ``uvicorn`` serves (``--uvicorn_app monai_disc.monailabel.server:app``): MONAI Label's app with these routes
app = _served_app()
