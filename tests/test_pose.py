"""Affine and thin-plate-spline poses (``--pose``, issue 22): the transforms, their signs, the
prior's KL and the encoders' extra outputs."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from emvae.augment import align_images
from emvae.config import ModelConfig, RunConfig
from emvae.geometry import coordinate_grid, rotation_matrix
from emvae.models import SpatialVAE
from emvae.models.transform import (
    DeformTransform,
    RigidTransform,
    ThinPlateSpline,
    affine_forward,
    affine_inverse,
)
from emvae.objective import kl_deform, kl_normal, posterior_elbo

GRID = coordinate_grid(21, 21, dtype=torch.float64)


def _blob(v: torch.Tensor) -> torch.Tensor:
    """An asymmetric canonical object at coordinates ``(..., 2)``: two Gaussians."""
    a = torch.exp(-((v - torch.tensor([0.2, 0.1], dtype=v.dtype)).square() / 0.04).sum(-1))
    b = torch.exp(-((v - torch.tensor([-0.25, -0.15], dtype=v.dtype)).square() / 0.02).sum(-1))
    return a + 0.6 * b


def _pose(b: int, n_extra: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rigid = torch.randn(b, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.2, 0.2])
    return torch.cat([rigid, torch.zeros(b, n_extra, dtype=torch.float64)], 1)


@pytest.mark.parametrize("affine, grid", [(True, 0), (False, 3), (True, 3)])
def test_identity_parameters_give_exactly_the_rigid_coordinates(affine, grid):
    t = DeformTransform(True, True, affine, grid).double()
    pose = _pose(5, t.n_params - 3)
    assert torch.equal(t(GRID, pose), RigidTransform(True, True)(GRID, pose[:, :3]))
    assert t.n_params == 3 + 3 * affine + 2 * grid**2


def test_affine_sign_a_stretched_object_is_explained_by_a_positive_log_scale():
    """Rotate-and-stretch by hand: the canonical point e_x, stretched by s along the object's
    own x axis and turned with the particle (theta_deg = -theta), is mapped back onto e_x."""
    theta, s, gamma = 0.7, 1.5, 0.0
    pose = torch.tensor([[theta, 0.0, 0.0, math.log(s), 0.0, gamma]], dtype=torch.float64)
    t = DeformTransform(True, True, True, 0).double()
    e_x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    seen = (s * e_x) @ rotation_matrix(torch.tensor(theta, dtype=torch.float64)).T
    assert torch.allclose(t(seen, pose)[0], e_x, atol=1e-12)
    # the object's y axis is not stretched, and the shear moves x by gamma * y
    m = affine_forward(torch.tensor([[math.log(s), math.log(0.8), 0.3]], dtype=torch.float64))
    assert torch.allclose(torch.tensor([[0.0, 1.0]], dtype=torch.float64) @ m[0],
                          torch.tensor([[0.3 * s, 0.8]], dtype=torch.float64))  # fmt: skip
    assert torch.allclose(m @ affine_inverse(torch.log(m.diagonal(0, 1, 2)).new_tensor(
        [[math.log(s), math.log(0.8), 0.3]])), torch.eye(2, dtype=torch.float64))  # fmt: skip


def test_a_known_scale_is_recovered_on_a_clean_image():
    """The canonical object magnified by 1.3 along x and 0.8 along y: fitting only the affine
    parameters of the fixed 'generator' recovers log 1.3 and log 0.8 (and no shear)."""
    image = _blob(GRID / torch.tensor([1.3, 0.8], dtype=torch.float64))
    t = DeformTransform(False, False, True, 0).double()
    p = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (_blob(t(GRID, p)[0]) - image).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    fit = p.detach()[0]
    assert abs(fit[0].item() - math.log(1.3)) < 1e-3
    assert abs(fit[1].item() - math.log(0.8)) < 1e-3
    assert abs(fit[2].item()) < 1e-3


def test_align_images_undoes_the_affine_pose():
    """An image rendered at a rotated, shifted, stretched and sheared pose, aligned with that
    pose's image-frame angle, shift and deformation, is the canonical view again; without the
    deformation it is not."""
    size = 41
    coords = coordinate_grid(size, size, dtype=torch.float64)
    pose = torch.tensor([[0.6, 0.05, -0.08, math.log(1.25), math.log(0.85), 0.2]])
    pose = pose.double()
    t = DeformTransform(True, True, True, 0).double()
    posed = _blob(t(coords, pose)).reshape(1, 1, size, size)
    canonical = _blob(coords).reshape(1, 1, size, size)
    model = SpatialVAE(ModelConfig(image_size=size, pose="affine", theta_posterior="gaussian",
                                   theta_prior="gaussian", encoder="mlp"))  # fmt: skip
    angle, shift = model.image_frame_pose(pose)
    m = model.image_frame_deform(pose)
    right = align_images(posed, angle, shift, deform=m)
    wrong = align_images(posed, angle, shift)
    err = (right - canonical).abs().max().item()
    assert err < 0.03
    assert (wrong - canonical).abs().max().item() > 10 * err
    # the identity deformation is the rigid alignment exactly
    eye = torch.eye(2, dtype=torch.float64).expand(1, 2, 2)
    assert torch.allclose(align_images(posed, angle, shift, deform=eye), wrong, atol=1e-12)


def test_tps_is_zero_without_displacements_and_interpolates_them():
    tps = ThinPlateSpline(3).double()
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(2, 50, 2, generator=g, dtype=torch.float64) * 2 - 1
    assert torch.equal(tps(pts, torch.zeros(2, 9, 2, dtype=torch.float64)), torch.zeros(2, 50, 2))
    disp = 0.1 * torch.randn(2, 9, 2, generator=g, dtype=torch.float64)
    at_control = tps(tps.control.expand(2, -1, -1), disp)
    assert torch.allclose(at_control, disp, atol=1e-10)
    # an affine map of the control points is reproduced exactly everywhere
    lin = torch.tensor([[0.1, -0.05], [0.02, 0.07]], dtype=torch.float64)
    d_lin = (tps.control @ lin + 0.03).expand(2, -1, -1)
    assert torch.allclose(tps(pts, d_lin), pts @ lin + 0.03, atol=1e-10)
    # the control points: 3 x 3 over [-1, 1]^2, row-major from the top left (+y up)
    assert torch.allclose(tps.control[0], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(tps.control[4], torch.zeros(2, dtype=torch.float64))


def test_tps_is_applied_in_the_canonical_frame():
    """The spline moves the canonical coordinates after the rigid pose: displacement d_k of
    control point c_k makes the pixel at (canonical) c_k show the canonical object at c_k + d_k
    whatever the rotation."""
    t = DeformTransform(True, True, False, 3).double()
    disp = torch.zeros(1, 9, 2, dtype=torch.float64)
    disp[0, 4] = torch.tensor([0.1, -0.2])  # the centre point
    theta = torch.tensor(1.1, dtype=torch.float64)
    pose = torch.cat([theta.view(1, 1), torch.zeros(1, 2, dtype=torch.float64), disp.flatten(1)], 1)
    centre = torch.zeros(1, 2, dtype=torch.float64)  # image point where the canonical c_5 lies
    assert torch.allclose(t(centre, pose)[0, 0], disp[0, 4], atol=1e-10)
    corner = t.tps.control[:1] @ rotation_matrix(theta).T  # canonical c_1 in the image
    assert torch.allclose(t(corner, pose)[0, 0], t.tps.control[0], atol=1e-10)


def test_deform_kl_matches_torch_distributions():
    cfg = ModelConfig(image_size=21, pose="affine-tps", tps_grid=2, tps_prior_px=1.5)
    g = torch.Generator().manual_seed(2)
    p = cfg.n_pose + cfg.n_deform
    mu = torch.randn(6, p, generator=g, dtype=torch.float64)
    ls = 0.3 * torch.randn(6, p, generator=g, dtype=torch.float64)
    nu = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    log_tau = torch.tensor([-1.0, -1.5, -0.5], dtype=torch.float64)
    got = kl_deform(cfg, mu, ls, (nu, log_tau))
    affine = slice(3, 6)
    ref = kl_divergence(Normal(mu[:, affine], ls[:, affine].exp()), Normal(nu, log_tau.exp()))
    s = 1.5 * 2 / 20  # 1.5 px in coordinate units of a 21-px box
    ref_tps = kl_divergence(Normal(mu[:, 6:], ls[:, 6:].exp()), Normal(0.0, s))
    assert torch.allclose(got, ref.sum(-1) + ref_tps.sum(-1))
    assert torch.allclose(kl_normal(mu[:, 6:], ls[:, 6:], cfg.tps_prior_std), ref_tps.sum(-1))
    assert kl_deform(ModelConfig(image_size=21), mu[:, :3], ls[:, :3], None) is None


@pytest.mark.parametrize(
    "encoder, pose, given, expected",
    [
        ("equivariant", "rigid", None, 0),
        ("mlp", "rigid", None, 5),
        ("equivariant", "affine", None, 5),
        ("equivariant", "affine-tps", None, 5),
        ("equivariant", "tps", None, 0),
        ("equivariant", "affine", 1, 1),
    ],
)
def test_affine_poses_default_to_a_z_delay_of_five(encoder, pose, given, expected):
    """z would learn the size before the affine pose does (docs/benchmarks.md, "Affine
    pose"); an explicit --z-delay still wins."""
    cfg = RunConfig(ModelConfig(image_size=16, encoder=encoder, pose=pose))
    cfg.train.z_delay = given
    cfg.resolve()
    assert cfg.train.z_delay == expected


def test_old_configs_load_as_rigid_and_the_rigid_model_is_unchanged():
    d = RunConfig(ModelConfig(image_size=16)).to_dict()
    for key in ("pose", "affine_prior_std", "tps_grid", "tps_prior_px"):
        del d["model"][key]
    cfg = RunConfig.from_dict(d).model
    assert cfg.pose == "rigid" and cfg.n_deform == 0
    torch.manual_seed(0)
    model = SpatialVAE(cfg)
    assert type(model.transform) is RigidTransform
    assert model.affine_prior_mean is None
    names = {n for n, _ in model.named_parameters()}
    assert not any("affine" in n or "extra" in n for n in names)


def _model(pose: str, encoder: str, posterior: str = "auto", size: int = 16) -> SpatialVAE:
    kw = {"theta_prior": "gaussian"} if posterior == "gaussian" else {}
    cfg = ModelConfig(image_size=size, zdim=2, encoder=encoder, theta_posterior=posterior,
                      pose=pose, gen_hidden=16, enc_hidden=16, enc_channels=4, **kw)  # fmt: skip
    torch.manual_seed(0)
    return SpatialVAE(cfg).double()


@pytest.mark.parametrize(
    "encoder, posterior",
    [("mlp", "gaussian"), ("mlp", "bins"), ("conv", "bins"), ("equivariant", "auto")],
)
@pytest.mark.parametrize("pose", ["affine", "tps", "affine-tps"])
def test_every_encoder_infers_the_extra_parameters(pose, encoder, posterior):
    model = _model(pose, encoder, posterior)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    q, params = model(x, torch.rand(3, dtype=torch.float64))
    p = model.config.n_pose + model.config.n_deform
    assert q.pose_mu.shape == q.pose_logstd.shape == (3, p)
    assert model.n_latent == 2 + p
    terms = posterior_elbo(model.config, model.pixels(x), params, q)
    assert terms.kl_deform is not None and torch.isfinite(terms.kl_deform).all()
    assert torch.allclose(terms.kl, terms.kl_z + terms.kl_theta + terms.kl_shift + terms.kl_deform)
    terms.elbo.sum().backward()
    if model.affine_prior_mean is not None:  # the prior is fitted: it gets a gradient
        assert model.affine_prior_logstd.grad.abs().sum() > 0
    # the canonical rendering is the identity pose
    assert torch.equal(
        model.canonical(q.z_mu), model.decode(q.z_mu, torch.zeros_like(q.pose_mu), full=True)
    )


def test_equivariant_extras_do_not_turn_with_the_image():
    """The affine / spline parameters live in the canonical frame: a quarter turn of the image
    (exact on the pixel grid with 4 bins) leaves them unchanged."""
    cfg = ModelConfig(image_size=16, zdim=1, pose="affine-tps", rotation_bins=4, enc_channels=4,
                      enc_hidden=16, gen_hidden=16)  # fmt: skip
    torch.manual_seed(0)
    model = SpatialVAE(cfg).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        q0, q1 = model.encode(x), model.encode(torch.rot90(x, 1, (-2, -1)))
    r = cfg.n_pose
    assert torch.allclose(q1.pose_mu[:, r:], q0.pose_mu[:, r:], atol=1e-9)
    assert q0.pose_mu[:, r:].std() > 1e-4


@pytest.mark.parametrize(
    "pose, encoder",
    [("affine", "equivariant"), ("affine", "mlp"), ("tps", "conv"), ("affine-tps", "mlp")],
)
def test_cli_pose_end_to_end(pose, encoder, tiny_stack, tmp_path):
    """fit --pose, then encode, montage, report and export-star: the table has the extra
    columns, the STAR file the rigid pose only."""
    import numpy as np
    from conftest import SMALL, runner
    from emvae_cli.main import app

    from emvae.io import read_table
    from emvae.io.star import read_star_blocks

    out = tmp_path / "run"
    flags = ["--pose", pose, "--encoder", encoder, "--tps-grid", "2", "--enc-channels", "2"]
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, *flags])
    assert r.exit_code == 0, r.output
    cfg = RunConfig.from_dict(__import__("json").loads((out / "config.json").read_text()))
    assert (cfg.model.pose, cfg.model.tps_grid) == (pose, 2)
    table = read_table(out / "particles.csv")
    metrics = np.genfromtxt(out / "metrics.csv", delimiter=",", names=True)
    assert np.isfinite(metrics["test_kl_deform"]).all() and (metrics["test_kl_deform"] > 0).all()
    affine_cols = ["scale_x", "scale_y", "shear", "log_scale_x_std", "log_scale_y_std", "shear_std"]
    tps_cols = ["tps_max_px", "tps_rms_px"]
    for c in affine_cols:
        assert (c in table) == cfg.model.affine
    for c in tps_cols:
        assert (c in table) == cfg.model.tps
    if cfg.model.affine:
        assert (table["scale_x"] > 0).all() and (table["log_scale_x_std"] > 0).all()
    if cfg.model.tps:
        assert (table["tps_max_px"] >= table["tps_rms_px"] - 1e-9).all()
    enc = tmp_path / "enc.csv"
    r = runner.invoke(
        app, ["encode", str(out), str(tiny_stack), "-o", str(enc), "--device", "cpu", "-q"]
    )
    assert r.exit_code == 0, r.output
    again = read_table(enc)
    for c in ["theta_deg", "shift_x_px"] + (affine_cols if cfg.model.affine else tps_cols):
        assert np.allclose(again[c], table[c], atol=1e-4), c
    r = runner.invoke(app, ["montage", str(out), "--no-gif"])
    assert r.exit_code == 0, r.output
    assert (out / "montage" / "pose_traversals.png").exists()
    truth = read_table(tiny_stack.parent / "truth.csv")
    truth["scale_x"] = np.exp(np.linspace(-0.2, 0.2, len(truth)))
    truth["scale_y"] = 1.0 / truth["scale_x"]
    truth.to_csv(tmp_path / "truth.csv", index=False)
    r = runner.invoke(app, ["report", str(out), "--reference", str(tmp_path / "truth.csv")])
    assert r.exit_code == 0, r.output
    html = (out / "report" / "report.html").read_text()
    assert "Pose traversals" in html and "deform_histograms.png" in html
    report = __import__("json").loads((out / "report" / "report.json").read_text())
    if cfg.model.affine:
        assert np.isfinite(report["scale"]["scale_x"]["pearson_log"])
    else:
        assert "scale" not in report
    star = tmp_path / "p.star"
    r = runner.invoke(app, ["export-star", str(out), "-o", str(star)])
    assert r.exit_code == 0, r.output
    blocks = read_star_blocks(star)
    rows = blocks["particles"]
    assert np.allclose(rows["rlnAnglePsi"].astype(float), table["theta_deg"], atol=1e-3)
    assert not any("scale" in c.lower() or "shear" in c.lower() for c in rows.columns)


