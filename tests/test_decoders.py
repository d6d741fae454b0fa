"""The Spatial Broadcast decoder (--generator broadcast) and the hyperprior on z (--prior
hyperprior): exact statements about the decoder's geometry, the closed-form KL and hyperprior
against torch.distributions, and tiny fits through the library and the command line."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL, runner
from emvae_cli.main import app
from torch.distributions import InverseGamma, Normal, kl_divergence

from emvae import fit, load_model, read_stack
from emvae.config import ModelConfig, RunConfig, TrainConfig
from emvae.errors import ConfigError
from emvae.geometry import coordinate_grid
from emvae.models import SpatialVAE
from emvae.models.generator import BroadcastGenerator
from emvae.objective import kl_normal_dims, kl_terms, log_hyperprior

D = 9


def _images(out: torch.Tensor) -> torch.Tensor:
    """Generator output ``(B, D*D, n_out)`` -> images ``(B, n_out, D, D)``."""
    return out.transpose(1, 2).reshape(out.shape[0], -1, D, D)


def _turned_coords(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel grid at theta = 0 and at theta = 90 degrees (x R(theta) with
    R = [[0, 1], [-1, 0]], i.e. (x, y) -> (-y, x): exact, no cos(pi/2) rounding)."""
    grid = coordinate_grid(D, D, dtype=torch.float64)
    turned = torch.stack([-grid[:, 1], grid[:, 0]], 1)
    return grid.expand(b, -1, -1), turned.expand(b, -1, -1)


def test_broadcast_1x1_decoder_turns_with_its_coordinates():
    """With 1 x 1 convolutions only, the broadcast decoder is a per-pixel function of the
    coordinate it is given and z, f(x', z). Turning every coordinate by 90 degrees is then
    exactly a 90-degree turn of the rendered image: the turned grid holds, at pixel (i, j),
    the coordinate that the untouched grid holds at pixel (D-1-j, i), a permutation of the
    grid's points (D x D is closed under quarter turns), so the output is permuted the same
    way: ``rot90(image, k=-1)`` (clockwise in array order; the coordinates' y points up)."""
    torch.manual_seed(0)
    gen = BroadcastGenerator(3, D, hidden=16, layers=3, n_out=2, kernel=1).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    grid, turned = _turned_coords(4)
    plain, rot = _images(gen(grid, z)), _images(gen(turned, z))
    assert torch.allclose(rot, torch.rot90(plain, -1, dims=(-2, -1)), atol=1e-12)
    assert not torch.allclose(rot, plain, atol=1e-3)  # not trivially symmetric


def test_broadcast_3x3_decoder_turns_with_coordinates_and_kernels():
    """The seed's 3 x 3 CNN is not rotation-equivariant by itself (its kernels have an
    orientation), but it is exactly equivariant as a pair: its input channels are the
    coordinate map and the tiled z, and turning the coordinates by 90 degrees turns that input
    map by 90 degrees (the previous test's permutation; z is constant over the grid). A
    zero-padded, unstrided convolution of a turned map equals the turned convolution with
    each kernel turned back. So: the decoder's output for the turned coordinates is the turned
    output of the same decoder with every kernel turned the other way; through the model
    (SpatialVAE.decode at theta = 90 degrees, which builds the coordinates itself, up to
    cos(pi/2) ~ 6e-17)."""
    torch.manual_seed(1)
    cfg = ModelConfig(image_size=D, zdim=2, generator="broadcast", gen_hidden=8, gen_layers=3)
    model = SpatialVAE(cfg).double()
    twin = SpatialVAE(cfg).double()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for conv in twin.generator.net:
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.copy_(torch.rot90(conv.weight, 1, dims=(-2, -1)))
    z = torch.randn(3, 2, dtype=torch.float64)
    pose = torch.zeros(3, 3, dtype=torch.float64)
    quarter = pose.clone()
    quarter[:, 0] = math.pi / 2
    with torch.no_grad():
        rot = _images(model.decode(z, quarter))
        plain_twin = _images(twin.decode(z, pose))
        plain = _images(model.decode(z, pose))
    assert torch.allclose(rot, torch.rot90(plain_twin, -1, dims=(-2, -1)), atol=1e-9)
    assert not torch.allclose(rot, torch.rot90(plain, -1, dims=(-2, -1)), atol=1e-3)


def test_broadcast_decode_is_the_cnn_on_the_transformed_grid():
    """decode() hands the decoder the whole rotated, shifted grid, and a masked or sampled
    likelihood gets the full rendering's pixels at those indices."""
    torch.manual_seed(2)
    cfg = ModelConfig(image_size=D, zdim=1, generator="broadcast", gen_hidden=8, mask_radius_px=3.0)
    model = SpatialVAE(cfg).double()
    z = torch.randn(2, 1, dtype=torch.float64)
    pose = torch.tensor([[0.3, 0.1, -0.2], [-1.0, 0.0, 0.25]], dtype=torch.float64)
    with torch.no_grad():
        full = model.decode(z, pose, full=True)
        direct = model.generator(model.transform(model.coords.double(), pose), z)
        masked = model.decode(z, pose)
        subset = torch.tensor([0, 5, 40, 80])
        picked = model.decode(z, pose, pixels=subset)
    assert torch.allclose(full, direct, atol=1e-12)
    assert torch.allclose(masked, full[:, model.pixel_index], atol=1e-12)
    assert torch.allclose(picked, full[:, subset], atol=1e-12)
    assert full.shape == (2, D * D, 1) and masked.shape[1] < D * D


