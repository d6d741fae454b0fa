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
    images: Tensor,
    angle: Tensor,
    shift: Tensor,
    exact_border: bool = False,
    deform: Tensor | None = None,
) -> Tensor:
    """The particle in each image seen in its own frame: the inverse of posing a template.

    If ``images`` hold a template turned counter-clockwise by ``angle`` ``(B,)`` (radians) about
    the box centre and then moved by ``shift`` ``(B, 2)`` (coordinate units, +x right, +y up),
    the output is that template (up to interpolation). Each output pixel at coordinate u samples
    the input at ``rot(angle) u + shift``, bilinearly; where that point lies outside the box the
    output blends with 0, or with ``exact_border`` is 0 (as RELION's
    ``--apply_transformation``).

    ``deform`` ``(B, 2, 2)``: the template was first deformed about its centre by ``v -> v M``
    (row vectors, the affine pose's :func:`emvae.models.transform.affine_forward`); u then
    samples the input at ``rot(angle) (u M) + shift``, undoing that too.

    images: ``(B, C, H, W)``. Returns ``(B, C, H, W)``.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    # torch's grid has y pointing down: flip y on the way in and out of the rotation
    if deform is None:
        row_x = torch.stack([c, s, shift[:, 0]], -1)
        row_y = torch.stack([-s, c, -shift[:, 1]], -1)
    else:  # column form p = rot(angle) M^T u + shift, conjugated by the y flip
        lin = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        lin = lin @ deform.transpose(-1, -2).to(lin.dtype)
        row_x = torch.stack([lin[:, 0, 0], -lin[:, 0, 1], shift[:, 0]], -1)
        row_y = torch.stack([-lin[:, 1, 0], lin[:, 1, 1], -shift[:, 1]], -1)
    affine = torch.stack([row_x, row_y], -2).to(images.dtype)
    grid = F.affine_grid(affine, list(images.shape), align_corners=True)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if exact_border:
        inside = (grid.abs() <= 1 + 1e-6).all(-1, keepdim=True).permute(0, 3, 1, 2)
        out = out * inside
    return out
