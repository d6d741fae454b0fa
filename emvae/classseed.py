"""Classes seeded apart (``--classes`` K; ``TrainConfig.class_seed``), as 2-D classification
seeds its references.

Classes inferred from scratch split along the largest difference first and can stay merged:
two molecules of a stack may share one class for the rest of the run while a class holds the
junk (docs/benchmarks.md, "Mixtures"). The poses found by then are good, though, whatever
class drew them. So at the end of epoch ``class_seed`` every particle is encoded, its image
brought back onto the canonical view by its pose (at the inference networks' size), and the
particles the junk score keeps are clustered (PCA, then k-means) on those aligned images.

Junk the score keeps must not take a class of its own. So k-means is first run with K + 1
clusters: when one of them is incoherent — the average of its members' standardised images
holds a small fraction of the power the molecules' averages hold (:func:`coherence`) — it is
set aside as junk and the round repeats on the rest; the K clusters are then found without
it, and particles nearest a junk cluster get no target. When no cluster is incoherent (the
K + 1st cluster splits a molecule) K-means with K clusters is used as it is.

The clusters become each particle's target class, numbered to agree with the model's classes
as far as possible; the training objective then pulls q(class | image) towards the target
with a weight that falls to 0 (:func:`class_pull_weight`), after which the classes are free
again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from torch import Tensor

from emvae.align import align_images
from emvae.data import StreamedImages, gather
from emvae.distributed import SINGLE, Dist
from emvae.encode import Encoding, encode
from emvae.geometry import model_to_image_pose
from emvae.junk import junk_probability
from emvae.models import SpatialVAE
from emvae.stages import encoder_view

__all__ = ["class_pull_weight", "coherence", "flag_junk", "seed_classes"]

#: Principal components of the aligned images the clusters are found in.
COMPONENTS = 20
#: At most this many particles fit the PCA and k-means (the rest are assigned to the nearest
#: centre): the cost is bounded whatever the stack's size.
FIT_PARTICLES = 20_000
#: Particles whose junk score is at least this have no target class (they pull nothing).
JUNK = 0.5
#: A cluster is junk when its coherence (:func:`coherence`) is below this fraction of the
#: median coherence of the other clusters (docs/benchmarks.md, "Mixtures": 0.013 against
#: 0.49-0.63 for the kept junk of a 40-px stack; a molecule's own coherence falls with the
#: SNR, so the test is relative).
INCOHERENT = 0.2


def class_pull_weight(start: float, epoch: int, seed_epoch: int, epochs: int) -> float:
    """The weight (nats per image) of the pull towards the seeded classes in ``epoch``
    (1-based): ``start`` in the epoch after ``seed_epoch``, falling linearly to 0 halfway
    through the epochs left after it; 0 before the seeding or without it (``seed_epoch`` 0)."""
    if not seed_epoch or epoch <= seed_epoch:
        return 0.0
    span = max(1, (epochs - seed_epoch) // 2)
    return start * max(0.0, 1.0 - (epoch - seed_epoch - 1) / span)


@torch.no_grad()
def seed_classes(
    model: SpatialVAE,
    data: Tensor | StreamedImages,
    device: torch.device,
    batch_size: int,
    seed: int,
    ctf: Tensor | None = None,
    amp: Any = None,
    ctx: Dist = SINGLE,
) -> np.ndarray:
    """Each particle's target class ``(N,)`` (0-based; -1: junk, no target), by k-means on its
    image aligned by the model's pose (module docstring).

    data: the fit's normalised images ``(N, C, D, D)`` (on ``device``, on the host or
    streamed); ``ctf`` ``(N, 10)`` for the ELBO the junk score reads; ``seed`` makes the ELBO's
    sample, the subset and k-means reproducible. Under torchrun the processes share the
    encoding and every process takes rank 0's targets.
    """
    from sklearn.decomposition import PCA

    k = model.config.classes
    enc = encode(model, data, device, batch_size, seed, ctx=ctx, ctf=ctf, amp=amp, search=False)
    assert enc.class_prob is not None  # a class model
    now = enc.class_prob.argmax(1)
    junk = flag_junk(enc)  # this process's; the targets are rank 0's (below)
    keep = np.flatnonzero(~junk)
    if len(keep) < 2 * k:
        return ctx.gather(np.where(junk, -1, now))[0]
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(keep, min(len(keep), FIT_PARTICLES), replace=False))
    features = _aligned(model, data, enc.pose_mu, device, batch_size, fit)
    pca = PCA(min(COMPONENTS, len(fit) - 1, features.shape[1]), random_state=seed)
    pca.fit(features)
    # every particle's components, a block of aligned images at a time: (N, C), not (N, F)
    block = max(batch_size, FIT_PARTICLES // 4)
    points = np.concatenate(
        [
            pca.transform(_aligned(model, data, enc.pose_mu, device, batch_size, rows))
            for rows in np.array_split(np.arange(len(now)), -(-len(now) // block))
        ]
    )
    labels = _clusters(_standardised(features), points[fit], points, k, seed)
    keep = keep[labels[keep] >= 0]
    # number the clusters as the model's classes that hold most of their particles
    overlap = np.zeros((k, k))
    np.add.at(overlap, (labels[keep], now[keep]), 1)
    renumber = linear_sum_assignment(-overlap)[1]  # square: its rows are 0 .. k-1 in order
    return ctx.gather(np.where(junk | (labels < 0), -1, renumber[labels]))[0]


def flag_junk(enc: Encoding, ctx: Dist = SINGLE) -> np.ndarray:
    """Whether each particle's junk score (:mod:`emvae.junk`, within its most probable class)
    is at least :data:`JUNK`, ``(N,)`` bool, from an encoding with the ELBO (NaN scores are
    kept). Under torchrun every process takes rank 0's flags (one training set for all)."""
    assert enc.ncc is not None  # encoded with the ELBO
    classes = None if enc.class_prob is None else enc.class_prob.argmax(1)
    flags = junk_probability(np.c_[enc.elbo, enc.ncc], classes) >= JUNK
    return ctx.gather(flags)[0]


