"""Data-parallel training across processes launched by ``torchrun`` (one per GPU, or several
CPU processes with the gloo backend).

Every process holds the whole (preprocessed) stack and draws the same random numbers for each
global batch, of which it computes a contiguous share; DistributedDataParallel averages the
gradients. The loss is scaled so that the update equals a single process's on the same global
batch, whatever the shares' sizes. Only rank 0 writes outputs.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # a process group and DDP even for one process (EMVAE_DDP=1: what DDP costs, measured)
    grouped: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group is in use (several processes, or ``EMVAE_DDP=1``)."""
        return self.world > 1 or self.grouped

    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over all ranks (in place; a no-op alone)."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        """Wait for every process (a no-op for one)."""
        if self.active:
            dist.barrier()

    def gather(self, obj: T) -> list[T]:
        """The list of every rank's ``obj`` (rank order), on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


SINGLE = Dist()


def from_env(device_type: str = "cpu") -> Dist:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), initialising the
    process group once (NCCL for CUDA, gloo otherwise); a single process without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # EMVAE_DDP=1 under torchrun: a group (and DDP) for a single process too
    forced = os.environ.get("EMVAE_DDP") == "1" and "RANK" in os.environ
    if world <= 1 and not forced:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        # a process group left to the interpreter's teardown can abort the process (SIGABRT
        # from gloo's worker threads, pytorch/pytorch#179291): destroy it while Python lives
        atexit.register(_destroy)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(dist.get_rank(), dist.get_world_size(), local, grouped=forced)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def assemble(parts: list[tuple[np.ndarray, dict[str, np.ndarray]]], n: int) -> dict[str, Any]:
    """Per-rank (indices, arrays) -> arrays over all ``n`` items in index order."""
    keys = parts[0][1].keys()
    out = {}
    for k in keys:
        first = parts[0][1][k]
        full = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for idx, arrays in parts:
            full[idx] = arrays[k]
        out[k] = full
    return out