def test_simulated_stretch_is_the_affine_pose_the_model_reports():
    """``emvae simulate --scale-std/--stretch-std``: a particle drawn with scale_x, scale_y at
    (theta_deg, shift) is exactly the canonical molecule seen through DeformTransform at
    theta = -theta_deg, dx from the shift, log s = log(scale) (so the table's scale_x is the
    truth's); without them the simulation is unchanged."""
    import numpy as np

    from emvae.geometry import image_to_model_pose
    from emvae.simulate import HINGE, render_blobs, simulate_particles

    size = 33
    conf = np.array([0.3, 0.8])
    centres, sigmas, amps = HINGE.blobs(conf)
    theta_deg, shift_px = np.array([40.0, -120.0]), np.array([[1.5, -2.0], [0.0, 2.5]])
    stretch = np.array([[1.3, 0.9], [0.8, 1.1]])
    img = render_blobs(centres, sigmas, amps, theta_deg, shift_px, size, stretch=stretch)
    theta, dx = image_to_model_pose(torch.from_numpy(theta_deg), torch.from_numpy(shift_px), size)
    extra = torch.cat(
        [torch.from_numpy(np.log(stretch)), torch.zeros(2, 1, dtype=torch.float64)], 1
    )
    pose = torch.cat([theta[:, None], dx, extra], 1)
    v = DeformTransform(True, True, True, 0).double()(
        coordinate_grid(size, size, dtype=torch.float64), pose
    )
    c = torch.from_numpy(centres)  # (2, M, 2)
    d2 = (v[:, :, None, :] - c[:, None]).square().sum(-1)
    ref = (torch.from_numpy(amps) * torch.exp(-d2 / (2 * torch.from_numpy(sigmas) ** 2))).sum(-1)
    assert np.allclose(img.reshape(2, -1), ref.numpy(), atol=1e-5)
    # stretch 1 is the plain rendering
    plain = render_blobs(centres, sigmas, amps, theta_deg, shift_px, size)
    ones = render_blobs(centres, sigmas, amps, theta_deg, shift_px, size, stretch=np.ones((2, 2)))
    assert np.allclose(plain, ones, atol=1e-6)
    a, ta = simulate_particles(20, 16, snr=2.0, seed=4)
    b, tb = simulate_particles(20, 16, snr=2.0, seed=4, scale_std=0.0, stretch_std=0.0)
    assert np.array_equal(a, b) and "scale_x" not in ta
    c2, tc = simulate_particles(20, 16, snr=2.0, seed=4, scale_std=0.2, stretch_std=0.1)
    assert np.allclose(tc["theta_body_deg"], ta["theta_body_deg"])  # the same draws otherwise
    assert (tc["scale_x"] != tc["scale_y"]).all() and (tc["scale_x"] > 0).all()
    assert 0.05 < np.log(tc["scale_x"] * tc["scale_y"]).std() / 2 < 0.4


