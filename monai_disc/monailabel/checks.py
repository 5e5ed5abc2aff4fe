"""Checks a request passes before the server starts work on it: region size against the caps, readable images,
label files, JSON fields.

Every failure is a :class:`ClientError` carrying an HTTP status (400 wrong input, 404 unknown name, 413 too much
work) and a one-line reason naming the field, file, image id or model. Nothing here imports FastAPI or MONAI
Label; :mod:`monai_disc.monailabel.server` turns the errors into HTTP answers.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import
from PIL import Image, ImageDraw

from monai_disc.data.wsi import slide_mpp_check

openslide, _ = optional_import("openslide")

__all__ = [
    "IGNORED_PARAMS",
    "ClientError",
    "ServerLimits",
    "check_label_file",
    "check_region",
    "image_size",
    "json_field",
    "label_upload_kind",
    "rasterize_asap",
    "read_asap",
]

#: interaction fields QuPath's extension always sends (MonaiLabelClient.InferParams); carcinonet uses no clicks
#: and the server sets its own region workers, so these are accepted and dropped
IGNORED_PARAMS: tuple[str, ...] = ("foreground", "background", "max_workers")


class ClientError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.detail = " ".join(str(detail).split())


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for, and how much runs at once (``--conf`` keys of the same names).

    Attributes:
        max_region_pixels: largest region (level-0 pixels, width x height) a slide request may cover.
        max_region_tiles: most tiles MONAI Label may split one region into.
        infer_workers: inference requests computed at the same time per model, regions and tiles each; the others
            wait in line.
        region_workers: threads one region's tiles run on (the client's ``max_workers`` is ignored).
        base_mpp: level-0 um/px of slides whose resolution tags are missing or not trusted (None: refuse them).
    """

    max_region_pixels: int = 4096 * 4096
    max_region_tiles: int = 256
    infer_workers: int = 2
    region_workers: int = 1
    base_mpp: float | None = None

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> ServerLimits:
        """The limits from ``--conf`` pairs (defaults for keys left out).

        Raises:
            ValueError: a value that is not a positive number (names the key).
        """
        values: dict[str, Any] = {}
        for key, kind in (("max_region_pixels", int), ("max_region_tiles", int), ("infer_workers", int),
                          ("region_workers", int), ("base_mpp", float)):  # fmt: skip
            if conf.get(key) in (None, ""):
                continue
            try:
                value = kind(conf[key])
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"--conf {key} must be {what}, got {conf[key]!r}") from None
            if not value > 0:
                raise ValueError(f"--conf {key} must be positive, got {conf[key]!r}")
            values[key] = value
        return cls(**values)


