"""Reports and montages: layouts, end points, and numbers that match the library."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import runner, write_pictures
from emvae_cli.main import app
from PIL import Image

from emvae import montage as mt
from emvae.io import read_table
from emvae.io import star_export as sx
from emvae.metrics import angular_error_deg, circular_correlation
from emvae.report import compare, match, write_report
from emvae.run import Run
from emvae.simulate import write_simulation

FIT = ["--gen-hidden", "16", "--enc-hidden", "16", "-n", "3", "-b", "20", "--lr", "1e-3"]
FIT += ["--encoder", "mlp"]  # montage layouts, independent of the inference network


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (2-D z) on a simulated stack with its truth.csv."""
    root = tmp_path_factory.mktemp("report")
    stack = write_simulation(root / "sim", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=2)
    out = root / "run"
    r = runner.invoke(app, ["fit", str(stack), "-o", str(out), "--zdim", "2", *FIT, "-q"])
    assert r.exit_code == 0, r.output
    return out


def _picture(path):
    """(size, mode, frames) of an image file, closed again."""
    with Image.open(path) as im:
        return im.size, im.mode, getattr(im, "n_frames", 1)


def test_interpolation_layout_and_end_points(run):
    model = Run.open(run).model()[0]
    z_a, z_b = torch.randn(3, 2), torch.randn(3, 2)
    observed = torch.randn(3, 2, 1, 16, 16)
    grid = mt.interpolation(model, z_a, z_b, observed, steps=5)
    assert grid.shape == (3, 7, 1, 16, 16)
    assert torch.equal(grid[:, 0], observed[:, 0]) and torch.equal(grid[:, -1], observed[:, 1])
    assert torch.allclose(grid[:, 1], mt.decode_mean(model, z_a), atol=1e-6)
    assert torch.allclose(grid[:, -2], mt.decode_mean(model, z_b), atol=1e-6)
    middle = mt.decode_mean(model, (z_a + z_b) / 2)
    assert torch.allclose(grid[:, 3], middle, atol=1e-6)
    picture = mt.tile(mt.to_uint8(grid, -1, 1), pad=2)
    assert picture.shape == (3 * 18 + 2, 7 * 18 + 2)


def test_manifold_prior_and_traversals(run):
    model = Run.open(run).model()[0]
    n = 5
    grid = mt.manifold(model, n)
    q = mt.quantile_grid(n)
    assert grid.shape == (n, n, 1, 16, 16)
    assert np.allclose(q, -q[::-1]) and q[n // 2] == 0.0
    # column j: z1 = q[j]; row i: z2 = q[n - 1 - i] (largest z2 at the top, as in a plot)
    z = torch.tensor([[q[3], q[n - 1 - 1]]], dtype=torch.float32)
    assert torch.allclose(grid[1, 3], mt.decode_mean(model, z)[0], atol=1e-6)
    trav = mt.traversals(model, n=4, span=2.0)
    assert trav.shape == (2, 4, 1, 16, 16)
    assert torch.allclose(trav[1, 0], mt.decode_mean(model, torch.tensor([[0.0, -2.0]]))[0])
    assert mt.prior_samples(model, 2, 3).shape == (2, 3, 1, 16, 16)


def test_montage_command_writes_pictures(run, tmp_path):
    r = runner.invoke(
        app, ["montage", str(run), "-o", str(tmp_path), "--pairs", "2", "--grid", "4"]
    )
    assert r.exit_code == 0, r.output
    size, _, _ = _picture(tmp_path / "interpolation.png")
    assert size == ((10 * 18 + 2) * 2, (2 * 18 + 2) * 2)  # 8 steps + 2 observed, scale 2
    assert _picture(tmp_path / "manifold.png")[0] == ((4 * 18 + 2) * 2,) * 2
    assert _picture(tmp_path / "latent_motion.gif")[2] == 46
    table = read_table(run / "particles.csv")
    a, b = table["image"].iloc[[0, 5]]
    r = runner.invoke(
        app, ["montage", str(run), "-o", str(tmp_path / "named"), "--pair", f"{a},{b}", "--no-gif"]
    )
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "named" / "latent_motion.gif").exists()
    ckpt = run / "checkpoints" / "last.pt"  # a checkpoint finds its run's particle table
    r = runner.invoke(app, ["montage", str(ckpt), "-o", str(tmp_path / "ck"), "--no-gif"])
    assert r.exit_code == 0 and (tmp_path / "ck" / "interpolation.png").exists(), r.output
    r = runner.invoke(app, ["montage", str(run), "-o", str(tmp_path / "x"), "--pair", "99@nope"])
    assert r.exit_code == 1 and "'A,B'" in r.output


