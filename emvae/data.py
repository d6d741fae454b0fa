"""Moving a stack to the training device once, normalising it, and splitting it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from emvae.errors import ConfigError, InputError
from emvae.io.stack import ImageStack

CHUNK = 4096  # images read from disk at a time


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return dev


def image_statistics(stack: ImageStack) -> tuple[float, float, float, float]:
    """Mean, standard deviation, minimum and maximum of every pixel (float64, read in chunks).

    Raises :class:`InputError` naming the first image holding NaN or infinite values.
    """
    total = total_sq = 0.0
    lo, hi = np.inf, -np.inf
    count = 0
    for start in range(0, len(stack), CHUNK):
        chunk = np.asarray(stack.images[start : start + CHUNK], dtype=np.float64)
        _check_finite(stack, chunk, start)
        total += float(chunk.sum())
        total_sq += float(np.square(chunk).sum())
        count += chunk.size
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    mean = total / count
    var = max(total_sq / count - mean**2, 0.0)
    std = float(np.sqrt(var))
    if not std > 0:
        raise InputError(stack.source, "every pixel has the same value; nothing to learn")
    return mean, std, lo, hi


def load_images(
    stack: ImageStack,
    device: torch.device,
    mean: float = 0.0,
    std: float = 1.0,
    indices: np.ndarray | None = None,
) -> Tensor:
    """Copy (a subset of) the stack to ``device`` once, as float32 ``(N, C, D, D)``.

    Pixels become ``(value - mean) / std``. On CUDA, a stack that would take more than half the
    free GPU memory stays in pinned host memory and batches are copied as they are used (see
    :func:`gather`).
    """
    idx = np.arange(len(stack)) if indices is None else np.asarray(indices)
    shape = (len(idx), *stack.images.shape[1:])
    target = device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if 4 * int(np.prod(shape)) > free // 2:
            target = torch.device("cpu")
    out = torch.empty(shape, dtype=torch.float32, device=target)
    if target.type == "cpu" and device.type == "cuda":
        out = out.pin_memory()
    for start in range(0, len(idx), CHUNK):
        sel = idx[start : start + CHUNK]
        rows = stack.images[start : start + CHUNK] if indices is None else stack.images[sel]
        chunk = np.array(rows, dtype=np.float32)  # a writable, native-endian copy
        _check_finite(stack, chunk, start, sel)
        t = torch.from_numpy(chunk).to(target)
        out[start : start + len(sel)] = (t - mean) / std
    return out


def gather(data: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    """Batch ``data[idx]`` on ``device`` (a no-op copy when the data already live there)."""
    if data.device == device:
        return data[idx.to(device)]
    return data[idx.to(data.device)].to(device, non_blocking=True)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test split of ``n`` images, reproducible from ``seed``.

    Returns sorted 0-based (train, test) indices; the test set has at least one image and the
    training set keeps at least one.
    """
    if n < 2:
        raise ValueError("a train/test split needs at least 2 images")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _check_finite(
    stack: ImageStack, chunk: np.ndarray, start: int, sel: np.ndarray | None = None
) -> None:
    ok = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
    if not ok.all():
        first = int(np.argmin(ok))
        k = int(sel[first]) if sel is not None else start + first
        raise InputError(stack.source, f"image {k + 1} contains NaN or infinite values")
