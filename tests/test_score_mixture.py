"""examples/score_mixture.py and emvae.bench.mixture_recovery (issue 39, part 4): the figures
that score a fit of a simulated mixture, on small tables built in memory whose answers are
known (permuted labels, a perfect or a random junk score, z linear in the conformation, each
class turned by its own offset), and the script on a run folder.

Every random draw has a fixed seed, and where the answer is only near a value (a random
score) the tolerance is several standard deviations of the statistic wide."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emvae.bench import mixture_recovery, truth_rows
from emvae.metrics import angular_error_deg
from emvae.simulate import class_objects, simulate_particles

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "score_mixture.py"
KINDS = ("noise", "ice", "fragment", "neighbour")


def _truth(per_class=(200, 200, 200), junk_per_kind=50, seed=0):
    """A truth.csv as ``emvae simulate --classes K --junk F`` writes it, rows shuffled: the
    classes' particles, then ``junk_per_kind`` images of each junk kind (noise and ice have
    no class and no pose; fragments and neighbours are junk of a class)."""
    rng = np.random.default_rng(seed)
    n_real = sum(per_class)
    n = n_real + junk_per_kind * len(KINDS)
    cls = np.concatenate([np.full(m, k) for k, m in enumerate(per_class)])
    kinds = np.repeat(KINDS, junk_per_kind)
    junk_class = np.where(np.isin(kinds, ("noise", "ice")), -1, rng.integers(0, 3, len(kinds)))
    truth = pd.DataFrame(
        {
            "image": [f"{k}@particles.mrcs" for k in range(1, n + 1)],
            "theta_deg": rng.uniform(-180, 180, n),
            "shift_x_px": rng.normal(0, 2, n),
            "shift_y_px": rng.normal(0, 2, n),
            "conformation": rng.uniform(0, 1, n),
            "class": np.concatenate([cls, junk_class]),
            "junk": np.r_[np.zeros(n_real, int), np.ones(len(kinds), int)],
            "junk_kind": np.r_[np.full(n_real, "none"), kinds],
        }
    )
    truth = truth.iloc[rng.permutation(n)].reset_index(drop=True)
    truth["image"] = [f"{k}@particles.mrcs" for k in range(1, n + 1)]
    nopose = truth["class"] < 0
    truth.loc[nopose, ["theta_deg", "shift_x_px", "shift_y_px", "conformation"]] = np.nan
    return truth


def _table(truth, seed=1, offsets=(30.0, -100.0, 170.0)):
    """A perfect fit's table: z1 linear in the conformation, z2 noise, each class turned by
    its own offset, shifts an affine map of the truth's, the fit's 1-based classes a
    permutation of the truth's, the junk score and the ELBO giving junk away."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    conf = truth["conformation"].fillna(0.5).to_numpy()
    cls = truth["class"].to_numpy()
    offset = np.array(offsets)[np.clip(cls, 0, None)]
    theta = truth["theta_deg"].fillna(0.0).to_numpy() + offset
    junk = truth["junk"].to_numpy()
    return pd.DataFrame(
        {
            "image": truth["image"],
            "input_row": np.arange(n),
            "theta_deg": (theta + 180) % 360 - 180,
            "shift_x_px": 2 * truth["shift_x_px"].fillna(0).to_numpy() + 1,
            "shift_y_px": 0.5 * truth["shift_y_px"].fillna(0).to_numpy() - 3,
            "z1": -3 * conf + 1,
            "z2": rng.normal(0, 1, n),
            "class": np.array([3, 1, 2])[np.clip(cls, 0, None)],
            "junk": junk.astype(float),
            "elbo": -1000.0 - 50 * junk,
        }
    )


