"""Circular statistics on constructed angles."""

import numpy as np
import pytest

from emvae.metrics import angular_error_deg, circular_correlation

RNG = np.random.default_rng(0)
A = RNG.uniform(-np.pi, np.pi, 2000)


def test_identical_offset_and_reflection():
    assert circular_correlation(A, A) == pytest.approx(1.0)
    assert circular_correlation(A, A + 1.3) == pytest.approx(1.0)
    assert circular_correlation(A, -A) == pytest.approx(-1.0)


def test_independent_angles_give_about_zero():
    b = RNG.uniform(-np.pi, np.pi, A.size)
    assert abs(circular_correlation(A, b)) < 0.1


def test_angular_error_after_offset_and_flip():
    deg = np.degrees(A)
    noisy = deg + 40.0 + RNG.normal(0, 2.0, A.size)
    err, offset = angular_error_deg(noisy, deg)
    assert err < 2.0 and offset == pytest.approx(40.0, abs=0.5)
    flipped, _ = angular_error_deg(-deg + 10.0, deg)
    assert flipped > 45.0
    err_flip, _ = angular_error_deg(-deg + 10.0, deg, allow_flip=True)
    assert err_flip < 0.5


def test_a_constant_angle_correlates_with_nothing():
    """A collapsed pose posterior (every particle at one angle) must not score by rounding."""
    const = np.full_like(A, np.radians(-83.1))
    assert circular_correlation(const, A) == 0.0
    assert circular_correlation(A, const) == 0.0
