"""Batched, on-device rotation of images (the inference network's rotation augmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rotate_images(images: Tensor, angle: Tensor) -> Tensor:
    """Rotate each image counter-clockwise by ``angle`` about the box centre.

    Counter-clockwise is meant with emvae's axes (+y up, row 0 at the top; docs/conventions.md,
    "Pixel coordinates (internal)"; the augmentation itself: "Rotation augmentation"):
    if ``images`` were rendered by the generator at pose ``(theta, dx)``, the output is (up to
    interpolation and the corners) the same template rendered at ``(theta - angle, dx)``.
    The rotation centre is coordinate 0, i.e. pixel ((W-1)/2, (H-1)/2). Outside the box is 0.

    images: ``(B, C, H, W)``; angle: ``(B,)`` radians. Returns ``(B, C, H, W)``.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    # Output pixel at (our) coordinate x samples the input at x rotated by -angle. torch's
    # normalised grid has y pointing down, which turns that into a rotation by +angle there.
    affine = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], -2)
    grid = F.affine_grid(affine.to(images.dtype), list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def align_images(
    images: Tensor, angle: Tensor, shift: Tensor, exact_border: bool = False
) -> Tensor:
    """The particle in each image seen in its own frame: the inverse of posing a template.

    If ``images`` hold a template turned counter-clockwise by ``angle`` ``(B,)`` (radians) about
    the box centre and then moved by ``shift`` ``(B, 2)`` (coordinate units, +x right, +y up),
    the output is that template (up to interpolation). Each output pixel at coordinate u samples
    the input at ``rot(angle) u + shift``, bilinearly; where that point lies outside the box the
    output blends with 0, or with ``exact_border`` is 0 (as RELION's
    ``--apply_transformation``).

    images: ``(B, C, H, W)``. Returns ``(B, C, H, W)``.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    # torch's grid has y pointing down: flip y on the way in and out of the rotation
    row_x = torch.stack([c, s, shift[:, 0]], -1)
    row_y = torch.stack([-s, c, -shift[:, 1]], -1)
    affine = torch.stack([row_x, row_y], -2).to(images.dtype)
    grid = F.affine_grid(affine, list(images.shape), align_corners=True)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if exact_border:
        inside = (grid.abs() <= 1 + 1e-6).all(-1, keepdim=True).permute(0, 3, 1, 2)
        out = out * inside
    return out
