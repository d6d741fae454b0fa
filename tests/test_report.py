"""Reports and montages: layouts, end points, and numbers that match the library."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import runner, write_pictures
from emvae_cli.main import app
from PIL import Image

from emvae import montage as mt
from emvae.figures import tiles
from emvae.geometry import model_to_image_pose
from emvae.io import read_table
from emvae.io import star_export as sx
from emvae.metrics import angular_error_deg, circular_correlation
from emvae.reference import best_factors, compare, match
from emvae.report import _of_this_fit, write_report
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
    _ok("fit", stack, "-o", out, "--zdim", "2", *FIT, "-q")
    return out


def _ok(*args):
    """``emvae ARGS`` (paths as text), which must succeed."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output


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
    picture = tiles.tile(tiles.to_uint8(grid, -1, 1), pad=2)
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
    args = ["montage", str(run), "-o", str(tmp_path), "--pairs", "2", "--grid", "4"]
    _ok(*args, "--no-labels")
    size, _, _ = _picture(tmp_path / "interpolation.png")
    assert size == ((10 * 18 + 2) * 2, (2 * 18 + 2) * 2)  # 8 steps + 2 observed, scale 2
    assert _picture(tmp_path / "manifold.png")[0] == ((4 * 18 + 2) * 2,) * 2
    assert _picture(tmp_path / "latent_motion.gif")[2] == 46  # 24 steps there, 22 back
    table = read_table(run / "particles.csv")
    a, b = table["image"].iloc[[0, 5]]
    _ok("montage", run, "-o", tmp_path / "named", "--pair", f"{a},{b}", "--no-gif")
    assert not (tmp_path / "named" / "latent_motion.gif").exists()
    ckpt = run / "checkpoints" / "last.pt"  # a checkpoint finds its run's particle table
    r = runner.invoke(app, ["montage", str(ckpt), "-o", str(tmp_path / "ck"), "--no-gif"])
    assert r.exit_code == 0 and (tmp_path / "ck" / "interpolation.png").exists(), r.output
    r = runner.invoke(app, ["montage", str(run), "-o", str(tmp_path / "x"), "--pair", "99@nope"])
    assert r.exit_code == 1 and "'A,B'" in r.output


def test_a_checkpoint_knows_its_run(run, tmp_path):
    """Run.of: a run directory is its own run, checkpoints/*.pt belong to the folder above, a
    checkpoint copied elsewhere to none."""
    assert Run.of(run).path == run and Run.of(run / "checkpoints" / "last.pt").path == run
    copy = tmp_path / "last.pt"
    copy.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    assert Run.of(copy) is None and Run(run).last == run / "checkpoints" / "last.pt"


def test_an_analysis_of_another_fit_is_left_out_with_a_warning(run, tmp_path):
    """report: an analyze.json whose run id is not config.json's is another fit's."""
    (tmp_path / "analyze").mkdir()
    (tmp_path / "analyze" / "analyze.json").write_text(json.dumps({"run_id": "f" * 32}))
    warnings: list[str] = []
    assert _of_this_fit(tmp_path / "analyze", Run(run).config, "-", warnings) is None
    assert "another run (ffffffff)" in warnings[0] and "emvae analyze again" in warnings[0]


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
    # self-contained: the 6 figures above, z against the reference, the reconstructions, the
    # traversals, (2-D z) the decoded grid with the local metric and the junk score
    assert {"z_vs_reference.png", "reconstructions.png"} <= set(result["figures"])
    assert {"latent_traversals.png", "latent_metric.png"} <= set(result["figures"])
    assert "junk.png" in result["figures"] and result["junk"]["above_half"] >= 0
    assert len(result["figures"]) == 11
    assert html.count("data:image/png;base64,") == 11
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
    from emvae.reference import read_reference

    ref = read_reference(tmp_path / "ref.star", 16, None)
    assert np.allclose(ref["shift_x_px"], truth["shift_x_px"], atol=1e-4)
    a = compare(*match(table, ref))
    b = compare(*match(table, truth))
    assert a["rotation"]["circular_correlation"] == pytest.approx(
        b["rotation"]["circular_correlation"], abs=1e-5
    )
    assert a["shift"]["pearson_y"] == pytest.approx(b["shift"]["pearson_y"], abs=1e-4)


