"""Pictures of pixels: tiles laid out in a grid with text around them, and animations.

A montage is an array ``(rows, cols, C, D, D)``; :func:`to_uint8` maps it to 0..255 with one
robust contrast (:func:`contrast`) so that its panels are comparable, :func:`tile` lays the
tiles out, and :func:`render` draws them enlarged with :class:`Labels` (column headers, row
headers, lines under each tile) in a monospaced font. :func:`save_gif` writes frames as a GIF
with a track that shows where each frame lies along its path.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont


def contrast(images: ArrayLike, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Display range (lo, hi) from robust percentiles of ``images``. Non-negative images
    (probabilities, RGB pictures) keep 0 as black, so that scaling leaves their hue alone."""
    a = np.asarray(images, dtype=np.float64)
    lo, hi = np.percentile(a, [low, high])
    if a.min() >= 0:
        lo = 0.0
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def to_uint8(images: ArrayLike, lo: float, hi: float) -> np.ndarray:
    """Values in [lo, hi] -> 0..255."""
    a = (np.asarray(images, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def tile(grid: np.ndarray, pad: int = 2, fill: int = 255) -> np.ndarray:
    """``(rows, cols, C, D, D)`` uint8 -> one picture ``(H, W)`` or ``(H, W, 3)``."""
    rows, cols, c, d, _ = grid.shape
    out = np.full((rows * (d + pad) + pad, cols * (d + pad) + pad, c), fill, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            y, x = pad + r * (d + pad), pad + k * (d + pad)
            out[y : y + d, x : x + d] = np.moveaxis(grid[r, k], 0, -1)
    return out[..., 0] if c == 1 else out


#: Tile labels: font size and the height of one line of text (pixels of the saved picture),
#: and the space left around text.
LABEL_PX = 11
LINE_PX = 14
GAP_PX = 4
#: The GIF's position track: its height and the width of its marker (pixels).
TRACK_PX = 6
MARKER_PX = 3


@functools.cache
def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans Mono (shipped with matplotlib) at :data:`LABEL_PX`: a monospaced font, so
    that a label's width is its length times one advance."""
    from matplotlib import get_data_path

    try:
        path = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono.ttf"
        return ImageFont.truetype(str(path), LABEL_PX)
    except OSError:  # no FreeType in this Pillow
        return ImageFont.load_default()


def text_width(text: str) -> int:
    """Width of ``text`` in :func:`label_font`, pixels (rounded up)."""
    return math.ceil(label_font().getlength(text)) if text else 0


@dataclass
class Labels:
    """Text around a montage's tiles: ``columns`` (one per column, above it), ``rows`` (one
    per row, left of it), ``tiles`` (``tiles[r][c]``: the lines under tile ``(r, c)``).

    Each row is as tall as its tiles plus its longest caption (:data:`LINE_PX` per line);
    every column is as wide as a tile or its widest text (plus :data:`GAP_PX` on each side);
    the row headers add a margin on the left, the column headers one line on top."""

    columns: Sequence[str] = ()
    rows: Sequence[str] = ()
    tiles: Sequence[Sequence[Sequence[str]]] = ()

    def lines(self, row: int) -> int:
        """Caption lines under the tiles of ``row``."""
        if row >= len(self.tiles):
            return 0
        return max((len(t) for t in self.tiles[row]), default=0)

    def geometry(self, rows: int, cols: int, tile_px: int, pad_px: int) -> dict[str, Any]:
        """Where everything goes: ``left`` (row-header margin), ``top`` (column-header
        margin), ``col_w`` (column pitch), ``row_h`` (pitch of each row), ``size`` (W, H)."""
        left = max((text_width(t) for t in self.rows), default=0)
        left = left + 2 * GAP_PX if left else 0
        top = LINE_PX + GAP_PX if any(self.columns) else 0
        widest = [text_width(t) for t in self.columns]
        widest += [text_width(line) for row in self.tiles for t in row for line in t]
        col_w = max(tile_px + pad_px, max(widest, default=0) + 2 * GAP_PX)
        row_h = [tile_px + pad_px + self.lines(r) * LINE_PX for r in range(rows)]
        size = (left + cols * col_w + pad_px, top + sum(row_h) + pad_px)
        return {"left": left, "top": top, "col_w": col_w, "row_h": row_h, "size": size}


def render(
    pixels: np.ndarray, scale: int = 2, labels: Labels | None = None, pad: int = 2
) -> Image.Image:
    """``(rows, cols, C, D, D)`` uint8 -> the montage picture, each pixel drawn ``scale`` x
    ``scale`` with ``pad`` (times ``scale``) white pixels between tiles; with ``labels``, their
    text in black around the tiles (:class:`Labels`). Without labels the picture is exactly
    :func:`tile` enlarged."""
    rows, cols, c, d, _ = pixels.shape
    if labels is None:
        picture = Image.fromarray(tile(pixels, pad))
        size = (picture.width * scale, picture.height * scale)
        return picture.resize(size, Image.Resampling.NEAREST)
    t, p = d * scale, pad * scale
    g = labels.geometry(rows, cols, t, p)
    mode, white, black = ("L", 255, 0) if c == 1 else ("RGB", (255,) * 3, (0,) * 3)
    canvas = Image.new(mode, g["size"], white)
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    y = g["top"] + p
    for r in range(rows):
        for k in range(cols):
            centre = g["left"] + p + k * g["col_w"] + (g["col_w"] - p) // 2
            x = centre - t // 2
            a = pixels[r, k]
            im = Image.fromarray(a[0] if c == 1 else np.moveaxis(a, 0, -1))
            canvas.paste(im.resize((t, t), Image.Resampling.NEAREST), (x, y))
            if r == 0 and k < len(labels.columns):
                draw.text((centre, g["top"] - GAP_PX // 2), labels.columns[k], black, font, "md")
            caption = labels.tiles[r][k] if r < len(labels.tiles) else ()
            for j, line in enumerate(caption):
                draw.text((centre, y + t + 1 + j * LINE_PX), line, black, font, "ma")
        if r < len(labels.rows):
            draw.text((g["left"] - GAP_PX, y + t // 2), labels.rows[r], black, font, "rm")
        y += g["row_h"][r]
    return canvas


def save_png(
    grid: ArrayLike,
    path: str | os.PathLike[str],
    scale: int = 2,
    own_contrast: tuple[int, ...] = (),
    labels: Labels | None = None,
) -> Path:
    """A montage with one robust contrast for its generated panels, each pixel drawn
    ``scale`` x ``scale``. Columns in ``own_contrast`` (observed particles, much noisier than
    the generator's means) get a contrast of their own. ``labels``: text around the tiles
    (:class:`Labels`); without them the picture holds the tiles alone."""
    grid = np.asarray(grid, dtype=np.float64)
    cols = [k % grid.shape[1] for k in own_contrast]
    generated = np.delete(grid, cols, axis=1) if cols else grid
    pixels = to_uint8(grid, *contrast(generated))
    for k in cols:
        pixels[:, k] = to_uint8(grid[:, k], *contrast(grid[:, k]))
    render(pixels, scale, labels).save(path)
    return Path(path)


def gif_scale(frames: int, size: int, scale: int = 4) -> int:
    """The GIF's enlargement: ``scale``, or more when the frames are too small for the position
    track's marker to move at least one pixel per frame (:func:`save_gif`)."""
    return max(scale, math.ceil((frames + MARKER_PX) / size))


def save_gif(
    frames: ArrayLike,
    path: str | os.PathLike[str],
    scale: int = 4,
    ms: int = 80,
    positions: Sequence[float] | np.ndarray | None = None,
    captions: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Frames ``(T, C, D, D)`` as a looping GIF of exactly T frames, one contrast for all.

    Under each frame, a track with a marker at ``positions[i]`` (in [0, 1]: where frame i lies
    along its path; default i / (T - 1)) and, with ``captions``, the lines ``captions[i]`` (its
    z). Pillow writes two identical consecutive frames as one (their durations added), which
    would drop steps of a path whose frames differ little; the marker moves at least one
    pixel between frames whose positions differ by 1 / (T - 1) or more (:func:`gif_scale`), so
    every step stays a frame of its own. ``scale`` is the enlargement (at least
    :func:`gif_scale`)."""
    frames = np.asarray(frames, dtype=np.float64)
    n, c, d, _ = frames.shape
    scale = gif_scale(n, d, scale)
    pos = np.linspace(0, 1, n) if positions is None else np.clip(np.asarray(positions), 0, 1)
    lines = max((len(t) for t in captions), default=0) if captions is not None else 0
    w = d * scale
    lo, hi = contrast(frames)
    mode, white = ("L", 255) if c == 1 else ("RGB", (255,) * 3)
    grey, black = (160, 0) if c == 1 else ((160,) * 3, (0,) * 3)
    font = label_font()
    pics = []
    for i, f in enumerate(to_uint8(frames, lo, hi)):
        img = Image.fromarray(f[0] if c == 1 else np.moveaxis(f, 0, -1))
        canvas = Image.new(mode, (w, w + TRACK_PX + lines * LINE_PX), white)
        canvas.paste(img.resize((w, w), Image.Resampling.BILINEAR), (0, 0))
        draw = ImageDraw.Draw(canvas)
        mid = w + TRACK_PX // 2
        draw.line([(0, mid), (w - 1, mid)], fill=grey)
        x = round(float(pos[i]) * (w - MARKER_PX))
        draw.rectangle([x, w + 1, x + MARKER_PX - 1, w + TRACK_PX - 2], fill=black)
        for j, line in enumerate(captions[i] if captions is not None else ()):
            draw.text((w // 2, w + TRACK_PX + j * LINE_PX), line, black, font, "ma")
        pics.append(canvas)
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=ms, loop=0, optimize=False)
    return Path(path)


# ----------------------------------------------------------------------------- labels


def z_lines(z: ArrayLike, most: int = 3) -> list[str]:
    """Caption lines for one z: ``"z1 +0.53"``, one per dimension; beyond ``most``
    dimensions the first ``most - 1`` and a line saying how many more."""
    values = np.asarray(z, dtype=np.float64).reshape(-1)
    lines = [f"z{j + 1} {float(v):+.2f}" for j, v in enumerate(values)]
    return lines if len(lines) <= most else [*lines[: most - 1], f"+{len(lines) - most + 1} more"]