def test_cli_simulate_scale_and_stretch(tmp_path):
    import pandas as pd
    from conftest import runner
    from emvae_cli.main import app

    out = tmp_path / "sim"
    args = [
        "simulate",
        str(out),
        "-n",
        "12",
        "--size",
        "16",
        "--scale-std",
        "0.1",
        "--stretch-std",
        "0.1",
        "--bend-std",
        "0.3",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    truth = pd.read_csv(out / "truth.csv")
    assert {"scale_x", "scale_y", "bend", "theta_deg"} <= set(truth.columns) and len(truth) == 12
    assert "rlnAnglePsi" in (out / "particles.star").read_text()


def test_simulated_bend_lifts_the_ends_of_the_molecule():
    """``simulate --bend-std``: a blob at canonical (0.5, 0) of a molecule bent by b = 0.4 is
    drawn at (0.5, 0.1) (+y up: row index down); turned 90 degrees counter-clockwise it is at
    (-0.1, 0.5); the same seed without a bend draws the same particles."""
    import numpy as np

    from emvae.geometry import coordinate_grid
    from emvae.simulate import render_blobs, simulate_particles

    size = 41
    centres = np.array([[[0.5, 0.0]]] * 2)
    sig, amp = np.array([0.05]), np.array([1.0])
    img = render_blobs(centres, sig, amp, np.array([0.0, 90.0]), np.zeros((2, 2)), size,
                       bend=np.array([0.4, 0.4]))  # fmt: skip
    grid = coordinate_grid(size, size, dtype=torch.float64).numpy()
    peaks = grid[img.reshape(2, -1).argmax(1)]
    assert np.allclose(peaks, [[0.5, 0.1], [-0.1, 0.5]], atol=0.026)  # within a pixel (0.05)
    a, ta = simulate_particles(20, 16, snr=2.0, seed=4)
    b, tb = simulate_particles(20, 16, snr=2.0, seed=4, bend_std=0.0)
    assert np.array_equal(a, b) and "bend" not in tb
    c, tc = simulate_particles(20, 16, snr=2.0, seed=4, bend_std=0.5)
    assert np.allclose(tc["theta_body_deg"], ta["theta_body_deg"]) and not np.array_equal(a, c)
    assert 0.2 < tc["bend"].std() < 0.8


def test_unwarp_brings_a_spline_posed_image_back_to_the_canonical_view():
    """z's network sees, with --pose tps, the image unwarped by the whole pose (the spline to
    first order): an image rendered at a turned, shifted, stretched and bent pose comes back
    close to the canonical view, much closer than with the rigid and affine parts alone."""
    size = 41
    cfg = ModelConfig(image_size=size, pose="affine-tps", encoder="mlp", theta_posterior="gaussian",
                      theta_prior="gaussian")  # fmt: skip
    model = SpatialVAE(cfg)
    coords = coordinate_grid(size, size, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    disp = 0.06 * torch.randn(1, 18, generator=g, dtype=torch.float64)
    rigid = torch.tensor(
        [[-0.9, 0.04, 0.06, math.log(1.1), math.log(0.9), 0.1]], dtype=torch.float64
    )
    pose = torch.cat([rigid, disp], 1)
    posed = _blob(model.transform.double()(coords, pose)).reshape(1, 1, size, size).float()
    canonical = _blob(coords).reshape(1, 1, size, size).float()
    model.float()
    back = model.unwarp(posed, pose.float())
    angle, shift = model.image_frame_pose(pose.float())
    rigid_only = align_images(posed, angle, shift, deform=model.image_frame_deform(pose.float()))
    err = (back - canonical).abs().max().item()
    assert err < 0.05
    assert (rigid_only - canonical).abs().max().item() > 3 * err
    # without a spline displacement it is the affine alignment
    flat = torch.cat([rigid, torch.zeros(1, 18, dtype=torch.float64)], 1).float()
    posed0 = (
        _blob(model.transform.double()(coords, flat.double())).reshape(1, 1, size, size).float()
    )
    model.float()
    a0, s0 = model.image_frame_pose(flat)
    ref = align_images(posed0, a0, s0, deform=model.image_frame_deform(flat))
    assert torch.allclose(model.unwarp(posed0, flat), ref, atol=1e-5)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"pose": "similarity"}, "unknown pose"),
        (
            {"pose": "affine", "generator": "vanilla", "rotation": False, "translation": False},
            "coordinates",
        ),
        ({"pose": "tps", "tps_grid": 1}, "--tps-grid"),
        ({"pose": "affine", "affine_prior_std": 0.0}, "must be > 0"),
    ],
)
def test_pose_settings_that_cannot_work_are_refused(kw, message):
    from emvae.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ModelConfig(image_size=16, zdim=1, **kw).validate()


