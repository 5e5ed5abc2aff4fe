"""Atomic file writes: a file that exists under its final name is complete.

Long jobs are killed and resumed, and they skip the outputs already there, so no output may ever be half
written. Every writer here writes a temp file beside the target (same folder, so the same file system and an
atomic rename) and moves it into place with ``os.replace``; readers see the old file or the new one, never a
mix. Writers that need their own call (PIL ``save``, ``np.savez``, pandas ``to_csv``, ``tifffile``) use
:func:`atomic_path`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "read_table"]


def _new_temp(path: Path) -> Path:
    """Create an empty, uniquely named temp file beside ``path`` and return its name.

    ``os.open`` with mode 0o666 lets the umask decide the permissions, as a plain ``open`` would (0o644 under
    the usual umask 022): ``tempfile.mkstemp`` would make owner-only files. ``O_EXCL`` keeps concurrent writers
    (ranks, worker processes) of the same target apart.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
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

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


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
