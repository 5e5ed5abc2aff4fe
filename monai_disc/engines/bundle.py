"""What a bundle run over a folder needs to fail like the CLI: one line per bad file, good files finished.

``python -m monai.bundle run`` turns any error into a traceback of the config machinery. These helpers, called
from a config's expressions, check inputs before the run and report afterwards, and end the process with
``SystemExit`` (which the config parser lets through): a line per problem on stderr, no traceback, exit code 2.

* :func:`scan_images`: the files of a folder, each decoded and checked once up front (readable, large enough,
  mask values a Gleason label maps to); bad files are set aside as :attr:`FolderScan.failures`, not run.
* :func:`exit_on_failures`: after the run, name every bad file and exit 2 (the good ones are written).
* :func:`load_weights_or_exit`: :func:`monai_disc.networks.weights.load_weights` with its one-line error.
* :func:`bundle_settings`: :func:`monai_disc.io.job_settings` for the output folder, weights by digest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from monai_disc.errors import FailedFilesError, collect

__all__ = ["FolderScan", "bundle_settings", "exit_on_failures", "load_weights_or_exit", "scan_images"]


class FolderScan(list):
    """A data list (``[{key: path}, ...]``) of the files to run, with the files set aside.

    Attributes:
        failures: file -> what is wrong with it.
        total: files found in the folder (pending, done and failed).
    """

    def __init__(self, items: Sequence[dict], failures: Mapping[str, str], total: int) -> None:
        super().__init__(items)
        self.failures = dict(failures)
        self.total = int(total)


def _check(path: Path, mode: str, min_size: int, size_multiple: int, values: Sequence[float] | None) -> None:
    from monai_disc.transforms.array import LoadPILImage, SnapMaskToLabels

    image = LoadPILImage(mode=mode)(path)
    h, w = (int(v) for v in image.shape[-2:])
    least = max(min_size, size_multiple)
    if min(h, w) < least or h % size_multiple or w % size_multiple:
        need = (
            f"sides that are a multiple of {size_multiple} px (at least {least} px)"
            if size_multiple > 1
            else f"at least {least} px a side"
        )
        raise ValueError(f"{path}: the image is {h}x{w} px; this bundle needs {need}")
    if values is not None:
        SnapMaskToLabels(values=tuple(values), labels=tuple(range(len(values))))(image)


def scan_images(
    paths: Sequence[str | os.PathLike] | Sequence[Mapping[str, Any]],
    key: str = "image",
    mode: str = "RGB",
    min_size: int = 1,
    size_multiple: int = 1,
    mask_values: Sequence[float] | None = None,
) -> FolderScan:
    """Decode every file once and set aside those the run would fail on.

    Args:
        paths: files, or data-list items holding a file under ``key`` (e.g. ``pending_tiles``' output).
        key: the data-list key of the file.
        mode: "RGB" for tiles, "L" for masks.
        min_size: smallest side accepted.
        size_multiple: both sides must be a multiple of this.
        mask_values: for masks, the valid stored values (the JPEG tolerance applies to JPEG files).

    Returns:
        The good items (as given), with :attr:`FolderScan.failures`.
    """
    good, failures = [], {}
    for item in paths:
        entry = dict(item) if isinstance(item, Mapping) else {key: str(item)}
        path = Path(str(entry[key]))
        try:
            _check(path, mode, int(min_size), max(1, int(size_multiple)), mask_values)
        except Exception as err:  # every reader error sets this file aside; the message names it
            collect(failures, str(path), err)
            continue
        good.append(entry)
    return FolderScan(good, failures, len(good) + len(failures))


def exit_on_failures(scan: FolderScan, what: str = "files") -> None:
    """After a run: print one line per file set aside and exit with status 2; return when there was none.

    Raises:
        SystemExit: code 2, when ``scan.failures`` is not empty.
    """
    failures = getattr(scan, "failures", {})
    if not failures:
        return
    for line in FailedFilesError(failures).lines():
        print(f"error: {line}", file=sys.stderr)
    print(f"error: {len(failures)} of {scan.total} {what} failed; the other {what} were written", file=sys.stderr)
    raise SystemExit(2)


def load_weights_or_exit(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """:func:`monai_disc.networks.weights.load_weights`, ending the run with its one-line message on failure.

    Raises:
        SystemExit: code 2, naming the file and what does not fit.
    """
    from monai_disc.networks.weights import WeightsError, load_weights

    try:
        return load_weights(network, path)
    except (FileNotFoundError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def bundle_settings(
    output_dir: str | os.PathLike,
    settings: Mapping[str, Any],
    weights: Mapping[str, str | os.PathLike] | None = None,
    overwrite: bool = False,
) -> Path:
    """Record a bundle run's settings in its output folder, or stop naming the ones that differ.

    Args:
        output_dir: the run's output folder.
        settings: the config values the outputs depend on.
        weights: name -> weight file, recorded by content digest (retrained weights are other settings).
        overwrite: start over in a folder of other settings.

    Returns:
        The settings record's path.

    Raises:
        SystemExit: code 2 with a one-line message, for a folder of other settings or without a record.
    """
    from monai_disc.io import SettingsMismatchError, file_digest, job_settings

    record = dict(settings)
    for name, path in (weights or {}).items():
        record[name] = file_digest(path) if Path(path).is_file() else f"missing: {path}"
    try:
        return job_settings(output_dir, record, overwrite=overwrite)
    except SettingsMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
