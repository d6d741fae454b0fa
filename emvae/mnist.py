"""MNIST from IDX files, and the paper's rotated / rotated + translated variants (section 4.2).

Reads the standard four-file layout (``train-images-idx3-ubyte.gz`` ...) or a 10k training
subset in the same format (``train10k-*``), gzip or not. Nothing here downloads.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emvae.errors import InputError

# the paper's transformations (section 4.2): theta ~ N(0, pi^2/16); shifts ~ N(0, 1.4^2) px
# (rotated) or N(0, 14^2) px (rotated + translated)
THETA_STD_DEG = 45.0
SHIFT_STD_PX = {"mnist": 0.0, "rotated": 1.4, "rotated_translated": 14.0}
DATASETS = tuple(SHIFT_STD_PX)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """One IDX file (``.gz`` or not) as a numpy array (uint8 images ``(N, 28, 28)``, labels)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(p, f"not a readable IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(p, "not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise InputError(p, f"holds {data.size} values; its header promises {int(np.prod(dims))}")
    return data.reshape(dims)


def _find(folder: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for suffix in (".gz", ""):
            p = folder / f"{stem}{suffix}"
            if p.exists():
                return p
    raise InputError(folder, f"has no {stems[0]}[.gz]")


def load_mnist(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``train_images`` ``(N, 28, 28)`` uint8, ``train_labels``, ``test_images``,
    ``test_labels`` from a folder with the four standard files, or the 10k training subset."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(d, "is not a folder of MNIST IDX files")
    out = {
        "train_images": read_idx(
            _find(d, ("train-images-idx3-ubyte", "train10k-images-idx3-ubyte"))
        ),
        "train_labels": read_idx(
            _find(d, ("train-labels-idx1-ubyte", "train10k-labels-idx1-ubyte"))
        ),
        "test_images": read_idx(_find(d, ("t10k-images-idx3-ubyte",))),
        "test_labels": read_idx(_find(d, ("t10k-labels-idx1-ubyte",))),
    }
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise InputError(d, f"{split} images and labels differ in number")
    return out


def transform_digits(
    images: np.ndarray,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    canvas: int = 28,
    chunk: int = 4096,
) -> np.ndarray:
    """Digits ``(N, 28, 28)`` (uint8 or [0, 1]) rotated counter-clockwise by ``theta_deg``
    (+y up) and moved by ``shift_px`` (+x right, +y up) on a ``canvas x canvas`` field, with
    bilinear interpolation (batched). Returns float32 ``(N, canvas, canvas)`` in [0, 1]."""
    x = np.asarray(images, dtype=np.float32)
    if x.max() > 1.0:
        x = x / 255.0
    n, d = x.shape[0], x.shape[-1]
    if canvas < d:
        raise ValueError("the canvas must be at least as large as the digits")
    pad = canvas - d
    out = np.empty((n, canvas, canvas), dtype=np.float32)
    h = (canvas - 1) / 2
    for s in range(0, n, chunk):
        t = torch.from_numpy(
            np.pad(
                x[s : s + chunk], ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2))
            )
        )[:, None]
        a = torch.deg2rad(torch.as_tensor(theta_deg[s : s + chunk], dtype=torch.float32))
        sh = torch.as_tensor(shift_px[s : s + chunk], dtype=torch.float32) / h
        c, si = torch.cos(a), torch.sin(a)
        # output point p samples the input at R(-a) (p - shift), in torch's y-down grid
        tx, ty = sh[:, 0], -sh[:, 1]
        affine = torch.stack(
            [
                torch.stack([c, -si, -(c * tx - si * ty)], -1),
                torch.stack([si, c, -(si * tx + c * ty)], -1),
            ],
            -2,
        )
        grid = F.affine_grid(affine, list(t.shape), align_corners=True)
        out[s : s + chunk] = F.grid_sample(t, grid, align_corners=True)[:, 0].numpy()
    return np.clip(out, 0.0, 1.0)


def make_dataset(
    digits: np.ndarray, name: str, seed: int = 0, canvas: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's variant ``name`` (``mnist``, ``rotated``, ``rotated_translated``) of
    ``digits``: (images ``(N, canvas, canvas)`` float32 in [0, 1], theta_deg, shift_px)."""
    if name not in SHIFT_STD_PX:
        raise ValueError(f"unknown MNIST variant {name!r}")
    n = len(digits)
    canvas = canvas or digits.shape[-1]
    if name == "mnist":
        theta, shift = np.zeros(n), np.zeros((n, 2))
    else:
        rng = np.random.default_rng(seed)
        theta = rng.normal(0.0, THETA_STD_DEG, n)
        shift = rng.normal(0.0, SHIFT_STD_PX[name], (n, 2))
    images = transform_digits(digits, theta, shift, canvas)
    return images, theta, shift


__all__ = ["DATASETS", "load_mnist", "make_dataset", "read_idx", "transform_digits"]