def test_report_command_and_bad_reference(run, tmp_path):
    _ok("report", run, "-o", tmp_path / "r")
    assert "rotation" not in json.loads((tmp_path / "r" / "report.json").read_text())
    (tmp_path / "bad.csv").write_text("image,theta_deg\n1@other.mrcs,3.0\n")
    r = runner.invoke(app, ["report", str(run), "--reference", str(tmp_path / "bad.csv")])
    assert r.exit_code == 1 and "names none of the run's images" in r.output


def test_rgb_montage(tmp_path):
    pics = write_pictures(tmp_path / "pics", 10, 24)
    out = tmp_path / "run"
    args = ["fit", str(pics), "-o", str(out), "--crop", "0", "-D", "12", "--zdim", "2", *FIT]
    _ok(*args, "-q")
    _ok("montage", out, "--pairs", "1", "--grid", "3")
    assert _picture(out / "montage" / "manifold.png")[1] == "RGB"
    assert _picture(out / "montage" / "interpolation.png")[1] == "RGB"


def test_shift_agreement_after_the_canonical_centre_offset():
    """A canonical view centred at u (canonical frame) moves a particle turned by theta by
    rot(theta) u: the report fits u and removes it, like theta's global offset. With the turn
    applied the wrong way round the residual stays large."""

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


def test_gif_has_one_frame_per_step_even_when_frames_repeat(tmp_path):
    """Pillow writes identical consecutive frames as one; the position marker under each
    frame keeps every step (here a path along which the picture does not change at all)."""
    frames = np.tile(np.linspace(-1, 1, 16 * 16).reshape(1, 1, 16, 16), (10, 1, 1, 1))
    plain = [Image.fromarray(tiles.to_uint8(f[0], -1, 1)) for f in frames]
    plain[0].save(tmp_path / "plain.gif", save_all=True, append_images=plain[1:], duration=80)
    assert _picture(tmp_path / "plain.gif")[2] == 1  # what Pillow does without the marker
    tiles.save_gif(frames, tmp_path / "kept.gif", ms=80)
    (w, h), _, n = _picture(tmp_path / "kept.gif")
    assert n == 10 and (w, h) == (64, 64 + tiles.TRACK_PX)
    with Image.open(tmp_path / "kept.gif") as im:
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert durations == [80] * 10
    # there and back (positions repeat, never consecutively), with a caption line per frame
    t = np.concatenate([np.linspace(0, 1, 6), np.linspace(1, 0, 6)[1:-1]])
    captions = [tiles.z_lines([v]) for v in t]
    tiles.save_gif(frames[:10], tmp_path / "captioned.gif", positions=t, captions=captions)
    (w, h), _, n = _picture(tmp_path / "captioned.gif")
    assert n == 10 and h == 64 + tiles.TRACK_PX + tiles.LINE_PX
    # 40 frames of 8 px: enlarged until the marker moves at least 1 px per frame
    small = np.zeros((40, 1, 8, 8))
    tiles.save_gif(small, tmp_path / "small.gif")
    (w, _), _, n = _picture(tmp_path / "small.gif")
    assert n == 40 and w == 8 * tiles.gif_scale(40, 8) and w - tiles.MARKER_PX >= 39


def test_montage_gif_frames_follow_gif_steps(run, tmp_path):
    _ok("montage", run, "-o", tmp_path, "--pairs", "1", "--gif-steps", "7")
    (w, h), _, n = _picture(tmp_path / "latent_motion.gif")
    assert n == 2 * 7 - 2  # 7 steps there, 5 back
    assert (w, h) == (16 * 4, 16 * 4 + tiles.TRACK_PX + 2 * tiles.LINE_PX)  # z1, z2 under the image


