"""Inference networks.

``MLPEncoder`` (the paper's) and ``ConvEncoder`` return ``(means, log-stds)`` of a diagonal
Gaussian whose layout :meth:`emvae.models.SpatialVAE.encode` decides. ``EquivariantEncoder``
returns a :class:`BinnedPose`: a categorical posterior over R rotation bins with a Gaussian
in-bin offset, an image-frame shift and an invariant z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emvae.geometry import coordinate_grid
from emvae.models.generator import mlp
from emvae.models.groupconv import GroupConv, LiftingConv, symmetric_pool


class MLPEncoder(nn.Module):
    """MLP over the flattened image (the paper's inference network).

    Outputs ``n_mean`` values that parameterise the posterior means and ``n_logstd`` log-stds
    (their layout is decided by :meth:`emvae.models.SpatialVAE.encode`).
    """

    def __init__(
        self, n_in: int, hidden: int, layers: int, n_mean: int, n_logstd: int, activation: str
    ) -> None:
        super().__init__()
        self.n_mean = n_mean
        self.net = mlp(n_in, hidden, layers, n_mean + n_logstd, activation)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images ``(B, C, H, W)`` -> means ``(B, n_mean)``, log-stds ``(B, n_logstd)``."""
        out = self.net(images.flatten(1))
        return out[:, : self.n_mean], out[:, self.n_mean :]


def n_pools(size: int, smallest: int = 12) -> int:
    """How many times the conv encoders halve a ``size``-pixel map (until it is <= ``smallest``
    pixels; at least once): 28 -> 2, 40 -> 2, 64 -> 3, 128 -> 4."""
    n = 0
    while size > smallest or n == 0:
        size = (size + 1) // 2
        n += 1
    return n


class ConvEncoder(nn.Module):
    """Plain CNN: a 5 x 5 convolution, then (pool, 3 x 3 convolution) until the map is at most
    12 pixels wide (each convolution followed by per-channel normalisation and ReLU, as in the
    equivariant encoder), then an MLP on the flattened map. Same outputs as :class:`MLPEncoder`.

    ``width`` feature maps per layer (the equivariant encoder's F x R, so both run convolutions
    of the same size).
    """

    def __init__(
        self,
        size: int,
        channels: int,
        width: int,
        hidden: int,
        layers: int,
        n_mean: int,
        n_logstd: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.n_mean = n_mean
        mods: list[nn.Module] = [
            nn.Conv2d(channels, width, 5, padding="same"),
            nn.GroupNorm(width, width, affine=False),
            nn.ReLU(),
        ]
        side = size
        for _ in range(n_pools(size)):
            mods += [
                _Pool(),
                nn.Conv2d(width, width, 3, padding="same"),
                nn.GroupNorm(width, width, affine=False),
                nn.ReLU(),
            ]
            side = (side + 1) // 2
        self.features = nn.Sequential(*mods)
        self.head = mlp(width * side * side, hidden, layers, n_mean + n_logstd, activation)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images ``(B, C, H, W)`` -> means ``(B, n_mean)``, log-stds ``(B, n_logstd)``."""
        out = self.head(self.features(images).flatten(1))
        return out[:, : self.n_mean], out[:, self.n_mean :]


class _Pool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return symmetric_pool(x)


def _norm(h: Tensor) -> Tensor:
    """Normalise each channel of a group map ``(B, F, R, H, W)`` over its orientations and
    pixels together (statistics invariant under rotation, so equivariance is kept)."""
    f = h.shape[1]
    return F.group_norm(h.flatten(1, 2), f).unflatten(1, h.shape[1:3])


@dataclass
class BinnedPose:
    """Output of :class:`EquivariantEncoder` for B images and R rotation bins.

    z_mu, z_logstd ``(B, K)``; logits ``(B, R)`` (unnormalised log q(bin)); offset ``(B, R)``:
    the in-bin angle in radians, in (-pi/R, pi/R); angle_logstd ``(B, R)``: log-std of the
    angle within each bin; shift ``(B, 2)``: where the particle's centre lies in the image,
    coordinate units, +x right, +y up; shift_logstd ``(B, 1)`` (isotropic).
    Bin r is the image-frame rotation ``2 pi r / R + offset_r`` counter-clockwise.
    """

    z_mu: Tensor
    z_logstd: Tensor
    logits: Tensor
    offset: Tensor
    angle_logstd: Tensor
    shift: Tensor
    shift_logstd: Tensor


class EquivariantEncoder(nn.Module):
    """Rotation-equivariant inference network (after TARGET-VAE, Nasiri & Bepler 2022).

    A lifting convolution and group convolutions over R rotations (``(B, F, R, h, w)`` maps)
    give, per orientation, a logit, an in-bin offset and its log-std (one shared head over the
    orientation axis, so rotating the image by one bin shifts them by one bin). z and the
    log-stds of z and of the shift come from features pooled over space and orientations
    (invariant); the shift is the expectation of the pixel coordinates under a spatial softmax
    of orientation-pooled features (rotates with the image).
    """

    def __init__(
        self,
        size: int,
        channels: int,
        width: int,
        rotations: int,
        hidden: int,
        zdim: int,
        translation: bool,
    ) -> None:
        super().__init__()
        self.rotations, self.zdim, self.translation = rotations, zdim, translation
        self.lift = LiftingConv(channels, width, 5, rotations)
        self.convs = nn.ModuleList(
            GroupConv(width, width, 3, rotations) for _ in range(n_pools(size))
        )
        self.act = nn.ReLU()
        self.angle_head = nn.Sequential(  # circular over orientations: equivariant
            nn.Conv1d(2 * width, hidden, 3, padding=1, padding_mode="circular"),
            nn.ReLU(),
            nn.Conv1d(hidden, 3, 1),
        )
        self.invariant_head = mlp(2 * width, hidden, 1, 2 * zdim + 1, "relu")
        self.attention = nn.Conv2d(width, 1, 1)
        coords = coordinate_grid(size, size).T.reshape(1, 2, size, size)
        for _ in range(n_pools(size)):
            coords = symmetric_pool(coords)  # pooled cells keep their exact centres
        self.register_buffer("cell_coords", coords.flatten(2)[0].T.contiguous(), persistent=False)

    def forward(self, images: Tensor) -> BinnedPose:
        """images ``(B, C, D, D)`` -> :class:`BinnedPose`."""
        h = self.act(_norm(self.lift(images)))
        for conv in self.convs:
            f, r = h.shape[1:3]
            h = symmetric_pool(h.flatten(1, 2)).unflatten(1, (f, r))
            h = self.act(_norm(conv(h)))
        g = h.mean((-2, -1))  # (B, F, R)
        # what differs between orientations, scaled to unit size, so that the bin logits see
        # the orientation signal from the start (statistics over all bins: equivariant)
        contrast = g - g.mean(-1, keepdim=True)
        contrast = contrast * torch.rsqrt(contrast.square().mean((1, 2), keepdim=True) + 1e-6)
        a = self.angle_head(torch.cat([contrast, g], 1))  # (B, 3, R)
        half = math.pi / self.rotations
        offset = half * torch.tanh(a[:, 1])
        inv = self.invariant_head(torch.cat([g.amax(-1), g.mean(-1)], 1))
        k = self.zdim
        if self.translation:
            att = self.attention(h.amax(2)).flatten(1)  # (B, h*w)
            att = att.to(torch.promote_types(att.dtype, torch.float32)).softmax(-1)
            shift = att @ self.cell_coords.to(att.dtype)
        else:
            shift = images.new_zeros(images.shape[0], 2)
        return BinnedPose(
            z_mu=inv[:, :k],
            z_logstd=inv[:, k : 2 * k],
            logits=a[:, 0],
            offset=offset,
            angle_logstd=a[:, 2],
            shift=shift,
            shift_logstd=inv[:, 2 * k :],
        )
