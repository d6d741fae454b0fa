"""The CTF in RELION's convention: sign, units, astigmatism angle, and its application."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from emvae.ctf import COLUMNS, apply_ctf, ctf_grid, ctf_params, electron_wavelength_A, phase_flip
from emvae.errors import InputError
from emvae.simulate import ctf_2d


def _params(**kw) -> torch.Tensor:
    row = dict(
        defocus_u_A=15000.0,
        defocus_v_A=15000.0,
        defocus_angle_deg=0.0,
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        phase_shift_deg=0.0,
        bfactor_A2=0.0,
        scale=1.0,
        apix_A=1.0,
    )
    row.update(kw)
    return torch.tensor([[row[k] for k in COLUMNS]], dtype=torch.float64)


def _first_zero_A(df_A: float, kv: float = 300.0, cs_mm: float = 2.7, w: float = 0.1) -> float:
    """|k| (1/Å) of the first zero: gamma = -pi, solved for k^2 (a quadratic)."""
    lam = electron_wavelength_A(kv)
    a, b, c = (
        0.5 * math.pi * cs_mm * 1e7 * lam**3,
        -math.pi * lam * df_A,
        math.pi - math.atan(w / math.sqrt(1 - w * w)),
    )
    return math.sqrt((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a))


def _zero_along(profile: np.ndarray) -> int:
    return int(np.argmax(np.sign(profile[1:]) != np.sign(profile[:-1]))) + 1


def test_wavelength_in_angstrom_from_kilovolts():
    assert electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength_A(200.0) == pytest.approx(0.025079, abs=2e-6)


def test_zero_frequency_is_plus_the_amplitude_contrast_times_the_scale():
    """RELION's sign: white particles keep their sign at low resolution."""
    ctf = ctf_grid(_params(amplitude_contrast=0.07, scale=0.8), 512)
    assert ctf[0, 0, 0].item() == pytest.approx(0.07 * 0.8, rel=1e-5)
    # underfocus: the first lobe rises towards +scale before the first zero (index ~29)
    lobe = ctf[0, 0, :20]
    assert (lobe[1:] > lobe[:-1]).all() and lobe[-1] > 0.7
    shifted = ctf_grid(_params(amplitude_contrast=0.0, phase_shift_deg=90.0), 32)
    assert shifted[0, 0, 0].item() == pytest.approx(1.0)  # a phase plate's 90 degrees


@pytest.mark.parametrize("df_A, kv, cs_mm", [(15000.0, 300.0, 2.7), (8000.0, 200.0, 0.01)])
def test_first_zero_where_the_formula_puts_it(df_A, kv, cs_mm):
    n, apix = 512, 0.8  # frequency step 1 / (512 x 0.8) 1/Å
    ctf = ctf_grid(
        _params(defocus_u_A=df_A, defocus_v_A=df_A, voltage_kV=kv, cs_mm=cs_mm, apix_A=apix), n
    )
    k = _zero_along(ctf[0, 0].numpy()) / (n * apix)
    assert abs(k - _first_zero_A(df_A, kv, cs_mm)) <= 1 / (n * apix)