def test_labels_add_margins_of_the_expected_size(run, tmp_path):
    """Labelled montages: the tiles are the unlabelled ones, moved by the margins; the margins
    are one text line per header and caption line (monospaced text: width = length x
    advance)."""
    model = Run.open(run).model()[0]
    table = read_table(run / "particles.h5")
    z_data = table[["z1", "z2"]].to_numpy(np.float64)
    grid = mt.manifold(model, 4, z_data)
    labels = mt.manifold_labels(2, 4, z_data)
    assert len(labels.columns) == len(labels.rows) == 4
    q = mt.quantile_grid(4, z_data[:, 0])
    assert labels.columns == [f"z1 {v:+.2f}" for v in q]
    assert labels.rows[0] == f"z2 {mt.quantile_grid(4, z_data[:, 1])[-1]:+.2f}"  # top: largest
    tiles.save_png(grid, tmp_path / "plain.png")
    tiles.save_png(grid, tmp_path / "labelled.png", labels=labels)
    advance = tiles.label_font().getlength("0")

    def width(texts):  # monospaced: every character one advance
        return max(math.ceil(len(t) * advance) for t in texts)

    assert all(tiles.text_width(t) == width([t]) for t in [*labels.columns, *labels.rows])
    with Image.open(tmp_path / "plain.png") as a, Image.open(tmp_path / "labelled.png") as b:
        plain, labelled = np.asarray(a), np.asarray(b)
    tile, pad = 16 * 2, 2 * 2
    assert plain.shape == (4 * (tile + pad) + pad,) * 2
    left = width(labels.rows) + 2 * tiles.GAP_PX
    top = tiles.LINE_PX + tiles.GAP_PX
    col_w = max(tile + pad, width(labels.columns) + 2 * tiles.GAP_PX)
    assert labelled.shape == (top + 4 * (tile + pad) + pad, left + 4 * col_w + pad)
    # tile (r, c): same pixels, centred in its column
    for r, c in ((0, 0), (3, 2)):
        x = left + pad + c * col_w + (col_w - pad) // 2 - tile // 2
        y = top + pad + r * (tile + pad)
        want = plain[pad + r * (tile + pad) :][:tile, pad + c * (tile + pad) :][:, :tile]
        assert np.array_equal(labelled[y : y + tile, x : x + tile], want)
    assert (labelled[:top] < 128).sum() > 0 and (labelled[:, :left] < 128).sum() > 0  # text
    # captions under tiles: the row grows by LINE_PX per line
    z = torch.tensor([[0.5, -1.0], [1.5, 2.0]])
    tags = mt.interpolation_labels(z[:1], z[1:], 3)
    assert tags.columns == ["t 0.00", "t 0.50", "t 1.00"]
    assert tags.tiles[0][1] == ["z1 +1.00", "z2 +0.50"] and tags.lines(0) == 2
    g = tags.geometry(1, 3, tile, pad)
    assert g["row_h"] == [tile + pad + 2 * tiles.LINE_PX] and g["top"] == top
    assert g["size"] == (3 * g["col_w"] + pad, top + tile + pad + 2 * tiles.LINE_PX + pad)
    assert tiles.z_lines([0.1, 0.2, 0.3, 0.4]) == ["z1 +0.10", "z2 +0.20", "+2 more"]


def test_montage_command_labels(run, tmp_path):
    args = ["montage", str(run), "--pairs", "2", "--grid", "4", "--no-gif"]
    _ok(*args, "-o", tmp_path / "a")
    (w, h), _, _ = _picture(tmp_path / "a" / "interpolation.png")
    tile, pad, top = 16 * 2, 2 * 2, tiles.LINE_PX + tiles.GAP_PX
    # 2 rows, each with 2 caption lines (observed: image number and theta; generated: z1, z2)
    assert h == top + 2 * (tile + pad + 2 * tiles.LINE_PX) + pad
    assert (w - pad) % 10 == 0 and (w - pad) // 10 >= tile + pad
    (w, h), _, _ = _picture(tmp_path / "a" / "prior_samples.png")  # 8 x 8, z1 and z2 under each
    assert h == 8 * (tile + pad + 2 * tiles.LINE_PX) + pad


