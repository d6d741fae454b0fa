"""The spatial-VAE objective (paper eqs. 1-5) as pure functions.

Every function returns one value per image, shape ``(B,)``, in nats. The ELBO is
``log p(y | z, theta, dx) - KL_z - KL_theta - KL_dx`` with one reparameterised sample.

With the equivariant encoder the rotation posterior is a mixture over rotation bins: q(b | y)
restricted to the k most probable of the R bins (renormalised), and within bin b a Gaussian
angle. The prior is uniform over the R bins and, within a bin, eq. 3 with the width scaled to
the bin (``s_theta / R``), so a confident posterior costs about as much as under eq. 3 alone.
The expectation over the k bins is computed exactly (one generator pass per bin, the same
Gaussian noise in each): ``sum_b q(b) [log p(y | theta_b, ...) - KL_in(b)] - KL(q(b) || 1/R)``
(see :func:`posterior_elbo`).

With ``--prior hyperprior`` z's prior is N(0, diag(s^2)) with log s learned per dimension
(:func:`kl_normal_dims`), and s^2 has an inverse-gamma hyperprior (:func:`log_hyperprior`),
added to the training objective once per data set (docs/usage.md, "Other decoders and priors
on z").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from emvae.config import ModelConfig
from emvae.geometry import mask_index

if TYPE_CHECKING:
    from emvae.models.vae import Posterior

LOG_2PI = math.log(2.0 * math.pi)
#: A loss term: a tensor, or its mean over an epoch (a float).
Num = TypeVar("Num", Tensor, float)


def kl_standard_normal(mu: Tensor, logstd: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the last dim. ``(B, K)`` -> ``(B,)``."""
    return kl_standard_normal_dims(mu, logstd).sum(-1)


def kl_standard_normal_dims(mu: Tensor, logstd: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) of each dimension: ``(B, K)`` -> ``(B, K)`` nats. A latent
    dimension whose KL stays near 0 carries no information about the image (it is unused)."""
    return 0.5 * (mu**2 + torch.exp(2 * logstd) - 1.0) - logstd


def kl_normal(mu: Tensor, logstd: Tensor, prior_std: float) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, s^2)) summed over the last dim. ``(B, K)`` -> ``(B,)``."""
    s2 = prior_std**2
    return (math.log(prior_std) - logstd + (torch.exp(2 * logstd) + mu**2) / (2 * s2) - 0.5).sum(-1)


