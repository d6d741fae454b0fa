"""Coordinate transforms: which pose latents the model infers and how they move the pixel grid.

A transform is the interchangeable part between the inference network's pose outputs and the
generator's input coordinates: ``n_params``, ``split`` and ``forward``.
:class:`RigidTransform` is the paper's rotation and shift; :class:`DeformTransform` adds an
affine part (two log-scales and a shear) and/or a thin-plate spline on top of it
(``--pose affine|tps|affine-tps``; docs/conventions.md, "Affine and thin-plate poses").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emvae.geometry import coordinate_grid, transform_coordinates

#: affine parameters after the rigid ones: log s_x, log s_y, shear gamma
N_AFFINE = 3


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
    def n_rigid(self) -> int:
        """Width of the rigid part of the pose vector (theta, then dx, dy)."""
        return int(self.rotation) + 2 * int(self.translation)

    @property
    def n_params(self) -> int:
        """Width of the pose vector: the rigid part only."""
        return self.n_rigid

    def split(self, pose: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """pose ``(B, n_params)`` -> theta ``(B,)`` or None, shift ``(B, 2)`` or None."""
        r = int(self.rotation)
        theta = pose[:, 0] if self.rotation else None
        shift = pose[:, r : r + 2] if self.translation else None
        return theta, shift

    def rigid(self, coords: Tensor, pose: Tensor) -> Tensor:
        """``x R(theta) + dx``: coords ``(N, 2)``, pose ``(B, n_params)`` -> ``(B, N, 2)``."""
        theta, shift = self.split(pose)
        out = transform_coordinates(coords, theta, shift)
        return out.expand(pose.shape[0], -1, -1)

    def forward(self, coords: Tensor, pose: Tensor) -> Tensor:
        """coords ``(N, 2)``, pose ``(B, n_params)`` -> transformed coords ``(B, N, 2)``."""
        return self.rigid(coords, pose)


def affine_inverse(params: Tensor) -> Tensor:
    """``A = M^-1`` ``(B, 2, 2)`` for affine parameters ``(B, 3)`` = (log s_x, log s_y, gamma).

    The object's own deformation (row vectors, canonical frame) is ``v -> v M`` with
    ``M = [[1, 0], [gamma, 1]] diag(s_x, s_y) = [[s_x, 0], [gamma s_x, s_y]]``: a shear
    ``x += gamma y``, then the stretch by s_x along x and s_y along y. The generator samples the
    canonical object at ``w A`` with ``A = [[1/s_x, 0], [-gamma/s_y, 1/s_y]]``.
    """
    inv_x, inv_y = torch.exp(-params[:, 0]), torch.exp(-params[:, 1])
    zero = torch.zeros_like(inv_x)
    row0 = torch.stack([inv_x, zero], -1)
    row1 = torch.stack([-params[:, 2] * inv_y, inv_y], -1)
    return torch.stack([row0, row1], -2)


def affine_forward(params: Tensor) -> Tensor:
    """``M`` ``(B, 2, 2)`` of :func:`affine_inverse`: the object's own deformation."""
    sx, sy = torch.exp(params[:, 0]), torch.exp(params[:, 1])
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero], -1), torch.stack([params[:, 2] * sx, sy], -1)], -2)


def tps_kernel(points: Tensor, control: Tensor) -> Tensor:
    """The thin-plate spline's radial basis ``U(r) = r^2 log r`` between ``points``
    ``(..., N, 2)`` and ``control`` ``(M, 2)``: ``(..., N, M)`` (0 at r = 0)."""
    d2 = (points.unsqueeze(-2) - control).square().sum(-1)
    return 0.5 * d2 * torch.log(d2.clamp_min(1e-20))


