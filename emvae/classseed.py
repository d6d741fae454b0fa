"""Classes seeded apart (``--classes`` K; ``TrainConfig.class_seed``), as 2-D classification
seeds its references.

Classes inferred from scratch split along the largest difference first and can stay merged:
two molecules of a stack may share one class for the rest of the run while a class holds the
junk (docs/benchmarks.md, "Mixtures"). The poses found by then are good, though, whatever
class drew them. So at the end of epoch ``class_seed`` every particle is encoded, its image
brought back onto the canonical view by its pose (at the inference networks' size), and the
particles the junk score keeps are clustered (PCA, then k-means with K clusters) on those
aligned images. The clusters become each particle's target class, numbered to agree with the
model's classes as far as possible; the training objective then pulls q(class | image)
towards the target with a weight that falls to 0 (:func:`class_pull_weight`), after which the
classes are free again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from emvae.align import align_images
from emvae.data import StreamedImages, gather
from emvae.distributed import SINGLE, Dist
from emvae.encode import encode
from emvae.geometry import model_to_image_pose
from emvae.junk import junk_probability
from emvae.models import SpatialVAE
from emvae.stages import encoder_view

__all__ = ["class_pull_weight", "seed_classes"]

#: Principal components of the aligned images the clusters are found in.
COMPONENTS = 20
#: At most this many particles fit the PCA and k-means (the rest are assigned to the nearest
#: centre): the cost is bounded whatever the stack's size.
FIT_PARTICLES = 20_000
#: Particles whose junk score is at least this have no target class (they pull nothing).
JUNK = 0.5


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
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k = model.config.classes
    enc = encode(model, data, device, batch_size, seed, ctx=ctx, ctf=ctf, amp=amp)
    assert enc.class_prob is not None and enc.ncc is not None  # a class model, with the ELBO
    now = enc.class_prob.argmax(1)
    junk = junk_probability(np.c_[enc.elbo, enc.ncc], now)
    features = _aligned(model, data, enc.pose_mu, device, batch_size)
    keep = np.flatnonzero(~(junk >= JUNK))  # NaN scores are kept
    if len(keep) < 2 * k:
        return ctx.gather(np.where(junk >= JUNK, -1, now))[0]
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(keep, min(len(keep), FIT_PARTICLES), replace=False))
    pca = PCA(min(COMPONENTS, len(fit) - 1, features.shape[1]), random_state=seed)
    pca.fit(features[fit])
    means = KMeans(k, n_init=10, random_state=seed).fit(pca.transform(features[fit]))
    labels = means.predict(pca.transform(features)).astype(np.int64)
    # number the clusters as the model's classes that hold most of their particles
    overlap = np.zeros((k, k))
    np.add.at(overlap, (labels[keep], now[keep]), 1)
    rows, cols = linear_sum_assignment(-overlap)
    renumber = np.empty(k, np.int64)
    renumber[rows] = cols
    return ctx.gather(np.where(junk >= JUNK, -1, renumber[labels]))[0]


def _aligned(
    model: SpatialVAE,
    data: Tensor | StreamedImages,
    pose_mu: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """The images at the inference networks' size, aligned by the poses ``pose_mu`` ``(N, P)``
    (model units) and cut to the disc inside the box: ``(N, C * pixels in the disc)`` float32."""
    size = model.config.encoder_px
    centre = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - centre
    disc = torch.from_numpy((xx**2 + yy**2).ravel() <= centre**2)
    n = data.shape[0]
    out = []
    for start in range(0, n, batch_size):
        batch = torch.arange(start, min(start + batch_size, n))
        x = encoder_view(gather(data, batch, device).float(), size)
        pose = torch.from_numpy(pose_mu[start : start + len(batch)]).to(device, torch.float32)
        shift = pose[:, 1:3] if model.config.translation else pose.new_zeros(len(batch), 2)
        theta_deg, shift_px = model_to_image_pose(pose[:, 0], shift, size)
        a = align_images(x, theta_deg, shift_px).flatten(2)[:, :, disc.to(x.device)]
        out.append(a.flatten(1).cpu().numpy())
    return np.concatenate(out)
