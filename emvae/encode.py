"""A trained model over a stack -> each particle's posterior (poses and latents; the table
users read is :meth:`emvae.particles.Particles.table`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emvae.data import StreamedImages, gather
from emvae.distributed import SINGLE, Dist, assemble
from emvae.models import SpatialVAE
from emvae.models.vae import Posterior
from emvae.objective import ElboTerms, posterior_elbo, rendering_correlation
from emvae.progress import Advance


@dataclass
class Encoding:
    """Posterior of every image (model units), numpy arrays in input order.

    z_mu, z_std: ``(N, K)``; pose_mu, pose_std: ``(N, P)`` (theta radians, shifts in coordinate
    units, layout of :class:`emvae.models.RigidTransform`); elbo: ``(N,)`` nats; theta_prob
    ``(N,)``: posterior probability of the reported rotation bin (binned rotation posterior only);
    class_prob ``(N, K)``: q(class | image) of each class (``--classes`` > 1 only); ncc ``(N,)``:
    each image's correlation with its rendering
    (:func:`emvae.objective.rendering_correlation`; NaN without the ELBO).
    """

    z_mu: np.ndarray
    z_std: np.ndarray
    pose_mu: np.ndarray
    pose_std: np.ndarray
    elbo: np.ndarray
    theta_prob: np.ndarray | None = None
    class_prob: np.ndarray | None = None
    ncc: np.ndarray | None = None


def elbo_pass(
    model: SpatialVAE,
    x: Tensor,
    eps: Tensor,
    ctf: Tensor | None = None,
    use_z: bool = True,
    amp: Any = None,
    correlation: bool = False,
) -> tuple[Posterior, ElboTerms, Tensor | None]:
    """The posterior of images ``x`` ``(B, C, D, D)`` and their ELBO terms at the model's render
    size, with the sample ``eps`` ``(B, K + P)`` and each image's CTF ``(B, 10)`` (or None).
    The inference networks run in float32; the generator's rendering runs under ``amp`` (the
    autocast context training used, or None), and the ELBO is computed in float32. With
    ``correlation``, also each image's correlation with its rendering ``(B,)``
    (:func:`emvae.objective.rendering_correlation`), else None."""
    q = model.encode(x, infer_z=use_z, ctf=ctf)
    with amp if amp is not None else contextlib.nullcontext():
        z, pose = model.sample(q, use_z=use_z, eps=eps)
        params = model.decode(z, pose, classes=model.hypothesis_classes(q)).float()
    y, stage = model.pixels(x), model.stage
    terms = posterior_elbo(model.config, y, params, q, use_z, ctf, 1.0, stage)
    ncc = rendering_correlation(model.config, y, params, q, ctf, stage) if correlation else None
    return q, terms, ncc


@torch.no_grad()
def encode(
    model: SpatialVAE,
    data: Tensor | StreamedImages,
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    advance: Advance | None = None,
    ctx: Dist = SINGLE,
    ctf: Tensor | None = None,
    elbo: bool = True,
    amp: Any = None,
    search: bool = True,
    elbo_px: int | None = None,
    use_z: bool = True,
) -> Encoding:
    """Posterior means/stds (no augmentation) and a one-sample ELBO for every image.

    ``elbo_px``: the ELBO (and the correlation with the rendering) is that of each image's
    lowest ``elbo_px`` x ``elbo_px`` frequencies, rendered as a stage of that size renders
    (:meth:`SpatialVAE.rendering_at`; a fit's tables pass :func:`emvae.stages.table_size`),
    when that is smaller than the model's render size; None: at the render size.

    data: normalised images ``(N, C, D, D)`` on ``device`` or on the host. The ELBO sample is
    drawn from a generator seeded with ``seed``, so the same model and data give the same table.
    Under torchrun each process encodes its part of every batch and the parts are gathered.
    ``ctf`` ``(N, 10)``: the particles' CTF parameters for the ELBO and the encoder (``--ctf
    on``), or None.
    With ``search``, the rotations are searched under the generator when the model says so
    (``ModelConfig.pose_search``, :mod:`emvae.search`; ``ctf`` is then needed with ``--ctf
    on``). Without ``elbo`` the generator does
    not run for the ELBO (the ELBO column is NaN). ``amp``: the autocast context the generator
    renders under for the ELBO (:func:`elbo_pass`; fit passes its training's), or None
    (float32). ``use_z=False``: the generator renders z = 0, as fit's z-delay epochs train
    it (z's posterior is then the N(0, 1) placeholder); fit's junk flags in those epochs.
    """
    model.eval()
    cropped: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if elbo and elbo_px is not None and elbo_px < model.render_size:
        cropped = model.rendering_at(elbo_px)
    with model.table_poses(search), cropped:
        return _encode(model, data, device, batch_size, seed, advance, ctx, ctf, elbo, amp, use_z)


def _encode(
    model: SpatialVAE,
    data: Tensor | StreamedImages,
    device: torch.device,
    batch_size: int,
    seed: int,
    advance: Advance | None,
    ctx: Dist,
    ctf: Tensor | None,
    elbo: bool,
    amp: Any,
    use_z: bool,
) -> Encoding:
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    binned = model.binned
    keys: tuple[str, ...] = ("z_mu", "z_std", "pose_mu", "pose_std", "elbo", "ncc")
    keys += ("theta_prob",) if binned else ()
    keys += ("class_prob",) if model.config.classes > 1 else ()
    out: dict[str, list[Tensor]] = {k: [] for k in keys}
    mine: list[np.ndarray] = []
    n = data.shape[0]
    step = model.images_per_pass(training=False) if elbo else batch_size
    for start in range(0, n, batch_size):
        batch = torch.arange(start, min(start + batch_size, n))
        part = ctx.part(len(batch))
        eps = torch.randn(len(batch), model.n_latent, generator=rng, device=device)[part]
        x = gather(data, batch[part], device)
        batch_ctf = None if ctf is None else ctf[batch[part].to(ctf.device)]
        pieces = []
        for a in range(0, max(x.shape[0], 1), step):  # passes small enough for memory
            s = slice(a, a + step)
            if elbo:
                c = None if batch_ctf is None else batch_ctf[s]
                q, terms, corr = elbo_pass(
                    model, x[s], eps[s], c, use_z=use_z, amp=amp, correlation=True
                )
                assert corr is not None  # asked for
                value, ncc = terms.elbo, corr
            else:
                q = model.encode(
                    x[s], infer_z=use_z, ctf=None if batch_ctf is None else batch_ctf[s]
                )
                value = torch.full((x[s].shape[0],), float("nan"), device=x.device)
                ncc = value
            piece = {
                "z_mu": q.z_mu,
                "z_std": q.z_logstd.exp(),
                "pose_mu": q.pose_mu,
                "pose_std": q.pose_logstd.exp(),
                "elbo": value,
                "ncc": ncc,
            }
            if q.bins is not None:
                piece["theta_prob"] = q.bins.concentration(model.config.hypotheses)
                if q.bins.classes > 1:
                    piece["class_prob"] = q.bins.class_log_prob().exp()
            pieces.append(piece)
        values = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
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
