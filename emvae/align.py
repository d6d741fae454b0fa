"""Applying poses to images: the particle brought back onto the canonical view (batched)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from emvae.augment import align_images as _align
from emvae.errors import ConfigError
from emvae.io.mrc import new_stack_mmap
from emvae.safety import atomic_output

if TYPE_CHECKING:
    from emvae.io.stack import ImageStack
    from emvae.progress import Advance


def align_images(images: Tensor, theta_deg: Tensor, shift_px: Tensor) -> Tensor:
    """Undo each image's pose: the output is the canonical view, centred in the box.

    With the table's pose (``theta_deg``: counter-clockwise rotation of the particle, +y up;
    ``shift_px``: where the canonical centre lies, from the box centre ((W-1)/2, (H-1)/2), +x
    right, +y up), output pixel q (px from the centre) samples the input at ``q R(phi) + s``
    with ``phi = radians(theta_deg)`` and ``R`` of docs/conventions.md, "The model's pose":
    bilinear, and 0 where that
    point lies outside the box, which is what RELION's ``--apply_transformation`` computes.

    images: ``(B, C, D, D)``; theta_deg: ``(B,)``; shift_px: ``(B, 2)``. Returns ``(B, C, D, D)``.
    """
    h = (images.shape[-1] - 1) / 2  # pixels per coordinate unit
    angle = theta_deg.to(images.dtype) * (math.pi / 180)
    return _align(images, angle, shift_px.to(images.dtype) / h, exact_border=True)


def align_stack(
    stack: ImageStack,
    theta_deg: np.ndarray,
    shift_px: np.ndarray,
    out: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    advance: Advance | None = None,
) -> np.ndarray:
    """Write ``stack`` aligned by its poses (:func:`align_images`) to ``out`` (float32 MRCS,
    streamed in batches) and return the average ``(C, D, D)``.

    stack: an :class:`emvae.io.ImageStack` of single-channel images; theta_deg ``(N,)`` and
    shift_px ``(N, 2)`` in the stack's pixels (the per-particle table's columns).
    """
    from emvae.preprocess import Preprocess, iter_chunks, prepare

    if stack.channels != 1:
        raise ConfigError(f"{stack.source}: MRC output holds one channel, not {stack.channels}")
    n, d = len(stack), stack.size
    total = torch.zeros(1, d, d, dtype=torch.float64, device=device)
    theta = torch.tensor(np.asarray(theta_deg, dtype=np.float64))
    shift = torch.tensor(np.asarray(shift_px, dtype=np.float64))
    path = Path(out)
    with atomic_output(path) as tmp:
        with new_stack_mmap(tmp, path, n, d) as mrc:
            for start, chunk in iter_chunks(stack, prepare(stack, Preprocess()), batch_size):
                sel = slice(start, start + len(chunk))
                x = torch.from_numpy(chunk).to(device, torch.float64)
                a = align_images(x, theta[sel].to(device), shift[sel].to(device))
                total += a.sum(0)
                mrc.data[sel] = a[:, 0].float().cpu().numpy()
                if advance is not None:
                    advance(len(chunk))
            if stack.apix:
                mrc.voxel_size = stack.apix
            mrc.reset_header_stats()
    return (total / n).float().cpu().numpy()
