"""What the label-server tests share: the running server's handle, small pictures, and the multipart body QuPath's
extension builds."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import requests
from PIL import Image

GRADES = {"GG3": 1, "GG4": 2, "GG5": 3}
STEPS = 5  # DDIM steps of the gleason_ldm requests: enough to tell seeds apart, quick on one core
#: the server's region cap in the tests: the 512 px toy slide whole fits, big.tiff (1024 px) whole does not
MAX_REGION_PIXELS = 300_000


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """A running `monai-disc label-server`: its URL, folders, log and the toy slide's label mask."""

    def __init__(self, url: str, root: Path, studies: Path, toy: Path, slide_mask: np.ndarray) -> None:
        self.url, self.root, self.studies, self.toy, self.slide_mask = url, root, studies, toy, slide_mask
        self.log = root / "server.log"

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=120, **kw)

    def post(self, path: str, **kw):
        return requests.post(self.url + path, timeout=300, **kw)

    def put(self, path: str, **kw):
        return requests.put(self.url + path, timeout=120, **kw)

    def head(self, path: str, **kw):
        return requests.head(self.url + path, timeout=60, **kw)


def java_multipart(files: dict[str, tuple[str, bytes, str]], fields: dict[str, str]) -> tuple[bytes, str]:
    """The body and Content-Type of QuPath's ``RequestUtils.MultipartData`` (MONAILabel
    plugins/qupath/src/main/java/qupath/lib/extension/monailabel/RequestUtils.java): a decimal boundary of a
    128-bit number, files first (with ``Files.probeContentType``'s type), then text fields, CRLF line ends, and
    no line end after the closing boundary."""
    boundary = str(random.getrandbits(128))
    out = io.BytesIO()
    for name, (filename, content, mime) in files.items():
        out.write(f"--{boundary}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode())
        out.write(f"Content-Type: {mime}\r\n\r\n".encode())
        out.write(content + b"\r\n")
    for name, text in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(text.encode() + b"\r\n")
    out.write(f"--{boundary}--".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"