def test_report_page_reads_like_supplementary_figures(run, tmp_path):
    """Sections, numbered figures with units, provenance, example reconstructions and the
    run's montages, all in the one HTML file."""
    import base64
    import re
    import shutil
    from html import escape

    from emvae import __version__

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _ok("montage", copy, "--pairs", "2", "--grid", "4")
    _ok("report", copy, "--reference", run.parent / "sim" / "truth.csv", "--examples", "5")
    dest = copy / "report"
    html = (dest / "report.html").read_text()
    saved = json.loads((dest / "report.json").read_text())
    numbers = [int(n) for n in re.findall(r"<b>Figure (\d+)\. ", html)]
    montages = ["interpolation.png", "manifold.png", "prior_samples.png", "latent_motion.gif"]
    assert numbers == list(range(1, len(saved["figures"]) + len(montages) + 1))
    for title in (
        "Figure 1. Learning curves.",
        "Inferred poses.",
        "Rotation against the reference.",
        "Latent against the reference.",
        "Example particles and their reconstructions.",
        "Interpolation between particles.",
        "The learned manifold.",
        "Samples from the prior.",
        "Motion along the main axis of z.",
    ):
        assert html.count(title) == 1, title
    for section in ("The run", "Summary", "Training", "Poses", "Latent space", "Example particles"):
        assert f"<h2>{section}</h2>" in html
    for unit in ("nats per particle", "degrees", "px", "Å", "prior standard-deviation units"):
        assert unit in html, unit
    assert "test_elbo" not in html and "circular_correlation" not in html  # words, not keys
    rot = saved["rotation"]
    assert f"circular correlation {rot['circular_correlation']:.3f}" in html
    assert f"median error {rot['median_error_deg']:.1f}°" in html
    config = json.loads((copy / "config.json").read_text())
    assert config["command"].startswith(f"emvae fit {run.parent / 'sim'}")
    assert f" --out {run} --zdim 2 --epochs 3 " in config["command"]  # not pytest's argv
    assert config["command"].endswith(" --quiet")
    assert f"emvae {__version__}" in html
    assert f"<code>{escape(config['command'])}</code>" in html  # as config.json records it
    # the reconstructions and montages are embedded byte for byte
    for path in (dest / "reconstructions.png", copy / "montage" / "interpolation.png"):
        assert base64.b64encode(path.read_bytes()).decode() in html
    assert html.count("data:image/gif;base64,") == 1
    # 5 examples: columns of input / reconstruction / canonical view
    (w, h), _, _ = _picture(dest / "reconstructions.png")
    tile = 16 * math.ceil(72 / 16)
    assert h == tiles.LINE_PX + tiles.GAP_PX + 3 * (tile + 2 * 5) + 2 * 5 + 3 * tiles.LINE_PX
    # z against the reference: one panel per z, the factor each follows best
    best = {z: (f, r) for z, f, r in best_factors(saved["latent"])}
    assert set(best) == {"z1", "z2"} and best["z1"][0] == "conformation"
    assert best["z1"][1] == pytest.approx(saved["latent"]["z1"]["conformation"]["pearson"])
    assert f"{best['z1'][1]:+.3f}" in html  # the summary's Pearson r of z1


def test_reconstruction_renders_each_particle_at_its_posterior(run):
    """mt.reconstruct re-encodes the images the table describes: the same z, and at the
    particle's own pose; at pose 0 it is decode_mean."""
    r = Run.open(run)
    model = r.model()[0]
    table = r.table()
    idx = np.array([0, 7, 33])
    images = r.particles().images(idx)
    rendered, z, pose = mt.reconstruct(model, images)
    assert rendered.shape == (3, 1, 16, 16)
    assert np.allclose(z.numpy(), table[["z1", "z2"]].to_numpy()[idx], atol=1e-4)
    theta, shift = model_to_image_pose(pose[:, 0].double(), pose[:, 1:3].double(), 16)
    diff = (theta.numpy() - table["theta_deg"].to_numpy()[idx] + 180) % 360 - 180
    assert np.abs(diff).max() < 0.01  # the table's theta_deg, degrees
    assert np.allclose(shift[:, 0].numpy(), table["shift_x_px"].to_numpy()[idx], atol=1e-3)
    # at pose 0 the rendering is decode_mean; at the particle's pose it is not
    at_zero = mt.decode_mean(model, z)
    params = model.decode(z, torch.zeros_like(pose), full=True)
    assert torch.allclose(params[..., 0].reshape(3, 1, 16, 16), at_zero, atol=1e-6)
    assert not torch.allclose(rendered, at_zero, atol=1e-3)


