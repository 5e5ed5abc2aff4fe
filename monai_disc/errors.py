"""Errors as users read them: one line per failure, naming the file and what is wrong.

Libraries wrap errors on their way up (MONAI's "applying transform ...", a config's "Failed to evaluate ...",
``raise ... from``), and the most useful line is neither the outermost nor the innermost: it is the innermost
message that still names a file (``cannot read image file x.jpg: image file is truncated``), not the bare
decoder complaint below it (``image file is truncated``). :func:`failure_message` finds it.

Jobs over many files (feature extraction, inference over a folder, generation from masks) finish the good
files and raise one :class:`FailedFilesError` at the end, listing every bad file with its own message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["FailedFilesError", "collect", "failure_lines", "failure_message", "names_a_file", "raise_failures"]

# a token with a folder separator, or a name ending in a file suffix of the formats the package reads or writes
_FILE_TOKEN = re.compile(
    r"(?:[\w.~-]*[/\\][^\s'\",;:()]+)"
    r"|(?:\b[\w.-]+\.(?:pt|pth|torch|ckpt|safetensors|png|jpe?g|tiff?|xlsx|csv|json|npz|yaml|yml|svs|ndpi)\b)",
    re.IGNORECASE,
)


def names_a_file(message: str) -> bool:
    """Whether ``message`` names a file: a path with a separator, or a name with a known file suffix."""
    return bool(_FILE_TOKEN.search(message))


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or during, outermost first (cycles cut)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _text(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = f"missing key {error.args[0]!r}"
    return " ".join(text.split()) if text else type(error).__name__


def failure_message(error: BaseException) -> str:
    """One line for ``error``: the innermost message of its chain that names a file, else the innermost one.

    Args:
        error: the error caught at the top (its ``__cause__`` / ``__context__`` chain is searched).

    Returns:
        A single line (inner whitespace and newlines collapsed).
    """
    chain = _chain(error)
    for err in reversed(chain):
        text = _text(err)
        if names_a_file(text):
            return text
    return _text(chain[-1])


class FailedFilesError(RuntimeError):
    """Some files of a job failed; the others were finished.

    Args:
        failures: file -> what is wrong with it (one line each).
        done: what the job finished despite them, e.g. "wrote 38 of 40 slides".

    Attributes:
        failures: the same mapping, in the order given.
    """

    def __init__(self, failures: Mapping[str, str], done: str = "") -> None:
        self.failures = {str(k): " ".join(str(v).split()) for k, v in failures.items()}
        self.done = done
        head = f"{len(self.failures)} file{'s' if len(self.failures) != 1 else ''} failed"
        super().__init__(head + (f" ({done})" if done else "") + ":\n" + "\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per bad file: ``<file>: <what is wrong>`` (the file name is not repeated when present)."""
        return [msg if name in msg else f"{name}: {msg}" for name, msg in self.failures.items()]


def failure_lines(error: BaseException) -> list[str]:
    """The lines to print for ``error``: one per bad file of a :class:`FailedFilesError`, else one.

    Args:
        error: the error caught at the top.

    Returns:
        Non-empty list of single lines.
    """
    for err in _chain(error):
        if isinstance(err, FailedFilesError):
            lines = err.lines()
            if err.done:
                lines.append(f"{len(err.failures)} failed; {err.done}")
            return lines
    return [failure_message(error)]


def collect(failures: dict[str, str], name: str, error: BaseException) -> None:
    """Record ``error`` of file ``name`` in ``failures`` as one line (see :func:`failure_message`)."""
    failures[str(name)] = failure_message(error)


def raise_failures(failures: Mapping[str, str], done: str = "") -> None:
    """Raise :class:`FailedFilesError` when ``failures`` is not empty; do nothing otherwise."""
    if failures:
        raise FailedFilesError(failures, done)
