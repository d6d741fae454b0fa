"""``emvae montage``: what the generator draws at theta = 0, dx = 0 as z moves.

Interpolations between particles (paper Fig. 6), the learned 1-D / 2-D manifold on an
inverse-normal-CDF grid (Figs. 3, 4), samples from the prior (Fig. 5), per-dimension traversals
(for larger K) and an animated GIF of the motion along a path. Grids are arrays
``(rows, cols, C, D, D)``; :func:`tile` lays them out and :func:`to_uint8` sets the contrast of
a whole montage from robust percentiles, so panels of one montage are comparable.

:class:`Labels` puts text around the tiles (column headers, row headers, lines under each
tile: the z of each panel, the θ of an observed particle); the ``*_labels`` functions give the
labels of each montage from the same z the panels are drawn at.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import norm
from torch import Tensor

from emvae.errors import ConfigError
from emvae.models import SpatialVAE, pixels_to_images
from emvae.objective import pixel_mean


@torch.no_grad()
def decode_mean(model: SpatialVAE, z: Tensor) -> Tensor:
    """Pixel means at theta = 0, dx = 0 for z ``(B, K)``: ``(B, C, D, D)`` (normalised units
    for a Gaussian model, [0, 1] for a Bernoulli one)."""
    params = model.canonical(z.to(next(model.parameters()).device))
    return pixels_to_images(pixel_mean(model.config, params), model.config.image_size).cpu()


@torch.no_grad()
def reconstruct(model: SpatialVAE, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image ``(B, C, D, D)`` (normalised, as the model sees it) encoded and drawn again:
    ``(rendered, z, pose)``. ``rendered`` ``(B, C, D, D)`` is the generator's mean at the
    posterior means of z ``(B, K)`` and of the pose ``(B, P)`` (model units, the layout of
    :class:`emvae.models.RigidTransform`; the most probable rotation bin with rotation bins),
    i.e. the particle as the model explains it, turned and shifted as it lies in the image.
    The CTF is not applied (the rendering is the CTF-free object)."""
    model.eval()
    x = images.to(next(model.parameters()).device, torch.float32)
    q = model.encode(x)
    params = model.decode(q.z_mu, q.pose_mu, full=True)
    rendered = pixels_to_images(pixel_mean(model.config, params), model.config.image_size)
    return rendered.cpu(), q.z_mu.cpu(), q.pose_mu.cpu()


def interpolation(
    model: SpatialVAE, z_a: Tensor, z_b: Tensor, observed: Tensor | None, steps: int = 8
) -> Tensor:
    """One row per pair: observed A (if given), the generator at ``steps`` equally spaced z
    from ``z_a`` to ``z_b`` (both included), observed B. ``z_a``, ``z_b``: ``(P, K)``;
    observed ``(P, 2, C, D, D)``. Returns ``(P, steps [+ 2], C, D, D)``."""
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)
    t = t[None, :, None]
    z = (1 - t) * z_a[:, None] + t * z_b[:, None]  # exactly z_a and z_b at the ends
    p, k = z_a.shape
    dec = decode_mean(model, z.reshape(p * steps, k)).reshape(p, steps, *_image_shape(model))
    if observed is None:
        return dec
    return torch.cat([observed[:, :1], dec, observed[:, 1:]], dim=1)


def quantile_grid(n: int, values: np.ndarray | None = None) -> np.ndarray:
    """``n`` values of z at the quantiles ``(i + 1/2) / n``: of the prior N(0, 1) (the paper's
    manifold grid), or of ``values`` ``(N,)`` (a dimension's posterior means: the range the
    particles actually cover)."""
    q = (np.arange(n) + 0.5) / n
    return norm.ppf(q) if values is None else np.quantile(np.asarray(values, np.float64), q)


def manifold_grids(k: int, n: int, z_data: np.ndarray | None = None) -> list[Tensor]:
    """The values of each z on the manifold grid: ``k`` tensors ``(n,)`` (increasing), at
    quantiles of the prior or of the particles' posterior means ``z_data`` ``(N, K)``."""
    if k not in (1, 2):
        raise ConfigError(f"the manifold grid is for 1-D or 2-D z; this model has {k}-D z")
    return [
        torch.tensor(
            quantile_grid(n, None if z_data is None else z_data[:, d]), dtype=torch.float32
        )
        for d in range(k)
    ]