def kl_normal_dims(mu: Tensor, logstd: Tensor, prior_logstd: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, s^2)) of each dimension, with a learned log s ``(K,)``:
    ``log s - log sigma + (sigma^2 + mu^2) / (2 s^2) - 1/2``; ``(B, K)`` -> ``(B, K)`` nats."""
    ls = prior_logstd.to(mu.dtype)
    return ls - logstd + (torch.exp(2 * logstd) + mu**2) * torch.exp(-2 * ls) / 2 - 0.5


def log_hyperprior(prior_logstd: Tensor, shape: float, scale: float) -> Tensor:
    """log p(s^2) of the hyperprior on the learned prior variances (``--prior hyperprior``):
    ``sum_k log InvGamma(s_k^2; a, b)``, ``a log b - lgamma(a) - (a + 1) log s_k^2 - b / s_k^2``
    (density on the variance v = s^2, in nats; a scalar). Its mode is at ``b / (a + 1)``."""
    log_v = 2 * prior_logstd
    a, b = shape, scale
    per = a * math.log(b) - math.lgamma(a) - (a + 1) * log_v - b * torch.exp(-log_v)
    return per.sum()


def kl_uniform_rotation(logstd: Tensor, prior_std: float = math.pi) -> Tensor:
    """Paper eq. 3: the rotation KL that does not penalise the posterior mean.

    ``-log sigma + log s + sigma^2 / (2 s^2) - 1/2``; logstd ``(B,)`` -> ``(B,)``.
    """
    return -logstd + math.log(prior_std) + torch.exp(2 * logstd) / (2 * prior_std**2) - 0.5


def gaussian_log_likelihood(y: Tensor, mean: Tensor, logstd: Tensor | None = None) -> Tensor:
    """sum_i log N(y_i; mean_i, sigma_i^2); unit variance when ``logstd`` is None.

    y, mean, logstd: ``(B, N, C)`` -> ``(B,)``.
    """
    if logstd is None:
        return -0.5 * ((y - mean) ** 2 + LOG_2PI).sum((1, 2))
    return (-0.5 * ((y - mean) * torch.exp(-logstd)) ** 2 - logstd - 0.5 * LOG_2PI).sum((1, 2))


def bernoulli_log_likelihood(y: Tensor, logits: Tensor) -> Tensor:
    """sum_i log Bernoulli(y_i; sigmoid(logit_i)) for y in [0, 1]. ``(B, N, C)`` -> ``(B,)``."""
    return -F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum((1, 2))


def log_likelihood(
    cfg: ModelConfig, y: Tensor, params: Tensor, noise_logstd: float | None = None
) -> Tensor:
    """Log-likelihood of images ``y`` ``(B, N, C)`` under generator output ``(B, N, n_out)``.
    ``noise_logstd``: the Gaussian's log-std when it is neither 0 (unit variance) nor learned
    (a coarse-to-fine stage, :class:`Stage`)."""
    c = cfg.channels
    if cfg.likelihood == "bernoulli":
        return bernoulli_log_likelihood(y, params[..., :c])
    logstd = params[..., c:] if cfg.learn_noise else None
    if logstd is None and noise_logstd is not None:
        logstd = params.new_full((1,), noise_logstd)
    return gaussian_log_likelihood(y, params[..., :c], logstd)


def pixel_mean(cfg: ModelConfig, params: Tensor) -> Tensor:
    """Mean of the pixel distribution (sigmoid of the logit for Bernoulli). ``(B, N, C)``."""
    mean = params[..., : cfg.channels]
    return torch.sigmoid(mean) if cfg.likelihood == "bernoulli" else mean


@dataclass
class ElboTerms:
    """Per-image terms of the ELBO, each ``(B,)`` in nats; ``kl_z_dims`` ``(B, K)``: the z KL
    of each latent dimension (zeros while z is held at 0)."""

    log_lik: Tensor
    kl_z: Tensor
    kl_theta: Tensor
    kl_shift: Tensor
    kl_z_dims: Tensor
    # the affine / spline parameters' KL (``--pose``; :func:`kl_deform`), None for rigid poses
    kl_deform: Tensor | None = None
    # the class's KL, KL(q(c) || p(c)) (``--classes`` > 1; :func:`kl_class_bins`), else None
    kl_class: Tensor | None = None

    @property
    def kl_pose(self) -> Tensor:
        """KL of all pose latents, ``(B,)``."""
        kl = self.kl_theta + self.kl_shift
        return kl if self.kl_deform is None else kl + self.kl_deform

    @property
    def kl(self) -> Tensor:
        """KL of all latents (z, pose and class), nats, ``(B,)``."""
        kl = self.kl_z + self.kl_theta + self.kl_shift
        if self.kl_deform is not None:
            kl = kl + self.kl_deform
        return kl if self.kl_class is None else kl + self.kl_class

    @property
    def elbo(self) -> Tensor:
        """The evidence lower bound, log-likelihood less the KL, nats, ``(B,)``."""
        return self.log_lik - self.kl

    def objective(self, beta: float = 1.0, pose_beta: float = 1.0) -> Tensor:
        """What training maximises: :func:`weighted_elbo` of these terms, ``(B,)``."""
        out: Tensor = weighted_elbo(self.elbo, self.kl_z, self.kl_pose, beta, pose_beta)
        return out

    def detached(self) -> ElboTerms:
        """The same terms cut from the autograd graph."""
        return self.map(lambda t: t.detach())

    def map(self, f: Callable[[Tensor], Tensor]) -> ElboTerms:
        """The terms with ``f`` applied to each (the optional ones kept None)."""
        values = (getattr(self, field.name) for field in fields(self))
        terms: list[Any] = [None if v is None else f(v) for v in values]
        return ElboTerms(*terms)

    @staticmethod
    def cat(parts: list[ElboTerms]) -> ElboTerms:
        """The terms of consecutive parts of a batch, joined in order."""
        if len(parts) == 1:
            return parts[0]
        values = ([getattr(p, field.name) for p in parts] for field in fields(ElboTerms))
        terms: list[Any] = [None if v[0] is None else torch.cat(v) for v in values]
        return ElboTerms(*terms)


def weighted_elbo(
    elbo: Num, kl_z: Num, kl_pose: Num, beta: float = 1.0, pose_beta: float = 1.0
) -> Num:
    """The beta-VAE objective (Higgins et al. 2017): ``log p - beta KL_z - pose_beta
    (KL_theta + KL_dx)``, written from the ELBO and the KLs (tensors or per-epoch means; it is
    linear in them); the ELBO itself at ``beta = pose_beta = 1``."""
    return elbo - (beta - 1.0) * kl_z - (pose_beta - 1.0) * kl_pose


def elbo_terms(
    cfg: ModelConfig,
    y: Tensor,
    params: Tensor,
    z_mu: Tensor,
    z_logstd: Tensor,
    pose_mu: Tensor,
    pose_logstd: Tensor,
    use_z: bool = True,
    pixel_weight: float = 1.0,
    z_prior_logstd: Tensor | None = None,
    affine_prior: tuple[Tensor, Tensor] | None = None,
    noise_logstd: float | None = None,
) -> ElboTerms:
    """All ELBO terms for one batch (paper eqs. 4-5).

    y: images ``(B, N, C)``; params: generator output ``(B, N, n_out)``; z_mu/z_logstd ``(B, K)``;
    pose_mu/pose_logstd ``(B, P)`` laid out as in :class:`emvae.models.RigidTransform`.
    ``use_z=False`` (the z-delay epochs, when z is held at 0) drops the z KL. Pose variables that
    are not inferred have no columns and contribute no KL (eq. 5). ``pixel_weight``: the
    log-likelihood's factor when ``y`` holds a random subset of the pixels (all of them over
    the subset's size: an unbiased estimate of the whole image's). ``z_prior_logstd`` ``(K,)``:
    z's prior is N(0, diag(s^2)) with these log s (``--prior hyperprior``), else N(0, I).
    ``affine_prior``: the fitted (mean, log-std) of the affine parameters' prior (``--pose
    affine``; :func:`kl_deform`). ``noise_logstd``: see :func:`log_likelihood`.
    """
    kl_z, kl_theta, kl_shift = kl_terms(
        cfg, z_mu, z_logstd, pose_mu, pose_logstd, use_z, z_prior_logstd
    )
    dims = _kl_dims(z_mu, z_logstd, use_z, z_prior_logstd)
    ll = log_likelihood(cfg, y, params, noise_logstd) * pixel_weight
    extra = kl_deform(cfg, pose_mu, pose_logstd, affine_prior)
    return ElboTerms(ll, kl_z, kl_theta, kl_shift, dims, extra)


def _kl_dims(
    z_mu: Tensor, z_logstd: Tensor, use_z: bool, z_prior_logstd: Tensor | None = None
) -> Tensor:
    if z_prior_logstd is None:
        dims = kl_standard_normal_dims(z_mu, z_logstd)
    else:
        dims = kl_normal_dims(z_mu, z_logstd, z_prior_logstd)
    return dims if use_z else torch.zeros_like(dims)


def kl_terms(
    cfg: ModelConfig,
    z_mu: Tensor,
    z_logstd: Tensor,
    pose_mu: Tensor,
    pose_logstd: Tensor,
    use_z: bool = True,
    z_prior_logstd: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(KL_z, KL_theta, KL_dx), each ``(B,)``, for the Gaussian posterior (see elbo_terms)."""
    zero = pose_mu.new_zeros(pose_mu.shape[0])
    kl_z = zero
    if use_z and cfg.zdim > 0:
        kl_z = _kl_dims(z_mu, z_logstd, True, z_prior_logstd).sum(-1)
    kl_theta = kl_shift = zero
    if cfg.rotation:
        if cfg.theta_prior == "uniform":
            kl_theta = kl_uniform_rotation(pose_logstd[:, 0], cfg.theta_prior_std)
        else:
            kl_theta = kl_normal(pose_mu[:, :1], pose_logstd[:, :1], cfg.theta_prior_std)
    if cfg.translation:
        r = int(cfg.rotation)
        s = slice(r, r + 2)
        kl_shift = kl_normal(pose_mu[:, s], pose_logstd[:, s], cfg.shift_prior_std)
    return kl_z, kl_theta, kl_shift


