"""The local rotation search under the generator (``--pose-search``, emvae.search)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL, runner
from emvae_cli.main import app

from emvae.config import ModelConfig, RunConfig
from emvae.ctf import COLUMNS
from emvae.errors import ConfigError
from emvae.geometry import model_to_image_pose
from emvae.io.tables import read_table
from emvae.models import SpatialVAE
from emvae.run import Run, load_model
from emvae.search import search_rotation, search_steps, turn_pose


def test_a_turn_moves_the_angle_and_keeps_the_image_frame_shift():
    pose = torch.tensor([[0.4, 0.10, -0.05], [-2.0, -0.2, 0.3]], dtype=torch.float64)
    delta = torch.tensor([[0.1, -0.3], [0.05, 1.0]], dtype=torch.float64)
    turned = turn_pose(pose, delta, translation=True)
    assert turned.shape == (2, 2, 3)
    assert torch.allclose(turned[..., 0], pose[:, None, 0] + delta)
    theta0, shift0 = model_to_image_pose(pose[:, 0], pose[:, 1:], 64)
    for j in range(2):
        theta, shift = model_to_image_pose(turned[:, j, 0], turned[:, j, 1:], 64)
        assert torch.allclose(shift, shift0, atol=1e-12)  # the particle stays where it was
        # the image-frame angle is -theta (counter-clockwise): a +delta turn reads -delta
        assert torch.allclose(theta, theta0 - torch.rad2deg(delta[:, j]), atol=1e-9)


def _model(size: int = 32, search: float = 8.0, **kw) -> SpatialVAE:
    torch.manual_seed(3)
    cfg = ModelConfig(
        image_size=size, zdim=1, gen_hidden=32, enc_hidden=16, pose_search=search, **kw
    )
    return SpatialVAE(cfg).eval()


def _rendered(model: SpatialVAE, pose: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The generator's noise-free full-size images ``(B, 1, D, D)`` at ``pose``."""
    d = model.config.image_size
    with torch.no_grad():
        out = model.decode(z, pose, full=True)[..., :1]
    return out.reshape(-1, 1, d, d) * 5  # a contrast well above the unit noise


@pytest.mark.parametrize("ctf", [False, True])
def test_the_search_finds_the_angle_an_image_was_rendered_at(ctf):
    model = _model(ctf="on" if ctf else "off")
    true = torch.tensor([[0.3, 0.05, -0.02], [-1.2, -0.04, 0.03], [2.5, 0.0, 0.0]])
    z = torch.tensor([[0.5], [-1.0], [0.0]])
    params = None
    if ctf:
        params = torch.zeros(3, len(COLUMNS))
        values = {"defocus_u_A": 15000.0, "defocus_v_A": 14000.0, "voltage_kV": 300.0,
                  "cs_mm": 2.7, "amplitude_contrast": 0.1, "scale": 1.0, "apix_A": 2.0}  # fmt: skip
        for name, value in values.items():
            params[:, COLUMNS.index(name)] = value
    images = _rendered(model, true, z)
    if params is not None:
        from emvae.objective import with_ctf

        flat = images.reshape(3, -1, 1)
        images = with_ctf(model.config, flat, params).reshape(images.shape)
    off = torch.tensor([math.radians(3.2), math.radians(-5.0), math.radians(0.7)])
    guess = turn_pose(true, off[:, None], True)[:, 0]
    delta = search_rotation(model, images, z, guess, params)
    found = torch.rad2deg(delta + off)
    # the search renders at 24 px of a 32-px box: the best angle is the true one to a few
    # tenths of a degree (the parabola through the 4-degree grid)
    assert found.abs().max().item() < 0.5, found
    model.config.pose_search = 4.0  # the true angle is outside +-4 deg for the second image
    delta = search_rotation(model, images, z, guess, params)
    assert torch.rad2deg(delta[1]).item() == pytest.approx(4.0)  # the range's end, no further


def test_encode_centres_the_posterior_on_the_searched_angle():
    model = _model()
    true = torch.tensor([[0.8, 0.05, -0.02], [-0.5, -0.04, 0.03]])
    z = torch.zeros(2, 1)
    images = _rendered(model, true, z)
    with torch.no_grad():
        plain = model.encode(images)  # training's and the test ELBO's: no search
        with model.table_poses():
            q = model.encode(images)
        delta = search_rotation(model, images, plain.z_mu, plain.pose_mu, None)
    assert q.bins is not None and plain.bins is not None
    expect = turn_pose(plain.pose_mu, delta[:, None], True)[:, 0]
    assert torch.allclose(q.pose_mu, expect, atol=1e-5)
    assert delta.abs().max().item() > math.radians(0.1)  # it moved (an untrained network)
    # every bin's angle moved alike; the bins' probabilities did not change
    assert torch.allclose(q.bins.theta - plain.bins.theta, delta[:, None].expand(-1, 8))
    assert torch.equal(q.bins.log_q, plain.bins.log_q)
    assert not torch.allclose(q.z_mu, plain.z_mu)  # z's network looked at the new alignment
    model.config.pose_search = 0.0  # off: the network's posterior, exactly
    with torch.no_grad():
        off = model.encode(images)
    assert torch.equal(off.pose_mu, plain.pose_mu) and torch.equal(off.z_mu, plain.z_mu)


