"""The in-memory description of an image stack, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImageStack:
    """Images plus where each one came from.

    images: ``(N, C, H, W)`` array, possibly a read-only memory map (never modified).
    names: ``N`` strings ``"k@path"`` with k 1-based (RELION's convention), in input order.
    apix: pixel size in Angstrom, or None when the file does not say.
    source: the file the user named.
    """

    images: np.ndarray
    names: list[str]
    apix: float | None
    source: str
    handle: Any = field(default=None, repr=False)  # keeps a memory-mapped file open

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Box size D (images are D x D)."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def nbytes_float32(self) -> int:
        """Bytes the stack takes as float32 (what training holds in memory)."""
        return int(np.prod(self.images.shape, dtype=np.int64)) * 4