def kl_deform(
    cfg: ModelConfig,
    pose_mu: Tensor,
    pose_logstd: Tensor,
    affine_prior: tuple[Tensor, Tensor] | None,
) -> Tensor | None:
    """KL of the pose's affine and spline parameters (``--pose``), ``(B,)`` nats; None for the
    rigid pose. pose_mu/pose_logstd ``(B, P)`` in the layout of
    :class:`emvae.models.transform.DeformTransform`.

    Affine (log s_x, log s_y, shear): seed 004's prior N(nu, diag(tau^2)) with nu and log tau
    fitted (``affine_prior`` = (nu ``(3,)``, log tau ``(3,)``)): ``sum KL(N(mu, sigma^2) ||
    N(nu, tau^2))``. Spline displacements: N(0, s^2) per coordinate, s = ``--tps-prior-px``.
    """
    if cfg.pose == "rigid":
        return None
    r = cfg.n_pose
    kl = pose_mu.new_zeros(pose_mu.shape[0])
    if cfg.affine:
        if affine_prior is None:
            raise ValueError("the affine pose's KL needs its fitted prior (mean, log-std)")
        nu, log_tau = (t.to(pose_mu.dtype) for t in affine_prior)
        mu, ls = pose_mu[:, r : r + 3], pose_logstd[:, r : r + 3]
        kl = kl + kl_normal_dims(mu - nu, ls, log_tau).sum(-1)
        r += 3
    if cfg.tps:
        kl = kl + kl_normal(pose_mu[:, r:], pose_logstd[:, r:], cfg.tps_prior_std)
    return kl