def test_rendering_at_a_size_leaves_the_weights_and_restores_the_box():
    model = _model(size=48, mask_radius_px=20.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    coords, mask = model.coords.clone(), model.pixel_index.clone()
    with model.rendering_at(24):
        assert model.render_size == 24 and model.coords.shape[0] == 24 * 24
        assert model.generator.features.band is not None
    assert torch.equal(model.coords, coords) and torch.equal(model.pixel_index, mask)
    assert model.generator.features.band is None and model.render_size == 48
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_search_costs_steps_renderings_at_24_px_at_most():
    model = _model(size=64)
    calls: list[tuple[int, int]] = []
    decode = model.decode

    def counting(z, pose, *args, **kw):
        if pose.dim() == 3:  # the hypotheses' call (it calls itself with them flattened)
            calls.append((pose.shape[1], model.render_size))
        return decode(z, pose, *args, **kw)

    model.decode = counting  # type: ignore[method-assign]
    search_rotation(model, torch.randn(4, 1, 64, 64), torch.zeros(4, 1), torch.zeros(4, 3), None)
    assert calls and all(c == (5, 24) for c in calls)  # +-8 degrees in 4-degree steps
    assert model.render_size == 64


def test_the_angles_tried_are_at_most_4_degrees_apart_whatever_the_range():
    assert [search_steps(d) for d in (1.0, 4.0, 6.0, 8.0, 8.5, 45.0)] == [3, 3, 5, 5, 7, 25]


@pytest.mark.parametrize("value", [-1.0, 46.0])
def test_the_search_range_is_checked(value):
    with pytest.raises(ConfigError, match="--pose-search"):
        ModelConfig(image_size=32, pose_search=value).validate()
    for other in ({"rotation": False}, {"generator": "broadcast"}, {"pose": "tps"}):
        with pytest.raises(ConfigError, match="--pose-search needs"):
            ModelConfig(image_size=32, pose_search=5.0, **other).validate()


def test_fit_records_the_search_and_its_table_holds_the_searched_angles(tiny_stack, tmp_path):
    out = tmp_path / "run"
    args = ["fit", str(tiny_stack), "-o", str(out), *SMALL, "-n", "1", "--pose-search", "6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model"]["pose_search"] == 6.0
    model, _, checkpoint = load_model(out / "checkpoints" / "last.pt")
    assert checkpoint["config"]["model"]["pose_search"] == 6.0
    table = read_table(out / "particles.csv")
    images = Run.open(out).particles().load()  # normalised as the fit saw them
    found = []
    for searching in (True, False):
        with torch.no_grad(), model.table_poses(searching):
            q = model.encode(images)
        found.append(model_to_image_pose(q.pose_mu[:, 0], q.pose_mu[:, 1:3], 16)[0].numpy())
    searched, plain = found
    turn = (searched - plain + 180) % 360 - 180
    assert np.abs((table["theta_deg"] - searched + 180) % 360 - 180).max() < 1e-3
    assert np.abs(turn).max() > 0.1 and np.abs(turn).max() <= 6 + 1e-3  # moved, within +-6


def test_a_class_model_turns_only_the_best_class_hypotheses():
    model = _model(classes=2)
    pose = torch.tensor([[0.8, 0.05, -0.02], [-0.5, 0.0, 0.0]])
    with model.rendering_class(0):
        images = _rendered(model, pose, torch.zeros(2, 1))
    with torch.no_grad():
        plain = model.encode(images)
        with model.table_poses():
            q = model.encode(images)
    assert plain.bins is not None and q.bins is not None
    best = plain.best_class()
    assert best is not None
    moved = q.bins.theta - plain.bins.theta  # (B, 2 R)
    cell_class = torch.arange(16) // 8
    for i in range(2):
        mine = cell_class == best[i]
        assert (moved[i, ~mine] == 0).all()  # the other class keeps its own frame
        assert torch.allclose(moved[i, mine], moved[i, mine][0].expand(8))
    assert moved.abs().max() > 0


def test_a_table_without_the_ctfs_a_model_compares_through_is_refused():
    model = _model(ctf="on", encoder_ctf="raw")
    with torch.no_grad(), model.table_poses(), pytest.raises(ValueError, match="CTF"):
        model.encode(torch.randn(2, 1, 32, 32))


def test_the_search_is_on_above_48_px_and_old_runs_keep_theirs():
    assert ModelConfig(image_size=64).pose_search == 8.0
    assert ModelConfig(image_size=128, ctf="on").pose_search == 8.0
    assert ModelConfig(image_size=48).pose_search == 0.0
    assert ModelConfig(image_size=64, rotation=False).pose_search == 0.0
    assert ModelConfig(image_size=64, pose="tps").pose_search == 0.0  # no coarse rendering
    assert ModelConfig(image_size=64, likelihood="bernoulli").pose_search == 0.0
    assert ModelConfig(image_size=64, pose_search=0).pose_search == 0.0  # given: kept
    # a run made before the search: its tables are read back without one
    old = RunConfig(model=ModelConfig(image_size=64)).to_dict()
    del old["model"]["pose_search"]
    assert RunConfig.from_dict(old).model.pose_search == 0.0
