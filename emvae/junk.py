"""The junk score: how likely each particle is one the model does not explain.

Two numbers say how well the model explains a particle: its ELBO (nats) and its correlation
with the model's rendering of it (``ncc``, :func:`emvae.objective.rendering_correlation`). They
fail on different junk: an empty box has a fine ELBO (noise is easy to explain) but no
correlation with any rendering; a blob of ice or a neighbour in the box correlates with the
particle drawn over it but leaves much of the image unexplained, a low ELBO.

Within each class (the particles the same generator draws) the pair is modelled as a
contaminated Gaussian: the particles the model explains scatter as one 2-D Gaussian, the junk
spreads uniformly over the box the class's values span, in a proportion pi fitted with the
Gaussian by expectation-maximisation. A particle's junk score is its posterior probability of
the uniform part, calibrated under that model (a score of 0.5: as likely junk as not); a
particle better than the Gaussian's mean in both numbers scores 0 (the uniform part would
otherwise claim the best particles too).
"""

from __future__ import annotations

import numpy as np

__all__ = ["junk_probability"]

#: Fewer particles than this in a class: scored with all the particles together.
MIN_GROUP = 20


def junk_probability(
    features: np.ndarray, groups: np.ndarray | None = None, iterations: int = 200
) -> np.ndarray:
    """The junk score of each particle, ``(N,)`` in [0, 1] (module docstring).

    ``features`` ``(N, F)``: numbers that are higher for particles the model explains (the
    ELBO and ``ncc``); ``groups`` ``(N,)``: each particle's class (scored class by class; None:
    one group). Rows with a missing value score NaN.
    """
    x = np.asarray(features, dtype=np.float64)
    out = np.full(len(x), np.nan)
    ok = np.isfinite(x).all(1)
    g = np.zeros(len(x), np.int64) if groups is None else np.asarray(groups)
    labels = np.unique(g[ok])
    small = [c for c in labels if np.count_nonzero(ok & (g == c)) < MIN_GROUP]
    for c in labels:
        mine = ok & (g == c) if c not in small else np.zeros_like(ok)
        if mine.any():
            out[mine] = _contaminated(x[mine], iterations)
    rest = ok & np.isin(g, small)
    if rest.any():
        out[rest] = _contaminated(x[rest], iterations) if rest.sum() >= 3 else 0.0
    return out


def _contaminated(x: np.ndarray, iterations: int) -> np.ndarray:
    """Posterior probability of the uniform part for each row of ``x`` ``(n, F)``."""
    n, f = x.shape
    span = np.ptp(x, axis=0)
    if n < 3 or not (span > 0).all():
        return np.zeros(n)
    log_u = -np.log(span).sum()  # the uniform density over the values' box
    lo, hi = np.quantile(x, [0.1, 0.9], axis=0)  # start from the central particles
    centre = ((x >= lo) & (x <= hi)).all(1)
    if centre.sum() <= f:
        centre = np.ones(n, bool)
    mu, cov = x[centre].mean(0), np.cov(x[centre].T).reshape(f, f)
    pi = 0.1
    r = np.zeros(n)
    for _ in range(iterations):
        log_g = _log_gaussian(x, mu, cov)
        a, b = np.log(pi) + log_u, np.log1p(-pi) + log_g
        r_new = np.exp(a - np.logaddexp(a, b))
        w = 1.0 - r_new
        if w.sum() <= f:  # everything junk: no Gaussian left to fit
            break
        mu = (w[:, None] * x).sum(0) / w.sum()
        d = x - mu
        cov = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / w.sum()
        cov += 1e-9 * np.trace(cov) / f * np.eye(f)  # never singular
        pi = float(np.clip(r_new.mean(), 1e-6, 0.5))
        done = np.abs(r_new - r).max() < 1e-6
        r = r_new
        if done:
            break
    r[(x >= mu).all(1)] = 0.0
    return r


def _log_gaussian(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mu, cov) of each row, ``(n,)``."""
    f = len(mu)
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return np.full(len(x), -np.inf)
    d = x - mu
    m = np.einsum("ij,ij->i", d @ np.linalg.inv(cov), d)
    out: np.ndarray = -0.5 * (m + logdet + f * np.log(2 * np.pi))
    return out
