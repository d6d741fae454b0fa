"""``emvae convergence`` and ``emvae analyze --epoch``: the agreement measures on known arrays,
and the commands on a tiny run that kept a checkpoint every epoch."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, runner
from emvae_cli.main import app

from emvae import convergence as cv
from emvae.run import Run, kept_checkpoints
from emvae.safety import foreign_outputs
from emvae.simulate import write_simulation

# ----------------------------------------------------------------------------- the measures


def test_z_agreement_ignores_sign_scale_order_and_offset():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2))
    assert cv.z_agreement(z, z) == pytest.approx(1.0)
    changed = np.column_stack([-3.0 * z[:, 1] + 5.0, 0.5 * z[:, 0]])  # sign, scale, axes
    assert cv.z_agreement(z, changed) == pytest.approx(1.0)
    assert cv.z_agreement(z, rng.normal(size=(300, 2))) < 0.05  # unrelated
    # 1-D: the squared Pearson correlation, whatever the sign
    x = rng.normal(size=300)
    y = -x + rng.normal(scale=0.5, size=300)
    assert cv.z_agreement(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)


def test_theta_agreement_is_zero_after_a_global_offset():
    from emvae.metrics import angular_error_deg

    rng = np.random.default_rng(1)
    theta = rng.uniform(-180, 180, 500)
    assert angular_error_deg(theta, theta) == (0.0, 0.0)
    turned = (theta + 30.0 + 180.0) % 360.0 - 180.0  # the whole canonical view turned
    diff, offset = angular_error_deg(theta, turned)
    assert diff == pytest.approx(0.0, abs=1e-6) and offset == pytest.approx(-30.0, abs=1e-6)
    noisy = theta + rng.normal(scale=2.0, size=500)
    assert 0.5 < angular_error_deg(theta, noisy)[0] < 2.5  # median |N(0, 2)| = 1.35


def test_cluster_agreement_ignores_the_names():
    a = np.array([1, 1, 2, 2, 3, 3])
    assert cv.cluster_agreement(a, 4 - a) == 1.0
    assert cv.cluster_agreement(a, np.array([1, 2, 1, 2, 1, 2])) < 0


def test_the_table_has_one_row_per_consecutive_pair():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(60, 1))
    theta = rng.uniform(-180, 180, 60)
    snaps = [cv.Snapshot(e, z * (1 + e), theta) for e in (10, 20, 30)][::-1]  # any order
    ep = np.arange(1, 31)
    metrics = pd.DataFrame({"epoch": ep, "train_elbo": -1.0 * ep, "test_elbo": -1.0 - ep})
    table = cv.convergence_table(snaps, metrics, k=3)
    assert list(table.columns) == list(cv.COLUMNS)
    assert table[["epoch_a", "epoch_b"]].values.tolist() == [[10, 20], [20, 30]]
    assert np.allclose(table[["z_r2", "z_corr", "cluster_ari"]], 1.0)
    assert np.allclose(table["theta_diff_deg"], 0.0)
    assert table["test_elbo"].tolist() == [-21.0, -31.0]
    assert table["train_elbo"].tolist() == [-20.0, -30.0]
    no_z = [cv.Snapshot(e, np.zeros((60, 0)), theta) for e in (1, 2)]
    row = cv.convergence_table(no_z, None).iloc[0]
    assert np.isnan(row["z_r2"]) and np.isnan(row["cluster_ari"]) and np.isnan(row["test_elbo"])


def test_subsample_is_fixed_by_its_seed():
    a = cv.subsample(1000, 50, seed=3)
    assert len(a) == 50 and len(set(a)) == 50 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, cv.subsample(1000, 50, seed=3))
    assert not np.array_equal(a, cv.subsample(1000, 50, seed=4))
    assert np.array_equal(cv.subsample(40, 0), np.arange(40))
    assert np.array_equal(cv.subsample(40, 100), np.arange(40))


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """A tiny run (40 particles, 16 px, 2-D z) of 3 epochs that kept every checkpoint."""
    root = tmp_path_factory.mktemp("convergence")
    stack = write_simulation(root / "sim", n=40, size=16, snr=5.0, shift_std_px=0.5, seed=4)
    out = root / "run"
    args = ["fit", str(stack), "-o", str(out), *SMALL, "--zdim", "2", "-n", "3"]
    r = runner.invoke(app, [*args, "--checkpoint-every", "1"])
    assert r.exit_code == 0, r.output
    return out


def test_convergence_command_writes_one_row_per_pair(run3):
    r = runner.invoke(app, ["convergence", str(run3), "--max-particles", "30", "-k", "2", "-q"])
    assert r.exit_code == 0, r.output
    dest = run3 / "convergence"
    table = pd.read_csv(dest / "convergence.csv")
    assert table[["epoch_a", "epoch_b"]].values.tolist() == [[1, 2], [2, 3]]
    assert table["z_r2"].between(0, 1).all() and table["cluster_ari"].between(-1, 1).all()
    assert (table["theta_diff_deg"] >= 0).all() and (table["theta_diff_deg"] <= 180).all()
    metrics = pd.read_csv(run3 / "metrics.csv").set_index("epoch")
    assert np.allclose(table["test_elbo"], metrics.loc[[2, 3], "test_elbo"], rtol=1e-5)
    made = json.loads((dest / "convergence.json").read_text())
    assert made["epochs"] == [1, 2, 3] and made["particles"] == 30 and made["of_particles"] == 40
    assert (dest / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert "last pair 2 -> 3" in r.output
    assert foreign_outputs(run3, ["convergence"]) == []  # emvae's: a fit --force retires it


def test_a_checkpoint_compared_with_itself_agrees_exactly(run3):
    run = Run(run3)
    particles = run.particles()
    data = particles.load("cpu", run.config.model.likelihood)
    rows = cv.subsample(len(particles), 25, seed=0)
    path = dict(kept_checkpoints(run))[2]
    snaps = []
    for _ in range(2):
        config, epoch, enc = cv.encode_checkpoint(path, data, rows, "cpu")
        snaps.append(cv.snapshot(config, epoch, enc))
    row = cv.convergence_table(snaps, None, k=2).iloc[0]
    assert row["z_r2"] == pytest.approx(1.0) and row["z_corr"] == pytest.approx(1.0)
    assert row["theta_diff_deg"] == 0.0 and row["cluster_ari"] == 1.0


def test_analyze_a_kept_epoch(run3):
    r = runner.invoke(app, ["analyze", str(run3), "--epoch", "2", "-k", "2"])
    assert r.exit_code == 0, r.output
    dest = run3 / "analyze" / "epoch_0002"
    made = json.loads((dest / "analyze.json").read_text())
    assert made["epoch"] == 2 and made["particles"] == 40
    clusters = pd.read_csv(dest / "clusters.csv")
    assert len(clusters) == 40 and set(clusters["cluster"]) == {1, 2}
    assert not (run3 / "analyze" / "clusters.csv").exists()  # the final analysis is apart
    assert foreign_outputs(run3, ["analyze"]) == []  # the nested folder's manifest counts
    r = runner.invoke(app, ["analyze", str(run3), "--epoch", "7"])
    assert r.exit_code == 1
    assert "no checkpoint of epoch 7 was kept (kept: 1, 2, 3)" in r.output
    assert "Traceback" not in r.output


def test_a_run_with_the_ctf_is_compared_through_its_ctfs(tmp_path):
    # the pose and z networks of a --ctf on run see each image filtered by its CTF: the
    # comparison must give them the particles' CTFs, as the fit's own table did
    sim = write_simulation(tmp_path / "sim", n=30, size=16, snr=5.0, seed=4, defocus_um=1.5)
    stack = sim.parent / "particles.star"  # the CTF parameters
    out = tmp_path / "run"
    args = ["fit", str(stack), "-o", str(out), *SMALL, "--ctf", "on", "--checkpoint-every", "1"]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, ["convergence", str(out), "-k", "2", "-q"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "convergence" / "convergence.csv")
    assert table[["epoch_a", "epoch_b"]].values.tolist() == [[1, 2]]
    run = Run(out)
    particles = run.particles()
    data = particles.load("cpu", run.config.model.likelihood)
    rows = np.arange(30)
    ctf = torch.from_numpy(particles.ctf("on")).float()
    _, _, enc = cv.encode_checkpoint(out / "checkpoints" / "last.pt", data, rows, "cpu", ctf)
    last = pd.read_csv(out / "particles.csv")  # the fit's table: the same encoder, same CTFs
    assert np.allclose(enc.z_mu[:, 0], last["z1"], atol=1e-4)


def test_one_checkpoint_is_no_comparison(tmp_path):
    stack = write_simulation(tmp_path / "sim", n=30, size=16, snr=5.0, seed=1)
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(stack), "-o", str(out), *SMALL])  # keeps only last.pt
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["convergence", str(out), "-q"])
    assert r.exit_code == 1 and "1 checkpoint(s) kept" in r.output
    assert "--checkpoint-every" in r.output


def test_the_report_shows_convergence_once_measured(run3, tmp_path):
    """report.html points to emvae convergence until it has run, then shows its figure and
    the last pairs' numbers (the same as convergence.csv); report.json carries every pair."""
    import shutil

    from emvae.report import write_report

    run3 = shutil.copytree(run3, tmp_path / "run", ignore=shutil.ignore_patterns("convergence"))
    before = write_report(run3, out=tmp_path / "before", examples=0)
    assert "convergence" not in before
    page = (tmp_path / "before" / "report.html").read_text()
    assert "Not measured yet: <code>emvae convergence" in page
    r = runner.invoke(app, ["convergence", str(run3), "--max-particles", "30", "-k", "2", "-q"])
    assert r.exit_code == 0, r.output
    after = write_report(run3, out=tmp_path / "after", examples=0)
    table = pd.read_csv(run3 / "convergence" / "convergence.csv")
    pairs = after["convergence"]["pairs"]
    assert [(p["epoch_a"], p["epoch_b"]) for p in pairs] == [(1, 2), (2, 3)]
    assert np.allclose([p["z_corr"] for p in pairs], table["z_corr"])
    page = (tmp_path / "after" / "report.html").read_text()
    assert "Convergence across checkpoints" in page and "Not measured yet" not in page
    last = table.iloc[-1]
    assert f"<td>2 → 3</td><td>{last['z_corr']:.3f}</td>" in page
    assert f"<td>{last['theta_diff_deg']:.2f}°</td><td>{last['cluster_ari']:.3f}</td>" in page
