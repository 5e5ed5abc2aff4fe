"""The MONAI Label app of monai_disc: CarcinoNet segmentation (tiles, whole-slide regions, training) and
``gleason_ldm``, a tile painted from a Gleason mask.

This folder is a MONAI Label app: ``monailabel start_server --app <this folder> --studies DIR`` serves it, and
``monai-disc label-server --studies DIR`` starts that for the user. Importing this package does not import
``monailabel`` (an optional extra, ``pip install monai_disc[monailabel]``); the app modules do.
"""

from __future__ import annotations

from pathlib import Path

from monai_disc.bundles import REPO_BUNDLES

__all__ = ["APP_DIR", "DEFAULT_MODELS", "REPO_BUNDLES", "SERVER_APP", "server_command"]

#: the app folder handed to ``monailabel start_server --app``
APP_DIR: Path = Path(__file__).resolve().parent
#: the ASGI app served: MONAI Label's, with the checked, threaded routes of ``server.py`` in front
SERVER_APP = "monai_disc.monailabel.server:app"
#: models served when ``--conf models`` is not given
DEFAULT_MODELS: tuple[str, ...] = ("carcinonet", "gleason_ldm")


def server_command(
    studies: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    models: str | None = None,
    bundles: str | Path | None = None,
    conf: dict[str, str] | None = None,
) -> list[str]:
    """The command that serves this app with MONAI Label (``python -m monailabel.main start_server ...``).

    Run it with ``BUNDLE_DOWNLOAD_SRC=local`` in the environment so MONAI Label never asks the network for
    the model-zoo list.

    Args:
        studies: the datastore folder (created when missing).
        host: address to listen on.
        port: port to listen on.
        models: comma-separated models (default: all of :data:`DEFAULT_MODELS`).
        bundles: the bundles folder (default: this repository's).
        conf: further ``--conf`` pairs of the app (see ``main.py``).

    Returns:
        the argument list, starting with this Python interpreter.

    Raises:
        ModuleNotFoundError: ``monailabel`` is not installed (the message names the extra that brings it).
    """
    import sys

    try:
        import monailabel  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            "the label server needs the monailabel extra: pip install -c requirements/constraints.txt -e "
            f"'.[monailabel]' ({err})"
        ) from err

    pairs = {"models": models or ",".join(DEFAULT_MODELS), "bundles": str(bundles or REPO_BUNDLES), **(conf or {})}
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", str(studies)]
    cmd += ["--host", str(host), "--port", str(int(port)), "--uvicorn_app", SERVER_APP]
    for key, value in pairs.items():
        cmd += ["--conf", str(key), str(value)]
    return cmd