def test_broadcast_defaults_and_checks():
    cfg = ModelConfig(image_size=16, generator="broadcast")
    assert (cfg.gen_hidden, cfg.gen_layers) == (64, 4)
    assert (ModelConfig(image_size=16).gen_layers, ModelConfig(image_size=16).gen_hidden) == (
        2,
        128,
    )
    with pytest.raises(ConfigError, match="prior"):
        ModelConfig(image_size=16, prior="wishart").validate()
    with pytest.raises(ConfigError, match="zdim"):
        ModelConfig(image_size=16, prior="hyperprior", zdim=0).validate()
    with pytest.raises(ValueError, match="whole"):
        BroadcastGenerator(1, 4, 4, 1, 1)(torch.zeros(1, 5, 2), torch.zeros(1, 1))


def test_hyperprior_kl_and_log_prior_match_torch_distributions():
    torch.manual_seed(3)
    mu = torch.randn(6, 4, dtype=torch.float64)
    logstd = torch.randn(6, 4, dtype=torch.float64) * 0.5
    prior_logstd = torch.randn(4, dtype=torch.float64) * 0.5
    ref = kl_divergence(Normal(mu, logstd.exp()), Normal(0.0, prior_logstd.exp()))
    assert torch.allclose(kl_normal_dims(mu, logstd, prior_logstd), ref, atol=1e-12)
    a, b = 1.5, 2.0
    ref_hyper = InverseGamma(a, b).log_prob(torch.exp(2 * prior_logstd)).sum()
    assert torch.allclose(log_hyperprior(prior_logstd, a, b), ref_hyper, atol=1e-12)
    # through the objective: KL_z sums the dimensions; log s = 0 is the standard prior
    cfg = ModelConfig(image_size=8, zdim=4, prior="hyperprior", rotation=False, translation=False)
    pose = mu.new_zeros(6, 0)
    kl_z, _, _ = kl_terms(cfg, mu, logstd, pose, pose, True, prior_logstd)
    assert torch.allclose(kl_z, ref.sum(1), atol=1e-12)
    std, _, _ = kl_terms(cfg, mu, logstd, pose, pose, True, None)
    same, _, _ = kl_terms(cfg, mu, logstd, pose, pose, True, torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(std, same, atol=1e-12)


def _run(tmp_path, **model):
    from emvae.simulate import write_simulation

    path = write_simulation(tmp_path / "d", n=40, size=12, snr=5.0, shift_std_px=0.5, seed=4)
    stack = read_stack(path)
    cfg = RunConfig(
        model=ModelConfig(
            image_size=stack.size, zdim=2, gen_hidden=8, gen_layers=2, enc_hidden=16, **model
        ),
        train=TrainConfig(epochs=2, batch_size=20, z_delay=0, device="cpu", checkpoint_every=1),
    )
    return fit(stack, cfg, tmp_path / "run", progress=False)


def test_broadcast_hyperprior_fit_is_finite_and_its_checkpoint_rebuilds_it(tmp_path):
    result = _run(tmp_path, generator="broadcast", prior="hyperprior", mask_radius_px=5.0)
    metrics = np.genfromtxt(result.out_dir / "metrics.csv", delimiter=",", names=True)
    assert np.isfinite(metrics["test_elbo"]).all() and np.isfinite(metrics["train_elbo"]).all()
    assert np.isfinite(metrics["log_hyperprior"]).all()
    assert (metrics["prior_std_z1"] > 0).all() and "prior_std_z2" in metrics.dtype.names
    for split in ("train", "test"):  # the per-dimension KLs (against N(0, s^2)) sum to KL_z
        dims = metrics[f"{split}_kl_z1"] + metrics[f"{split}_kl_z2"]
        assert np.allclose(dims, metrics[f"{split}_kl_z"], rtol=1e-4)
    model, config, _ = load_model(result.out_dir)
    assert (config.model.generator, config.model.prior) == ("broadcast", "hyperprior")
    trained = result.model.cpu().eval()
    assert not torch.equal(trained.z_prior_logstd.detach(), torch.zeros(2))  # it learned
    assert torch.equal(model.z_prior_logstd, trained.z_prior_logstd)
    z, pose = torch.randn(3, 2), torch.randn(3, 3) * 0.3
    with torch.no_grad():
        assert torch.equal(model.decode(z, pose, full=True), trained.decode(z, pose, full=True))


def test_cli_broadcast_and_hyperprior_reach_config_json(tiny_stack, tmp_path):
    out = tmp_path / "run"
    flags = ["--generator", "broadcast", "--prior", "hyperprior", "--gen-layers", "2"]
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, *flags])
    assert r.exit_code == 0, r.output
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["generator"], model["prior"], model["gen_layers"]) == (
        "broadcast",
        "hyperprior",
        2,
    )
    assert model["gen_hidden"] == 16  # SMALL's --gen-hidden: the conv channels
