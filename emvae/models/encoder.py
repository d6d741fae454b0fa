"""Inference networks.

Pose networks: ``MLPEncoder`` (the paper's) and ``ConvEncoder`` return one flat output vector,
read by :meth:`emvae.models.SpatialVAE.encode` as a Gaussian pose (the paper's posterior), or
run on rotated copies of the image by :class:`RotatedCopies` for a posterior over rotation
bins; ``EquivariantEncoder`` returns a :class:`BinnedPose` directly: a categorical posterior
over R rotation bins with a Gaussian in-bin offset and an image-frame shift.
``AlignedContentEncoder`` infers z from the image turned and shifted back by the inferred pose,
so z is invariant to the pose by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emvae.augment import align_images, rotate_images
from emvae.geometry import coordinate_grid, rotation_matrix
from emvae.models.generator import mlp
from emvae.models.groupconv import GroupConv, LiftingConv, symmetric_pool


class MLPEncoder(nn.Module):
    """MLP over the flattened image (the paper's inference network): ``(B, C, H, W)`` ->
    ``(B, n_out)``, laid out by :meth:`emvae.models.SpatialVAE.encode`."""

    def __init__(self, n_in: int, hidden: int, layers: int, n_out: int, activation: str) -> None:
        super().__init__()
        self.net = mlp(n_in, hidden, layers, n_out, activation)

    def forward(self, images: Tensor) -> Tensor:
        """images ``(B, C, H, W)`` -> ``(B, n_out)``."""
        out: Tensor = self.net(images.flatten(1))
        return out


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
    equivariant encoder), then an MLP on the flattened map. Same output as :class:`MLPEncoder`.

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
        n_out: int,
        activation: str,
    ) -> None:
        super().__init__()
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
        self.head = mlp(width * side * side, hidden, layers, n_out, activation)

    def forward(self, images: Tensor) -> Tensor:
        """images ``(B, C, H, W)`` -> ``(B, n_out)``."""
        out: Tensor = self.head(self.features(images).flatten(1))
        return out


class _Pool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return symmetric_pool(x)


def _norm(h: Tensor) -> Tensor:
    """Normalise each channel of a group map ``(B, F, R, H, W)`` over its orientations and
    pixels together (statistics invariant under rotation, so equivariance is kept)."""
    f = h.shape[1]
    out: Tensor = F.group_norm(h.flatten(1, 2), f).unflatten(1, h.shape[1:3])
    return out


@dataclass
class BinnedPose:
    """A rotation posterior over R bins and a shift, for B images (the output of
    :class:`EquivariantEncoder` and :class:`RotatedCopies`).

    logits ``(B, K R)`` (unnormalised log q(class, bin); cell ``c R + r`` is bin r of class c,
    K = 1 without classes); offset ``(B, K R)``: the in-bin angle in radians, in (-pi/R, pi/R);
    angle_logstd ``(B, K R)``: log-std of the angle within each cell; shift ``(B, 2)``: where
    the particle's centre lies in the image, coordinate units, +x right, +y up; shift_logstd
    ``(B, 1)`` (isotropic). Bin r is the image-frame rotation ``2 pi r / R + offset_r``
    counter-clockwise.
    extra, extra_logstd ``(B, E)``: the affine / spline parameters (``--pose``; the layout after
    the rigid part in :class:`emvae.models.transform.DeformTransform`), which live in the
    canonical frame and do not turn with the image; None for the rigid pose.
    """

    logits: Tensor
    offset: Tensor
    angle_logstd: Tensor
    shift: Tensor
    shift_logstd: Tensor
    extra: Tensor | None = None
    extra_logstd: Tensor | None = None


class RotatedCopies(nn.Module):
    """A rotation posterior over R bins from any network, equivariant by construction: the
    network sees the image turned clockwise by each bin's angle ``2 pi r / R`` and returns, for
    each copy, a logit, an in-bin offset, its log-std, the shift and its log-std (6 values,
    in the copy's frame). A particle turned counter-clockwise by ``2 pi r / R + delta`` looks
    upright (turned by delta) in copy r, so copy r scores bin r. Rotating the input by one bin
    moves every output one bin on, exactly for quarter turns and up to interpolation otherwise.

    ``net``: ``(N, C, D, D)`` -> ``(N, 6 + 2 E)``. Returns a :class:`BinnedPose` (shift: the
    q-weighted mean of the copies' shifts turned back into the image frame). With ``n_extra``
    = E affine / spline parameters, each copy also gives their means and log-stds (outputs 6..
    6 + 2E); copy r sees the particle upright, so these are in the canonical frame as they are,
    and the q-weighted means over the copies are returned. With K ``classes`` each copy gives a
    logit, offset and log-std per class: ``3 K + 3 + 2 E`` outputs (logits, offsets, log-stds,
    shift, shift log-std, extras; the layout above for K = 1).
    """

    OUTPUTS = 6
    angles: Tensor

    def __init__(
        self, net: nn.Module, rotations: int, translation: bool, n_extra: int = 0, classes: int = 1
    ) -> None:
        super().__init__()
        self.net, self.rotations, self.translation = net, rotations, translation
        self.n_extra, self.classes = n_extra, classes
        angles = torch.arange(rotations, dtype=torch.float64) * (2 * math.pi / rotations)
        self.register_buffer("angles", angles.float(), persistent=False)

    @staticmethod
    def outputs(classes: int, n_extra: int) -> int:
        """The network's outputs per copy for K ``classes`` and E ``n_extra`` parameters."""
        return 3 * classes + 3 + 2 * n_extra

    def forward(self, images: Tensor) -> BinnedPose:
        """Images ``(B, C, D, D)`` -> the rotation-bin posterior (and shifts) of each: the
        network run on R copies, each turned back by its bin's angle."""
        b, r = images.shape[0], self.rotations
        turn = (-self.angles).repeat(b)  # copy r of each image turned clockwise by bin r
        copies = rotate_images(images.repeat_interleave(r, 0), turn.to(images.dtype))
        e, k = self.n_extra, self.classes
        out = self.net(copies).view(b, r, self.outputs(k, e))
        # (B, R, 3, K) -> (B, K R, 3): cell c R + r, then (logit, offset, log-std)
        cells = out[..., : 3 * k].unflatten(-1, (3, k)).permute(0, 3, 1, 2).flatten(1, 2)
        s = 3 * k  # the shift, its log-std, then the extras
        w = out[..., :k].float().logsumexp(-1).softmax(-1).to(out.dtype).unsqueeze(-1)  # (B, R, 1)
        if self.translation:  # copy frame -> image frame: turn back counter-clockwise
            back = rotation_matrix(self.angles).to(out.dtype)  # (R, 2, 2), row vectors
            shift = (w * (out[..., s : s + 2].unsqueeze(-2) @ back).squeeze(-2)).sum(1)
        else:
            shift = images.new_zeros(b, 2)
        extra = extra_logstd = None
        if e:
            extra = (w * out[..., s + 3 : s + 3 + e]).sum(1)
            extra_logstd = (w * out[..., s + 3 + e :]).sum(1)
        return BinnedPose(
            logits=cells[..., 0],
            offset=(math.pi / r) * torch.tanh(cells[..., 1]),
            angle_logstd=cells[..., 2],
            shift=shift,
            shift_logstd=(w[..., 0] * out[..., s + 2]).sum(1, keepdim=True),
            extra=extra,
            extra_logstd=extra_logstd,
        )


class AlignedContentEncoder(nn.Module):
    """q(z | y): an MLP (one hidden ReLU layer) over the image seen in the particle's own frame.

    The image is turned and shifted back by the pose the pose network inferred
    (:func:`emvae.augment.align_images`), so z sees the same view of a particle whatever its
    pose, and cannot encode rotation or translation. The pose is taken as given (no gradient
    flows through the alignment into the pose network).
    """

    def __init__(self, size: int, channels: int, hidden: int, zdim: int) -> None:
        super().__init__()
        self.zdim = zdim
        self.net = mlp(channels * size * size, hidden, 1, 2 * zdim, "relu")

    def forward(
        self,
        images: Tensor,
        angle: Tensor,
        shift: Tensor,
        deform: Tensor | None = None,
        aligned: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """images ``(B, C, D, D)``; angle ``(B,)`` radians, counter-clockwise, and shift
        ``(B, 2)`` coordinate units: where the canonical view lies in each image (image frame);
        deform ``(B, 2, 2)``: the object's own affine deformation (``--pose affine``), undone
        as well, or None; ``aligned`` ``(B, C, D, D)``: the images already brought to the
        canonical frame (the spline's unwarping, :meth:`emvae.models.SpatialVAE.unwarp`), used
        instead. Returns z means and log-stds, ``(B, K)`` each."""
        if aligned is not None:
            x = aligned.detach().to(images.dtype).flatten(1)
        else:
            x = self._aligned(images, angle, shift, deform)
        out = self.net(x)
        return out[:, : self.zdim], out[:, self.zdim :]

    def _aligned(
        self, images: Tensor, angle: Tensor, shift: Tensor, deform: Tensor | None = None
    ) -> Tensor:
        m = None if deform is None else deform.detach().float()
        canonical = align_images(images, angle.detach().float(), shift.detach().float(), deform=m)
        return canonical.to(images.dtype).flatten(1)


class EquivariantEncoder(nn.Module):
    """Rotation-equivariant inference network (after TARGET-VAE, Nasiri & Bepler 2022).

    A lifting convolution and group convolutions over R rotations (``(B, F, R, h, w)`` maps)
    give, per orientation (and per class with K ``classes``), a logit, an in-bin offset and its
    log-std (one shared head over the orientation axis, so rotating the image by one bin shifts
    them by one bin; the class is invariant). The log-std of
    the shift comes from features pooled over space and orientations (invariant); the shift is
    the expectation of the pixel coordinates under a spatial softmax of orientation-pooled
    features (rotates with the image). z is inferred elsewhere
    (:class:`AlignedContentEncoder`).
    """

    def __init__(
        self,
        size: int,
        channels: int,
        width: int,
        rotations: int,
        hidden: int,
        translation: bool,
        n_extra: int = 0,
        classes: int = 1,
    ) -> None:
        super().__init__()
        self.rotations, self.translation, self.classes = rotations, translation, classes
        self.lift = LiftingConv(channels, width, 5, rotations)
        self.convs = nn.ModuleList(
            GroupConv(width, width, 3, rotations) for _ in range(n_pools(size))
        )
        self.act = nn.ReLU()
        self.angle_head = nn.Sequential(  # circular over orientations: equivariant
            nn.Conv1d(2 * width, hidden, 3, padding=1, padding_mode="circular"),
            nn.ReLU(),
            nn.Conv1d(hidden, 3 * classes, 1),  # per class: logit, offset, log-std
        )
        self.invariant_head = mlp(2 * width, hidden, 1, 1, "relu")
        self.attention = nn.Conv2d(width, 1, 1)
        coords = coordinate_grid(size, size).T.reshape(1, 2, size, size)
        for _ in range(n_pools(size)):
            coords = symmetric_pool(coords)  # pooled cells keep their exact centres
        self.register_buffer("cell_coords", coords.flatten(2)[0].T.contiguous(), persistent=False)
        # affine / spline parameters (canonical frame, invariant under rotation of the image):
        # regressed from the invariant pooled features, like the shift's log-std
        self.n_extra = n_extra
        self.extra_head = mlp(2 * width, hidden, 1, 2 * n_extra, "relu") if n_extra else None

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
        a = self.angle_head(torch.cat([contrast, g], 1))  # (B, 3 K, R)
        a = a.unflatten(1, (3, self.classes)).flatten(2)  # (B, 3, K R): cell c R + r
        half = math.pi / self.rotations
        offset = half * torch.tanh(a[:, 1])
        inv = self.invariant_head(torch.cat([g.amax(-1), g.mean(-1)], 1))
        if self.translation:
            att = self.attention(h.amax(2)).flatten(1)  # (B, h*w)
            att = att.to(torch.promote_types(att.dtype, torch.float32)).softmax(-1)
            shift = att @ self.cell_coords.to(att.dtype)
        else:
            shift = images.new_zeros(images.shape[0], 2)
        extra = extra_logstd = None
        if self.extra_head is not None:
            ex = self.extra_head(torch.cat([g.amax(-1), g.mean(-1)], 1))
            extra, extra_logstd = ex[:, : self.n_extra], ex[:, self.n_extra :]
        return BinnedPose(
            logits=a[:, 0],
            offset=offset,
            angle_logstd=a[:, 2],
            shift=shift,
            shift_logstd=inv,
            extra=extra,
            extra_logstd=extra_logstd,
        )
