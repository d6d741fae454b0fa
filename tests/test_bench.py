"""The benchmark suite in miniature (pipelines, not numbers), MNIST reading and transforms,
and ``emvae simulate``."""

from __future__ import annotations

import gzip
import inspect
import json
import re

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import real_data, runner, write_pictures
from emvae_cli.main import app
from PIL import Image
from typer.main import get_command

from emvae import bench as bn
from emvae import throughput as tp
from emvae.config import ModelConfig
from emvae.errors import InputError
from emvae.mnist import load_mnist, make_dataset, read_idx, transform_digits
from emvae.simulate import simulate_particles
from emvae.throughput import generator_flops

TINY = {"epochs": 1, "hidden": 16, "device": "cpu", "progress": False}


def _idx(path, data: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, data.ndim]) + np.array(data.shape, dtype=">u4").tobytes()
    raw = header + data.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


@pytest.fixture
def mnist_dir(tmp_path):
    """The standard four-file layout with 300 random 'digits' (a bright bar, random label)."""
    rng = np.random.default_rng(0)
    images = np.zeros((300, 28, 28), np.uint8)
    for k in range(300):
        r = rng.integers(6, 22)
        images[k, r - 2 : r + 2, 6:22] = 255
    labels = rng.integers(0, 10, 300).astype(np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images[:200])
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:200])
    _idx(tmp_path / "t10k-images-idx3-ubyte", images[200:], gz=False)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", labels[200:], gz=False)
    return tmp_path