class ThinPlateSpline(nn.Module):
    """A thin-plate spline warp from the displacements of a ``g x g`` grid of control points.

    Control points lie on a regular grid over [-1, 1]^2 (coordinate units; row-major, +y up as
    :func:`emvae.geometry.coordinate_grid`). The warp ``f(u) = sum_k w_k U(|u - c_k|) +
    a_0 + a_1 u_x + a_2 u_y`` interpolates the displacements, ``f(c_k) = d_k``, with the usual
    side conditions (``sum w = 0``, ``sum w c = 0``); ``f = 0`` when every ``d_k = 0``. The map
    from displacements to the spline's coefficients is one precomputed matrix, so the warp of
    a batch is one kernel evaluation and one batched matmul.
    """

    control: Tensor  # (M, 2)
    solve: Tensor  # (M + 3, M): displacements -> (w, a)

    def __init__(self, grid: int) -> None:
        super().__init__()
        c = coordinate_grid(grid, grid, dtype=torch.float64)
        m = c.shape[0]
        p = torch.cat([torch.ones(m, 1, dtype=torch.float64), c], 1)
        system = torch.zeros(m + 3, m + 3, dtype=torch.float64)
        system[:m, :m] = tps_kernel(c, c)
        system[:m, m:], system[m:, :m] = p, p.T
        solve = torch.linalg.inv(system)[:, :m]
        # float64 (cast to the coordinates' dtype when used): the map is exact to 1e-12
        self.register_buffer("control", c, persistent=False)
        self.register_buffer("solve", solve, persistent=False)

    def forward(self, points: Tensor, disp: Tensor) -> Tensor:
        """The warp ``f`` at ``points`` ``(B, N, 2)`` for displacements ``disp`` ``(B, M, 2)``
        (coordinate units): ``(B, N, 2)``."""
        dt = points.dtype
        coef = self.solve.to(dt) @ disp.to(dt)  # (B, M + 3, 2)
        basis = tps_kernel(points, self.control.to(dt))  # (B, N, M)
        ones = torch.ones_like(points[..., :1])
        return torch.cat([basis, ones, points], -1) @ coef


class DeformTransform(RigidTransform):
    """The rigid pose followed by an affine deformation and/or a thin-plate spline.

    Pose vector layout ``(B, n_params)``: the rigid part (``[theta]``, ``[dx, dy]``, as
    :class:`RigidTransform`), then with ``affine`` ``[log s_x, log s_y, gamma]``, then with
    ``tps_grid = g`` the displacements of the g^2 control points, ``[d_1x, d_1y, d_2x, ...]``
    (coordinate units, control points row-major from the top left).

    Pixel x samples the canonical object at ``v = w A + f(w A)``, ``w = x R(theta) + dx``: the
    rigid pose first (so the canonical centre lands where the rigid pose puts it), then the
    inverse of the object's own deformation about its centre (:func:`affine_inverse`: s_x > 1
    shows the object stretched by s_x along its own x axis), then the spline ``f`` in the
    canonical frame (the object near control point c_k shows the canonical object at
    ``c_k + d_k``). All-zero extra parameters give the rigid coordinates exactly.
    """

    def __init__(
        self,
        rotation: bool = True,
        translation: bool = True,
        affine: bool = True,
        tps_grid: int = 0,
    ) -> None:
        super().__init__(rotation, translation)
        self.affine = affine
        self.tps = ThinPlateSpline(tps_grid) if tps_grid else None

    @property
    def n_affine(self) -> int:
        """Width of the affine part (log-scales and shear), 0 without one."""
        return N_AFFINE if self.affine else 0

    @property
    def n_tps(self) -> int:
        """Width of the spline part (each control point's x and y displacement), 0 without."""
        return 0 if self.tps is None else 2 * self.tps.control.shape[0]

    @property
    def n_params(self) -> int:
        """Width of the pose vector: rigid, then affine, then spline parts."""
        return self.n_rigid + self.n_affine + self.n_tps

    def deform_parts(self, pose: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """pose ``(B, n_params)`` -> affine ``(B, 3)`` or None, displacements ``(B, M, 2)`` or
        None."""
        r, a = self.n_rigid, self.n_affine
        affine = pose[:, r : r + a] if self.affine else None
        disp = pose[:, r + a :].unflatten(1, (-1, 2)) if self.tps is not None else None
        return affine, disp

    def forward(self, coords: Tensor, pose: Tensor) -> Tensor:
        """coords ``(N, 2)``, pose ``(B, n_params)`` -> transformed coords ``(B, N, 2)``."""
        out = self.rigid(coords, pose)
        affine, disp = self.deform_parts(pose)
        if affine is not None:
            out = out @ affine_inverse(affine)
        if disp is not None and self.tps is not None:
            out = out + self.tps(out, disp)
        return out
