"""Coordinate axes, rotation sign, shift sign and the image-frame pose (docs/conventions.md,
"Pixel coordinates (internal)" to "What the tables report (image frame)")."""

import math

import numpy as np
import pytest
import torch
from conftest import corr, render_model

from emvae.geometry import (
    coordinate_grid,
    image_to_model_pose,
    model_to_image_pose,
    rotation_matrix,
    transform_coordinates,
    wrap_degrees,
    wrap_radians,
)
from emvae.simulate import hinge_blobs, render_blobs


def test_grid_corners_and_spacing():
    g = coordinate_grid(5, 7).reshape(5, 7, 2)
    assert g[0, 0].tolist() == [-1.0, 1.0]  # row 0 is the top: y = +1
    assert g[0, 6].tolist() == [1.0, 1.0]
    assert g[4, 0].tolist() == [-1.0, -1.0]
    assert g[2, 3].tolist() == [0.0, 0.0]  # odd box: the centre pixel is the origin
    assert g[0, 1, 0] - g[0, 0, 0] == pytest.approx(2 / 6)  # one pixel = 2/(W-1)
    assert g[1, 0, 1] - g[0, 0, 1] == pytest.approx(-2 / 4)  # y decreases down the rows


def test_rotation_matrix_acts_counter_clockwise_on_row_vectors():
    x = torch.tensor([[1.0, 0.0]])
    r = rotation_matrix(torch.tensor(math.pi / 2))
    assert torch.allclose(x @ r, torch.tensor([[0.0, 1.0]]), atol=1e-7)  # +x -> +y (up)
    assert torch.allclose(r, torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), atol=1e-7)


def _blob(points, centre=(0.5, 0.0), sigma=0.08):
    c = torch.tensor(centre, dtype=points.dtype)
    return torch.exp(-((points - c) ** 2).sum(-1) / (2 * sigma**2))


def _peak(img):
    i, j = np.unravel_index(np.argmax(np.asarray(img)), np.asarray(img).shape)
    return int(i), int(j)


@pytest.mark.parametrize("size", [33, 32])
def test_generator_rotation_moves_right_to_top(size):
    """theta = -90 deg in the model is a particle turned 90 deg counter-clockwise: a feature on
    the canonical +x axis appears above the centre (smaller row index)."""
    img = render_model(torch.tensor([-math.pi / 2]), None, size, _blob)[0, 0]
    i, j = _peak(img)
    c = (size - 1) / 2
    assert abs(j - c) <= 0.5 and i == pytest.approx(c - 0.5 * c, abs=0.6)
    theta_deg, _ = model_to_image_pose(torch.tensor([-math.pi / 2]), torch.zeros(1, 2), size)
    assert theta_deg.item() == pytest.approx(90.0)


def test_generator_shift_moves_canonical_centre_to_shift_px():
    size = 41
    shift = torch.tensor([[0.2, -0.1]])  # coordinate units
    img = render_model(torch.zeros(1), shift, size, lambda p: _blob(p, (0.0, 0.0)))[0, 0]
    _, shift_px = model_to_image_pose(torch.zeros(1), shift, size)
    assert shift_px[0].tolist() == pytest.approx([-4.0, 2.0])  # -h * dx with h = 20
    i, j = _peak(img)
    assert (j, i) == (20 - 4, 20 - 2)  # +x right, +y up: y = +2 px is two rows above centre


@pytest.mark.parametrize("size", [40, 41])
def test_generator_transform_matches_image_frame_renderer(size):
    """Two independent renderings agree: the generator's T(x R(theta) + dx) and blobs placed by
    rotating counter-clockwise by theta_deg and moving them to shift_px."""
    rng = np.random.default_rng(0)
    theta = torch.tensor(rng.uniform(-math.pi, math.pi, 6))
    shift = torch.tensor(rng.normal(0, 0.08, (6, 2)))
    a = render_model(theta, shift, size)[:, 0]
    theta_deg, shift_px = model_to_image_pose(theta, shift, size)
    centres, sig, amp = hinge_blobs(np.full(6, 0.3))
    b = render_blobs(centres, sig, amp, theta_deg.numpy(), shift_px.numpy(), size)
    assert np.abs(a.numpy() - b).max() < 1e-5
    # the opposite sign convention is far off
    flipped = render_blobs(centres, sig, amp, -theta_deg.numpy(), shift_px.numpy(), size)
    assert corr(a, flipped) < 0.8


def test_spec_pose_formula_and_round_trip():
    theta = torch.tensor([0.7, -2.0, 3.0], dtype=torch.float64)
    shift = torch.tensor([[0.1, -0.05], [0.0, 0.2], [-0.3, 0.1]], dtype=torch.float64)
    size = 65
    h = 32.0
    deg, px = model_to_image_pose(theta, shift, size)
    c, s = torch.cos(theta), torch.sin(theta)
    expect = -h * torch.stack(
        [shift[:, 0] * c + shift[:, 1] * s, -shift[:, 0] * s + shift[:, 1] * c], 1
    )
    assert torch.allclose(px, expect)
    assert torch.allclose(deg, torch.rad2deg(-theta))
    # the canonical centre really lands there: x R + dx = 0 at x = shift_px / h
    x = (px / h).unsqueeze(1)
    assert torch.allclose(
        transform_coordinates(x[0], theta[:1], shift[:1]),
        torch.zeros(1, 1, 2, dtype=torch.float64),
        atol=1e-12,
    )
    t2, s2 = image_to_model_pose(deg, px, size)
    assert torch.allclose(
        torch.remainder(t2 - theta + math.pi, 2 * math.pi) - math.pi,
        torch.zeros(3, dtype=torch.float64),
        atol=1e-12,
    )
    assert torch.allclose(s2, shift)


def test_shift_std_follows_the_rotation_into_pixels():
    """A posterior std along the template's x axis lies along the image's y axis when the
    particle is turned by 90 degrees (theta = -pi/2), scaled by h = (D-1)/2 pixels per unit."""
    from emvae.geometry import shift_std_to_image

    std = torch.tensor([[0.2, 0.05]], dtype=torch.float64)
    assert shift_std_to_image(torch.zeros(1, dtype=torch.float64), std, 41)[0].tolist() == (
        pytest.approx([4.0, 1.0])
    )
    turned = shift_std_to_image(torch.tensor([-math.pi / 2], dtype=torch.float64), std, 41)
    assert turned[0].tolist() == pytest.approx([1.0, 4.0])


def test_wrap_degrees_is_one_function_for_tensors_and_arrays():
    deg = np.array([-540.0, -180.0, -179.5, 0.0, 179.5, 180.0, 359.0, 725.0])
    want = [-180.0, -180.0, -179.5, 0.0, 179.5, -180.0, -1.0, 5.0]
    assert wrap_degrees(deg).tolist() == want
    assert wrap_degrees(torch.from_numpy(deg)).tolist() == want
    assert wrap_degrees(540.0) == -180.0


def test_wrap_radians_wraps_onto_minus_pi_to_pi():
    rad = np.array([-3 * math.pi / 2, -0.5, 0.0, 0.5, 3 * math.pi / 2, 2 * math.pi + 0.25])
    assert wrap_radians(rad) == pytest.approx([math.pi / 2, -0.5, 0, 0.5, -math.pi / 2, 0.25])
    assert abs(float(wrap_radians(-math.pi))) == pytest.approx(math.pi)
