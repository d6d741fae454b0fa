"""``emvae montage``: what the generator draws at theta = 0, dx = 0 as z moves.

Interpolations between particles (paper Fig. 6), the learned 1-D / 2-D manifold on an
inverse-normal-CDF grid (Figs. 3, 4), samples from the prior (Fig. 5), per-dimension traversals
(for larger K) and an animated GIF of the motion along a path. Grids are arrays
``(rows, cols, C, D, D)``; :func:`tile` lays them out and :func:`to_uint8` sets the contrast of
a whole montage from robust percentiles, so panels of one montage are comparable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
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


def manifold(model: SpatialVAE, n: int = 10, z_data: np.ndarray | None = None) -> Tensor:
    """The learned manifold for K = 1 (one row of ``n``) or K = 2 (``n x n``; z1 along columns,
    z2 up the rows): ``(rows, n, C, D, D)``. The grid is at quantiles of the prior, or of the
    particles' posterior means ``z_data`` ``(N, K)`` when given."""
    k = model.config.zdim
    if k not in (1, 2):
        raise ConfigError(f"the manifold grid is for 1-D or 2-D z; this model has {k}-D z")
    grids = [
        torch.tensor(
            quantile_grid(n, None if z_data is None else z_data[:, d]), dtype=torch.float32
        )
        for d in range(k)
    ]
    if k == 1:
        return decode_mean(model, grids[0][:, None])[None]
    z2, z1 = torch.meshgrid(grids[1].flip(0), grids[0], indexing="ij")  # top row: largest z2
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)
    return decode_mean(model, z).reshape(n, n, *_image_shape(model))


def prior_samples(model: SpatialVAE, rows: int = 8, cols: int = 8, seed: int = 0) -> Tensor:
    """Generator means for z drawn from N(0, I): ``(rows, cols, C, D, D)``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows * cols, model.config.zdim, generator=g)
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
    if z_data is None:
        lo, hi, centre = np.full(k, -span), np.full(k, span), np.zeros(k)
    else:
        lo, hi = np.quantile(z_data, [0.02, 0.98], axis=0)
        centre = np.median(z_data, axis=0)
    z = torch.tensor(np.tile(centre, (len(dims), n, 1)), dtype=torch.float32)
    for row, d in enumerate(dims):
        z[row, :, d] = torch.linspace(float(lo[d]), float(hi[d]), n)
    return decode_mean(model, z.reshape(-1, k)).reshape(len(dims), n, *_image_shape(model))


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


def save_png(
    grid: Tensor | np.ndarray,
    path: str | os.PathLike,
    scale: int = 2,
    own_contrast: tuple[int, ...] = (),
) -> Path:
    """A montage with one robust contrast for its generated panels, each pixel drawn
    ``scale`` x ``scale``. Columns in ``own_contrast`` (observed particles, much noisier than
    the generator's means) get a contrast of their own."""
    grid = np.asarray(grid, dtype=np.float64)
    cols = [k % grid.shape[1] for k in own_contrast]
    generated = np.delete(grid, cols, axis=1) if cols else grid
    lo, hi = contrast(generated)
    pixels = to_uint8(grid, lo, hi)
    for k in cols:
        pixels[:, k] = to_uint8(grid[:, k], *contrast(grid[:, k]))
    picture = Image.fromarray(tile(pixels))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    picture.save(path)
    return Path(path)


def save_gif(
    frames: Tensor | np.ndarray, path: str | os.PathLike, scale: int = 4, ms: int = 80
) -> Path:
    """Frames ``(T, C, D, D)`` as a looping GIF with one contrast for all frames."""
    lo, hi = contrast(frames)
    pics = []
    for f in to_uint8(frames, lo, hi):
        img = Image.fromarray(f[0] if f.shape[0] == 1 else np.moveaxis(f, 0, -1))
        pics.append(img.resize((img.width * scale, img.height * scale), Image.Resampling.BILINEAR))
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=ms, loop=0)
    return Path(path)