def kl_class_bins(
    log_w: Tensor, classes: Tensor, n_classes: int, log_prior: Tensor | None
) -> Tensor:
    """KL(q(c) || p(c)) of the class marginal of a joint (class, bin) posterior, ``(B,)`` nats.

    log_w ``(B, h)``: log q of the hypotheses used (normalised); classes ``(B, h)``: their
    classes (0-based); log_prior ``(K,)``: log p(c) (None: uniform). q(c) sums the
    hypotheses' q over each class. The joint's KL from ``p(c) / R`` is this plus
    ``sum_c q(c) KL(q(bin | c) || 1/R)`` (:func:`kl_rotation_bins` returns the joint's).
    """
    q_c = log_w.new_zeros(log_w.shape[0], n_classes).scatter_add(1, classes, log_w.exp())
    log_p = -math.log(n_classes) if log_prior is None else log_prior.to(log_w.dtype)
    return (q_c * (q_c.clamp_min(1e-30).log() - log_p)).sum(1)


def kl_rotation_bins(
    log_w: Tensor,
    logstd: Tensor,
    cfg: ModelConfig,
    classes: Tensor | None = None,
    log_prior: Tensor | None = None,
) -> Tensor:
    """KL of the binned rotation posterior from the uniform prior (module docstring).

    log_w ``(B, k)``: log q(b) over the bins used (normalised); logstd ``(B, k)``: the in-bin
    log-stds. ``sum_b q_b (log q_b + log R) + sum_b q_b KL_eq3(sigma_b; s_theta / R)`` -> ``(B,)``.
    With classes, the hypotheses are (class, bin) cells of classes ``(B, k)`` (0-based) and the
    prior is ``p(c) / R`` (log p(c) ``log_prior`` ``(K,)``; None: uniform): ``- log p(c_b)`` is
    added inside the first sum.
    """
    r = cfg.rotation_bins
    w = log_w.exp()
    log_p: float | Tensor = math.log(r)
    if classes is not None:
        uniform = log_w.new_full((cfg.classes,), -math.log(cfg.classes))
        prior = uniform if log_prior is None else log_prior.to(log_w.dtype)
        log_p = math.log(r) - prior[classes]
    kl_bins = (w * (log_w + log_p)).sum(1)
    kl_in = (w * kl_uniform_rotation(logstd, cfg.theta_prior_std / r)).sum(1)
    return kl_bins + kl_in


class Stage(NamedTuple):
    """The render size of a coarse-to-fine stage (:mod:`emvae.stages`) as the likelihood sees
    it: ``size`` px, the masked pixels ``keep`` ``(M,)`` (row-major indices of the stage's grid;
    None without a mask) and the noise's log-std relative to the full box (None at full size)."""

    size: int
    keep: Tensor | None = None
    noise_logstd: float | None = None


def with_ctf(cfg: ModelConfig, params: Tensor, ctf: Tensor, size: int | None = None) -> Tensor:
    """Generator output with its mean image multiplied, in Fourier space, by each particle's
    CTF (``ctf`` ``(B, 10)``, :data:`emvae.ctf.COLUMNS`): ``params`` ``(B, N, n_out)`` or
    ``(B, k, N, n_out)`` (one rendering per rotation hypothesis), N = d^2 with d = ``size``
    (default: the box), same shape out."""
    from emvae.ctf import apply_ctf

    c, d = cfg.channels, size or cfg.image_size
    flat = params.reshape(-1, d * d, params.shape[-1])
    reps = flat.shape[0] // ctf.shape[0]
    mean = flat[..., :c].transpose(1, 2).reshape(-1, c, d, d)
    seen = apply_ctf(mean, ctf.repeat_interleave(reps, 0), cfg.ctf_pad)
    seen = seen.reshape(-1, c, d * d).transpose(1, 2)
    return torch.cat([seen, flat[..., c:]], -1).reshape(params.shape)


