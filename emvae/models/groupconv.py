"""Group convolutions over R in-plane rotations (the p4/p8/p16 groups), with rotated filter banks.

A feature map of the rotation group has shape ``(B, F, R, H, W)``: F channels for each of R
orientations. Orientation r belongs to filters rotated counter-clockwise by ``2 pi r / R``
(emvae's axes: +y up, row 0 at the top). Rotating the input image counter-clockwise by
``2 pi / R`` rotates every output map by the same angle and moves orientation r to r + 1
(cyclically); the layers here keep that property, exactly for rotations by multiples of 90
degrees and up to the pixel grid's sampling for R = 8 and 16 (pinned by
``tests/test_encoders.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def steerable_basis(k: int, angle: float = 0.0, width: float = 0.6) -> Tensor:
    """Smooth filter basis on a k x k grid, rotated counter-clockwise by ``angle`` (radians).

    Rings of radius 0, 1, ..., (k-1)/2 pixels (Gaussian profile of std ``width``) times circular
    harmonics cos(m phi), sin(m phi) with m up to 2 (radius 1) or 3 (larger radii), so that no
    harmonic is finer than the ring's pixels can carry. A filter is a weighted sum of these
    functions; evaluating them at rotated positions rotates it without interpolation blur (so
    every orientation has the same filter energy), and 90 degree rotations are exact on the
    grid. Returns ``(n_basis, k, k)``, each function of unit norm at angle 0.
    """
    c = (k - 1) / 2.0
    i = torch.arange(k, dtype=torch.float64)
    x = (i - c)[None, :].expand(k, k)
    y = (c - i)[:, None].expand(k, k)
    cos, sin = math.cos(angle), math.sin(angle)
    xs, ys = x * cos + y * sin, -x * sin + y * cos  # the output at x shows the filter at x R(-a)
    r, phi = torch.hypot(xs, ys), torch.atan2(ys, xs)
    r0, phi0 = torch.hypot(x, y), torch.atan2(y, x)  # unrotated, for the normalisation
    funcs = []
    for ring in range(int(c) + 1):
        m_max = 0 if ring == 0 else (2 if ring == 1 else 3)
        for m in range(m_max + 1):
            for trig in (torch.cos, torch.sin) if m else (torch.cos,):
                f = torch.exp(-((r - ring) ** 2) / (2 * width**2)) * trig(m * phi)
                f0 = torch.exp(-((r0 - ring) ** 2) / (2 * width**2)) * trig(m * phi0)
                if m:  # harmonics vanish at the centre, where phi is undefined
                    f, f0 = f * (r > 0.5), f0 * (r0 > 0.5)
                funcs.append(f / f0.norm())
    return torch.stack(funcs)


class _RotatedBank(nn.Module):
    """The steerable basis of a k x k filter sampled at each of the R rotations."""

    basis: Tensor

    def __init__(self, k: int, rotations: int) -> None:
        super().__init__()
        self.k, self.rotations = k, rotations
        bases = [steerable_basis(k, 2 * math.pi * r / rotations) for r in range(rotations)]
        self.register_buffer("basis", torch.stack(bases).float(), persistent=False)  # (R,nb,k,k)

    @property
    def size(self) -> int:
        """Number of basis functions (coefficients per filter)."""
        return self.basis.shape[1]

    def rotate(self, coeffs: Tensor) -> Tensor:
        """Filter coefficients ``(..., n_basis)`` -> ``(R, ..., k, k)``: the filters at each of
        the R orientations."""
        return torch.einsum("...b,rbij->r...ij", coeffs, self.basis)


class LiftingConv(nn.Module):
    """Image ``(B, C, H, W)`` -> group feature map ``(B, F, R, H, W)`` ('same' padding);
    filters are weights of :func:`steerable_basis`, one filter rotated to the R orientations."""

    def __init__(self, c_in: int, c_out: int, k: int, rotations: int) -> None:
        super().__init__()
        self.bank = _RotatedBank(k, rotations)
        nb = self.bank.size
        self.weight = nn.Parameter(torch.randn(c_out, c_in, nb) * math.sqrt(2.0 / (c_in * nb)))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.c_out, self.rotations = c_out, rotations

    def forward(self, x: Tensor) -> Tensor:
        """Image ``(B, C, H, W)`` -> group feature map ``(B, F, R, H, W)``."""
        r = self.rotations
        w = self.bank.rotate(self.weight)  # (R, F, C, k, k)
        w = w.transpose(0, 1).flatten(0, 1)  # (F*R, C, k, k), out channel f*R + r
        y = F.conv2d(x, w.to(x.dtype), self.bias.repeat_interleave(r).to(x.dtype), padding="same")
        out: Tensor = y.unflatten(1, (self.c_out, r))
        return out


class GroupConv(nn.Module):
    """Group feature map ``(B, F_in, R, H, W)`` -> ``(B, F_out, R, H, W)`` ('same' padding).

    The filter of output orientation r is the base filter rotated by r and cyclically shifted by
    r along its input-orientation axis. Filters are weights of :func:`steerable_basis`."""

    shift_index: Tensor
    out_index: Tensor

    def __init__(self, c_in: int, c_out: int, k: int, rotations: int) -> None:
        super().__init__()
        self.bank = _RotatedBank(k, rotations)
        fan_in = c_in * rotations * self.bank.size
        self.weight = nn.Parameter(
            torch.randn(c_out, c_in, rotations, self.bank.size) * math.sqrt(2.0 / fan_in)
        )
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.c_out, self.rotations = c_out, rotations
        idx = (torch.arange(rotations)[None, :] - torch.arange(rotations)[:, None]) % rotations
        self.register_buffer("shift_index", idx, persistent=False)  # [r, s] = (s - r) mod R
        # the output orientations as a buffer: an index made on the host would be copied to
        # the device (and the host made to wait) in every forward pass
        self.register_buffer("out_index", torch.arange(rotations)[:, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Group feature map ``(B, F_in, R, H, W)`` -> ``(B, F_out, R, H, W)``."""
        r = self.rotations
        w = self.bank.rotate(self.weight)  # (R, F_out, F_in, R_in, k, k), spatially rotated
        w = w[self.out_index, :, :, self.shift_index]  # (R, R_in, F_out, F_in, k, k)
        w = w.permute(2, 0, 3, 1, 4, 5).flatten(2, 3).flatten(0, 1)  # (F_out*R, F_in*R_in, k, k)
        y = F.conv2d(
            x.flatten(1, 2),
            w.to(x.dtype),
            self.bias.repeat_interleave(r).to(x.dtype),
            padding="same",
        )
        out: Tensor = y.unflatten(1, (self.c_out, r))
        return out


def symmetric_pool(x: Tensor) -> Tensor:
    """Halve the spatial size of ``(B, C, H, W)`` with a window symmetric about the image centre
    (2 x 2 blocks for even sizes, 3 x 3 stride 2 for odd ones), so pooling commutes with 90
    degree rotations of the map. H must equal W."""
    if x.shape[-1] % 2 == 0:
        return F.avg_pool2d(x, 2)
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
