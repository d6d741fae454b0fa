"""A trained model over a stack -> the per-particle table of poses and latents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emvae.config import ModelConfig
from emvae.data import gather
from emvae.distributed import SINGLE, Dist, assemble
from emvae.geometry import model_to_image_pose, shift_std_to_image
from emvae.models import SpatialVAE
from emvae.objective import posterior_elbo


@dataclass
class Encoding:
    """Posterior of every image (model units), numpy arrays in input order.

    z_mu, z_std: ``(N, K)``; pose_mu, pose_std: ``(N, P)`` (theta radians, shifts in coordinate
    units, layout of :class:`emvae.models.RigidTransform`); elbo: ``(N,)`` nats; theta_prob
    ``(N,)``: posterior probability of the reported rotation bin (binned rotation posterior only).
    """

    z_mu: np.ndarray
    z_std: np.ndarray
    pose_mu: np.ndarray
    pose_std: np.ndarray
    elbo: np.ndarray
    theta_prob: np.ndarray | None = None


@torch.no_grad()
def encode(
    model: SpatialVAE,
    data: Tensor,
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    advance=None,
    ctx: Dist = SINGLE,
    ctf: Tensor | None = None,
) -> Encoding:
    """Posterior means/stds (no augmentation) and a one-sample ELBO for every image.

    data: normalised images ``(N, C, D, D)`` on ``device`` or on the host. The ELBO sample is
    drawn from a generator seeded with ``seed``, so the same model and data give the same table.
    Under torchrun each process encodes its part of every batch and the parts are gathered.
    ``ctf`` ``(N, 10)``: the particles' CTF parameters for the ELBO (``--ctf on``), or None.
    """
    model.eval()
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    binned = model.binned
    keys = ("z_mu", "z_std", "pose_mu", "pose_std", "elbo") + (("theta_prob",) if binned else ())
    out: dict[str, list[Tensor]] = {k: [] for k in keys}
    mine: list[np.ndarray] = []
    n = data.shape[0]
    for start in range(0, n, batch_size):
        batch = torch.arange(start, min(start + batch_size, n))
        part = ctx.part(len(batch))
        eps = torch.randn(len(batch), model.n_latent, generator=rng, device=device)[part]
        x = gather(data, batch[part], device)
        q, params = model(x, None, eps)
        batch_ctf = None if ctf is None else ctf[batch[part].to(ctf.device)]
        terms = posterior_elbo(model.config, model.pixels(x), params, q, ctf=batch_ctf)
        values = {
            "z_mu": q.z_mu,
            "z_std": q.z_logstd.exp(),
            "pose_mu": q.pose_mu,
            "pose_std": q.pose_logstd.exp(),
            "elbo": terms.elbo,
        }
        if binned:
            values["theta_prob"] = q.bins.concentration(model.config.hypotheses)
        for key, val in values.items():
            out[key].append(val.float().cpu())
        mine.append(batch[part].numpy())
        if advance is not None:
            advance(len(batch))
    arrays = {k: torch.cat(v).numpy() for k, v in out.items()}
    if ctx.active:
        parts = ctx.gather((np.concatenate(mine), arrays))
        arrays = assemble(parts, n)
    return Encoding(**arrays)


def particle_table(
    cfg: ModelConfig,
    enc: Encoding,
    names: list[str],
    apix: float | None = None,
    split: np.ndarray | None = None,
    scale: float = 1.0,
    offsets: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """The table users read (SPEC section 2), one row per image in input order.

    Shifts are in pixels of the *input* images: the model's shifts times ``scale`` (input pixels
    per model pixel, after ``-D``), plus ``offsets`` ``(N, 2)`` (where the model box's centre
    lies in each input image, +x right, +y up; crops and the downsampling grid move it), so
    they describe the particle in the file the user gave. ``apix`` is the input pixel size.

    Columns: ``image`` (``k@file``, 1-based), ``input_row`` (0-based row in the input: STAR or
    .cs row, or position in the stack(s)), ``theta_deg`` (counter-clockwise rotation of the
    particle relative to the canonical view, +y up; equals RELION's rlnAnglePsi) and
    ``theta_std_deg``, ``shift_x_px``/``shift_y_px`` (where the canonical centre lands, relative
    to the box centre, +x right, +y up) and their stds, ``shift_x_A``/``shift_y_A`` when the pixel
    size is known, ``theta_prob`` (the posterior probability of the reported rotation bin, with
    the equivariant encoder: low values flag unreliable poses), ``z1..zK``, ``z1_std..zK_std``,
    ``elbo`` (nats), and ``split`` when given.
    Pose variables that were not inferred are reported as 0 with std 0.
    """
    n = len(names)
    pose = torch.from_numpy(enc.pose_mu).double()
    pose_std = torch.from_numpy(enc.pose_std).double()
    r = int(cfg.rotation)
    theta = pose[:, 0] if cfg.rotation else torch.zeros(n, dtype=torch.float64)
    theta_std = pose_std[:, 0] if cfg.rotation else torch.zeros(n, dtype=torch.float64)
    shift = pose[:, r : r + 2] if cfg.translation else torch.zeros(n, 2, dtype=torch.float64)
    sstd = pose_std[:, r : r + 2] if cfg.translation else torch.zeros(n, 2, dtype=torch.float64)
    theta_deg, shift_px = model_to_image_pose(theta, shift, cfg.image_size)
    shift_std_px = shift_std_to_image(theta, sstd, cfg.image_size) * scale
    shift_px = shift_px * scale
    if offsets is not None:
        shift_px = shift_px + torch.from_numpy(np.asarray(offsets, dtype=np.float64))
    cols: dict[str, object] = {
        "image": list(names),
        "input_row": np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64),
        "theta_deg": theta_deg.numpy(),
        "theta_std_deg": np.degrees(theta_std.numpy()),
        "shift_x_px": shift_px[:, 0].numpy(),
        "shift_y_px": shift_px[:, 1].numpy(),
        "shift_x_std_px": shift_std_px[:, 0].numpy(),
        "shift_y_std_px": shift_std_px[:, 1].numpy(),
    }
    if apix is not None:
        cols["shift_x_A"] = cols["shift_x_px"] * apix
        cols["shift_y_A"] = cols["shift_y_px"] * apix
    if enc.theta_prob is not None:
        cols["theta_prob"] = enc.theta_prob
    for k in range(cfg.zdim):
        cols[f"z{k + 1}"] = enc.z_mu[:, k]
    for k in range(cfg.zdim):
        cols[f"z{k + 1}_std"] = enc.z_std[:, k]
    cols["elbo"] = enc.elbo
    if split is not None:
        cols["split"] = split
    return pd.DataFrame(cols)