def manifold(model: SpatialVAE, n: int = 10, z_data: np.ndarray | None = None) -> Tensor:
    """The learned manifold for K = 1 (one row of ``n``) or K = 2 (``n x n``; z1 along columns,
    z2 up the rows): ``(rows, n, C, D, D)``. The grid is at quantiles of the prior, or of the
    particles' posterior means ``z_data`` ``(N, K)`` when given (:func:`manifold_grids`)."""
    k = model.config.zdim
    grids = manifold_grids(k, n, z_data)
    if k == 1:
        return decode_mean(model, grids[0][:, None])[None]
    z2, z1 = torch.meshgrid(grids[1].flip(0), grids[0], indexing="ij")  # top row: largest z2
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)
    return decode_mean(model, z).reshape(n, n, *_image_shape(model))


def prior_z(k: int, rows: int = 8, cols: int = 8, seed: int = 0) -> Tensor:
    """The z :func:`prior_samples` draws from N(0, I): ``(rows * cols, k)``, row by row."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows * cols, k, generator=g)


def prior_samples(model: SpatialVAE, rows: int = 8, cols: int = 8, seed: int = 0) -> Tensor:
    """Generator means for z drawn from N(0, I) (:func:`prior_z`): ``(rows, cols, C, D, D)``."""
    z = prior_z(model.config.zdim, rows, cols, seed)
    return decode_mean(model, z).reshape(rows, cols, *_image_shape(model))


def traversals(
    model: SpatialVAE,
    n: int = 9,
    span: float = 2.5,
    dims: list[int] | None = None,
    z_data: np.ndarray | None = None,
) -> Tensor:
    """One row per latent dimension: that z from ``-span`` to ``span`` (prior std units), the
    others at 0; or, with the particles' posterior means ``z_data`` ``(N, K)``, from their 2nd
    to 98th percentile with the others at their medians. Returns ``(len(dims), n, C, D, D)``."""
    k = model.config.zdim
    dims = list(range(k)) if dims is None else dims
    z = traversal_z(k, n, span, dims, z_data)
    return decode_mean(model, z.reshape(-1, k)).reshape(len(dims), n, *_image_shape(model))


def traversal_z(
    k: int,
    n: int = 9,
    span: float = 2.5,
    dims: list[int] | None = None,
    z_data: np.ndarray | None = None,
) -> Tensor:
    """The z of :func:`traversals`: ``(len(dims), n, k)``."""
    dims = list(range(k)) if dims is None else dims
    if z_data is None:
        lo, hi, centre = np.full(k, -span), np.full(k, span), np.zeros(k)
    else:
        lo, hi = np.quantile(z_data, [0.02, 0.98], axis=0)
        centre = np.median(z_data, axis=0)
    z = torch.tensor(np.tile(centre, (len(dims), n, 1)), dtype=torch.float32)
    for row, d in enumerate(dims):
        z[row, :, d] = torch.linspace(float(lo[d]), float(hi[d]), n)
    return z


def principal_path(z_data: np.ndarray) -> Tensor:
    """``(2, K)``: the ends of the main axis of the particles' posterior means ``(N, K)`` (their
    first principal component through their mean, from its 2nd to its 98th percentile), the
    path along which the particles vary most."""
    z = np.asarray(z_data, dtype=np.float64)
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    t = (z - mean) @ vt[0]
    lo, hi = np.quantile(t, [0.02, 0.98])
    return torch.tensor(np.stack([mean + lo * vt[0], mean + hi * vt[0]]), dtype=torch.float32)


# ----------------------------------------------------------------------------- local metric


def _flat_mean(model: SpatialVAE, z: Tensor) -> Tensor:
    """Pixel means at theta = 0, dx = 0, flattened: z ``(B, K)`` -> ``(B, C * D * D)`` (the
    units of :func:`decode_mean`), differentiable in z."""
    mean = pixel_mean(model.config, model.canonical(z))
    return pixels_to_images(mean, model.config.image_size).flatten(1)


def canonical_jacobian(model: SpatialVAE, z: Tensor, batch: int = 64) -> Tensor:
    """The Jacobian of the pose-free image (the generator's pixel means at theta = 0,
    dx = 0, :func:`decode_mean`) with respect to z, at each z ``(n, K)``: ``(n, P, K)``,
    P = C * D * D pixel values, in (pixel-value units) per unit z (normalised units for a
    Gaussian model, probability for a Bernoulli one; z in prior standard-deviation units).

    Exact (automatic differentiation, no finite steps): one Jacobian-vector product per
    latent dimension over a batch of ``batch`` points at a time (each image depends on its
    own z only, so the product along e_k gives column k of every point's Jacobian); no loop
    over points. Computed on the model's device and dtype, returned on the CPU."""
    param = next(model.parameters())
    z = z.to(param.device, param.dtype)
    n, k = z.shape
    if k == 0:
        raise ConfigError("a model without latent dimensions has no Jacobian in z")
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, n, batch):
            zb = z[start : start + batch]
            cols = []
            for d in range(k):
                e = torch.zeros_like(zb)
                e[:, d] = 1.0
                cols.append(_jvp(functools.partial(_flat_mean, model), zb, e))
            out.append(torch.stack(cols, -1).detach().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def _jvp(f, x: Tensor, v: Tensor) -> Tensor:
    """``J_f(x) v`` for a batched ``f``, by the double-backward trick
    (:func:`torch.autograd.functional.jvp`: any layer with a backward rule; torch.func's
    forward mode would first script its decompositions with the deprecated torch.jit)."""
    with torch.enable_grad():
        return torch.autograd.functional.jvp(f, x, v)[1]


def singular_values(model: SpatialVAE, z: Tensor, batch: int = 64) -> Tensor:
    """The singular values of :func:`canonical_jacobian` at each z ``(n, K)``: ``(n, K)``,
    largest first: how far the image moves per unit step of z along the fastest and the
    slowest direction, (pixel-value units) per unit z (root of the summed squared change of
    every pixel, i.e. the Euclidean norm of the image's change)."""
    j = canonical_jacobian(model, z, batch).double()
    return torch.linalg.svdvals(j).to(torch.float32)


def local_metric(model: SpatialVAE, z: Tensor, batch: int = 64) -> Tensor:
    """The magnification factor ``sqrt(det(J^T J))`` of the decoder at each z ``(n, K)``:
    ``(n,)``, J ``(P, K)`` = :func:`canonical_jacobian`. The volume of image space swept per
    unit volume of z: the product of the K singular values (:func:`singular_values`), so
    ((pixel-value units) per unit z)^K; for K = 1 the image's speed along z. 0 where the
    image does not depend on z."""
    return singular_values(model, z, batch).double().prod(-1).to(torch.float32)


def metric_grid(
    model: SpatialVAE, n: int = 10, z_data: np.ndarray | None = None, batch: int = 64
) -> tuple[Tensor, Tensor]:
    """The local metric over the grid of :func:`manifold` (K = 2: cell ``(r, c)`` is tile
    ``(r, c)``, z1 along the columns, z2 up the rows; K = 1: one row): ``(magnification
    (rows, n), singular values (rows, n, K))`` (:func:`local_metric`,
    :func:`singular_values`)."""
    k = model.config.zdim
    grids = manifold_grids(k, n, z_data)
    if k == 1:
        z, rows = grids[0][:, None], 1
    else:
        z2, z1 = torch.meshgrid(grids[1].flip(0), grids[0], indexing="ij")
        z, rows = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1), n
    s = singular_values(model, z, batch)
    return s.double().prod(-1).float().reshape(rows, n), s.reshape(rows, n, k)


