"""Pixel coordinates, rotations and the conversion of poses to the image frame.

Conventions (docs/conventions.md, "Pixel coordinates (internal)" to "What the tables report
(image frame)"), pinned by ``tests/test_geometry.py``:

* Pixel (row i, column j) of an H x W image has coordinate ``x = -1 + 2j/(W-1)``,
  ``y = 1 - 2i/(H-1)``: origin at the image centre, +x right, **+y up** (row 0 at the top).
  One pixel is ``2/(W-1)`` coordinate units; ``h = (W-1)/2`` pixels per unit.
* ``R(theta) = [[cos, sin], [-sin, cos]]`` acts on row vectors, so ``x R(theta)`` is ``x``
  rotated counter-clockwise by theta. The generator renders pixel ``x`` from template position
  ``x R(theta) + dx``.
* In the image frame (what users see) the particle is the canonical view rotated
  counter-clockwise by ``theta_deg = -theta`` and its centre lands at ``shift_px`` from the box
  centre (+x right, +y up, pixels).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

AngleT = TypeVar("AngleT", Tensor, np.ndarray, float)


def coordinate_grid(
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Coordinates of every pixel in row-major order.

    Returns
    -------
    Tensor of shape ``(H*W, 2)``: column 0 is x (right), column 1 is y (up), both in [-1, 1].
    """
    j = torch.arange(width, device=device, dtype=torch.float64)
    i = torch.arange(height, device=device, dtype=torch.float64)
    x = -1.0 + 2.0 * j / (width - 1)
    y = 1.0 - 2.0 * i / (height - 1)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(dtype)


def rotation_matrix(theta: Tensor) -> Tensor:
    """``R(theta) = [[cos, sin], [-sin, cos]]`` for row vectors.

    theta: ``(...,)`` radians. Returns ``(..., 2, 2)``.
    """
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def transform_coordinates(coords: Tensor, theta: Tensor | None, shift: Tensor | None) -> Tensor:
    """``x R(theta) + dx`` for every pixel of every image.

    coords: ``(N, 2)`` grid; theta: ``(B,)`` radians or None; shift: ``(B, 2)`` coordinate units
    or None. Returns ``(B, N, 2)`` (``(1, N, 2)`` when both are None).
    """
    out = coords.unsqueeze(0)
    if theta is not None:
        out = out @ rotation_matrix(theta)  # (1,N,2) @ (B,2,2) -> (B,N,2)
    if shift is not None:
        out = out + shift.unsqueeze(1)
    return out


def pixels_per_unit(size: int) -> float:
    """h = (D - 1) / 2: pixels in one coordinate unit for a D-pixel box."""
    return (size - 1) / 2.0


def mask_index(size: int, radius_px: float) -> Tensor:
    """Row-major indices ``(M,)`` of the pixels of a ``size``-px box within ``radius_px`` of its
    centre (the likelihood's mask)."""
    coords = coordinate_grid(size, size) * ((size - 1) / 2)  # pixels from the centre
    return torch.nonzero(coords.square().sum(-1).sqrt() <= radius_px).squeeze(1)


def wrap_degrees(deg: AngleT) -> AngleT:
    """Wrap angles in degrees to [-180, 180): a tensor, or a NumPy array (or float)."""
    if isinstance(deg, Tensor):
        return torch.remainder(deg + 180.0, 360.0) - 180.0
    wrapped: AngleT = np.mod(deg + 180.0, 360.0) - 180.0
    return wrapped


def wrap_radians(rad: np.ndarray | float) -> np.ndarray:
    """Wrap angles in radians (a NumPy array or float) to (-pi, pi]: the angle of
    ``exp(i rad)``."""
    wrapped: np.ndarray = np.angle(np.exp(1j * rad))
    return wrapped


def model_to_image_pose(theta: Tensor, shift: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Convert a model pose to the image frame (docs/conventions.md, "What the tables report
    (image frame)").

    theta: ``(B,)`` radians; shift: ``(B, 2)`` coordinate units; size: box size D.
    Returns ``theta_deg`` ``(B,)`` in [-180, 180) and ``shift_px`` ``(B, 2)``: the position of the
    canonical view's centre relative to the box centre, pixels, +x right, +y up. This solves
    ``x R(theta) + dx = 0`` for x.
    """
    h = pixels_per_unit(size)
    theta_deg = wrap_degrees(torch.rad2deg(-theta))
    # x = -dx R(theta)^T = -dx R(-theta); R(-theta) = R(theta)^T
    shift_px = -h * (shift.unsqueeze(1) @ rotation_matrix(theta).transpose(-1, -2)).squeeze(1)
    return theta_deg, shift_px


def image_to_model_pose(theta_deg: Tensor, shift_px: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`model_to_image_pose`: image-frame pose -> (theta rad, dx units)."""
    h = pixels_per_unit(size)
    theta = torch.deg2rad(-theta_deg)
    shift = -(shift_px / h).unsqueeze(1) @ rotation_matrix(theta)
    return theta, shift.squeeze(1)


def shift_std_to_image(theta: Tensor, shift_std: Tensor, size: int) -> Tensor:
    """Propagate the shift posterior std (coordinate units, ``(B, 2)``) to image-frame pixels.

    Linear propagation through the rotation at the posterior mean theta (theta's own
    uncertainty is ignored). Returns ``(B, 2)`` pixels.
    """
    h = pixels_per_unit(size)
    r2 = rotation_matrix(theta) ** 2  # (B,2,2)
    var = (shift_std**2).unsqueeze(1) @ r2.transpose(-1, -2)
    return h * var.squeeze(1).sqrt()