def test_a_perfect_fit_scores_one_everywhere_with_its_classes_numbered_otherwise():
    truth = _truth()
    table = _table(truth)
    score = mixture_recovery(table, truth)
    a = score.agreement
    assert (a["particles"], a["real"], a["junk"], a["true_classes"]) == (800, 600, 200, 3)
    assert a["class_ari"] == pytest.approx(1.0) and a["class_accuracy"] == pytest.approx(1.0)
    assert np.isnan(a["kmeans_ari"])  # a class column and no kmeans asked for: no k-means
    assert list(score.junk.index) == ["all", "fragment", "ice", "neighbour", "noise"]
    assert list(score.junk["n"]) == [200, 50, 50, 50, 50]
    assert (score.junk["junk_auc"] == 1.0).all() and (score.junk["elbo_auc"] == 1.0).all()
    c = score.classes
    assert list(c.index) == [0, 1, 2] and list(c["n"]) == [200, 200, 200]
    assert np.allclose(c["z_conformation_pearson"], 1.0)  # |r|: z1 falls as conformation rises
    assert np.allclose(c["shift_pearson"], 1.0)
    # each class in its own frame: no error; one offset for all would leave a large one
    assert (c["theta_median_error_deg"] < 1e-6).all()
    assert (c["theta_median_error_frames_deg"] < 1e-6).all()
    real = truth["junk"] == 0
    pooled = angular_error_deg(table["theta_deg"][real], truth["theta_deg"][real])[0]
    assert pooled > 30


def test_the_class_agreement_counts_the_real_particles_only():
    truth = _truth()
    table = _table(truth)
    rng = np.random.default_rng(2)
    junk = truth["junk"].to_numpy() == 1
    table.loc[junk, "class"] = rng.integers(1, 4, int(junk.sum()))  # junk: any class
    assert mixture_recovery(table, truth).agreement["class_ari"] == pytest.approx(1.0)
    one = table["class"].to_numpy().copy()
    one[~junk & (truth["class"].to_numpy() == 2)] = 1  # the fit merges two true classes
    merged = mixture_recovery(table.assign(**{"class": one}), truth).agreement
    assert 0.3 < merged["class_ari"] < 0.9
    assert merged["class_accuracy"] == pytest.approx(400 / 600)


def test_a_random_junk_score_is_near_chance_and_a_reversed_one_is_zero():
    truth = _truth()
    table = _table(truth)
    table["junk"] = np.random.default_rng(3).uniform(0, 1, len(table))
    table["elbo"] = -1000.0 + 50 * truth["junk"].to_numpy()  # junk explained better
    j = mixture_recovery(table, truth).junk
    # AUC of 200 junk against 600 particles under chance: std 0.024; kinds (50): 0.043
    assert abs(j.loc["all", "junk_auc"] - 0.5) < 0.15
    assert (abs(j["junk_auc"] - 0.5) < 0.25).all()
    assert (j["elbo_auc"] == 0.0).all()


def test_without_a_class_column_kmeans_on_z_is_the_baseline():
    truth = _truth()
    table = _table(truth).drop(columns=["class", "junk"])
    cls = np.clip(truth["class"].to_numpy(), 0, None)
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    table["z1"], table["z2"] = (centres[cls] + rng.normal(0, 0.5, (len(cls), 2))).T
    a = mixture_recovery(table, truth).agreement
    assert np.isnan(a["class_ari"])
    assert a["kmeans_k"] == 3  # the number of true classes
    assert a["kmeans_ari"] == pytest.approx(1.0) and a["kmeans_accuracy"] == pytest.approx(1.0)
    two = mixture_recovery(table, truth, kmeans=2).agreement
    assert two["kmeans_k"] == 2 and two["kmeans_ari"] < 0.9
    # z blind to the class: k-means finds nothing (ARI's std here is about 0.002)
    table["z1"], table["z2"] = rng.normal(0, 1, (2, len(table)))
    assert abs(mixture_recovery(table, truth).agreement["kmeans_ari"]) < 0.05
    j = mixture_recovery(table, truth).junk
    assert j["junk_auc"].isna().all() and (j["elbo_auc"] == 1.0).all()


def test_z_linear_in_the_conformation_of_one_class_only():
    truth = _truth()
    table = _table(truth)
    cls = truth["class"].to_numpy()
    noise = np.random.default_rng(5).normal(0, 1, len(table))
    table["z1"] = np.where(cls == 1, 2 * truth["conformation"].fillna(0), noise)
    table["z2"] = 7.0  # a constant dimension: undefined r, left out
    c = mixture_recovery(table, truth).classes
    assert c.loc[1, "z_conformation_pearson"] == pytest.approx(1.0)
    # r of 200 independent draws: std 0.07
    assert (c.loc[[0, 2], "z_conformation_pearson"] < 0.35).all()


