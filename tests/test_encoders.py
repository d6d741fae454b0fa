"""Inference networks: equivariance of the group-convolutional encoder and the mixture ELBO."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emvae.augment import rotate_images
from emvae.config import ModelConfig
from emvae.errors import ConfigError
from emvae.geometry import rotation_matrix
from emvae.models import SpatialVAE
from emvae.models.groupconv import steerable_basis
from emvae.objective import (
    kl_rotation_bins,
    kl_uniform_rotation,
    log_likelihood,
    posterior_elbo,
)


def _blobs(size: int) -> torch.Tensor:
    """A smooth asymmetric test image ``(1, 1, D, D)`` (float64)."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    c = (size - 1) / 2
    img = torch.zeros(size, size, dtype=torch.float64)
    for cy, cx, s, a in [(c - 5, c, 3.0, 1.0), (c + 5, c - 6, 4.0, -0.7), (c, c + 7, 2.5, 0.8)]:
        img += a * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return img[None, None]


def _model(size: int, bins: int, hypotheses: int = 2, seed: int = 0, **kw) -> SpatialVAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_size=size,
        encoder="equivariant",
        rotation_bins=bins,
        hypotheses=hypotheses,
        zdim=2,
        enc_hidden=32,
        gen_hidden=32,
        **kw,
    )
    return SpatialVAE(cfg).double().eval()


def test_steerable_basis_rotates_exactly_by_quarter_turns():
    for k in (3, 5):
        b0 = steerable_basis(k, 0.0)
        for r in range(1, 4):
            br = steerable_basis(k, r * math.pi / 2)
            # counter-clockwise with +y up is torch.rot90(k=1) on (row, column) arrays
            assert torch.allclose(br, torch.rot90(b0, r, (-2, -1)), atol=1e-12)
        # a quarter turn the other way would not match: the direction is pinned
        assert not torch.allclose(steerable_basis(k, math.pi / 2), torch.rot90(b0, -1, (-2, -1)))


def test_rot90_is_a_counter_clockwise_quarter_turn_of_rotate_images():
    x = _blobs(41)
    assert torch.allclose(
        rotate_images(x, torch.tensor([math.pi / 2], dtype=torch.float64)),
        torch.rot90(x, 1, (-2, -1)),
        atol=1e-9,
    )


@pytest.mark.parametrize("size", [40, 41])
def test_rotating_the_input_by_one_bin_shifts_the_posterior_by_one_bin(size):
    """R = 4: a quarter turn is exact on the pixel grid, so equivariance is exact."""
    model = _model(size, 4)
    x = _blobs(size)
    with torch.no_grad():
        q0 = model.encode(x)
        q1 = model.encode(torch.rot90(x, 1, (-2, -1)))  # counter-clockwise by one bin
    # bin b of the original is bin b + 1 of the rotated image
    assert torch.allclose(q1.bins.log_q, torch.roll(q0.bins.log_q, 1, 1), atol=1e-9)
    assert q0.bins.log_q.std() > 1e-4  # the test is not vacuous
    assert torch.allclose(q1.z_mu, q0.z_mu, atol=1e-9)
    assert torch.allclose(q1.z_logstd, q0.z_logstd, atol=1e-9)
    # the particle turned counter-clockwise, so the model angle decreases by a quarter turn
    # (theta_deg in the table, = -theta, increases by 90 degrees)
    d = q1.bins.theta - torch.roll(q0.bins.theta, 1, 1)
    assert torch.allclose(torch.remainder(d + math.pi, 2 * math.pi) - math.pi,
                          torch.full_like(d, -math.pi / 2), atol=1e-9)  # fmt: skip
    # the template-frame shift does not change; the image-frame shift turns with the image
    assert torch.allclose(q1.pose_mu[:, 1:], q0.pose_mu[:, 1:], atol=1e-7)


