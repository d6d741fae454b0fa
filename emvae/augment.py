"""Batched, on-device rotation of images (the inference network's rotation augmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rotate_images(images: Tensor, angle: Tensor) -> Tensor:
    """Rotate each image counter-clockwise by ``angle`` about the box centre.

    Counter-clockwise is meant with emvae's axes (+y up, row 0 at the top; SPEC section 1):
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