def test_idx_reading_and_errors(mnist_dir, tmp_path):
    d = load_mnist(mnist_dir)
    assert d["train_images"].shape == (200, 28, 28) and d["test_labels"].shape == (100,)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x01" + b"\0" * 8)
    with pytest.raises(InputError, match="bad magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + np.array([10], ">u4").tobytes() + b"\1" * 5)
    with pytest.raises(InputError, match="holds 5 values; its header promises 10"):
        read_idx(short)


def test_shared_mnist_is_the_real_thing():
    d = load_mnist(real_data("mnist") / "mnist")  # 3 MB: only in ../shared/data
    assert d["test_images"].shape == (10000, 28, 28)
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(d["test_labels"]).tolist() == counts
    assert d["train_images"].shape == (10000, 28, 28)


def test_transform_convention_and_distributions():
    dot = np.zeros((1, 29, 29), np.float32)
    dot[0, 14, 20] = 1.0  # 6 px right of the centre
    up = transform_digits(dot, np.array([90.0]), np.zeros((1, 2)), 29)
    assert np.unravel_index(up[0].argmax(), (29, 29)) == (8, 14)  # counter-clockwise: now above
    moved = transform_digits(dot, np.zeros(1), np.array([[0.0, 3.0]]), 29)
    assert np.unravel_index(moved[0].argmax(), (29, 29)) == (11, 20)  # +y is up
    digits = np.zeros((4000, 28, 28), np.uint8)
    _, theta, shift = make_dataset(digits, "rotated", seed=1)
    assert theta.std() == pytest.approx(45.0, rel=0.05)  # N(0, pi^2/16)
    assert shift.std() == pytest.approx(1.4, rel=0.05)
    _, _, far = make_dataset(digits[:500], "rotated_translated", seed=1, canvas=40)
    assert far.std() == pytest.approx(14.0, rel=0.1)
    again = make_dataset(digits[:10], "rotated", seed=1)[1]
    assert np.array_equal(again, theta[:10])


def test_mnist_benchmark_in_miniature(mnist_dir, tmp_path):
    out = tmp_path / "bench"
    table = bn.run_mnist(mnist_dir, out, ["rotated"], ["vanilla", "fixed", "spatial"], [2], **TINY)
    assert len(table) == 3 and np.isfinite(table["test_neg_elbo"]).all()
    assert table["published_neg_elbo"].tolist() == [187.5, 189.7, 161.5]
    assert ((table["svm_accuracy"] >= 0) & (table["svm_accuracy"] <= 1)).all()
    for name in ("fig2.png", "fig3_rotated_spatial.png", "mnist_results.md", "mnist_results.csv"):
        assert (out / name).exists(), name
    cached = next((out / "data").glob("rotated_*.npz"))
    stamp = cached.stat().st_mtime_ns
    bn.run_mnist(mnist_dir, out, ["rotated"], ["vanilla"], [2], **TINY)
    assert cached.stat().st_mtime_ns == stamp  # generated once, then reused


def test_mnist_benchmark_compares_encoders(mnist_dir, tmp_path):
    table = bn.run_mnist(
        mnist_dir, tmp_path, ["rotated"], ["vanilla", "spatial"], [2],
        encoders=("mlp", "conv", "equivariant"), **TINY,
    )  # fmt: skip
    assert table["model"].tolist() == ["vanilla", "spatial", "spatial/conv", "spatial/equivariant"]
    assert np.isfinite(table["test_neg_elbo"]).all()
    assert (tmp_path / "fig3_rotated_spatial_equivariant.png").exists()
    cfg = json.loads((tmp_path / "runs/rotated_spatial_equivariant_z2/config.json").read_text())
    assert cfg["model"]["encoder"] == "equivariant" and cfg["model"]["theta_prior"] == "uniform"


def test_mnist_benchmark_rows_for_the_broadcast_decoder_and_beta(mnist_dir, tmp_path):
    """--models spatial,broadcast --betas 1,4: a row each, beta stored in each run's config,
    and each row's per-dimension KLs are those of its own model on the test digits."""
    table = bn.run_mnist(
        mnist_dir, tmp_path, ["rotated"], ["spatial", "broadcast"], [2], betas=(1.0, 4.0),
        **TINY,
    )  # fmt: skip
    labels = ["spatial", "spatial/beta4", "broadcast", "broadcast/beta4"]
    assert table["model"].tolist() == labels
    for label, beta in zip(labels, (1, 4, 1, 4), strict=True):
        run = tmp_path / "runs" / f"rotated_{label.replace('/', '_')}_z2"
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["train"]["beta"] == beta
        assert cfg["model"]["generator"] == label.split("/")[0]
    assert (table[["kl_z1", "kl_z2"]] >= 0).all().all()
    assert np.isfinite(table["test_neg_elbo"]).all()


def test_particles_benchmark_in_miniature(tmp_path):
    table = bn.run_particles(tmp_path, n=60, size=16, snr=5.0, **TINY)
    assert table["model"].tolist() == ["spatial-VAE", "vanilla VAE", "vanilla VAE"]
    assert table["zdim"].tolist() == [1, 1, 2]
    assert 0 <= table["z_vs_conformation_pearson"].iloc[0] <= 1
    assert np.isfinite(table["theta_circular_correlation"].iloc[0])
    assert (tmp_path / "particles_results.md").exists()


def test_encoder_benchmark_command_in_miniature(tmp_path):
    args = ["bench", "encoders", "-o", str(tmp_path), "-n", "40", "--size", "16", "--snr", "5"]
    args += ["--epochs", "2", "--hidden", "16", "--enc-channels", "2", "--device", "cpu", "-q"]
    args += ["--encoders", "equivariant,conv,mlp/gaussian", "--objects", "hinge,random:1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    per_epoch = pd.read_csv(tmp_path / "encoders_per_epoch.csv")
    assert per_epoch["encoder"].unique().tolist() == ["equivariant", "conv", "mlp/gaussian"]
    assert per_epoch["object"].unique().tolist() == ["hinge", "random:1"]
    assert per_epoch["epoch"].tolist() == [1, 2] * 6
    assert per_epoch["theta_circ_corr"].between(0, 1).all()
    binned = [True] * 4 + [False] * 2  # rotation bins for equivariant and conv, per object
    assert per_epoch["theta_prob_median"].notna().tolist() == binned * 2
    assert (tmp_path / "encoders_results.md").exists()
    bad = runner.invoke(app, [*args[:-4], "--encoders", "mlp/laplace"])
    assert bad.exit_code == 1 and "unknown encoder 'mlp/laplace'" in bad.output


def test_equivariant_encoder_finds_rotations_in_a_few_epochs(tmp_path):
    """The point of the equivariant encoder: on 1,000 small particles (SNR 5) it recovers the
    in-plane rotation within 8 epochs (the MLP encoder needs hundreds; docs/benchmarks.md)."""
    table = bn.run_encoders(
        tmp_path, n=1000, size=24, snrs=(5.0,), encoders=("equivariant",),
        epochs=8, hidden=64, enc_channels=4, batch_size=25, device="cpu", progress=False,
    )  # fmt: skip
    last = table.iloc[-1]
    assert last["theta_circ_corr"] > 0.9
    assert last["theta_median_error_deg"] < 15
    assert last["theta_prob_median"] > 0.8  # confident bins
    assert last["shift_pearson"] > 0.8  # shifts found too, with the table's sign


def test_galaxy_benchmark_in_miniature(tmp_path):
    pics = write_pictures(tmp_path / "pics", 8, 240, ".jpg")
    summary = bn.run_galaxies(pics, tmp_path / "gz", zdim=2, size=16, enc_hidden=16, **TINY)
    assert summary["pictures"] == 8 and np.isfinite(summary["test_elbo"])
    with Image.open(tmp_path / "gz" / "fig5_prior_samples.png") as im:
        assert im.mode == "RGB"


def test_simulate_command_with_ctf(tmp_path):
    out = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", str(out), "-n", "20", "--size", "24", "--ctf", "1.2"])
    assert r.exit_code == 0, r.output
    truth = pd.read_csv(out / "truth.csv")
    assert list(truth.columns) == [
        "image", "theta_deg", "shift_x_px", "shift_y_px", "conformation",
        "theta_body_deg", "shift_body_x_px", "shift_body_y_px", "defocus_um",
    ]  # fmt: skip
    star = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert np.allclose(star["rlnAnglePsi"], truth["theta_deg"], atol=1e-5)
    assert np.allclose(star["rlnDefocusU"], 12000.0) and np.allclose(truth["defocus_um"], 1.2)
    r = runner.invoke(app, ["simulate", str(out), "-n", "20"])
    assert r.exit_code == 1 and "--force" in r.output


def test_simulate_draws_a_defocus_per_particle_with_astigmatism(tmp_path):
    out = tmp_path / "sim"
    args = ["simulate", str(out), "-n", "200", "--size", "24", "--ctf", "0.8:2.5"]
    r = runner.invoke(app, [*args, "--astigmatism", "0.1", "--apix", "3"])
    assert r.exit_code == 0, r.output
    truth = pd.read_csv(out / "truth.csv")
    star = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert 0.8 <= truth["defocus_um"].min() < 1.0 and 2.3 < truth["defocus_um"].max() <= 2.5
    assert np.allclose(star["rlnDefocusU"] - star["rlnDefocusV"], 1000.0, atol=0.01)
    assert np.allclose((star["rlnDefocusU"] + star["rlnDefocusV"]) / 2e4, truth["defocus_um"])
    assert star["rlnDefocusAngle"].std() > 30
    r = runner.invoke(app, ["simulate", str(out), "--ctf", "2:1", "--force"])
    assert r.exit_code == 1 and "--ctf" in r.output


def test_throughput_benchmark_prints_json_and_counts_flops():
    cfg = ModelConfig(image_size=2, zdim=1, gen_hidden=3, gen_layers=2, fourier_features=0)
    # P (2*2H + 2(L-1)H^2 + 2H*O) + 2KH with P = 4, H = 3, L = 2, K = 1, O = 1
    assert generator_flops(cfg) == 4 * (12 + 18 + 6) + 6
    # with F = 2 Fourier features: + 4F per pixel, and the first layer takes 2 + 2F inputs
    fourier = ModelConfig(image_size=2, zdim=1, gen_hidden=3, gen_layers=2, fourier_features=2)
    assert generator_flops(fourier) == 4 * (8 + 2 * 6 * 3 + 18 + 6) + 6
    args = "bench throughput --config mnist --precision fp32 --batch 4 --steps 1 --device cpu"
    args = [*args.split(), "--stream"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert [m["precision"] for m in rows] == ["fp32", "fp32, streamed"]
    ctf = runner.invoke(app, [*args[:3], "em", *args[4:-1], "--ctf"])
    assert ctf.exit_code == 0, ctf.output
    timed = [json.loads(line) for line in ctf.output.splitlines() if line.startswith("{")]
    assert [m["precision"] for m in timed] == ["fp32", "fp32, CTF"]
    bernoulli = runner.invoke(app, [*args[:-1], "--ctf"])
    assert bernoulli.exit_code == 1 and "Gaussian likelihood" in bernoulli.output
    part = runner.invoke(app, [*args[:3], "em", *args[4:-1], "--ctf", "--pixel-fraction", "0.5"])
    assert part.exit_code == 1 and "--pixel-fraction: the CTF needs every pixel" in part.output
    assert not [line for line in part.output.splitlines() if line.startswith("{")]  # none timed
    mnist = ModelConfig(image_size=28, gen_hidden=500, fourier_features=0)
    for m in rows:
        assert m["config"] == "mnist" and m["batch"] == 4 and m["images_per_s"] > 0
        expect = 3 * generator_flops(mnist) * m["images_per_s"] / 1e9
        assert m["gflop_per_s"] == pytest.approx(expect, rel=1e-6)


def test_generator_steps_to_beat_the_mean_image():
    """Given the true poses and conformation, a generator with Fourier features draws the
    particles better than their mean image in fewer steps than one on raw coordinates."""
    images, truth = simulate_particles(400, 16, snr=5.0, shift_std_px=0.5, seed=0)
    images = (images - images.mean()) / images.std()

    def run(f):
        config = ModelConfig(image_size=16, zdim=1, gen_hidden=32, fourier_features=f)
        return bn.generator_steps(images, truth, config, steps=150, n_eval=100)

    fourier, raw = run(32), run(0)
    assert fourier["steps_to_beat_mean"] is not None
    assert (
        raw["steps_to_beat_mean"] is None
        or raw["steps_to_beat_mean"] > fourier["steps_to_beat_mean"]
    )
    assert fourier["curve"][-1][1] < 0.9 * fourier["mean_image_error"]


def test_time_to_result_scores_every_epoch_against_the_truth(tmp_path):
    args = ["bench", "time-to-result", "-o", str(tmp_path), "-n", "60", "--size", "16"]
    r = runner.invoke(app, [*args, "--epochs", "3", "--encoders", "mlp", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    per_epoch = pd.read_csv(tmp_path / "time_to_result_per_epoch.csv")
    assert list(per_epoch["epoch"]) == [1, 2, 3]
    assert (np.diff(per_epoch["seconds"]) > 0).all()  # wall time since the fit started
    assert per_epoch["theta_circ_corr"].between(0, 1).all()
    results = pd.read_csv(tmp_path / "time_to_result_results.csv")
    assert results["encoder"].tolist() == ["mlp"] and results["particles"].tolist() == [60]
    assert "θ >= 0.95" in r.output


def test_time_to_result_levers_reach_the_fit(tmp_path):
    """--hidden, --pixel-fraction, --generator and --beta are the fit's settings."""
    args = ["bench", "time-to-result", "-o", str(tmp_path), "-n", "40", "--size", "12"]
    args += ["--epochs", "1", "--encoders", "mlp", "--device", "cpu", "-q", "--hidden", "8"]
    args += ["--pixel-fraction", "0.5", "--generator", "broadcast", "--beta", "4"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "runs" / "mlp" / "config.json").read_text())
    assert config["model"]["gen_hidden"] == 8 and config["model"]["enc_hidden"] == 8
    assert config["model"]["generator"] == "broadcast"
    assert config["train"]["pixel_fraction"] == 0.5 and config["train"]["beta"] == 4.0


def test_time_to_result_says_when_each_threshold_holds(tmp_path, monkeypatch):
    """The lines ``bench time-to-result`` prints come from the library: per pose network, the
    epoch (and minute) from which θ and z hold, or "not reached"."""
    reached = {"theta_circ_corr": 2, "z_conformation_pearson": None}
    monkeypatch.setattr(bn, "_first", lambda rows, key, threshold: reached[key])
    lines = []
    bn.run_time_to_result(
        tmp_path, n=40, size=12, epochs=2, encoders=("mlp",), device="cpu", progress=False,
        hidden=8, log=lines.append,
    )  # fmt: skip
    assert len(lines) == 1
    assert re.fullmatch(
        r"mlp: θ >= 0\.95 from epoch 2 \(\d+\.\d min\), z >= 0\.9 not reached", lines[0]
    )


def test_bench_defaults_are_the_librarys():
    """An option the library also has takes the library's default (one owner)."""
    bench = get_command(app).commands["bench"]

    def given(command):
        return {p.name: p.default for p in bench.commands[command].params}

    def library(fn, name):
        value = inspect.signature(fn).parameters[name].default
        return ",".join(map(str, value)) if isinstance(value, tuple) else value

    throughput, loader, generator = given("throughput"), given("loader"), given("generator")
    assert throughput["config"] == library(tp.measure_all, "names") == "em,mnist,galaxy"
    assert throughput["precision"] == library(tp.measure_all, "precisions")
    assert throughput["batch"] == library(tp.measure_all, "batches")
    assert throughput["steps"] == library(tp.measure_all, "steps")
    assert loader["workers"] == library(tp.loader_report, "workers")
    assert loader["batches"] == library(tp.loader_report, "n_batches")
    assert generator["fourier"] == library(bn.run_generator, "fourier")
    assert generator["steps"] == library(bn.run_generator, "steps")
    assert generator["batch_size"] == library(bn.run_generator, "batch")


@pytest.mark.parametrize(
    "args",
    [["mnist", "--betas", "1,a", "--data", "missing"], ["encoders", "--snr", "1,b"]],
)
def test_a_list_option_that_is_not_numbers_is_one_line(tmp_path, args):
    r = runner.invoke(app, ["bench", *args, "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert r.output.startswith("error: expected comma-separated numbers, got ")
    assert not (tmp_path / "out").exists()


def test_a_generator_curve_ends_at_the_last_step_even_between_records():
    images, truth = simulate_particles(60, 12, snr=5.0, seed=0)
    config = ModelConfig(image_size=12, zdim=1, gen_hidden=8)
    run = bn.generator_steps(images, truth, config, steps=13, every=10, n_eval=20)
    assert [step for step, _ in run["curve"]] == [10, 13]
    short = bn.generator_steps(images, truth, config, steps=3, every=10, n_eval=20)
    assert [step for step, _ in short["curve"]] == [3]