def _image_shape(model: SpatialVAE) -> tuple[int, int, int]:
    d = model.config.image_size
    return (model.config.channels, d, d)


# ----------------------------------------------------------------------------- pictures


def contrast(images: Tensor | np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple:
    """Display range (lo, hi) from robust percentiles of ``images``. Non-negative images
    (probabilities, RGB pictures) keep 0 as black, so that scaling leaves their hue alone."""
    a = np.asarray(images, dtype=np.float64)
    lo, hi = np.percentile(a, [low, high])
    if a.min() >= 0:
        lo = 0.0
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def to_uint8(images: Tensor | np.ndarray, lo: float, hi: float) -> np.ndarray:
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

    def geometry(self, rows: int, cols: int, tile_px: int, pad_px: int) -> dict:
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
        return picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )
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
    grid: Tensor | np.ndarray,
    path: str | os.PathLike,
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
    lo, hi = contrast(generated)
    pixels = to_uint8(grid, lo, hi)
    for k in cols:
        pixels[:, k] = to_uint8(grid[:, k], *contrast(grid[:, k]))
    render(pixels, scale, labels).save(path)
    return Path(path)


def gif_scale(frames: int, size: int, scale: int = 4) -> int:
    """The GIF's enlargement: ``scale``, or more when the frames are too small for the position
    track's marker to move at least one pixel per frame (:func:`save_gif`)."""
    return max(scale, math.ceil((frames + MARKER_PX) / size))


