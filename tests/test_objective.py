"""Each KL and likelihood term against torch.distributions or the paper's closed form."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from emvae.config import ModelConfig
from emvae.objective import (
    bernoulli_log_likelihood,
    elbo_terms,
    gaussian_log_likelihood,
    kl_normal,
    kl_standard_normal,
    kl_uniform_rotation,
)

torch.manual_seed(0)
MU = torch.randn(7, 3, dtype=torch.float64)
LOGSTD = 0.5 * torch.randn(7, 3, dtype=torch.float64)


def test_kl_standard_normal():
    ref = kl_divergence(Normal(MU, LOGSTD.exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl_standard_normal(MU, LOGSTD), ref)


@pytest.mark.parametrize("s", [0.3, 1.4, math.pi])
def test_kl_normal(s):
    ref = kl_divergence(Normal(MU, LOGSTD.exp()), Normal(0.0, s)).sum(-1)
    assert torch.allclose(kl_normal(MU, LOGSTD, s), ref)


def test_kl_uniform_rotation_is_eq3_and_ignores_the_mean():
    logstd = LOGSTD[:, 0]
    sigma, s = logstd.exp(), math.pi
    eq3 = -torch.log(sigma) + math.log(s) + sigma**2 / (2 * s**2) - 0.5
    assert torch.allclose(kl_uniform_rotation(logstd), eq3)
    # it is the Gaussian KL with the posterior mean moved to 0
    ref = kl_divergence(Normal(torch.zeros_like(sigma), sigma), Normal(0.0, s))
    assert torch.allclose(kl_uniform_rotation(logstd, s), ref)


def test_gaussian_log_likelihood():
    y, mean = torch.randn(4, 10, 2, dtype=torch.float64), torch.randn(4, 10, 2, dtype=torch.float64)
    logstd = 0.3 * torch.randn(4, 10, 2, dtype=torch.float64)
    ref = Normal(mean, logstd.exp()).log_prob(y).sum((1, 2))
    assert torch.allclose(gaussian_log_likelihood(y, mean, logstd), ref)
    ref1 = Normal(mean, 1.0).log_prob(y).sum((1, 2))
    assert torch.allclose(gaussian_log_likelihood(y, mean), ref1)


def test_bernoulli_log_likelihood():
    y = torch.randint(0, 2, (4, 10, 1)).double()
    logits = 3 * torch.randn(4, 10, 1, dtype=torch.float64)
    ref = Bernoulli(logits=logits).log_prob(y).sum((1, 2))
    assert torch.allclose(bernoulli_log_likelihood(y, logits), ref)


def _terms(cfg, pose_mu, pose_logstd, use_z=True):
    y = torch.zeros(3, cfg.image_size**2, 1, dtype=torch.float64)
    params = torch.zeros_like(y)
    z_mu = torch.ones(3, cfg.zdim, dtype=torch.float64)
    return elbo_terms(cfg, y, params, z_mu, torch.zeros_like(z_mu), pose_mu, pose_logstd, use_z)


def test_elbo_terms_priors_in_user_units():
    cfg = ModelConfig(
        image_size=41, zdim=2, theta_prior="gaussian", theta_prior_std_deg=45.0, shift_prior_px=2.0
    )
    pose_mu = torch.tensor([[0.5, 0.1, -0.2]] * 3, dtype=torch.float64)
    pose_logstd = torch.full((3, 3), -1.0, dtype=torch.float64)
    t = _terms(cfg, pose_mu, pose_logstd)
    q = Normal(pose_mu, pose_logstd.exp())
    assert torch.allclose(t.kl_theta, kl_divergence(q, Normal(0.0, math.pi / 4))[:, 0])
    s_units = 2.0 * 2 / 40  # 2 px in coordinate units of a 41-px box
    assert torch.allclose(t.kl_shift, kl_divergence(q, Normal(0.0, s_units))[:, 1:].sum(1))
    assert torch.allclose(t.kl_z, torch.full((3,), 1.0, dtype=torch.float64))  # 2 * mu^2 / 2
    assert torch.allclose(t.elbo, t.log_lik - t.kl_z - t.kl_theta - t.kl_shift)


def test_uniform_prior_does_not_penalise_theta_mean_and_z_delay_drops_kl_z():
    cfg = ModelConfig(image_size=9, zdim=2, translation=False)
    a = _terms(cfg, torch.full((3, 1), 0.1, dtype=torch.float64), torch.zeros(3, 1).double())
    b = _terms(cfg, torch.full((3, 1), 3.0, dtype=torch.float64), torch.zeros(3, 1).double())
    assert torch.equal(a.kl_theta, b.kl_theta)
    assert torch.equal(a.kl_shift, torch.zeros(3, dtype=torch.float64))
    delayed = _terms(cfg, torch.zeros(3, 1).double(), torch.zeros(3, 1).double(), use_z=False)
    assert torch.equal(delayed.kl_z, torch.zeros(3, dtype=torch.float64))


def test_learned_noise_uses_the_generators_second_output():
    from emvae.objective import log_likelihood

    cfg = ModelConfig(image_size=4, learn_noise=True)
    assert cfg.n_out == 2
    y = torch.randn(2, 16, 1, dtype=torch.float64)
    params = torch.randn(2, 16, 2, dtype=torch.float64)
    ref = Normal(params[..., :1], params[..., 1:].exp()).log_prob(y).sum((1, 2))
    assert torch.allclose(log_likelihood(cfg, y, params), ref)
    fixed = ModelConfig(image_size=4)
    ref1 = Normal(params[..., :1], 1.0).log_prob(y).sum((1, 2))
    assert torch.allclose(log_likelihood(fixed, y, params[..., :1]), ref1)


def test_the_pixel_subsample_likelihood_is_unbiased():
    """--pixel-fraction: the log-likelihood on a random half of the pixels, scaled by all over
    drawn, averages to the whole image's over many draws; a draw renders only its pixels."""
    from emvae.models import SpatialVAE
    from emvae.objective import posterior_elbo

    torch.manual_seed(0)
    for mask in (None, 5.0):
        cfg = ModelConfig(image_size=12, zdim=1, gen_hidden=8, enc_hidden=8, mask_radius_px=mask)
        model = SpatialVAE(cfg).eval()
        x = torch.randn(4, 1, 12, 12)
        eps = torch.zeros(4, model.n_latent)
        rng = torch.Generator().manual_seed(1)
        n = model.pixel_index.numel() if model.masked else 144
        with torch.no_grad():
            q, params = model(x, None, eps)
            full = posterior_elbo(cfg, model.pixels(x), params, q).log_lik
            z, pose = model.sample(q, eps=eps)
            everything = model.decode(z, pose, full=True)  # (4, 144, 1), every pixel
            subset = model.pixel_sample(0.5, rng)
            assert len(subset) == math.ceil(n / 2) and len(set(subset.tolist())) == len(subset)
            _, part = model(x, None, eps, pixels=subset)
            assert torch.allclose(part, everything[..., subset, :], atol=1e-6)
            draws = []
            for _ in range(3000):
                subset = model.pixel_sample(0.5, rng)
                y = model.pixels(x, subset)
                p = everything[..., subset, :]
                draws.append(posterior_elbo(cfg, y, p, q, pixel_weight=n / len(subset)).log_lik)
        mean = torch.stack(draws).mean(0)
        assert torch.allclose(mean, full, rtol=2e-3), (mean, full)


def test_the_weighted_objective_is_the_beta_vae_sum_and_the_elbo_at_one():
    from emvae.objective import ElboTerms

    g = torch.Generator().manual_seed(0)
    ll, kz, kt, ks = (torch.rand(5, generator=g) * 10 for _ in range(4))
    t = ElboTerms(ll, kz, kt, ks, kz[:, None])
    torch.testing.assert_close(t.objective(), t.elbo)
    torch.testing.assert_close(t.objective(4.0, 0.5), ll - 4.0 * kz - 0.5 * (kt + ks))
    torch.testing.assert_close(t.objective(0.0, 0.0), ll)