def test_defocus_u_lies_along_the_angle_from_the_column_axis_towards_increasing_rows():
    n = 512
    expect_u, expect_v = _first_zero_A(20000.0), _first_zero_A(10000.0)
    for angle, along_columns, along_rows in ((0.0, expect_u, expect_v), (90.0, expect_v, expect_u)):
        ctf = ctf_grid(
            _params(defocus_u_A=20000.0, defocus_v_A=10000.0, defocus_angle_deg=angle), n
        )[0]
        assert abs(_zero_along(ctf[0, :].numpy()) / n - along_columns) <= 1 / n
        assert abs(_zero_along(ctf[: n // 2, 0].numpy()) / n - along_rows) <= 1 / n
    # at 45 degrees U lies along (row +1, column +1), V along (row -1, column +1)
    ctf = ctf_grid(_params(defocus_u_A=20000.0, defocus_v_A=10000.0, defocus_angle_deg=45.0), n)[0]
    i = np.arange(n // 4)
    diag_u, diag_v = ctf[i, i].numpy(), ctf[(-i) % n, i].numpy()
    assert abs(_zero_along(diag_u) * math.sqrt(2) / n - expect_u) <= 2 / n
    assert abs(_zero_along(diag_v) * math.sqrt(2) / n - expect_v) <= 2 / n


def test_bfactor_damps_as_exp_minus_b_k2_over_4():
    a = ctf_grid(_params(), 64)
    b = ctf_grid(_params(bfactor_A2=100.0), 64)
    k2 = (10 / 64) ** 2
    assert (b[0, 0, 10] / a[0, 0, 10]).item() == pytest.approx(math.exp(-25 * k2), rel=1e-5)


@pytest.mark.parametrize("pad", [1, 2])
def test_a_ctf_of_one_leaves_images_unchanged_and_padding_keeps_the_box(pad):
    x = torch.randn(3, 1, 16, 16)
    one = _params(
        defocus_u_A=0.0, defocus_v_A=0.0, cs_mm=0.0, amplitude_contrast=0.0, phase_shift_deg=90.0
    )
    y = apply_ctf(x, one.float().repeat(3, 1), pad)
    assert y.shape == x.shape and torch.allclose(y, x, atol=1e-5)


def test_apply_ctf_matches_numpy_on_the_full_grid_and_phase_flip_is_its_sign():
    x = torch.randn(2, 1, 24, 24, dtype=torch.float64)
    p = torch.cat(
        [_params(apix_A=2.0), _params(defocus_u_A=30000.0, defocus_v_A=30000.0, apix_A=2.0)]
    )
    got = apply_ctf(x.float(), p.float())
    for k, df in enumerate((1.5, 3.0)):
        want = np.fft.ifft2(np.fft.fft2(x[k, 0].numpy()) * ctf_2d(24, 2.0, df)).real
        assert np.allclose(got[k, 0].numpy(), want, atol=1e-4)
    flipped = phase_flip(apply_ctf(x.float(), p.float()), p.float())
    f = torch.fft.rfft2(flipped)
    assert (f.real * torch.fft.rfft2(x.float()).real >= -1e-3).float().mean() > 0.99


def test_parameters_from_relion_31_optics_groups_and_cryosparc_fields():
    particles = pd.DataFrame(
        {
            "rlnDefocusU": [12000.0, 15000.0],
            "rlnDefocusV": [11000.0, 14000.0],
            "rlnDefocusAngle": [30.0, -10.0],
            "rlnOpticsGroup": [2, 1],
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 2.0],
            "rlnAmplitudeContrast": [0.1, 0.07],
        }
    )
    table = ctf_params(particles, optics, 1.2, "p.star")
    assert table.shape == (2, len(COLUMNS))
    assert table[:, 3].tolist() == [200.0, 300.0] and table[0, 5] == pytest.approx(0.07)
    assert table[:, 8].tolist() == [1.0, 1.0] and np.allclose(table[:, 9], 1.2)
    with pytest.raises(InputError, match="rlnDefocusV"):
        ctf_params(particles.drop(columns="rlnDefocusV"), optics, 1.2, "p.star")
    with pytest.raises(InputError, match="no CTF parameters"):
        ctf_params(particles[["rlnOpticsGroup"]], optics, 1.2, "p.star", required=True)
    cs = pd.DataFrame(
        {
            "ctf/df1_A": [12000.0],
            "ctf/df2_A": [11000.0],
            "ctf/df_angle_rad": [math.pi / 6],
            "ctf/accel_kv": [300.0],
            "ctf/cs_mm": [2.7],
            "ctf/amp_contrast": [0.1],
            "ctf/phase_shift_rad": [math.pi / 2],
        }
    )
    row = ctf_params(cs, None, 1.0, "p.cs")[0]
    assert row[2] == pytest.approx(30.0) and row[6] == pytest.approx(90.0)  # radians -> degrees


def test_the_likelihood_compares_each_image_with_its_ctf_times_the_rendering():
    from emvae.config import ModelConfig
    from emvae.models import SpatialVAE
    from emvae.objective import gaussian_log_likelihood, posterior_elbo, with_ctf

    cfg = ModelConfig(
        image_size=12,
        zdim=1,
        gen_hidden=8,
        enc_hidden=8,
        encoder="mlp",
        theta_posterior="gaussian",
        ctf="on",
    )
    model = SpatialVAE(cfg).eval()
    x = torch.randn(3, 1, 12, 12)
    p = torch.cat([_params(apix_A=3.0, defocus_u_A=1e4 * (k + 1)) for k in range(3)]).float()
    with torch.no_grad():
        q, params = model(x, None, torch.zeros(3, model.n_latent), ctf=p)
        terms = posterior_elbo(cfg, model.pixels(x), params, q, ctf=p)
        plain = posterior_elbo(cfg, model.pixels(x), params, q)
        seen = apply_ctf(params[..., 0].reshape(3, 1, 12, 12), p)
        expect = gaussian_log_likelihood(model.pixels(x), model.pixels(seen))
        assert torch.allclose(terms.log_lik, expect, rtol=1e-5)
        assert not torch.allclose(terms.log_lik, plain.log_lik)
        # one rendering per rotation hypothesis (B, k, N, 1): each gets its particle's CTF
        hyp = torch.stack([params, 2 * params], 1)
        got = with_ctf(cfg, hyp, p)
        assert torch.allclose(got[:, 1], 2 * with_ctf(cfg, params, p), atol=1e-5)
        assert torch.allclose(got[:, 0, :, 0], model.pixels(seen)[..., 0], atol=1e-5)


def test_with_a_mask_the_ctf_acts_on_the_whole_rendering_then_the_mask_applies():
    """--ctf on --mask-radius 4: the CTF spreads signal across the mask's edge, so the whole
    box is rendered, convolved, then compared inside the mask only."""
    from emvae.config import ModelConfig
    from emvae.models import SpatialVAE
    from emvae.objective import gaussian_log_likelihood, posterior_elbo

    kw = dict(image_size=12, zdim=1, gen_hidden=8, enc_hidden=8, encoder="mlp", ctf="on")
    cfg = ModelConfig(**kw, theta_posterior="gaussian", mask_radius_px=4.0)
    cfg.validate()
    model = SpatialVAE(cfg).eval()
    x = torch.randn(3, 1, 12, 12)
    p = torch.cat([_params(apix_A=3.0, defocus_u_A=1e4 * (k + 1)) for k in range(3)]).float()
    with torch.no_grad():
        q, params = model(x, None, torch.zeros(3, model.n_latent), ctf=p)
        assert params.shape[1] == 144  # every pixel rendered
        terms = posterior_elbo(cfg, model.pixels(x), params, q, ctf=p)
        seen = apply_ctf(params[..., 0].reshape(3, 1, 12, 12), p)
        inside = model.pixel_index
        assert 40 < len(inside) < 144
        expect = gaussian_log_likelihood(model.pixels(x), model.pixels(seen))
        assert model.pixels(x).shape[1] == len(inside)
        assert torch.allclose(terms.log_lik, expect, rtol=1e-5)


def test_fit_models_the_ctf_of_a_star_input_and_refuses_missing_fields(tmp_path):
    import json

    from conftest import SMALL, runner
    from emvae_cli.main import app

    sim = tmp_path / "sim"
    args = ["simulate", str(sim), "-n", "60", "--size", "16", "--ctf", "1:2", "--apix", "3"]
    assert runner.invoke(app, args).exit_code == 0
    star, mrcs = sim / "particles.star", sim / "particles.mrcs"
    for extra, mode in (
        ([], "on"),
        (["--ctf", "off"], "off"),
        (["--ctf", "phase-flip"], "phase-flip"),
    ):
        out = tmp_path / f"run_{mode}"
        r = runner.invoke(app, ["fit", str(star), "-o", str(out), *SMALL, *extra])
        assert r.exit_code == 0, r.output
        assert json.loads((out / "config.json").read_text())["model"]["ctf"] == mode
        assert len(pd.read_csv(out / "particles.csv")) == 60
    r = runner.invoke(app, ["report", str(tmp_path / "run_on")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "run_on" / "report" / "report.html").read_text()
    assert "modelled in the likelihood (--ctf on)" in html
    r = runner.invoke(app, ["fit", str(mrcs), "-o", str(tmp_path / "x"), *SMALL, "--ctf", "on"])
    assert r.exit_code == 1 and "carries no CTF parameters" in r.output, r.output
    csv = tmp_path / "ctf.csv"
    pd.DataFrame({"defocus_u_A": np.full(60, 1e4), "defocus_v_A": 1e4}).to_csv(csv, index=False)
    r = runner.invoke(
        app, ["fit", str(mrcs), "-o", str(tmp_path / "y"), *SMALL, "--ctf-params", str(csv)]
    )
    assert r.exit_code == 1 and "defocus_angle_deg" in r.output and str(csv) in r.output, r.output


def test_ctf_params_of_the_whole_input_follow_ind_to_the_selected_rows(tiny_stack, tmp_path):
    """With --ind, a --ctf-params CSV of every input image gives each selected image its own
    row (input row 7's defocus for input row 7), and one of just the selected images works."""
    from emvae.particles import Particles

    n = 60
    table = pd.DataFrame(
        {
            "defocus_u_A": 1e4 + np.arange(n),
            "defocus_v_A": 1e4 + np.arange(n),
            "defocus_angle_deg": 0.0,
            "voltage_kV": 300.0,
            "cs_mm": 2.7,
            "amplitude_contrast": 0.1,
        }
    )
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    table.to_csv(whole, index=False)
    ind = tmp_path / "ind.txt"
    np.savetxt(ind, [7, 3, 40], fmt="%d")
    table.iloc[[7, 3, 40]].to_csv(part, index=False)
    for csv in (whole, part):
        p = Particles.open(tiny_stack, ind=ind, apix=2.0, ctf_params=csv)
        assert np.array_equal(p.ctf("on")[:, 0], [1e4 + 7, 1e4 + 3, 1e4 + 40]), csv
    short = tmp_path / "short.csv"
    table.iloc[:20].to_csv(short, index=False)
    with pytest.raises(InputError, match="selects input row 40"):
        Particles.open(tiny_stack, ind=ind, apix=2.0, ctf_params=short).ctf("on")


def test_streamed_images_are_phase_flipped_as_the_in_memory_ones(tiny_stack, tmp_path):
    from emvae.ctf import likelihood_ctf
    from emvae.particles import Particles

    csv = tmp_path / "ctf.csv"
    pd.DataFrame(
        {
            "defocus_u_A": np.linspace(5e3, 2e4, 60),
            "defocus_v_A": np.linspace(4e3, 1.9e4, 60),
            "defocus_angle_deg": 30.0,
            "voltage_kV": 300.0,
            "cs_mm": 2.7,
            "amplitude_contrast": 0.1,
        }
    ).to_csv(csv, index=False)
    p = Particles.open(tiny_stack, apix=2.0, ctf_params=csv)
    params = p.ctf("phase-flip")
    memory = p.load(stream="off")
    before = memory.clone()
    flipped, ctf = likelihood_ctf(params, "phase-flip", memory, "cpu")
    assert ctf is None
    assert torch.equal(memory, before)  # the argument is left alone
    assert not torch.allclose(flipped, before, atol=1e-3)  # the phases did flip
    streamed = p.load(stream="on")
    flipped_streamed, ctf = likelihood_ctf(params, "phase-flip", streamed, "cpu")
    assert ctf is None and streamed.flip is None
    idx = np.array([5, 0, 41])
    assert torch.allclose(flipped_streamed.read(idx), flipped[idx], atol=1e-5)


def test_montages_show_the_object_without_the_ctf():
    """The generator's images (montages, prior samples, interpolations) do not depend on the
    CTF mode: the same weights draw the same object with --ctf on and off."""
    import dataclasses

    from emvae import montage as mt
    from emvae.config import ModelConfig
    from emvae.models import SpatialVAE

    on = ModelConfig(image_size=12, zdim=1, gen_hidden=8, enc_hidden=8, ctf="on", mask_radius_px=4)
    model_on = SpatialVAE(on).eval()
    model_off = SpatialVAE(dataclasses.replace(on, ctf="off")).eval()
    model_off.load_state_dict(model_on.state_dict())
    z = torch.linspace(-2, 2, 5)[:, None]
    assert mt.decode_mean(model_on, z).shape == (5, 1, 12, 12)
    assert torch.equal(mt.decode_mean(model_on, z), mt.decode_mean(model_off, z))
    assert torch.equal(mt.prior_samples(model_on, 2, 2, 0), mt.prior_samples(model_off, 2, 2, 0))


def test_with_the_ctf_modelled_the_encoder_sees_each_image_filtered_by_its_own_ctf():
    """--ctf on: the pose and z networks see each image's transform times its own CTF
    ("multiply", the default) or its sign ("flip"); the likelihood the recorded image. "raw"
    (runs made before) sees it as recorded, and a configuration written before the option
    reads back as "raw"."""
    import dataclasses

    from emvae.config import ModelConfig, RunConfig, TrainConfig
    from emvae.errors import ConfigError
    from emvae.models import SpatialVAE

    cfg = ModelConfig(image_size=12, zdim=1, gen_hidden=8, enc_hidden=8, ctf="on")
    assert cfg.encoder_ctf == "multiply" and cfg.encoder_needs_ctf
    multiply = SpatialVAE(cfg).eval()
    flip = SpatialVAE(dataclasses.replace(cfg, encoder_ctf="flip")).eval()
    raw = SpatialVAE(dataclasses.replace(cfg, encoder_ctf="raw")).eval()
    flip.load_state_dict(multiply.state_dict())
    raw.load_state_dict(multiply.state_dict())
    torch.manual_seed(0)
    x = torch.randn(3, 1, 12, 12)
    p = torch.cat([_params(apix_A=3.0, defocus_u_A=1e4 * (k + 1)) for k in range(3)]).float()
    with torch.no_grad():
        as_recorded = raw.encode(x, ctf=p)  # raw ignores the CTF
        assert torch.equal(as_recorded.z_mu, raw.encode(x).z_mu)
        for model, seen in ((multiply, apply_ctf(x, p)), (flip, phase_flip(x, p))):
            got = model.encode(x, ctf=p)
            want = raw.encode(seen)
            assert torch.allclose(got.z_mu, want.z_mu, atol=1e-5)
            assert torch.allclose(got.bins.log_q, want.bins.log_q, atol=1e-4)
            assert not torch.allclose(got.z_mu, as_recorded.z_mu, atol=1e-3)
            # each image its own CTF: the second image filtered by the first's is another input
            other = model.encode(x, ctf=p[[0, 0, 2]])
            assert torch.allclose(other.z_mu[[0, 2]], got.z_mu[[0, 2]], atol=1e-5)
            assert not torch.allclose(other.z_mu[1], got.z_mu[1], atol=1e-3)
            with pytest.raises(ValueError, match="filtered by its CTF"):
                model.encode(x)
    # phase-flip and off modes never filter in the encoder
    assert not dataclasses.replace(cfg, ctf="phase-flip").encoder_needs_ctf
    assert not dataclasses.replace(cfg, ctf="off").encoder_needs_ctf
    old = RunConfig(model=cfg, train=TrainConfig()).to_dict()
    del old["model"]["encoder_ctf"]
    assert RunConfig.from_dict(old).model.encoder_ctf == "raw"
    with pytest.raises(ConfigError, match="--encoder-ctf"):
        dataclasses.replace(cfg, encoder_ctf="wiener").validate()