def test_report_numbers_match_the_library_and_rows_match_by_name(run, tmp_path):
    truth = pd.read_csv(run.parent / "sim" / "truth.csv")
    # the reference in another order, its stack named without the folder: matched by name
    shuffled = truth.sample(frac=1.0, random_state=0)
    shuffled.to_csv(tmp_path / "ref.csv", index=False)
    result = write_report(run, tmp_path / "ref.csv", tmp_path / "rep")
    for name in (
        "learning_curves.png",
        "pose_histograms.png",
        "z_histograms.png",
        "theta_vs_reference.png",
        "latent_scatter.png",
        "latent_kl.png",
    ):
        assert (tmp_path / "rep" / name).exists() and name in result["figures"]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6  # self-contained
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    table = read_table(run / "particles.h5")  # what the report reads (full precision)
    assert saved["matched"] == len(table) == 60
    rho = circular_correlation(np.radians(table["theta_deg"]), np.radians(truth["theta_deg"]))
    err, offset = angular_error_deg(table["theta_deg"], truth["theta_deg"])
    assert saved["rotation"]["circular_correlation"] == pytest.approx(rho)
    assert saved["rotation"]["median_error_deg"] == pytest.approx(err)
    assert saved["rotation"]["offset_deg"] == pytest.approx(offset)
    px = np.corrcoef(table["shift_x_px"], truth["shift_x_px"])[0, 1]
    assert saved["shift"]["pearson_x"] == pytest.approx(px)
    pz = np.corrcoef(table["z2"], truth["conformation"])[0, 1]
    assert saved["latent"]["z2"]["conformation"]["pearson"] == pytest.approx(pz)
    assert set(saved["latent"]["z1"]["conformation"]) == {"pearson", "spearman"}


def test_star_reference_reads_like_the_csv(run, tmp_path):
    """A STAR reference (RELION conventions) gives the same agreement as the CSV it encodes."""
    truth = pd.read_csv(run.parent / "sim" / "truth.csv")
    blocks = sx.table_to_star(truth, 16, 1.0)
    sx.write_star(blocks, tmp_path / "ref.star")
    table = read_table(run / "particles.csv")
    from emvae.report import read_reference

    ref = read_reference(tmp_path / "ref.star", 16, None)
    assert np.allclose(ref["shift_x_px"], truth["shift_x_px"], atol=1e-4)
    a = compare(*match(table, ref))
    b = compare(*match(table, truth))
    assert a["rotation"]["circular_correlation"] == pytest.approx(
        b["rotation"]["circular_correlation"], abs=1e-5
    )
    assert a["shift"]["pearson_y"] == pytest.approx(b["shift"]["pearson_y"], abs=1e-4)


def test_report_command_and_bad_reference(run, tmp_path):
    r = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "rotation" not in json.loads((tmp_path / "r" / "report.json").read_text())
    (tmp_path / "bad.csv").write_text("image,theta_deg\n1@other.mrcs,3.0\n")
    r = runner.invoke(app, ["report", str(run), "--reference", str(tmp_path / "bad.csv")])
    assert r.exit_code == 1 and "names none of the run's images" in r.output


def test_rgb_montage(tmp_path):
    pics = write_pictures(tmp_path / "pics", 10, 24)
    out = tmp_path / "run"
    args = ["fit", str(pics), "-o", str(out), "--crop", "0", "-D", "12", "--zdim", "2", *FIT]
    r = runner.invoke(app, [*args, "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["montage", str(out), "--pairs", "1", "--grid", "3"])
    assert r.exit_code == 0, r.output
    assert _picture(out / "montage" / "manifold.png")[1] == "RGB"
    assert _picture(out / "montage" / "interpolation.png")[1] == "RGB"


def test_shift_agreement_after_the_canonical_centre_offset():
    """A canonical view centred at u (canonical frame) moves a particle turned by theta by
    rot(theta) u: the report fits u and removes it, like theta's global offset. With the turn
    applied the wrong way round the residual stays large."""
    from emvae.report import compare

    rng = np.random.default_rng(0)
    n = 500
    theta = rng.uniform(-180, 180, n)
    shift = rng.normal(0, 1.0, (n, 2))
    u = np.array([0.8, -0.3])
    a = np.radians(theta)
    moved = np.stack([np.cos(a) * u[0] - np.sin(a) * u[1], np.sin(a) * u[0] + np.cos(a) * u[1]], 1)
    noise = rng.normal(0, 0.05, (n, 2))
    names = [f"{k}@p.mrcs" for k in range(1, n + 1)]
    ref = pd.DataFrame({"image": names, "theta_deg": theta, "shift_x_px": shift[:, 0],
                        "shift_y_px": shift[:, 1]})  # fmt: skip
    ours = ref.assign(shift_x_px=shift[:, 0] + moved[:, 0] + noise[:, 0],
                      shift_y_px=shift[:, 1] + moved[:, 1] + noise[:, 1])  # fmt: skip
    s = compare(ours, ref)["shift"]
    assert s["offset_x_px"] == pytest.approx(0.8, abs=0.01)
    assert s["offset_y_px"] == pytest.approx(-0.3, abs=0.01)
    assert s["rms_error_px"] == pytest.approx(0.05 * np.sqrt(2), rel=0.1)
    assert s["pearson_x_after_offset"] > 0.99 > s["pearson_x"]
    wrong = ref.assign(shift_x_px=shift[:, 0] + moved[:, 0], shift_y_px=shift[:, 1] - moved[:, 1])
    assert compare(wrong, ref)["shift"]["rms_error_px"] > 0.5
