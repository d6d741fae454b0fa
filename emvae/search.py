"""A local search of each particle's rotation under the generator (``--pose-search``).

The pose network's angle is a fast guess: at 64 px and SNR 0.05 it is a degree or so from the
angle the generator's own likelihood prefers (docs/benchmarks.md, "Users' sizes"). The search
tries :func:`search_steps` angles (at most :data:`STEP_DEG` apart) evenly spread over
+-``ModelConfig.pose_search`` degrees around it, renders each at z's posterior mean (the other
pose variables kept; the shift kept in the image frame), compares it with the image through its
CTF, and moves the angle to the vertex of the parabola through the best angle and its two
neighbours (the best itself at the range's ends): the local refinement of a classical
alignment, started from the amortised guess. It runs without gradients when the tables are
written (``SpatialVAE.searching``), not in training (searching there too doubled the coarse
epochs' time for 0.2 degree more: docs/benchmarks.md); the posterior is then centred on the
angle found, and z's network looks at the image aligned there.

The search renders at :data:`emvae.stages.COARSE_PX` px (or the box, when smaller; or the
current stage's size, when smaller still), whatever the stage: its cost is
:func:`search_steps` renderings of that size per image.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from emvae.geometry import rotation_matrix
from emvae.objective import compared, log_likelihood

if TYPE_CHECKING:
    from emvae.models.vae import SpatialVAE

__all__ = ["STEP_DEG", "search_rotation", "search_steps", "turn_pose"]

#: The widest step (degrees) between the angles tried: +-DEG is covered by
#: :func:`search_steps` angles evenly spread, 5 at the default +-8. Steps of 4 degrees found
#: the angles as well as steps of 2 (9 angles; 2.7 against 2.9 degrees at 64 px, 1.3 against
#: 1.5 at 128 px: docs/benchmarks.md) at 5/9 of the cost.
STEP_DEG = 4.0


def search_steps(deg: float) -> int:
    """The number of angles tried over +-``deg`` degrees: odd (the network's own angle is one
    of them), at most :data:`STEP_DEG` apart, at least 3."""
    return 2 * max(1, math.ceil(deg / STEP_DEG - 1e-9)) + 1


def turn_pose(pose: Tensor, delta: Tensor, translation: bool) -> Tensor:
    """Poses ``(B, P)`` (model frame: theta first, then with ``translation`` the template-frame
    shift dx, then the rest) turned by angles ``delta`` ``(B, S)`` radians -> ``(B, S, P)``:
    theta + delta, and dx R(delta), so that the image-frame shift ``-dx R(theta)^T`` stays
    where it was (docs/conventions.md)."""
    turned = pose[:, None, :].expand(-1, delta.shape[1], -1).clone()
    turned[..., 0] = turned[..., 0] + delta.to(pose.dtype)
    if translation:
        dx = pose[:, None, None, 1:3]  # (B, 1, 1, 2) row vectors
        turned[..., 1:3] = (dx @ rotation_matrix(delta.to(pose.dtype))).squeeze(2)
    return turned


@torch.no_grad()
def search_rotation(
    model: SpatialVAE, images: Tensor, z: Tensor, pose: Tensor, ctf: Tensor | None,
    classes: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The turn ``(B,)`` radians that moves each pose's angle to where the image is most
    likely under ``model``'s generator (module docstring).

    ``model``: a :class:`emvae.models.SpatialVAE` with ``config.pose_search`` > 0; images
    ``(B, C, D, D)`` (full box); z ``(B, K)`` (the posterior means); pose ``(B, P)`` (model
    frame); ``ctf`` ``(B, 10)`` the images' CTF parameters for the likelihood, or None;
    ``classes`` ``(B,)`` each image's class (0-based) with ``--classes``, or None.
    """
    from emvae.stages import COARSE_PX

    cfg = model.config
    steps = search_steps(cfg.pose_search or 0.0)
    half = math.radians(cfg.pose_search or 0.0)
    offsets = torch.linspace(-half, half, steps, device=images.device, dtype=torch.float32)
    b = images.shape[0]
    size = min(cfg.image_size, COARSE_PX, model.render_size)
    ll = images.new_empty(b, steps, dtype=torch.float32)
    with model.rendering_at(size):
        stage = model.stage
        chunk = max(1, model.images_per_pass(training=False) * cfg.n_hypotheses // steps)
        for a in range(0, b, chunk):
            s = slice(a, a + chunk)
            n = images[s].shape[0]
            y = model.pixels(images[s]).float().repeat_interleave(steps, 0)
            poses = turn_pose(pose[s].float(), offsets.expand(n, -1), cfg.translation)
            c = None if classes is None else classes[s, None].expand(-1, steps)
            params = model.decode(z[s].float(), poses, classes=c).float()
            seen = compared(cfg, params, None if ctf is None else ctf[s], stage)
            ll[s] = log_likelihood(cfg, y, seen.flatten(0, 1), stage.noise_logstd).view(n, steps)
    centre = steps // 2  # the network's own angle: kept unless another is strictly better
    best = torch.where(ll.max(1).values > ll[:, centre], ll.argmax(1), centre)
    mid = best.clamp(1, steps - 2)
    lo, at, hi = (ll.gather(1, (mid + k)[:, None])[:, 0] for k in (-1, 0, 1))
    curve = lo - 2 * at + hi  # < 0 at a maximum
    vertex = torch.where(curve < 0, 0.5 * (lo - hi) / curve.clamp_max(-1e-12), 0.0)
    inside = (best > 0) & (best < steps - 1)
    step = offsets[1] - offsets[0]
    return offsets[best] + torch.where(inside, vertex.clamp(-1, 1) * step, 0.0)