def test_report_of_an_old_run_says_the_command_is_unknown(run, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["command"] = ""
    (copy / "config.json").write_text(json.dumps(config))
    write_report(copy, examples=0)
    html = (copy / "report" / "report.html").read_text()
    assert "Command line</th><td>unknown" in html
    assert "Example particles and their reconstructions" not in html
    assert "No montages yet" in html


# ----------------------------------------------------------------------------- latent geometry


@pytest.fixture(scope="module")
def run_1d(run):
    """A tiny trained run with 1-D z on the same simulated stack as ``run``."""
    out = run.parent / "run_1d"
    stack = run.parent / "sim" / "particles.mrcs"
    _ok("fit", stack, "-o", out, "--zdim", "1", *FIT, "-q")
    return out


def _finite_difference_jacobian(model, z, h=1e-4):
    """Central differences of decode_mean in float64: ``(n, P, K)``."""
    import copy

    double = copy.deepcopy(model).double()
    z = z.double()
    cols = []
    for d in range(z.shape[1]):
        step = torch.zeros_like(z)
        step[:, d] = h
        diff = mt.decode_mean(double, z + step) - mt.decode_mean(double, z - step)
        cols.append(diff.flatten(1) / (2 * h))
    return torch.stack(cols, -1)


def test_local_metric_matches_finite_differences(run):
    """The exact (forward-mode) Jacobian of the pose-free image, its singular values and the
    magnification sqrt(det(JᵀJ)) agree with central differences at a few z."""
    model = Run.open(run).model()[0]
    z = torch.tensor([[0.0, 0.0], [1.2, -0.7], [-2.0, 0.5], [0.3, 1.9]])
    jac = mt.canonical_jacobian(model, z, batch=3)  # two batches
    assert jac.shape == (4, 16 * 16, 2)
    fd = _finite_difference_jacobian(model, z)
    assert torch.linalg.norm(jac.double() - fd) / torch.linalg.norm(fd) < 1e-3
    metric = mt.local_metric(model, z).double()
    want = torch.sqrt(torch.linalg.det(fd.transpose(1, 2) @ fd))
    assert metric.shape == (4,) and (want > 0).all()
    assert ((metric - want).abs() / want).max() < 1e-2
    sv = mt.singular_values(model, z).double()
    want_sv = torch.linalg.svdvals(fd)
    assert sv.shape == (4, 2) and (sv[:, 0] >= sv[:, 1]).all()
    assert ((sv - want_sv).abs() / want_sv).max() < 1e-2
    # the grid version: cell (r, c) is the manifold's tile (r, c)
    table = read_table(run / "particles.h5")
    z_data = table[["z1", "z2"]].to_numpy(np.float64)
    mag, sv_grid = mt.metric_grid(model, 3, z_data)
    assert mag.shape == (3, 3) and sv_grid.shape == (3, 3, 2)
    g1, g2 = mt.manifold_grids(2, 3, z_data)
    at = torch.tensor([[g1[2], g2.flip(0)[0]]])  # top right: largest z1, largest z2
    assert mag[0, 2] == pytest.approx(float(mt.local_metric(model, at)[0]), rel=1e-5)


def test_local_metric_is_zero_without_z_and_scales_with_the_output_layer(run):
    """A generator that ignores z has metric 0; scaling the output layer's weights by c
    scales the Jacobian, so each singular value, by c and the 2-D magnification by c²."""
    import copy

    model = Run.open(run).model()[0]
    z = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-0.5, 1.5]])
    base_sv, base = mt.singular_values(model, z), mt.local_metric(model, z)
    assert (base > 0).all()
    blind = copy.deepcopy(model)
    with torch.no_grad():
        blind.generator.latent_linear.weight.zero_()
    assert torch.equal(mt.local_metric(blind, z), torch.zeros(3))
    assert torch.equal(mt.singular_values(blind, z), torch.zeros(3, 2))
    for c in (2.0, 3.0):
        scaled = copy.deepcopy(model)
        out = scaled.generator.body[-1]
        assert isinstance(out, torch.nn.Linear)
        with torch.no_grad():
            out.weight.mul_(c)  # the bias does not depend on z
        assert torch.allclose(mt.singular_values(scaled, z), c * base_sv, rtol=1e-5, atol=0)
        assert torch.allclose(mt.local_metric(scaled, z), c**2 * base, rtol=1e-5, atol=0)


