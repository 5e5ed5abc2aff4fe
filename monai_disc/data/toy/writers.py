"""Byte-deterministic writers of toy files (JPEG tiles, xlsx sheets)."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pandas as pd
from PIL import Image

__all__: list[str] = []

_SICAP_VALUES = np.array([0, 3, 4, 5], dtype=np.uint8)  # label -> SICAPv2 mask value
_JPEG_QUALITY = 92


# ----------------------------------------------------------------------------------------------
# writers (atomic, byte-deterministic)
# ----------------------------------------------------------------------------------------------
def _jpeg_bytes(array: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_XLSX_TIME = re.compile(rb"(<dcterms:(created|modified)[^>]*>)[^<]*(</dcterms:\2>)")


def _xlsx_bytes(frame: pd.DataFrame) -> bytes:
    """An .xlsx of ``frame`` whose bytes depend only on its content (fixed times inside the zip)."""
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        frame.to_excel(writer, index=False)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = _XLSX_TIME.sub(rb"\g<1>2020-01-01T00:00:00Z\g<3>", data)
            fixed = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, data)
    return out.getvalue()
