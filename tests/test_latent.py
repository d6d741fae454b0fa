"""z: inferred from the pose-aligned image, generator with Fourier features, usage reports."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import corr
from emvae_cli.main import app
from typer.testing import CliRunner

from emvae.augment import align_images
from emvae.config import ModelConfig
from emvae.errors import ConfigError, InputError
from emvae.geometry import pixels_per_unit
from emvae.latents import latent_usage, unused_warning
from emvae.models import SpatialVAE
from emvae.models.encoder import AlignedContentEncoder, MLPEncoder, RotatedCopies
from emvae.models.generator import FourierFeatures, SpatialGenerator
from emvae.simulate import hinge_blobs, render_blobs

SIZE = 33
runner = CliRunner()


def _posed(theta_deg, shift_px, conformation=0.3):
    """Hinge particles turned counter-clockwise by theta_deg, centred at shift_px (+y up)."""
    n = len(theta_deg)
    c, s, a = hinge_blobs(np.full(n, conformation))
    return torch.from_numpy(render_blobs(c, s, a, theta_deg, shift_px, SIZE))[:, None]


def test_align_images_undoes_the_pose():
    """A particle turned by phi and moved to s, aligned with (phi, s), is the canonical view;
    aligning with the opposite turn is not."""
    theta = np.array([30.0, -100.0, 170.0])
    shift = np.array([[2.0, -1.0], [0.0, 3.0], [-2.5, 1.5]])
    posed = _posed(theta, shift)
    canonical = _posed(np.zeros(1), np.zeros((1, 2)))[0, 0]
    h = pixels_per_unit(SIZE)
    s = torch.tensor(shift / h, dtype=torch.float32)
    right = align_images(posed, torch.tensor(np.radians(theta), dtype=torch.float32), s)
    wrong = align_images(posed, torch.tensor(-np.radians(theta), dtype=torch.float32), s)
    for k in range(3):
        assert corr(right[k, 0], canonical) > 0.995
        assert corr(wrong[k, 0], canonical) < 0.9


def test_z_does_not_depend_on_the_pose():
    """The content encoder sees the aligned image: the same particle in three poses (given
    those poses) gets the same z, far closer than two conformations are apart."""
    torch.manual_seed(0)
    enc = AlignedContentEncoder(SIZE, 1, 64, 2)
    theta = np.array([0.0, 75.0, -140.0])
    shift = np.array([[0.0, 0.0], [1.5, -2.0], [-1.0, 2.5]])
    h = pixels_per_unit(SIZE)
    angle = torch.tensor(np.radians(theta), dtype=torch.float32)
    s = torch.tensor(shift / h, dtype=torch.float32)
    with torch.no_grad():
        z, _ = enc(_posed(theta, shift), angle, s)
        other, _ = enc(_posed(theta, shift, conformation=0.9), angle, s)
    spread = (z - z[:1]).norm(dim=1).max()
    assert spread < 0.1 * (other - z).norm(dim=1).min()


def test_rotated_copies_turn_with_the_image():
    """A quarter turn of the input moves every bin R/4 on and turns the shift with it; the
    offsets and log-stds stay with their bins (equivariant by construction)."""
    torch.manual_seed(0)
    net = RotatedCopies(MLPEncoder(24 * 24, 32, 2, RotatedCopies.OUTPUTS, "tanh"), 8, True)
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        a, b = net(x), net(torch.rot90(x, 1, dims=(-2, -1)))  # counter-clockwise
    assert torch.allclose(b.logits, a.logits.roll(2, 1), atol=1e-5)
    assert torch.allclose(b.offset, a.offset.roll(2, 1), atol=1e-5)
    turned = torch.stack([-a.shift[:, 1], a.shift[:, 0]], 1)  # (x, y) -> (-y, x)
    assert torch.allclose(b.shift, turned, atol=1e-5)
    wrong = torch.stack([a.shift[:, 1], -a.shift[:, 0]], 1)
    assert not torch.allclose(b.shift, wrong, atol=1e-3)


def test_fourier_generator_equals_an_mlp_on_features_and_z():
    """The split first layer with Fourier features: W_f f(x) per pixel + W_z z per image."""
    torch.manual_seed(0)
    features = FourierFeatures(8, 3.0)
    gen = SpatialGenerator(2, 16, 2, 1, "tanh", features).double()
    coords, z = torch.rand(3, 10, 2, dtype=torch.float64) * 2 - 1, torch.randn(3, 2).double()
    f = features(coords)
    assert f.shape == (3, 10, 18)
    phase = 2 * math.pi * coords @ features.freqs.double().T
    assert torch.allclose(f[..., 2:10], torch.cos(phase)) and torch.allclose(f[..., :2], coords)
    w = torch.cat([gen.coord_linear.weight, gen.latent_linear.weight], 1)
    full = torch.cat([f, z[:, None].expand(-1, 10, -1)], -1) @ w.T + gen.coord_linear.bias
    expect = gen.body(torch.tanh(full))
    assert torch.allclose(gen(coords, z), expect, atol=1e-12)


def test_fourier_frequencies_travel_with_the_model():
    cfg = ModelConfig(image_size=24, zdim=1, gen_hidden=16, enc_hidden=16)
    state = SpatialVAE(cfg).state_dict()
    assert "generator.features.freqs" in state
    # std of the frequencies: fourier_scale cycles per pixel, in cycles per coordinate unit
    freqs = state["generator.features.freqs"]
    assert freqs.std().item() == pytest.approx(0.125 * 11.5, rel=0.2)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"encoder": "equivariant", "theta_posterior": "gaussian"}, "binned"),
        ({"encoder": "equivariant", "z_encoder": "shared"}, "mlp and conv"),
        ({"z_encoder": "shared"}, "Gaussian rotation posterior"),
        ({"theta_posterior": "bins", "theta_prior": "gaussian"}, "uniform rotation prior"),
        ({"theta_posterior": "bins", "rotation": False}, "rotation inference"),
        ({"fourier_scale": 0.0}, "fourier"),
    ],
)
def test_settings_that_cannot_work_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(image_size=24, **kw).validate()


def _table(z, std):
    cols = {f"z{k + 1}": z[:, k] for k in range(z.shape[1])}
    cols |= {f"z{k + 1}_std": std[:, k] for k in range(z.shape[1])}
    return pd.DataFrame(cols)


def test_latent_usage_tells_a_used_dimension_from_a_collapsed_one():
    """z1 spreads the particles over the prior's range with narrow posteriors (used); z2's
    means lie within 1% of its posterior std, like the collapsed latent of issue 13; z3 is
    the prior itself (KL 0)."""
    rng = np.random.default_rng(0)
    n = 1000
    z = np.stack([rng.normal(0, 0.95, n), -0.03 + 0.004 * rng.normal(size=n), np.zeros(n)], 1)
    std = np.stack([np.full(n, 0.2), np.full(n, 0.41), np.ones(n)], 1)
    usage = latent_usage(_table(z, std))
    assert [u.used for u in usage] == [True, False, False]
    assert usage[0].kl > 1.0 and usage[2].kl == pytest.approx(0.0, abs=1e-9)
    assert usage[1].kl == pytest.approx(-math.log(0.41) + 0.41**2 / 2 - 0.5, abs=0.01)
    line = unused_warning(usage)
    assert line.startswith("warning: z2 (KL 0.476") and "z3" in line and "\n" not in line
    assert unused_warning(usage[:1]) is None


def test_fit_and_report_say_when_z_is_unused(tiny_stack, tmp_path, monkeypatch):
    """fit ends with one warning line when a dimension is unused; report puts it in
    report.json, report.html and its output. (Which dimensions are unused is decided by
    latent_usage, tested above; here the run's z is collapsed on purpose.)"""
    import json

    from emvae import fitting
    from emvae.io import read_table, write_table

    out = tmp_path / "run"
    args = ["fit", str(tiny_stack), "-o", str(out), "-n", "2", "--z-delay", "1", "--zdim", "1"]
    args += ["--gen-hidden", "16", "--enc-hidden", "16", "--enc-channels", "2", "-q"]
    collapsed = _table(np.full((5, 1), -0.03), np.full((5, 1), 0.41))
    monkeypatch.setattr(fitting, "latent_usage", lambda table: latent_usage(collapsed))
    r = runner.invoke(app, [*args, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "warning: z1 (KL 0.476 nats" in r.output and "is unused" in r.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["test_kl_z1"].iloc[0] == 0 and metrics["test_kl_z1"].iloc[1] > 0
    table = read_table(out / "particles.h5")
    table["z1"], table["z1_std"] = -0.03 + 1e-4 * np.arange(len(table)), 0.41
    write_table(table, out / "particles.h5")
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0 and "warning: z1" in rep.output
    saved = json.loads((out / "report" / "report.json").read_text())
    assert saved["latent_usage"][0]["used"] is False and saved["warnings"]
    per_epoch = saved["kl_per_epoch"]
    assert per_epoch["epoch"] == metrics["epoch"].tolist()
    assert np.allclose(per_epoch["z1"], metrics["test_kl_z1"], atol=1e-4)
    assert "warning: z1" in (out / "report" / "report.html").read_text()


def test_montage_grids_span_the_particles_not_the_prior():
    """With the particles' posterior means, the manifold is drawn at their quantiles and the
    GIF walks along their main axis; without them, at the prior's."""
    from emvae import montage as mt

    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(image_size=12, zdim=1, gen_hidden=8, enc_hidden=8)).eval()
    rng = np.random.default_rng(0)
    z = rng.normal(3.0, 0.1, (500, 1))  # far from the prior's range
    grid = mt.manifold(model, 5, z)
    at = np.quantile(z[:, 0], (np.arange(5) + 0.5) / 5)
    expect = mt.decode_mean(model, torch.tensor(at, dtype=torch.float32)[:, None])
    assert torch.allclose(grid[0], expect, atol=1e-6)
    prior = mt.manifold(model, 5)
    assert not torch.allclose(grid, prior, atol=1e-4)
    z2 = np.stack([rng.normal(0, 2.0, 500), rng.normal(0, 0.1, 500)], 1)
    ends = mt.principal_path(z2)
    assert abs(float(ends[1, 0] - ends[0, 0])) > 5 and abs(float(ends[1, 1] - ends[0, 1])) < 1


def test_old_checkpoints_are_refused_with_a_reason(tmp_path):
    from emvae.checkpoint import load_checkpoint

    path = tmp_path / "old.pt"
    torch.save({"format": "emvae-checkpoint/1", "model": {}}, path)
    with pytest.raises(InputError, match="emvae 0.1.*fit again"):
        load_checkpoint(path)