def test_report_loads_the_model_once(run, tmp_path, monkeypatch):
    """Traversals, the local metric and the example reconstructions draw with one model, read
    from checkpoints/last.pt once (issue 36: it was read twice per report)."""
    loaded = []
    model = Run.model

    def counted(self, *args, **kwargs):
        loaded.append(self.path)
        return model(self, *args, **kwargs)

    monkeypatch.setattr(Run, "model", counted)
    result = write_report(run, out=tmp_path / "rep", examples=4)
    assert {"latent_traversals.png", "reconstructions.png"} <= set(result["figures"])
    assert len(loaded) == 1


def test_report_shows_the_local_metric_for_2d_z(run, tmp_path):
    """A 2-D run's report embeds the decoded grid with the local metric and the traversals
    as numbered figures with their units; report.json holds the metric of the grid."""
    import re

    result = write_report(run, out=tmp_path / "rep", examples=0)
    for name in ("latent_metric.png", "latent_traversals.png", "latent_kl.png"):
        assert name in result["figures"] and (tmp_path / "rep" / name).exists()
    html = (tmp_path / "rep" / "report.html").read_text()
    titles = re.findall(r"<b>Figure (\d+)\. ([^<]*?)\.</b>", html)
    numbers = [int(n) for n, _ in titles]
    assert numbers == list(range(1, len(numbers) + 1))
    by_title = {t: int(n) for n, t in titles}
    assert "Decoded grid with the local metric" in by_title
    assert "Per-dimension traversals" in by_title
    assert "Information carried by each latent dimension" in by_title
    figure = html[
        html.index(f'<figure id="figure-{by_title["Decoded grid with the local metric"]}"') :
    ]
    caption = figure[: figure.index("</figure>")]
    assert "(pixel-value units) per unit z" in caption and "√det(JᵀJ)" in caption
    assert "(latent_metric.png)" in caption
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    model = Run.open(run).model()[0]
    table = read_table(run / "particles.h5")
    mag, _ = mt.metric_grid(model, 10, table[["z1", "z2"]].to_numpy(np.float64))
    assert np.allclose(saved["latent_metric"]["magnification"], mag.numpy(), rtol=1e-4)
    (w, h), _, _ = _picture(tmp_path / "rep" / "latent_metric.png")
    assert (w, h) == (1000, 800)  # 2 x 2 panels of 5 x 4 in at 100 dpi


def test_report_of_a_1d_run_has_traversals_but_no_local_metric(run_1d, tmp_path):
    result = write_report(run_1d, out=tmp_path / "rep", examples=0)
    assert "latent_metric.png" not in result["figures"] and "latent_metric" not in result
    assert not (tmp_path / "rep" / "latent_metric.png").exists()
    assert {"latent_traversals.png", "latent_kl.png"} <= set(result["figures"])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Decoded grid with the local metric" not in html
    assert html.count("Per-dimension traversals.") == 1
    (w, h), _, _ = _picture(tmp_path / "rep" / "latent_traversals.png")
    assert h < 2 * (16 * 3 + 6) + 3 * tiles.LINE_PX  # one row of tiles
    model = Run.open(run_1d).model()[0]
    assert mt.local_metric(model, torch.zeros(2, 1)).shape == (2,)  # K = 1: the speed
    sv = mt.singular_values(model, torch.zeros(2, 1))
    assert torch.allclose(mt.local_metric(model, torch.zeros(2, 1)), sv[:, 0])
