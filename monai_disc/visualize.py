"""Pictures for evaluation: label maps over tiles, and grids of tiles saved as one image with titles and a legend.

The label colours are defined once, in :data:`monai_disc.labels.LABEL_COLORS` (a torch-free module the data
writers share); every picture that shows masks draws :func:`legend` with them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .io import atomic_path, atomic_write_bytes
from .labels import LABEL_COLORS, LABEL_NAMES, GleasonLabel, colorize

__all__ = [
    "LABEL_COLORS",
    "OVERLAY_NOTE",
    "font",
    "save_figure",
    "legend",
    "overlay",
    "save_grid",
    "save_picture",
    "text_size",
    "to_uint8",
]


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` px (its bitmap font, about 10 px, is unreadable on big pictures)."""
    return ImageFont.load_default(size=max(8, int(size)))


def text_size(width: int) -> int:
    """A readable text size for a picture or column ``width`` px wide: 12 to 40 px."""
    return int(min(40, max(12, round(width / 9))))


#: the legend's note on pictures with :func:`overlay` columns
OVERLAY_NOTE = "over tissue: regions outlined in these colours; grades tinted, NC not"


def legend(width: int, size: int = 14, note: str | None = None) -> Image.Image:
    """A white strip ``width`` px wide naming the label colours: a swatch and the name of each label.

    Args:
        width: strip width (the swatches wrap onto more lines when they do not fit).
        size: text size in px.
        note: an optional line after the swatches (e.g. :data:`OVERLAY_NOTE`), in a smaller type when it is long.
    """
    f = font(size)
    entries = []
    for label in GleasonLabel:
        name = LABEL_NAMES[label]
        entries.append((LABEL_COLORS[label], name, int(f.getlength(name)) + 2 * size))
    lines, line, used = [], [], 0
    for entry in entries:
        step = entry[2] + size
        if line and used + step > width:
            lines.append(line)
            line, used = [], 0
        line.append(entry)
        used += step
    lines.append(line)
    note_size = size
    if note:
        while note_size > 8 and font(note_size).getlength(note) > width - size:
            note_size -= 1
    extra = int(1.5 * note_size) if note else 0
    strip = Image.new("RGB", (max(width, 1), len(lines) * int(1.6 * size) + size // 2 + extra), "white")
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        x, y = size // 2, size // 4 + i * int(1.6 * size)
        for colour, name, step in line:
            draw.rectangle([x, y, x + size, y + size], fill=colour, outline=(0, 0, 0))
            draw.text((x + int(1.4 * size), y - size // 8), name, fill=(0, 0, 0), font=f)
            x += step + size
    if note:
        draw.text((size // 2, len(lines) * int(1.6 * size) + size // 4), note, fill=(0, 0, 0), font=font(note_size))
    return strip


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 from a package tile (3, H, W) float in [-1, 1].

    uint8 pictures (H, W, 3) pass through unchanged; grey (H, W) pictures become RGB.

    Raises:
        ValueError: for shapes other than (3, H, W), (H, W, 3) or (H, W).
    """
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.dtype != np.uint8:
        if a.ndim == 3 and a.shape[0] in (1, 3):  # float pictures are package tiles: channels first
            a = np.moveaxis(a, 0, -1)
        a = np.clip(np.rint((a.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) tile or an (H, W, 3) picture, got shape {a.shape}.")
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def overlay(tile: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, alpha: float = 0.4) -> np.ndarray:
    """Draw a label map over a tile: each region outlined in its label colour, the grades (GG3-GG5) also tinted.

    NC is outlined, never tinted: a tint blends with the tissue under it, and sky blue over pink H&E reads as the
    dark purple of GG5. The outlines carry the legend's exact colours (:data:`monai_disc.labels.LABEL_COLORS`).

    Args:
        tile: (H, W, 3) uint8 picture, or a (3, H, W) tile in [-1, 1].
        labels: (H, W) or (1, H, W) integer label map of the same size.
        alpha: opacity of the grade tints (0 shows the tissue only inside the outlines, 1 the colours only).

    Returns:
        (H, W, 3) uint8 picture.

    Raises:
        ValueError: for ``alpha`` outside [0, 1] or mismatched sizes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    rgb = to_uint8(tile)
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    lab = lab.reshape(lab.shape[-2:]) if lab.ndim == 3 and lab.shape[0] == 1 else lab
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"labels {lab.shape} do not match the tile's size {rgb.shape[:2]}.")
    colours = colorize(lab)
    tinted = (lab != GleasonLabel.NC)[..., None]
    mixed = np.where(tinted, (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32), rgb)
    mixed = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    edge = _region_edges(lab)
    mixed[edge] = colours[edge]
    return mixed


def _region_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (each region's own side of a boundary)."""
    edge = np.zeros(labels.shape, dtype=bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def save_grid(
    rows: Sequence[Sequence[np.ndarray | torch.Tensor]],
    path: str | Path,
    titles: Sequence[str] | None = None,
    pad: int = 2,
    legend_colors: bool = False,
    title: str | None = None,
    zoom: int = 1,
    legend_note: str | None = None,
    text_px: int | None = None,
) -> Path:
    """Save rows of pictures as one image (written atomically: temp file then rename).

    Text (the title, column titles, the legend) is sized to the cells so it stays readable at the picture's size.

    Args:
        rows: rows of pictures, each (H, W, 3) uint8 or a (3, H, W) tile in [-1, 1]; cells take
            the largest picture's size, smaller pictures sit at their top-left.
        path: output file; the suffix picks the format (``.png``, ``.jpg``).
        titles: optional column titles written above the first row.
        pad: white pixels between cells.
        legend_colors: add the label colour legend under the grid (every picture that shows masks should).
        title: optional line above everything.
        zoom: integer magnification of every picture (nearest), for small tiles.
        legend_note: a line under the legend's swatches (:data:`OVERLAY_NOTE` where a column is an overlay).
        text_px: text size in px; None sizes it to the cells (:func:`text_size`).

    Returns:
        The written path.

    Raises:
        ValueError: when there is nothing to draw, more titles than columns, or a zoom under 1.
    """
    if int(zoom) < 1:
        raise ValueError(f"{path}: zoom must be a positive integer, got {zoom}.")
    pics = [[np.repeat(np.repeat(to_uint8(p), zoom, 0), zoom, 1) for p in row] for row in rows]
    if not pics or not any(pics):
        raise ValueError(f"{path}: no pictures to save.")
    n_cols = max(len(r) for r in pics)
    if titles is not None and len(titles) > n_cols:
        raise ValueError(f"{path}: {len(titles)} titles for {n_cols} columns.")
    cell_h = max(p.shape[0] for r in pics for p in r)
    cell_w = max(p.shape[1] for r in pics for p in r)
    width = n_cols * cell_w + (n_cols + 1) * pad
    size = int(text_px) if text_px else text_size(cell_w)
    f = font(size)
    title_lines = _wrap(str(title), f, width - 2 * pad) if title else []
    top = int(1.5 * size) * len(title_lines)
    header = int(1.4 * size) if titles else 0
    body = header + len(pics) * cell_h + (len(pics) + 1) * pad
    strip = legend(width, size, legend_note) if legend_colors else None
    canvas = Image.new("RGB", (width, top + body + (strip.height if strip else 0)), "white")
    for i, row in enumerate(pics):
        for j, pic in enumerate(row):
            canvas.paste(Image.fromarray(pic), (pad + j * (cell_w + pad), top + header + pad + i * (cell_h + pad)))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((pad, size // 6 + i * int(1.5 * size)), line, fill=(0, 0, 0), font=f)
    if titles:
        for j, name in enumerate(titles):
            draw.text((pad + j * (cell_w + pad), top + size // 8), str(name), fill=(0, 0, 0), font=f)
    if strip is not None:
        canvas.paste(strip, (0, top + body))
    return save_picture(canvas, path)


def _wrap(text: str, f: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a longer single word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and f.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def save_figure(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, save it as PNG atomically (temp file then rename) and close it.

    Args:
        figure: a ``matplotlib.figure.Figure``.
        path: the PNG to write.
        dpi: resolution.
    """
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def save_picture(picture: np.ndarray | Image.Image, path: str | Path) -> Path:
    """Save one picture atomically (temp file then rename), so a killed job never leaves half a file.

    Args:
        picture: (H, W, 3) or (H, W) uint8 array, or a PIL image.
        path: output file; the suffix picks the format (``.png``, ``.jpg``).
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown picture format {path.suffix!r}.")
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return path
