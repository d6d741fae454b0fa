"""Find what would make a CUDA training step wait for the GPU, on any device (a CPU included).

A CUDA step runs ahead of the GPU only while the host never needs a value the GPU computes.
These operations break that, and each one appears in PyTorch's dispatcher whatever the device,
so a CPU run of the step can count them:

* a tensor read into Python: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` (hence ``if t:``
  and any other Python branch on a tensor's value) all dispatch ``aten._local_scalar_dense``;
  ``.tolist()``, ``.numpy()`` and ``.cpu()`` are counted where they are called;
* an output whose shape depends on the values (``nonzero``, boolean-mask indexing,
  ``masked_select``, ``unique``, ``repeat_interleave`` with a tensor of counts): the host needs
  the size before it can allocate the result;
* a tensor built from host data inside the step (``torch.tensor(...)``: ``aten.lift_fresh``):
  on CUDA an unpinned host-to-device copy, which PyTorch makes synchronous.

What it cannot see on a CPU: a tensor made on the CPU and moved with ``.to(device)`` (the move
is a no-op there; keep such tensors as buffers or make them on the device), and what a CUDA
kernel does inside. On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` is the complement
(:func:`emvae.gpucheck.cuda_sync_warnings`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

R = TypeVar("R")

__all__ = ["HostSyncCounter", "count_host_syncs"]

#: aten operations (overload packets) that make the host wait for the device, and why
SYNC_OPS: dict[str, str] = {
    "_local_scalar_dense": "a value read into Python (.item(), float(), int(), bool(), if t)",
    "nonzero": "an output shape set by the values (nonzero)",
    "nonzero_static": "",  # static size: no sync; listed so that it is not mistaken
    "masked_select": "an output shape set by the values (masked_select)",
    "_unique2": "an output shape set by the values (unique)",
    "unique_consecutive": "an output shape set by the values (unique_consecutive)",
    "unique_dim": "an output shape set by the values (unique)",
    "lift_fresh": "a tensor made from host data (torch.tensor): a host-to-device copy",
}


class HostSyncCounter(TorchDispatchMode):
    """Counts, by cause, the operations run under it that would block the host on a GPU
    (module docstring). Use as a context manager, then read :attr:`counts` (a
    :class:`collections.Counter` of causes) or :attr:`total`.

    ``ignore``: tensors whose reads are not device syncs on a GPU either (e.g. Adam's step
    counters, which live on the CPU unless ``capturable``); compared by identity.
    """

    def __init__(self, ignore: list[torch.Tensor] | None = None) -> None:
        TorchDispatchMode.__init__(self)
        self.counts: Counter[str] = Counter()
        self._ignore = {id(t) for t in ignore or []}
        self._patches: contextlib.ExitStack | None = None

    @property
    def total(self) -> int:
        """Host syncs counted, all causes together."""
        return sum(self.counts.values())

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name == "index" and _bool_index(args):
            self.counts["an output shape set by the values (boolean-mask indexing)"] += 1
        elif name == "repeat_interleave" and args and isinstance(args[0], torch.Tensor):
            if "output_size" not in kwargs and args[0].dtype == torch.long and len(args) == 1:
                self.counts["an output shape set by the values (repeat_interleave counts)"] += 1
        elif SYNC_OPS.get(name) and not (args and id(args[0]) in self._ignore):
            self.counts[SYNC_OPS[name]] += 1
        return func(*args, **kwargs)

    def __enter__(self) -> HostSyncCounter:
        self._patches = contextlib.ExitStack()
        for method in ("tolist", "numpy", "cpu"):
            self._patches.enter_context(_counted(self, method))
        TorchDispatchMode.__enter__(self)  # (which returns self)
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        out: bool | None = TorchDispatchMode.__exit__(self, *exc)
        if self._patches is not None:
            self._patches.close()
        return out


def _bool_index(args: tuple[Any, ...]) -> bool:
    """Whether an ``aten.index`` call indexes with a boolean mask."""
    if len(args) < 2:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or [])


@contextlib.contextmanager
def _counted(counter: HostSyncCounter, method: str) -> Iterator[None]:
    """Replace ``torch.Tensor.<method>`` by a version that counts its calls, for the block."""
    original = getattr(torch.Tensor, method)

    def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if id(self) not in counter._ignore:
            counter.counts[f"a tensor copied to the host (.{method}())"] += 1
        return original(self, *args, **kwargs)

    setattr(torch.Tensor, method, wrapper)
    try:
        yield
    finally:
        setattr(torch.Tensor, method, original)


def optimizer_counters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The host-side step counters of ``optimizer`` (Adam keeps each parameter's ``step`` as a
    CPU scalar unless ``capturable`` or ``fused``): reading them is no device sync."""
    out = []
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.device.type == "cpu":
            out.append(step)
    return out


def count_host_syncs(
    fn: Callable[..., R], *args: Any, ignore: list[torch.Tensor] | None = None, **kwargs: Any
) -> tuple[R, Counter[str]]:
    """``(fn(*args, **kwargs), counts)``: the result and the :class:`HostSyncCounter` counts of
    one call."""
    with HostSyncCounter(ignore) as counter:
        result = fn(*args, **kwargs)
    return result, counter.counts
