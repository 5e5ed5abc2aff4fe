"""What the app's tasks share about a MONAI Label request: its parameters, its errors and where bundles live.

A request reaches a task as one flat dict: the server's own keys (``model``, ``image``, ``device``, the
``wsi_v2`` region ...) merged with the user's ``params``. :func:`check_params` picks and validates the user's
parameters of one task; :func:`bad_request` turns a wrong input into an HTTP 400 whose message names it, so the
server answers and keeps serving.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.utils import optional_import

from monai_disc.monailabel import REPO_BUNDLES

HTTPException, _ = optional_import("fastapi", name="HTTPException")

__all__ = [
    "SERVER_KEYS",
    "WSI_KEYS",
    "as_float",
    "as_int",
    "bad_request",
    "bundle_config",
    "bundles_dir",
    "check_params",
    "http_errors",
    "one_of",
]

# Keys MONAI Label itself puts into an inference request (never the user's params).
SERVER_KEYS: frozenset[str] = frozenset(
    {
        "model",
        "image",
        "image_path",
        "label",
        "description",
        "device",
        "save_label",
        "label_tag",
        "client_id",
        "logging",
        "session",
        "session_id",
        "output",
        "timeout",
        "model_filename",
        "result_extension",
        "result_dtype",
        "result_compress",
        "result_write_to_file",
    }
)
# Keys of a ``POST /infer/wsi_v2`` region request and of the tasks MONAI Label splits a region into.
WSI_KEYS: frozenset[str] = frozenset(
    {
        "level",
        "location",
        "size",
        "tile_size",
        "min_poly_area",
        "max_poly_area",
        "id",
        "wsi_tiles",
        "max_workers",
        "multi_gpu",
        "gpus",
        "ignore_small_patches",
        "ignore_non_click_patches",
    }
)


def bundles_dir(conf: Mapping[str, str] | None) -> Path:
    """The bundles folder: ``--conf bundles DIR`` when given, else this repository's ``bundles/``.

    Raises:
        FileNotFoundError: the folder does not exist.
    """
    path = Path((conf or {}).get("bundles") or REPO_BUNDLES).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"bundles folder not found: {path} (pass --conf bundles DIR)")
    return path


def bundle_config(bundle: str | os.PathLike, config: str) -> ConfigParser:
    """A bundle's config (e.g. ``"inference"``) parsed with ``bundle_root`` set, ready for ``get_parsed_content``.

    Raises:
        FileNotFoundError: the bundle has no such config.
    """
    root = Path(bundle)
    files = [root / "configs" / f"{config}{ext}" for ext in (".yaml", ".json")]
    found = next((f for f in files if f.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"bundle {root} has no configs/{config}.yaml or .json")
    parser = ConfigParser()
    parser.read_config(str(found))
    parser["bundle_root"] = str(root)
    return parser


def bad_request(message: str) -> Exception:
    """An HTTP 400 error carrying ``message`` (a ValueError where FastAPI is not installed)."""
    if HTTPException is None or not callable(HTTPException):  # pragma: no cover - fastapi comes with monailabel
        return ValueError(message)
    return HTTPException(status_code=400, detail=message)


_INPUT_ERRORS = (ValueError, FileNotFoundError, KeyError)


@contextmanager
def http_errors(task: str):
    """Re-raise wrong inputs met inside as HTTP 400 errors whose message starts with ``task``.

    A wrong input is a ValueError, FileNotFoundError or KeyError, also when MONAI wraps it in a RuntimeError
    ("applying transform ..."): the innermost cause names the file and the problem.
    """
    try:
        yield
    except (*_INPUT_ERRORS, RuntimeError) as err:
        cause: BaseException = err
        while cause.__cause__ is not None and not isinstance(cause, _INPUT_ERRORS):
            cause = cause.__cause__
        if not isinstance(cause, _INPUT_ERRORS):
            raise
        text = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        raise bad_request(f"{task}: {text}") from err


def _number(name: str, value: Any, kind: str) -> float:
    """``value`` as a float, or ``parameter 'name' must be <kind>`` (booleans are refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r} must be {kind}, got {value!r}") from None


def _within(name: str, number: Any, low: Any, high: Any) -> Any:
    if (low is not None and number < low) or (high is not None and number > high):
        if high is None:
            raise ValueError(f"parameter {name!r} must be at least {low}, got {number}")
        if low is None:
            raise ValueError(f"parameter {name!r} must be at most {high}, got {number}")
        raise ValueError(f"parameter {name!r} must lie in [{low}, {high}], got {number}")
    return number


def as_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [low, high]; integral strings and floats are accepted, booleans are not."""
    number = _number(name, value, "an integer")
    if not number.is_integer():
        raise ValueError(f"parameter {name!r} must be an integer, got {value!r}")
    return _within(name, int(number), low, high)


def as_float(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float within [low, high]."""
    number = _number(name, value, "a number")
    if not math.isfinite(number):
        raise ValueError(f"parameter {name!r} must be finite, got {value!r}")
    return _within(name, number, low, high)


def one_of(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices`` (a list default from the task's config means its first entry)."""
    choices = list(choices)
    if isinstance(value, (list, tuple)) and list(value) == choices:
        value = choices[0]
    if value not in choices:
        raise ValueError(f"parameter {name!r} must be one of {choices}, got {value!r}")
    return str(value)


def check_params(
    request: Mapping[str, Any],
    parsers: Mapping[str, Callable[[Any], Any]],
    defaults: Mapping[str, Any],
    allowed: Iterable[str] = SERVER_KEYS,
) -> dict[str, Any]:
    """The task's parameters from a request, parsed; every other key must be one the server adds.

    Args:
        request: the merged request the task receives.
        parsers: parameter name -> function validating and converting its value (raises ValueError).
        defaults: values of parameters the request leaves out.
        allowed: keys the server itself adds, ignored here.

    Returns:
        parameter name -> parsed value, for every name in ``parsers``.

    Raises:
        ValueError: an unknown key (the message lists the known parameters) or an invalid value.
    """
    allowed = set(allowed)
    unknown = sorted(k for k in request if k not in parsers and k not in allowed)
    if unknown:
        takes = sorted(parsers) if parsers else "no parameters besides the server's own"
        raise ValueError(f"unknown parameter(s) {unknown}; this model takes {takes}")
    return {name: parse(request.get(name, defaults.get(name))) for name, parse in parsers.items()}
