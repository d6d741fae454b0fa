"""Coordinate transforms: which pose latents the model infers and how they move the pixel grid.

A transform is the interchangeable part between the inference network's pose outputs and the
generator's input coordinates. Later transforms (affine, thin-plate) implement the same three
members: ``n_params``, ``split`` and ``forward``.
"""

from __future__ import annotations

from torch import Tensor, nn

from emvae.geometry import transform_coordinates


class RigidTransform(nn.Module):
    """In-plane rotation and/or translation, ``x R(theta) + dx`` (paper eq. 2).

    The pose vector of one image is laid out as ``[theta]`` (if rotation) followed by
    ``[dx, dy]`` (if translation): theta in radians, shifts in coordinate units.
    """

    def __init__(self, rotation: bool = True, translation: bool = True) -> None:
        super().__init__()
        self.rotation = rotation
        self.translation = translation

    @property
    def n_params(self) -> int:
        return int(self.rotation) + 2 * int(self.translation)

    def split(self, pose: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """pose ``(B, n_params)`` -> theta ``(B,)`` or None, shift ``(B, 2)`` or None."""
        theta = pose[:, 0] if self.rotation else None
        shift = pose[:, int(self.rotation) :] if self.translation else None
        return theta, shift

    def forward(self, coords: Tensor, pose: Tensor) -> Tensor:
        """coords ``(N, 2)``, pose ``(B, n_params)`` -> transformed coords ``(B, N, 2)``."""
        theta, shift = self.split(pose)
        out = transform_coordinates(coords, theta, shift)
        return out.expand(pose.shape[0], -1, -1)