def test_a_known_theta_error_in_each_class_frame():
    truth = _truth()
    table = _table(truth)
    sign = np.where(np.arange(len(table)) % 2 == 0, 1.0, -1.0)
    real = (truth["junk"] == 0).to_numpy()
    # +-5 degrees, as many of each sign in every class: the median error is 5 whatever the
    # offset within 5 degrees of the class's own
    for k in range(3):
        at = np.flatnonzero(real & (truth["class"].to_numpy() == k))
        sign[at] = np.resize([1.0, -1.0], len(at))
    table["theta_deg"] = table["theta_deg"] + 5 * sign
    c = mixture_recovery(table, truth).classes
    assert np.allclose(c["theta_median_error_deg"], 5.0, atol=1e-6)


def test_the_truth_is_matched_by_input_row_then_by_image_name():
    truth = _truth()
    table = _table(truth)
    order = np.random.default_rng(6).permutation(len(table))
    shuffled = table.iloc[order].reset_index(drop=True)
    assert (truth_rows(shuffled, truth)["image"] == shuffled["image"]).all()
    score = mixture_recovery(shuffled, truth)
    assert score.agreement["class_ari"] == pytest.approx(1.0)
    assert (score.classes["theta_median_error_deg"] < 1e-6).all()
    by_name = shuffled.drop(columns="input_row")
    by_name["image"] = [f"{int(s.split('@')[0]):06d}@/else/where/particles.mrcs" for s in
                        by_name["image"]]  # fmt: skip
    rows = truth_rows(by_name, truth)
    assert (rows["image"] == shuffled["image"]).all()
    with pytest.raises(ValueError, match="input row"):
        truth_rows(table, truth.iloc[:100])
    with pytest.raises(ValueError, match="no image"):
        truth_rows(by_name, truth.iloc[:100])


def test_a_plain_simulation_is_one_class_without_junk():
    truth = _truth().drop(columns=["class", "junk", "junk_kind"]).dropna().reset_index(drop=True)
    table = _table(truth.assign(**{"class": 0, "junk": 0})).drop(columns=["class", "junk"])
    table["input_row"] = np.arange(len(table))
    score = mixture_recovery(table, truth)
    assert score.agreement["true_classes"] == 1 and score.agreement["junk"] == 0
    assert list(score.classes.index) == [0]
    assert score.classes.loc[0, "z_conformation_pearson"] == pytest.approx(1.0)
    assert score.junk[["junk_auc", "elbo_auc"]].isna().all().all()


def test_a_simulated_mixtures_truth_with_its_answers_scores_perfectly():
    """The truth of emvae.simulate's mixture (noise and ice without poses) scored against a
    table built from it: the same figures as the in-memory truth."""
    _, truth = simulate_particles(
        60, size=16, seed=7, obj=class_objects("hinge", 0, 2), junk=0.3, snr=float("inf")
    )
    score = mixture_recovery(_table(truth), truth)
    assert score.agreement["class_ari"] == pytest.approx(1.0)
    assert score.agreement["junk"] == 18 and score.agreement["true_classes"] == 2
    assert set(score.junk.index) == {"all", *KINDS}
    assert (score.junk["junk_auc"] == 1.0).all()
    assert np.allclose(score.classes["z_conformation_pearson"], 1.0)
    assert (score.classes["theta_median_error_deg"] < 1e-6).all()


def _script():
    spec = importlib.util.spec_from_file_location("score_mixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_prints_the_three_tables_of_a_run(tmp_path, capsys):
    truth = _truth()
    truth.to_csv(tmp_path / "truth.csv", index=False)
    run = tmp_path / "run"
    run.mkdir()
    _table(truth).drop(columns=["class", "junk"]).to_csv(run / "particles.csv", index=False)
    score = _script().main([str(run), str(tmp_path / "truth.csv"), "--kmeans", "3"])
    out = capsys.readouterr().out
    assert "800 particles, 600 real in 3 true classes, 200 junk" in out
    assert "(the table has none)" in out
    kmeans = next(line for line in out.splitlines() if "k-means on z, K=3" in line)
    assert kmeans.split()[-2] == f"{score.agreement['kmeans_ari']:.3f}"
    junk = next(line for line in out.splitlines() if line.startswith("  all "))
    assert junk.split() == ["all", "200", "-", "1.000"]
    rows = [line.split() for line in out.splitlines() if line.startswith("  class ")]
    assert [r[1:4] for r in rows] == [[str(k), "200", "1.000"] for k in range(3)]
    assert all(r[4] == "0.00" and r[6] == "1.000" for r in rows)
