"""The junk score (emvae.junk): a calibrated probability that the model does not explain a
particle, from its ELBO and its correlation with its rendering."""

from __future__ import annotations

import numpy as np
import starfile
import torch
from conftest import SMALL, runner
from emvae_cli.main import app
from sklearn.metrics import roc_auc_score

from emvae.config import ModelConfig
from emvae.io import read_table
from emvae.junk import junk_probability
from emvae.objective import rendering_correlation
from emvae.query import condition_mask


def _particles(n: int, rng: np.random.Generator) -> np.ndarray:
    """(ELBO, ncc) of particles the model explains: correlated, one Gaussian."""
    elbo = rng.normal(-1000.0, 15.0, n)
    ncc = 0.6 + 0.002 * (elbo + 1000.0) + rng.normal(0, 0.03, n)
    return np.c_[elbo, ncc]


def test_junk_of_every_kind_is_found_and_the_score_is_calibrated():
    """900 particles and 100 junk of two kinds (an empty box: a good ELBO, no correlation; ice:
    the correlation of a particle, a poor ELBO): junk scores near 1, particles near 0, and the
    mean score is the junk's share."""
    rng = np.random.default_rng(0)
    good = _particles(900, rng)
    empty = np.c_[rng.normal(-990.0, 10.0, 50), rng.normal(0.0, 0.03, 50)]
    ice = np.c_[rng.normal(-1150.0, 30.0, 50), rng.normal(0.55, 0.05, 50)]
    x = np.concatenate([good, empty, ice])
    truth = np.r_[np.zeros(900), np.ones(100)]
    score = junk_probability(x)
    assert roc_auc_score(truth, score) > 0.99
    assert np.mean(score[truth == 1] > 0.5) > 0.95
    assert np.mean(score[truth == 0] > 0.5) < 0.01
    assert abs(score.mean() - 0.1) < 0.02


def test_a_clean_stack_has_almost_no_junk_and_the_best_particles_none():
    rng = np.random.default_rng(1)
    x = _particles(1000, rng)
    score = junk_probability(x)
    assert score.mean() < 0.02
    best = (x >= x.mean(0)).all(1)
    assert best.any() and (score[best] == 0).all()


def test_classes_are_scored_apart_and_missing_values_stay_missing():
    """Two classes whose particles lie far apart (a bigger molecule: more signal, a higher
    correlation): each is its own Gaussian, so neither looks like the other's junk."""
    rng = np.random.default_rng(2)
    a, b = _particles(500, rng), _particles(500, rng) + [-300.0, 0.2]
    x = np.concatenate([a, b, [[np.nan, 0.5]]])
    groups = np.r_[np.zeros(500), np.ones(500), 0]
    score = junk_probability(x, groups)
    assert np.isnan(score[-1])
    assert np.nanmean(score) < 0.02
    assert junk_probability(x[:-1]).mean() > 0.05  # pooled: a class looks like junk


def test_the_correlation_is_pearsons_over_the_compared_pixels():
    cfg = ModelConfig(image_size=8, rotation=False, translation=False, zdim=0)
    rng = torch.Generator().manual_seed(3)
    render = torch.randn(4, 64, 1, generator=rng, dtype=torch.float64)
    y = 2.0 * render + 0.5 * torch.randn(4, 64, 1, generator=rng, dtype=torch.float64) + 3.0

    class Q:  # a Gaussian pose posterior: no hypotheses to weigh
        bins = None

    r = rendering_correlation(cfg, y, render, Q())  # type: ignore[arg-type]
    expected = [np.corrcoef(y[i, :, 0], render[i, :, 0])[0, 1] for i in range(4)]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-12)


def test_fit_writes_the_score_and_select_reads_it(tiny_stack, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    table = read_table(out / "particles.csv")
    assert table["junk"].between(0, 1).all() and table["ncc"].between(-1, 1).all()
    kept = condition_mask(table, "junk < 0.5")
    np.testing.assert_array_equal(kept, (table["junk"] < 0.5).to_numpy())
    rows = starfile.read(out / "particles.star")["particles"]
    np.testing.assert_allclose(rows["emvaeJunk"], table["junk"], atol=1e-6)
