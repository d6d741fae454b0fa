"""Circular statistics and correlations for comparing inferred poses and latents with reference
angles, shifts and factors."""

from __future__ import annotations

import numpy as np
from astropy.stats import circcorrcoef, circmean

from emvae.geometry import wrap_degrees, wrap_radians


def circular_mean(a: np.ndarray) -> float:
    """Mean direction of angles ``a`` (radians, in (-pi, pi]; astropy's ``circmean``)."""
    return float(wrap_radians(float(circmean(np.asarray(a, dtype=np.float64)))))


def circular_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Jammalamadaka-SenGupta circular correlation of two angle samples (radians; astropy's
    ``circcorrcoef``).

    ``sum sin(a - mean_a) sin(b - mean_b) / sqrt(sum sin^2(a - mean_a) sum sin^2(b - mean_b))``:
    1 for identical angles, unchanged by a constant offset of either, -1 under a reflection;
    0 when either sample is (numerically) one constant angle, where it is undefined.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    spread = [(np.sin(v - circular_mean(v)) ** 2).mean() for v in (a, b)]
    if min(spread) < 1e-12:
        return 0.0
    return float(circcorrcoef(a, b))


def angular_error_deg(
    a_deg: np.ndarray, b_deg: np.ndarray, allow_flip: bool = False
) -> tuple[float, float]:
    """Median absolute angular error after the best global offset (and optionally a flip).

    Returns ``(median error in degrees, offset in degrees)`` where ``a ~ sign * b + offset``.
    """
    a, b = (np.radians(np.asarray(v, dtype=np.float64)) for v in (a_deg, b_deg))
    best = (np.inf, 0.0)
    for sign in (1.0, -1.0) if allow_flip else (1.0,):
        d = a - sign * b
        offset = circular_mean(d)
        # refine: the offset minimising the median error, searched around the mean offset
        grid = offset + np.radians(np.linspace(-20, 20, 401))
        errs = np.abs(wrap_radians(d[None, :] - grid[:, None]))
        med = np.median(errs, axis=1)
        k = int(np.argmin(med))
        if med[k] < best[0]:
            best = (float(med[k]), float(grid[k]))
    return float(np.degrees(best[0])), float(np.degrees(wrap_radians(best[1])))


def angle_difference_deg(a_deg: np.ndarray, b_deg: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """``|a - b - offset|`` wrapped onto [0, 180] degrees, element by element ``(N,)``."""
    d: np.ndarray = np.abs(wrap_degrees(np.asarray(a_deg) - np.asarray(b_deg) - offset))
    return d


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two samples ``(N,)``; NaN when either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
