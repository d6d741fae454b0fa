"""Applying poses to images: the particle brought back onto the canonical view (batched)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def align_images(images: Tensor, theta_deg: Tensor, shift_px: Tensor) -> Tensor:
    """Undo each image's pose: the output is the canonical view, centred in the box.

    With the table's pose (``theta_deg``: counter-clockwise rotation of the particle, +y up;
    ``shift_px``: where the canonical centre lies, from the box centre ((W-1)/2, (H-1)/2), +x
    right, +y up), output pixel q (px from the centre) samples the input at ``q R(phi) + s``
    with ``phi = radians(theta_deg)`` and ``R`` of SPEC section 1 (bilinear, 0 outside).

    images: ``(B, C, D, D)``; theta_deg: ``(B,)``; shift_px: ``(B, 2)``. Returns ``(B, C, D, D)``.
    """
    h = (images.shape[-1] - 1) / 2
    phi = theta_deg.to(images.dtype) * (math.pi / 180)
    c, s = torch.cos(phi), torch.sin(phi)
    sx, sy = shift_px[:, 0].to(images.dtype) / h, shift_px[:, 1].to(images.dtype) / h
    # torch's normalised grid has y pointing down: flip the y rows and columns of the map.
    affine = torch.stack([torch.stack([c, s, sx], -1), torch.stack([-s, c, -sy], -1)], -2)
    grid = F.affine_grid(affine, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