def save_gif(
    frames: Tensor | np.ndarray,
    path: str | os.PathLike,
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


def z_lines(z: Sequence[float] | np.ndarray | Tensor, most: int = 3) -> list[str]:
    """Caption lines for one z: ``"z1 +0.53"``, one per dimension; beyond ``most``
    dimensions the first ``most - 1`` and a line saying how many more."""
    z = [float(v) for v in np.asarray(z, dtype=np.float64).reshape(-1)]
    if len(z) > most:
        return [
            *(f"z{j + 1} {v:+.2f}" for j, v in enumerate(z[: most - 1])),
            f"+{len(z) - most + 1} more",
        ]
    return [f"z{j + 1} {v:+.2f}" for j, v in enumerate(z)]


def interpolation_labels(
    z_a: Tensor, z_b: Tensor, steps: int, observed: Sequence[Sequence[Sequence[str]]] = ()
) -> Labels:
    """Labels of :func:`interpolation`: each generated tile's z, the fraction t of the way
    from A to B above its column; ``observed[p]`` (two captions, for A and B of pair p: the
    particle's name and θ) under the observed ends when they are shown."""
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)
    z = (1 - t)[None, :, None] * z_a[:, None] + t[None, :, None] * z_b[:, None]
    tiles = [[z_lines(z[p, s]) for s in range(steps)] for p in range(len(z_a))]
    columns = [f"t {v:.2f}" for v in t.tolist()]
    if observed:
        tiles = [[list(observed[p][0]), *row, list(observed[p][1])] for p, row in enumerate(tiles)]
        columns = ["input", *columns, "input"]
    return Labels(columns=columns, tiles=tiles)


def manifold_labels(k: int, n: int, z_data: np.ndarray | None = None) -> Labels:
    """Labels of :func:`manifold`: z1 above each column; for 2-D z, z2 left of each row
    (largest at the top)."""
    grids = manifold_grids(k, n, z_data)
    columns = [f"z1 {v:+.2f}" for v in grids[0].tolist()]
    rows = [f"z2 {v:+.2f}" for v in grids[1].flip(0).tolist()] if k == 2 else []
    return Labels(columns=columns, rows=rows)


def traversal_labels(
    k: int,
    n: int = 9,
    span: float = 2.5,
    dims: list[int] | None = None,
    z_data: np.ndarray | None = None,
) -> Labels:
    """Labels of :func:`traversals`: the dimension left of each row, its value under each
    tile (the others are at their medians, or 0)."""
    dims = list(range(k)) if dims is None else dims
    z = traversal_z(k, n, span, dims, z_data)
    tiles = [[[f"{float(z[r, s, d]):+.2f}"] for s in range(n)] for r, d in enumerate(dims)]
    return Labels(rows=[f"z{d + 1}" for d in dims], tiles=tiles)


