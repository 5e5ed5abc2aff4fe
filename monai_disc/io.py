"""Output folders of long jobs: atomic file writes, and a record of the settings the outputs were made with.

Long jobs are killed and resumed, and they skip the outputs already there, so no output may ever be half
written. Every writer here writes a temp file beside the target (same folder, so the same file system and an
atomic rename) and moves it into place with ``os.replace``; readers see the old file or the new one, never a
mix. Writers that need their own call (PIL ``save``, ``np.savez``, pandas ``to_csv``, ``tifffile``) use
:func:`atomic_path`. A temp file's name carries its writer's process id and host, so a restarted job removes
the temp files a killed run left (:func:`remove_orphan_temps`) without touching those of live writers.

Skipping finished outputs is only right when they were made with the same settings. Every resumable job calls
:func:`job_settings` on its output folder first: the settings are recorded there (``settings.json``); a rerun
with the same settings resumes, a rerun with different ones stops with an error naming the settings that differ,
and ``overwrite=True`` (``--overwrite``) clears the folder and starts over.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import shutil
import socket
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS_NAME",
    "SettingsMismatchError",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "compare_settings",
    "csv_text",
    "file_digest",
    "job_settings",
    "read_table",
    "remove_orphan_temps",
    "settings_error",
]

SETTINGS_NAME = "settings.json"
# .<name>.<pid>-<host tag>-<random>.tmp; the older form .<name>.<random>.tmp has no owner
_TEMP = re.compile(r"^\..+\.(?:(\d+)-([0-9a-f]{4})-)?[0-9a-f]{8}\.tmp$")
_OWNERLESS_AGE_S = 600.0


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def _new_temp(path: Path) -> Path:
    """Create an empty, uniquely named temp file beside ``path`` and return its name.

    ``os.open`` with mode 0o666 lets the umask decide the permissions, as a plain ``open`` would (0o644 under
    the usual umask 022): ``tempfile.mkstemp`` would make owner-only files. ``O_EXCL`` keeps concurrent writers
    (ranks, worker processes) of the same target apart. The name holds this process's id and host, so
    :func:`remove_orphan_temps` can tell a killed writer's leftovers from a live writer's file.
    """
    owner = f"{os.getpid()}-{_host_tag()}"
    while True:
        tmp = path.with_name(f".{path.name}.{owner}-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path to write ``path`` through: renamed onto ``path`` on success, removed on any error.

    Parent folders are created. The temp name ends in ``.tmp``, so give writers that guess the format or add a
    suffix from the name an explicit format or an open file (``image.save(tmp, format="PNG")``,
    ``np.savez(open(tmp, "wb"), ...)``).

    Args:
        path: the file to write; an older file there stays intact until the rename.

    Yields:
        the temp file's path (an empty file exists there).

    Raises:
        whatever the body raises, after the temp file is removed; ``path`` is then untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns ``path`` as a ``Path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, newlines as given (no platform translation); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, so a checkpoint that exists always loads; returns the path."""
    import torch  # here, not at the top: the data writers that use this module do not need torch

    # through an open file, not the temp name: torch.save(obj, name) stores the name inside the archive, so
    # the same content would give other bytes under every temp name
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphan_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files that killed writers left anywhere under ``folder``; return what was removed.

    A temp file is an orphan when its writer (process id in the name, on this host) no longer runs; temp files
    of the older, ownerless form are orphans once ten minutes old. Live writers' temp files and other hosts'
    are kept.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    host, now = _host_tag(), time.time()
    for path in root.rglob(".*.tmp"):
        match = _TEMP.match(path.name)
        if match is None or not path.is_file():
            continue
        pid, tag = match.groups()
        if pid is None:
            try:
                orphan = now - path.stat().st_mtime > _OWNERLESS_AGE_S
            except FileNotFoundError:
                continue
        else:
            orphan = tag == host and int(pid) != os.getpid() and not _alive(int(pid))
        if orphan:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """The first ``length`` hex digits of a file's SHA-256: records which weights made a job's outputs."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


class SettingsMismatchError(ValueError):
    """An output folder holds outputs of other settings; the message names the settings that differ."""


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON would give it back (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(dict(settings), default=str, sort_keys=True))


def compare_settings(record: str | os.PathLike, settings: Mapping[str, Any]) -> list[str] | None:
    """Compare ``settings`` with a settings record file.

    Args:
        record: the record (a JSON object).
        settings: the settings of this run.

    Returns:
        None when there is no record; else one ``"name: old -> new"`` per setting that differs ([] when none).

    Raises:
        SettingsMismatchError: a record that is not a JSON object (the message names it).
    """
    path = Path(record)
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SettingsMismatchError(f"{path}: cannot be read as a settings record ({err})") from None
    if not isinstance(old, dict):
        raise SettingsMismatchError(f"{path}: cannot be read as a settings record (not a JSON object)")
    new = _plain(settings)
    missing = object()
    return [
        f"{key}: {'(none)' if old.get(key, missing) is missing else json.dumps(old[key])} -> "
        f"{'(none)' if new.get(key, missing) is missing else json.dumps(new[key])}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def settings_error(folder: str | os.PathLike, differences: list[str]) -> SettingsMismatchError:
    """The error for a folder made with other settings: names the folder and every setting that differs."""
    return SettingsMismatchError(
        f"{folder} holds outputs made with other settings ({'; '.join(differences)}); rerun with the same "
        "settings to resume, pass --overwrite (overwrite=True) to start over, or choose another folder"
    )


def job_settings(
    out_dir: str | os.PathLike,
    settings: Mapping[str, Any],
    overwrite: bool = False,
    name: str = SETTINGS_NAME,
) -> Path:
    """Start or resume a job in ``out_dir``: record its settings there, or check them against the record.

    * no record, empty or new folder: the record is written and the job starts;
    * a record of the same settings: the job resumes (orphan temp files of a killed run are removed);
    * a record of other settings: :class:`SettingsMismatchError` naming each setting that differs;
    * ``overwrite``: a folder with a record is emptied and the job starts over;
    * files but no record: an error; the folder holds something else, which is never removed.

    Args:
        out_dir: the job's output folder (created).
        settings: every setting the outputs depend on (JSON-serialisable; paths and other objects as strings).
        overwrite: clear a folder that holds a record (of any settings) and start over.
        name: the record's file name.

    Returns:
        The record's path.

    Raises:
        SettingsMismatchError: other settings (without ``overwrite``), or a non-empty folder without a record.
    """
    out = Path(out_dir)
    record = out / name
    differences = compare_settings(record, settings)
    # temp files are ignored: another rank may be writing the record at this moment
    if differences is None and out.is_dir() and any(p.name != name and not _TEMP.match(p.name) for p in out.iterdir()):
        raise SettingsMismatchError(
            f"{out} is not empty and has no {name} record of the settings its files were made with; "
            "choose an empty or new folder (nothing in it is removed)"
        )
    if differences and not overwrite:
        raise settings_error(out, differences)
    if differences is not None and overwrite:
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    remove_orphan_temps(out)
    if differences != [] or overwrite:
        atomic_write_text(record, json.dumps(_plain(settings), indent=1, sort_keys=True) + "\n")
    return record


def read_table(path: str | os.PathLike, required: Sequence[str], what: str = "table") -> Any:
    """A CSV or Excel (.xlsx) sheet as a pandas DataFrame with stripped column names, checked for its columns.

    CSV cells are read as strings (empty cells ""); Excel cells keep the types openpyxl gives them.

    Args:
        path: the file (``.xlsx`` by its suffix, anything else as CSV).
        required: columns it must have.
        what: what the file is, for the messages ("PANDA slide table", ...).

    Returns:
        the DataFrame.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be parsed, or required columns are missing (the message names the file).
    """
    import pandas as pd  # here, so that importing the data listers stays cheap

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        if path.suffix.lower() == ".xlsx":
            frame = pd.read_excel(path, engine="openpyxl")
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # openpyxl and the CSV parser raise a zoo of types for broken files
        raise ValueError(f"cannot read {what} {path}: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} {path} lacks required column(s) {missing}; found columns {list(frame.columns)}")
    return frame


def csv_text(header: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text (``\\n`` line ends) of ``rows`` under ``header``: what the jobs write with the atomic writers."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