def coherence(features: np.ndarray) -> float:
    """How much of its members' power a cluster's average keeps: ``|mean|² / mean(|x|²)``
    over ``features`` ``(n, F)`` (standardised aligned images). Copies of one view at a
    signal-to-noise ratio s give about s / (1 + s); images with nothing in common about 1 / n."""
    return float((features.mean(0) ** 2).sum() / (features**2).sum(1).mean())


def _clusters(
    features: np.ndarray, fit: np.ndarray, points: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """Each particle's cluster ``(N,)`` in ``0 .. k-1``, or -1 where it is nearest a junk
    cluster (module docstring). features ``(n, F)`` and fit ``(n, C)``: the fitting subset's
    standardised images and principal components; points ``(N, C)``: every particle's
    components. Up to ``k`` incoherent clusters are set aside, one per round of k-means with
    ``k + 1`` clusters on what is left."""
    from sklearn.cluster import KMeans

    rest = np.arange(len(fit))
    junk = np.empty((0, fit.shape[1]))
    for _ in range(k):
        if len(rest) < 2 * (k + 1):
            break
        over = KMeans(k + 1, n_init=10, random_state=seed).fit(fit[rest])
        score = np.array([coherence(features[rest[over.labels_ == c]]) for c in range(k + 1)])
        worst = int(score.argmin())
        if score[worst] >= INCOHERENT * np.median(np.delete(score, worst)):
            break
        junk = np.vstack([junk, over.cluster_centers_[worst]])
        rest = rest[over.labels_ != worst]
    centres = KMeans(k, n_init=10, random_state=seed).fit(fit[rest]).cluster_centers_
    nearest = cdist(points, np.vstack([centres, junk])).argmin(1)
    return np.where(nearest < k, nearest, -1).astype(np.int64)


def _standardised(features: np.ndarray) -> np.ndarray:
    """Each row of ``features`` ``(N, F)`` less its mean, over its standard deviation (rows
    without variance left at 0)."""
    centred: np.ndarray = features - features.mean(1, keepdims=True)
    std = centred.std(1, keepdims=True)
    return centred / np.where(std > 0, std, 1.0)


def _aligned(
    model: SpatialVAE,
    data: Tensor | StreamedImages,
    pose_mu: np.ndarray,
    device: torch.device,
    batch_size: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The images ``rows`` (default: all) at the inference networks' size, aligned by their
    poses in ``pose_mu`` ``(N, P)`` (model units) and cut to the disc inside the box:
    ``(len(rows), C * pixels in the disc)`` float32."""
    size = model.config.encoder_px
    centre = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - centre
    disc = torch.from_numpy((xx**2 + yy**2).ravel() <= centre**2)
    rows = np.arange(data.shape[0]) if rows is None else rows
    out = []
    for start in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[start : start + batch_size])
        x = encoder_view(gather(data, batch, device).float(), size)
        pose = torch.from_numpy(pose_mu[batch.numpy()]).to(device, torch.float32)
        shift = pose[:, 1:3] if model.config.translation else pose.new_zeros(len(batch), 2)
        theta_deg, shift_px = model_to_image_pose(pose[:, 0], shift, size)
        a = align_images(x, theta_deg, shift_px).flatten(2)[:, :, disc.to(x.device)]
        out.append(a.flatten(1).cpu().numpy())
    return np.concatenate(out)