def compared(
    cfg: ModelConfig, params: Tensor, ctf: Tensor | None = None, stage: Stage | None = None
) -> Tensor:
    """The generator output as the likelihood compares it with the images: multiplied by each
    particle's CTF ``(B, 10)`` (when given; at ``stage``'s size) and then masked (the CTF needs
    the whole rendering); ``params`` ``(B, [k,] N, n_out)`` as :func:`posterior_elbo` takes it."""
    if ctf is None:
        return params
    if stage is not None and stage.size != cfg.image_size:
        from emvae.stages import stage_ctf

        ctf = stage_ctf(ctf, cfg.image_size, stage.size)
        assert ctf is not None  # given: the stage's parameters
    params = with_ctf(cfg, params, ctf, None if stage is None else stage.size)
    if cfg.mask_radius_px is not None:  # rendered whole for the CTF; compared masked
        keep = stage.keep if stage is not None else None
        if keep is None:
            keep = mask_index(cfg.image_size, cfg.mask_radius_px)
        params = params.index_select(-2, keep.to(params.device))
    return params


def rendering_correlation(
    cfg: ModelConfig,
    y: Tensor,
    params: Tensor,
    q: Posterior,
    ctf: Tensor | None = None,
    stage: Stage | None = None,
) -> Tensor:
    """Each image's Pearson correlation with the model's rendering of it, ``(B,)``: ``y``
    ``(B, N, C)`` against the pixel means as compared (:func:`compared`; with rotation
    hypotheses, their q-weighted mean), over the likelihood's pixels. Near
    sqrt(SNR / (1 + SNR)) for a particle the model explains, near 0 for an empty box."""
    seen = pixel_mean(cfg, compared(cfg, params, ctf, stage))
    if q.bins is not None:
        _, log_w = q.bins.top(params.shape[1] // q.bins.classes)
        seen = (log_w.exp()[:, :, None, None] * seen).sum(1)
    a = y.flatten(1).double()
    b = seen.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r: Tensor = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
    return r


def posterior_elbo(
    cfg: ModelConfig,
    y: Tensor,
    params: Tensor,
    q: Posterior,
    use_z: bool = True,
    ctf: Tensor | None = None,
    pixel_weight: float = 1.0,
    stage: Stage | None = None,
) -> ElboTerms:
    """ELBO terms for posterior ``q`` and generator output ``params`` (what
    :meth:`emvae.models.SpatialVAE.forward` returns): :func:`elbo_terms` for a Gaussian pose
    posterior; for rotation bins, ``params`` ``(B, k, N, n_out)`` holds one rendering per
    hypothesis and the log-likelihood and angle KL are their q-weighted sums (exact).

    ``ctf`` ``(B, 10)``: the images are compared with the renderings multiplied by each
    particle's CTF (:func:`with_ctf`); the generator itself stays CTF-free. ``pixel_weight``:
    see :func:`elbo_terms` (``--pixel-fraction``). ``stage``: the render size of a
    coarse-to-fine stage (``y`` and ``params`` on its grid; the CTF parameters given for it:
    :func:`emvae.stages.stage_ctf`); None: the full box.
    """
    noise = None if stage is None else stage.noise_logstd
    params = compared(cfg, params, ctf, stage)
    if q.bins is None:
        mu, logstd, prior = q.pose_mu, q.pose_logstd, q.z_prior_logstd
        return elbo_terms(
            cfg, y, params, q.z_mu, q.z_logstd, mu, logstd, use_z, pixel_weight, prior,
            q.affine_prior, noise,
        )  # fmt: skip
    idx, log_w = q.bins.top(params.shape[1] // q.bins.classes)
    b, k = idx.shape
    ll = log_likelihood(cfg, y.repeat_interleave(k, 0), params.flatten(0, 1), noise).view(b, k)
    ll = ll * pixel_weight
    prior = q.z_prior_logstd
    kl_z, _, kl_shift = kl_terms(cfg, q.z_mu, q.z_logstd, q.pose_mu, q.pose_logstd, use_z, prior)
    logstd = q.bins.logstd.gather(1, idx)
    kl_class = None
    if q.bins.classes == 1:
        kl_theta = kl_rotation_bins(log_w, logstd, cfg)
    else:  # the joint (class, bin) KL, split into the class's and the rest
        classes = q.bins.cell_class(idx)
        joint = kl_rotation_bins(log_w, logstd, cfg, classes, q.class_log_prior)
        kl_class = kl_class_bins(log_w, classes, q.bins.classes, q.class_log_prior)
        kl_theta = joint - kl_class
    dims = _kl_dims(q.z_mu, q.z_logstd, use_z, prior)
    extra = kl_deform(cfg, q.pose_mu, q.pose_logstd, q.affine_prior)
    return ElboTerms((log_w.exp() * ll).sum(1), kl_z, kl_theta, kl_shift, dims, extra, kl_class)