def test_cli_pose_without_z_still_gets_its_pose_traversals(tiny_stack, tmp_path):
    from conftest import SMALL, runner
    from emvae_cli.main import app

    out = tmp_path / "run0"
    args = [
        "fit",
        str(tiny_stack),
        "-o",
        str(out),
        *SMALL,
        "--zdim",
        "0",
        "--pose",
        "affine",
        "-n",
        "1",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["montage", str(out), "--no-gif"])
    assert r.exit_code == 0, r.output
    assert (out / "montage" / "pose_traversals.png").exists()
    assert (out / "montage" / "canonical.png").exists()
    # resumes (the fitted prior and the extra outputs are in the checkpoint)
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), "--resume", "-n", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "pose" in (out / "config.json").read_text()


def test_the_model_recovers_a_known_scale_through_its_own_generator():
    """A fixed (random) coordinate-MLP generator rendered at log s = (log 1.3, log 0.8), shear
    0.1: fitting only the affine latents of SpatialVAE.decode from the identity recovers them."""
    kw = {"encoder": "mlp", "theta_posterior": "gaussian", "theta_prior": "gaussian"}
    cfg = ModelConfig(image_size=21, zdim=1, pose="affine", fourier_features=0, gen_hidden=32, **kw)
    torch.manual_seed(3)
    model = SpatialVAE(cfg).double()
    for p in model.parameters():
        p.requires_grad_(False)
    z = torch.full((1, 1), 0.5, dtype=torch.float64)
    truth = torch.tensor([[0.0, 0.0, 0.0, math.log(1.3), math.log(0.8), 0.1]], dtype=torch.float64)
    target = model.decode(z, truth, full=True)
    extra = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([extra], lr=0.5, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        pose = torch.cat([torch.zeros(1, 3, dtype=torch.float64), extra], 1)
        loss = (model.decode(z, pose, full=True) - target).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.allclose(extra.detach(), truth[:, 3:], atol=1e-3), extra
