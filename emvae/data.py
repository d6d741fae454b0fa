"""Moving a stack to the training device once (preprocessed, normalised), and splitting it."""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from emvae.errors import ConfigError
from emvae.io.stack import ImageStack
from emvae.preprocess import Prepared, Preprocess, iter_chunks, prepare

if TYPE_CHECKING:
    from emvae.progress import Advance


def default_pass_memory_mb(device: torch.device | str) -> int:
    """The generator's memory per pass (``TrainConfig.pass_memory_mb``) when none is given:
    :data:`emvae.config.PASS_MEMORY_MB` on a CPU (measured there: docs/benchmarks.md), a
    quarter of the GPU's memory on CUDA (a batch of 100 at 128 px then renders in one pass on
    a 40 GB card, rather than in 15)."""
    from emvae.config import PASS_MEMORY_MB

    dev = torch.device(device)
    if dev.type != "cuda":
        return PASS_MEMORY_MB
    total = torch.cuda.get_device_properties(dev).total_memory
    return max(PASS_MEMORY_MB, int(total // 4 // 2**20))


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


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make this process keep the memory torch frees on the CPU for reuse (glibc only).

    A training step on the CPU allocates and frees activations of hundreds of MB (batch x
    pixels x hidden units, float32). glibc serves blocks that large with ``mmap`` and returns
    them to the system when freed, so every step page-faults and zeroes them again: that cost
    more than a third of the paper's 40-px step on 2 cores (docs/benchmarks.md). With ``mmap``
    off and the heap never trimmed, freed blocks are reused; the peak memory is the same.
    ``EMVAE_MALLOC=system`` leaves the allocator as it is. Returns whether it was changed.
    """
    if os.environ.get("EMVAE_MALLOC", "") == "system":
        return False
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def load_images(
    stack: ImageStack,
    device: torch.device,
    prepared: Prepared | None = None,
    progress: Advance | None = None,
) -> Tensor:
    """Read, preprocess and copy the whole stack to ``device`` once: float32 ``(N, C, D, D)``.

    Images are read and preprocessed in chunks (see :func:`emvae.preprocess.iter_chunks`), so
    host memory beyond the result stays bounded. On CUDA, a stack that would take more than half
    the free GPU memory stays in pinned host memory and batches are copied as they are used (see
    :func:`gather`). ``progress``: optional callable receiving the number of images done.
    """
    prepared = prepared or prepare(stack, Preprocess())
    shape = (len(stack), prepared.channels, prepared.size, prepared.size)
    target = device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if 4 * int(np.prod(shape)) > free // 2:
            target = torch.device("cpu")
    out = torch.empty(shape, dtype=torch.float32, device=target)
    if target.type == "cpu" and device.type == "cuda":
        out = out.pin_memory()
    for start, chunk in iter_chunks(stack, prepared):
        out[start : start + len(chunk)] = torch.from_numpy(chunk).to(target)
        if progress is not None:
            progress(len(chunk))
    return out


def stream_statistics(stack: ImageStack, prepared: Prepared) -> tuple[float, float, float, float]:
    """Mean, standard deviation, minimum and maximum of the preprocessed stack, in one pass
    over the disk (float64 sums)."""
    return _statistics(chunk.astype(np.float64) for _, chunk in iter_chunks(stack, prepared))


def tensor_statistics(data: Tensor) -> tuple[float, float, float, float]:
    """Mean, standard deviation, minimum and maximum of every pixel (accumulated in float64)."""
    return _statistics(data[k : k + 4096].double() for k in range(0, data.shape[0], 4096))


def _statistics(chunks: Iterable[Any]) -> tuple[float, float, float, float]:
    """Mean, standard deviation, minimum and maximum of every value of ``chunks`` (float64
    arrays or tensors), from the sums of the values and of their squares."""
    total = total_sq = 0.0
    lo, hi, count = float("inf"), float("-inf"), 0
    for c in chunks:
        total, total_sq = total + float(c.sum()), total_sq + float((c * c).sum())
        lo, hi, count = min(lo, float(c.min())), max(hi, float(c.max())), count + math.prod(c.shape)
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean**2, 0.0))), lo, hi


def normalize_(data: Tensor, mean: float, std: float) -> Tensor:
    """``(data - mean) / std`` in place, chunk by chunk (no second copy of the stack)."""
    if mean == 0.0 and std == 1.0:
        return data
    for start in range(0, data.shape[0], 4096):
        data[start : start + 4096].sub_(mean).div_(std)
    return data


class StreamedImages:
    """The stack read from disk batch by batch (preprocessed and normalised as it is read), for
    stacks larger than memory; an emvae cache is memory-mapped, so this is a page-cache read.

    Stands in for the in-memory tensor: ``shape`` and :func:`gather` work on both. ``flip``
    ``(N, 10)``: CTF parameters whose phases each image has flipped as it is read (``--ctf
    phase-flip``, :func:`emvae.ctf.likelihood_ctf`), or None.
    """

    def __init__(self, stack: ImageStack, prepared: Prepared, mean: float = 0.0, std: float = 1.0):
        self.stack, self.prepared = stack, prepared
        self.mean, self.std = mean, std
        self.flip: np.ndarray | None = None
        self.shape = (len(stack), prepared.channels, prepared.size, prepared.size)
        self.device = torch.device("cpu")
        self.pin = torch.cuda.is_available()

    def flipped(self, params: np.ndarray) -> StreamedImages:
        """The same stack, with each image's phases flipped by its CTF ``params`` ``(N, 10)``
        as it is read."""
        out = copy.copy(self)
        out.flip = params
        return out

    def read(self, idx: np.ndarray) -> Tensor:
        """Images at ``idx`` (any order) as a float32 tensor, pinned when CUDA is present."""
        idx = np.asarray(idx, dtype=np.int64)
        x = self.prepared.apply(self.stack.images[idx], idx)
        t = (torch.from_numpy(x) - self.mean) / self.std
        if self.flip is not None:
            from emvae.ctf import phase_flip

            t = phase_flip(t, torch.from_numpy(self.flip[idx])).to(torch.float32)
        return t.pin_memory() if self.pin else t


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


#: A CPU fit reads a stack into memory up to this size (float32 bytes; 20,000 x 128^2 is
#: 1.3 GB) and streams a larger one, so that its memory stays bounded whatever the count.
IN_MEMORY_BYTES = 2 * 2**30


def should_stream(
    prepared: Prepared, n: int, mode: str = "auto", device: torch.device | str = "cpu"
) -> bool:
    """``on``/``off``, or ``auto``: stream when the preprocessed stack would take more than
    half the machine's memory as float32, or, training on a CPU, more than
    :data:`IN_MEMORY_BYTES`."""
    if mode != "auto":
        return mode == "on"
    need = 4 * n * prepared.channels * prepared.size**2
    if torch.device(device).type == "cpu" and need > IN_MEMORY_BYTES:
        return True
    total = memory_bytes()
    return bool(total) and need > total // 2


def pins(device: torch.device) -> bool:
    """Whether batches bound for ``device`` are staged in pinned (page-locked) host memory: on
    CUDA, so that their copy is asynchronous (``non_blocking``) and overlaps the step; never
    for a CPU, where pinning buys nothing (and needs CUDA)."""
    return torch.device(device).type == "cuda"


def to_device(batch: Tensor, device: torch.device) -> Tensor:
    """A host batch on ``device``: pinned first when :func:`pins` says so (unless it already
    is), then copied without making the host wait. A no-op for a batch already there."""
    if batch.device == device:
        return batch
    if pins(device) and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def gather(data: Tensor | StreamedImages, idx: Tensor, device: torch.device) -> Tensor:
    """Batch ``data[idx]`` on ``device`` (a no-op copy when the data already live there)."""
    if isinstance(data, StreamedImages):
        return to_device(data.read(idx.cpu().numpy()), device)
    return to_device(data[idx.to(data.device)], device)


class _Batches(torch.utils.data.Dataset[Tensor]):
    """Map-style dataset whose item ``k`` is the whole ``k``-th index batch of a streamed stack,
    so that a DataLoader with ``batch_size=None`` hands over batches read by its workers."""

    def __init__(self, data: StreamedImages, batches: list[np.ndarray]) -> None:
        self.data, self.batches = data, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Tensor:
        return self.data.read(self.batches[k])


def reader_count(requested: int | None, device: torch.device) -> int:
    """Processes that read a streamed stack (``--readers``): ``requested``, or by default one
    on a CPU (the other cores train) and one per spare core, up to 4, with CUDA. 0 (read in the
    training loop) where processes cannot be forked: a memory-mapped stack is not sent to
    spawned workers."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) - 1))


def prefetched(
    data: Tensor | StreamedImages, batches: list[Tensor], device: torch.device, readers: int = 1
) -> Iterator[Tensor]:
    """Yield ``gather(data, b, device)`` for each index batch.

    Streamed data are read by a ``torch.utils.data.DataLoader`` with ``readers`` forked
    worker processes, two batches ahead each (disk, preprocessing and pinning overlap the
    training step; ``emvae bench loader`` measured one worker as fast as a reading thread and
    two workers faster, docs/benchmarks.md); ``readers=0`` reads each batch when it is needed.
    """
    if not isinstance(data, StreamedImages):
        yield from (gather(data, b, device) for b in batches)
        return
    pin, data.pin = data.pin, False  # the loader pins in the main process
    loader = torch.utils.data.DataLoader(
        _Batches(data, [b.cpu().numpy() for b in batches]),
        **loader_options(readers, device, pin),
    )
    try:
        for x in loader:
            yield to_device(x, device)
    finally:
        data.pin = pin


def loader_options(readers: int, device: torch.device, pin: bool = True) -> dict[str, Any]:
    """The ``torch.utils.data.DataLoader`` settings of :func:`prefetched`: whole batches
    (``batch_size=None``), ``readers`` forked workers two batches ahead each, and pinned
    memory (the loader's pinning thread) when the batches go to CUDA (:func:`pins`) and
    ``pin`` allows."""
    return {
        "batch_size": None,
        "num_workers": readers,
        "pin_memory": pin and pins(device),
        "prefetch_factor": 2 if readers else None,
        "multiprocessing_context": "fork" if readers else None,
    }


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