def prior_labels(k: int, rows: int = 8, cols: int = 8, seed: int = 0) -> Labels:
    """Labels of :func:`prior_samples`: each sample's z under it."""
    z = prior_z(k, rows, cols, seed).reshape(rows, cols, k)
    return Labels(tiles=[[z_lines(z[r, c]) for c in range(cols)] for r in range(rows)])


@dataclass
class PoseTraversal:
    """The poses of :func:`pose_traversals`: ``pose`` ``(rows, n, P)`` (model units, the layout
    of :class:`emvae.models.transform.DeformTransform`), each row's parameter name and each
    tile's value in user units (degrees, pixels, log-scale, shear)."""

    pose: Tensor
    names: list[str]
    values: list[list[str]]


def pose_traversal(model: SpatialVAE, n: int = 9, span: float = 2.0) -> PoseTraversal:
    """One row per pose parameter, the others at the identity: theta over a full turn; each
    shift over +-``span`` prior stds (pixels); log s_x, log s_y and the shear over the fitted
    prior's mean +- ``span`` of its stds; each spline control point's x and y displacement
    over +-``span`` prior stds (pixels)."""
    cfg = model.config
    h = (cfg.image_size - 1) / 2
    rows: list[tuple[str, int, np.ndarray, np.ndarray]] = []  # name, column, model, shown
    col = 0
    if cfg.rotation:
        deg = np.linspace(-180.0, 180.0, n, endpoint=False)
        rows.append(("theta", col, np.radians(-deg), deg))  # theta_deg = -theta
        col += 1
    if cfg.translation:
        px = np.linspace(-span, span, n) * cfg.shift_prior_px
        rows += [("dx px", col, px / h, px), ("dy px", col + 1, px / h, px)]
        col += 2
    if cfg.affine and model.affine_prior_mean is not None and model.affine_prior_logstd is not None:
        nu = model.affine_prior_mean.detach().cpu().double().numpy()
        tau = model.affine_prior_logstd.detach().cpu().double().exp().numpy()
        for j, name in enumerate(("log sx", "log sy", "shear")):
            v = nu[j] + np.linspace(-span, span, n) * tau[j]
            rows.append((name, col + j, v, v))
        col += 3
    if cfg.tps:
        px = np.linspace(-span, span, n) * cfg.tps_prior_px
        for k in range(cfg.tps_grid**2):
            for a, axis in enumerate("xy"):
                rows.append((f"d{k + 1}{axis} px", col + 2 * k + a, px / h, px))
    pose = torch.zeros(len(rows), n, model.transform.n_params)
    for r, (_, c, v, _) in enumerate(rows):
        pose[r, :, c] = torch.as_tensor(v, dtype=torch.float32)
    shown = [[f"{x:+.2f}" for x in row[3]] for row in rows]
    return PoseTraversal(pose, [row[0] for row in rows], shown)


@torch.no_grad()
def pose_traversals(
    model: SpatialVAE, n: int = 9, span: float = 2.0, z: Tensor | None = None
) -> Tensor:
    """The generator's mean along each pose parameter (:func:`pose_traversal`) at one z
    ``(K,)`` (0 when not given; e.g. the particles' median): ``(rows, n, C, D, D)``."""
    t = pose_traversal(model, n, span)
    rows = t.pose.shape[0]
    dev = next(model.parameters()).device
    k = model.config.zdim
    zz = torch.zeros(k) if z is None else torch.as_tensor(z, dtype=torch.float32)
    zs = zz.expand(rows * n, k).to(dev)
    params = model.decode(zs, t.pose.reshape(rows * n, -1).to(dev), full=True)
    mean = pixels_to_images(pixel_mean(model.config, params), model.config.image_size).cpu()
    return mean.reshape(rows, n, *_image_shape(model))


def pose_traversal_labels(model: SpatialVAE, n: int = 9, span: float = 2.0) -> Labels:
    """Labels of :func:`pose_traversals`: the parameter left of each row, its value under
    each tile (degrees, pixels, log-scale or shear)."""
    t = pose_traversal(model, n, span)
    return Labels(rows=t.names, tiles=[[[v] for v in row] for row in t.values])