def json_field(name: str, text: str | bytes | None, default: Any = None) -> Any:
    """A form field or body holding a JSON object, parsed; empty means ``default``.

    Raises:
        ClientError: 400 when it is not JSON or not an object.
    """
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return {} if default is None else default
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ClientError(400, f"field {name!r} is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ClientError(400, f"field {name!r} must be a JSON object, got {type(value).__name__}")
    return value


def _is_slide(path: str) -> bool:
    if openslide is None:
        return False
    try:
        return openslide.OpenSlide.detect_format(path) is not None
    except Exception:  # noqa: BLE001 - an unreadable file is not a slide; PIL then says why
        return False


def image_size(path: str | os.PathLike, name: str, base_mpp: float | None = None) -> tuple[int, int, bool]:
    """(width, height) at level 0 of a tile or slide, and whether it is a slide; the slide's pixels are tried.

    A slide must open, decode its first pixel and carry a resolution that can be trusted (see
    :func:`monai_disc.data.wsi.slide_mpp_check`), unless ``base_mpp`` gives one.

    Args:
        path: the file.
        name: how the answer calls it (image id or uploaded file name).
        base_mpp: the server's ``base_mpp`` for slides without trusted resolution tags.

    Raises:
        ClientError: 400 naming ``name`` when it cannot be read, or its resolution tags are not trusted.
    """
    path = os.fspath(path)
    if _is_slide(path):
        try:
            with openslide.OpenSlide(path) as slide:
                width, height = slide.dimensions
                slide.read_region((0, 0), 0, (1, 1))
                properties = dict(slide.properties)
        except Exception as err:  # noqa: BLE001 - OpenSlide's errors name the codec problem
            raise ClientError(400, f"cannot read slide {name}: {type(err).__name__}: {err}") from None
        try:
            slide_mpp_check(properties, name, base_mpp, key="--conf base_mpp")
        except ValueError as err:
            raise ClientError(400, str(err)) from None
        return int(width), int(height), True
    try:
        with Image.open(path) as im:  # the header and the chunks' checksums; nothing decoded before the caps
            width, height = im.size
            im.verify()
            return int(width), int(height), False
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise ClientError(400, f"cannot read image {name}: {type(err).__name__}: {err}") from None


def _pair(field: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ClientError(400, f"field 'wsi.{field}' must be two integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
            raise ClientError(400, f"field 'wsi.{field}' must be two integers, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def check_region(
    wsi: Mapping[str, Any], width: int, height: int, name: str, limits: ServerLimits, is_slide: bool
) -> dict[str, Any]:
    """The region of a ``wsi`` request within an image of ``width`` x ``height``, checked against the caps.

    ``size`` [0, 0] at ``location`` [0, 0] means the whole image (QuPath sends it when no region is drawn, and for
    every uploaded patch).

    Returns:
        ``{"location", "size", "tile_size", "tiles"}`` of the region that will run.

    Raises:
        ClientError: 400 for a region outside the image, 413 for one above ``max_region_pixels`` or
            ``max_region_tiles`` (the message names the cap and how to raise it).
    """
    x, y = _pair("location", wsi.get("location", (0, 0)))
    w, h = _pair("size", wsi.get("size", (0, 0)))
    tw, th = _pair("tile_size", wsi.get("tile_size", (1024, 1024)))
    if min(tw, th) < 1:
        raise ClientError(400, f"field 'wsi.tile_size' must be positive, got {[tw, th]}")
    if min(x, y, w, h) < 0:
        raise ClientError(400, f"fields 'wsi.location' and 'wsi.size' must not be negative, got {[x, y]} {[w, h]}")
    if w == 0 and h == 0:
        if (x, y) != (0, 0):
            raise ClientError(400, f"field 'wsi.size' [0, 0] means the whole image, but 'wsi.location' is {[x, y]}")
        w, h = width, height
    elif w == 0 or h == 0:
        raise ClientError(400, f"field 'wsi.size' {[w, h]} is an empty region")
    if is_slide and (x + w > width or y + h > height):
        raise ClientError(400, f"region x={x} y={y} w={w} h={h} lies outside {name} of {width} x {height} px")
    tiles = math.ceil(w / tw) * math.ceil(h / th) if is_slide else 1
    raise_with = "draw a smaller region, or start the server with --conf {key} N (monai-disc label-server --conf)"
    if w * h > limits.max_region_pixels:
        raise ClientError(
            413,
            f"region of {w} x {h} px ({w * h} px) on {name} exceeds the cap of {limits.max_region_pixels} px "
            f"(max_region_pixels); " + raise_with.format(key="max_region_pixels"),
        )
    if tiles > limits.max_region_tiles:
        raise ClientError(
            413,
            f"region of {w} x {h} px on {name} in tiles of {tw} x {th} px makes {tiles} tiles, above the cap of "
            f"{limits.max_region_tiles} (max_region_tiles); use a larger 'tile_size', or "
            + raise_with.format(key="max_region_tiles"),
        )
    return {"location": [x, y], "size": [w, h], "tile_size": [tw, th], "tiles": tiles}


def read_asap(path: str | os.PathLike, labels: Mapping[str, int], name: str) -> list[tuple[int, np.ndarray]]:
    """The polygons of an ASAP XML annotation (what QuPath's Submit Label uploads): (label value, (N, 2) x, y).

    Args:
        path: the XML file.
        labels: class name -> label value (``Name`` of each ``Annotation``).
        name: the file name used in errors.

    Raises:
        ClientError: 400 for XML that does not parse, an unknown class name, or no polygon at all.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ClientError(400, f"label {name}: not an ASAP XML annotation ({err})") from None
    polygons = []
    for annotation in root.iter("Annotation"):
        cls = annotation.get("Name") or annotation.get("PartOfGroup") or ""
        if cls not in labels:
            raise ClientError(400, f"label {name}: class {cls!r} is not one of this model's labels {sorted(labels)}")
        try:
            points = [(float(c.get("X")), float(c.get("Y"))) for c in annotation.iter("Coordinate")]
        except (TypeError, ValueError):
            raise ClientError(400, f"label {name}: a Coordinate of {cls!r} lacks numeric X, Y") from None
        if len(points) >= 3:
            polygons.append((int(labels[cls]), np.asarray(points, dtype=np.float64)))
    if not polygons:
        raise ClientError(400, f"label {name}: no polygon of three or more points")
    return polygons


def rasterize_asap(
    polygons: Sequence[tuple[int, np.ndarray]], width: int, height: int, offset: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """Polygons of :func:`read_asap` as an (H, W) uint8 label map (0 elsewhere), a later polygon on top.

    QuPath writes coordinates relative to the image it labels (a patch's own pixels; the ``Annotations`` X, Y, W,
    H only describe the patch); ``offset`` is subtracted first (a patch cut from a slide at that position).
    """
    canvas = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for value, points in polygons:
        draw.polygon([(x - offset[0], y - offset[1]) for x, y in points], fill=int(value))
    return np.asarray(canvas, dtype=np.uint8)


def check_label_file(
    path: str | os.PathLike, name: str, image: str, image_wh: tuple[int, int], values: Sequence[int]
) -> np.ndarray:
    """A label map upload: a single-channel picture of the image's size whose values are all in ``values``.

    Args:
        path: the uploaded file.
        name: its file name (for errors).
        image: the image id it labels.
        image_wh: the image's (width, height).
        values: the label values allowed (0 NC, 1 GG3, 2 GG4, 3 GG5).

    Returns:
        The (H, W) uint8 label map.

    Raises:
        ClientError: 400 for an unreadable file, a colour picture, another size, or a value not in ``values``.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            labels = np.asarray(im)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise ClientError(400, f"label {name}: cannot read it ({type(err).__name__}: {err})") from None
    if labels.ndim != 2:
        raise ClientError(
            400, f"label {name}: a {mode} picture; labels are single-channel maps of values {list(values)}"
        )
    h, w = labels.shape
    if (w, h) != tuple(image_wh):
        raise ClientError(400, f"label {name} is {w} x {h} px, image {image!r} is {image_wh[0]} x {image_wh[1]} px")
    found = np.unique(labels)
    wrong = [int(v) for v in found if int(v) not in set(values)]
    if wrong:
        count = int(np.isin(labels, wrong).sum())
        raise ClientError(
            400,
            f"label {name} holds value(s) {wrong} ({count} px); allowed values are {list(values)} (0 NC, 1 GG3, "
            "2 GG4, 3 GG5)",
        )
    return labels.astype(np.uint8)


def label_upload_kind(path: str | os.PathLike) -> str:
    """``"xml"`` for an ASAP XML annotation (by its first bytes), else ``"map"``."""
    head = Path(path).read_bytes()[:256].lstrip()
    return "xml" if head.startswith(b"<") else "map"