@pytest.mark.parametrize("bins", [8, 16])
def test_quarter_turns_shift_by_a_quarter_of_the_bins_exactly(bins):
    model = _model(40, bins)
    x = _blobs(40)
    with torch.no_grad():
        q0 = model.encode(x)
        q1 = model.encode(torch.rot90(x, 1, (-2, -1)))
    assert torch.allclose(q1.bins.log_q, torch.roll(q0.bins.log_q, bins // 4, 1), atol=1e-9)
    assert torch.allclose(q1.z_mu, q0.z_mu, atol=1e-9)


@pytest.mark.parametrize("bins", [8, 16])
def test_one_bin_turn_is_equivariant_up_to_the_pixel_grid(bins):
    """2 pi / R is not a symmetry of the pixel grid for R = 8, 16: the lifted feature maps of the
    turned image equal the turned maps of the original moved by one orientation, up to
    interpolation (measured away from the box edges); the wrong direction is far off."""
    model = _model(41, bins)
    x = _blobs(41)
    turn = torch.tensor([2 * math.pi / bins], dtype=torch.float64)
    with torch.no_grad():
        f0 = model.encoder.lift(x)
        f1 = model.encoder.lift(rotate_images(x, turn))
    f, r = f0.shape[1:3]

    def error(step: int) -> float:
        g = rotate_images(torch.roll(f0, step, 2).flatten(1, 2), turn).unflatten(1, (f, r))
        inner = (..., slice(8, -8), slice(8, -8))
        return float((g - f1)[inner].norm() / f1[inner].norm())

    assert error(1) < 0.08
    assert error(1) < 0.4 * min(error(0), error(2))


def test_hypotheses_share_one_image_frame_shift():
    """Each hypothesis renders the particle at its own angle but at the same place."""
    model = _model(40, 8, hypotheses=4)
    x = _blobs(40)
    with torch.no_grad():
        q = model.encode(x)
        z, pose = model.sample(q, eps=torch.randn(1, model.n_latent, dtype=torch.float64))
    assert pose.shape == (1, 4, 3)
    idx, _ = q.bins.top(4)
    assert idx[0, 0] == q.bins.log_q.argmax()
    theta, dx = pose[0, :, 0], pose[0, :, 1:]
    s = -(dx.unsqueeze(1) @ rotation_matrix(theta).transpose(-1, -2)).squeeze(1)  # image frame
    assert torch.allclose(s, s[:1].expand(4, 2), atol=1e-12)


def test_mixture_elbo_is_the_exact_sum_over_bins():
    model = _model(24, 4, hypotheses=4)
    cfg = model.config
    x = torch.randn(3, 1, 24, 24, dtype=torch.float64)
    eps = torch.randn(3, model.n_latent, dtype=torch.float64)
    with torch.no_grad():
        q, params = model(x, None, eps)
        terms = posterior_elbo(cfg, model.pixels(x), params, q)
        z, pose = model.sample(q, eps=eps)
        idx, log_w = q.bins.top(4)
        manual = sum(
            log_w[:, h].exp() * log_likelihood(cfg, model.pixels(x), model.decode(z, pose[:, h]))
            for h in range(4)
        )
    assert params.shape == (3, 4, 24 * 24, 1)
    assert torch.allclose(terms.log_lik, manual, rtol=1e-10)
    assert torch.allclose(log_w.exp().sum(1), torch.ones(3, dtype=torch.float64))


def test_bin_kl_matches_eq3_for_a_confident_posterior_and_is_zero_for_uniform_bins():
    cfg = ModelConfig(image_size=24, encoder="equivariant", rotation_bins=8, hypotheses=8)
    logstd = torch.full((1, 8), math.log(0.05), dtype=torch.float64)
    one_hot = torch.full((1, 8), -1e9, dtype=torch.float64)
    one_hot[0, 3] = 0.0
    confident = kl_rotation_bins(one_hot.log_softmax(1), logstd, cfg)
    eq3 = kl_uniform_rotation(logstd[:, 0], cfg.theta_prior_std)
    assert torch.allclose(confident, eq3, atol=1e-2)
    uniform = kl_rotation_bins(torch.full((1, 8), -math.log(8), dtype=torch.float64), logstd, cfg)
    within = kl_uniform_rotation(logstd[:, 0], cfg.theta_prior_std / 8)
    assert torch.allclose(uniform, within, atol=1e-12)  # the categorical part is 0


def test_augmentation_is_undone_for_rotation_bins():
    """Encoding the image rotated by gamma with gamma passed back gives the same posterior."""
    model = _model(40, 4)
    x = _blobs(40)
    g = torch.tensor([math.pi / 2], dtype=torch.float64)
    with torch.no_grad():
        q0 = model.encode(x)
        q1 = model.encode(x, gamma=g)  # the network sees rot90(x)
    d = q1.pose_mu[:, 0] - q0.pose_mu[:, 0]
    assert torch.allclose(torch.remainder(d + math.pi, 2 * math.pi) - math.pi, 0 * d, atol=1e-7)
    assert torch.allclose(q1.pose_mu[:, 1:], q0.pose_mu[:, 1:], atol=1e-7)
    assert torch.allclose(q1.z_mu, q0.z_mu, atol=1e-9)


@pytest.mark.parametrize(
    "kw",
    [
        {"rotation": False},
        {"hypotheses": 1},
        {"hypotheses": 9},
        {"rotation_bins": 6},
        {"theta_prior": "gaussian"},
    ],
)
def test_equivariant_settings_that_cannot_work_are_refused(kw):
    with pytest.raises(ConfigError):
        ModelConfig(image_size=24, encoder="equivariant", **kw).validate()


@pytest.mark.parametrize(
    "encoder, posterior",
    [("mlp", "gaussian"), ("mlp", "bins"), ("conv", "bins"), ("equivariant", "auto")],
)
def test_every_encoder_trains_and_reports(encoder, posterior, tmp_path):
    """A few epochs on clean particles: finite ELBO that improves, a full table (with the bin
    probability for rotation bins)."""
    from emvae.bench import array_stack
    from emvae.config import RunConfig, TrainConfig
    from emvae.simulate import simulate_particles
    from emvae.train import fit

    images, _ = simulate_particles(200, 16, snr=10.0, shift_std_px=0.5, seed=0)
    stack = array_stack(images, "p.mrcs")
    cfg = RunConfig(
        model=ModelConfig(
            image_size=16,
            zdim=1,
            encoder=encoder,
            theta_posterior=posterior,
            gen_hidden=32,
            enc_hidden=32,
            enc_channels=4,
        ),
        train=TrainConfig(epochs=3, lr=1e-3, device="cpu", z_delay=1),
    )
    result = fit(stack, cfg, tmp_path / encoder, progress=False)
    assert np.isfinite(result.table["elbo"]).all()
    assert result.history[-1]["train_elbo"] > result.history[0]["train_elbo"]
    if posterior != "gaussian":
        p = result.table["theta_prob"]
        assert ((p >= 1 / 2 - 1e-6) & (p <= 1)).all()  # the better of the 2 bins used
        assert "emvaeAnglePsiProb" in (tmp_path / encoder / "particles.star").read_text()
    else:
        assert "theta_prob" not in result.table
