"""The categorical latent (``--classes K``): a class per particle inferred jointly with the
rotation bin, summed exactly in the ELBO, reported 1-based in the table and the STAR file."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import SMALL, runner
from emvae_cli.main import app
from PIL import Image
from test_encoders import _blobs

from emvae import montage as mt
from emvae.config import ModelConfig
from emvae.errors import ConfigError
from emvae.figures import tiles
from emvae.io import read_table
from emvae.models import SpatialVAE
from emvae.models.vae import RotationBins
from emvae.objective import (
    kl_class_bins,
    kl_rotation_bins,
    kl_uniform_rotation,
    log_likelihood,
    posterior_elbo,
)
from emvae.query import condition_mask
from emvae.run import Run


def _model(classes: int, encoder: str = "equivariant", seed: int = 0, **kw) -> SpatialVAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_size=24,
        encoder=encoder,
        rotation_bins=4,
        hypotheses=2,
        zdim=1,
        enc_hidden=16,
        gen_hidden=16,
        classes=classes,
        **kw,
    )
    return SpatialVAE(cfg).double().eval()


@pytest.mark.parametrize("encoder", ["equivariant", "conv"])
def test_one_class_is_the_model_without_classes_parameter_for_parameter(encoder):
    """``--classes 1`` builds today's model: the same parameters, shapes and values from the
    same seed, and the same ELBO terms to the bit (no class KL)."""
    plain = _model(1, encoder)
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=24, encoder=encoder, rotation_bins=4, hypotheses=2, zdim=1, enc_hidden=16,
        gen_hidden=16,
    )  # fmt: skip
    assert cfg.classes == 1
    today = SpatialVAE(cfg).double().eval()
    a, b = plain.state_dict(), today.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(3, 1, 24, 24, dtype=torch.float64)
    eps = torch.randn(3, plain.n_latent, dtype=torch.float64)
    with torch.no_grad():
        q, params = plain(x, None, eps)
        terms = posterior_elbo(plain.config, plain.pixels(x), params, q)
    assert terms.kl_class is None and q.class_log_prior is None and q.best_class() is None
    assert params.shape == (3, 2, 24 * 24, 1)
    # a K-class model has a class prior and one-hot inputs beside z; one class has neither
    assert plain.class_prior_logits is None
    assert _model(3, encoder).generator.latent_linear.in_features == 1 + 3


def test_a_checkpoint_config_without_classes_rebuilds_one_class():
    stored = ModelConfig(image_size=24).__dict__ | {}
    stored.pop("classes")
    assert ModelConfig(**stored).classes == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"classes": 0},
        {"classes": 2, "theta_posterior": "gaussian", "encoder": "mlp"},
        {"classes": 2, "rotation": False, "encoder": "conv"},
    ],
)
def test_classes_without_rotation_bins_are_refused(kw):
    with pytest.raises(ConfigError, match="--classes"):
        ModelConfig(image_size=24, **kw).validate()


def test_top_takes_the_k_best_bins_of_every_class_most_probable_first():
    log_q = torch.tensor([[0.0, 5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 8.0]]).log_softmax(1)  # K 2, R 4
    bins = RotationBins(log_q, torch.zeros(1, 8), torch.zeros(1, 8), classes=2)
    idx, log_w = bins.top(2)
    assert idx.tolist() == [[4, 7, 1, 3]]  # class 1's bins 0, 3; class 0's bins 1, 3
    assert bins.cell_class(idx).tolist() == [[1, 1, 0, 0]]
    kept = torch.tensor([9.0, 8.0, 5.0, 2.0])
    assert torch.allclose(log_w[0], kept.log_softmax(0))
    class_p = bins.class_log_prob().exp()[0]
    all_p = torch.tensor([0.0, 5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 8.0]).softmax(0)
    assert torch.allclose(class_p, torch.stack([all_p[:4].sum(), all_p[4:].sum()]))
    # theta_prob: the best bin's probability within its class (among the bins used)
    w = kept.softmax(0)
    assert torch.allclose(bins.concentration(2)[0], w[0] / (w[0] + w[1]))


def test_the_class_kl_and_the_rest_add_up_to_the_joint_kl_from_the_prior():
    """KL(q(c, b) || p(c) / R) over the hypotheses used, computed cell by cell, is the class's
    KL plus what the rotation term keeps; a certain class under a uniform prior costs log K."""
    cfg = ModelConfig(image_size=24, encoder="equivariant", rotation_bins=4, classes=3)
    torch.manual_seed(1)
    log_w = torch.randn(5, 6, dtype=torch.float64).log_softmax(1)
    classes = torch.tensor([[0, 0, 1, 1, 2, 2]] * 5)
    logstd = torch.randn(5, 6, dtype=torch.float64) - 2
    log_prior = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64).log()
    joint = kl_rotation_bins(log_w, logstd, cfg, classes, log_prior)
    w = log_w.exp()
    cell = w * (log_w - (log_prior[classes] - math.log(4)))
    inbin = w * kl_uniform_rotation(logstd, cfg.theta_prior_std / 4)
    assert torch.allclose(joint, (cell + inbin).sum(1), rtol=1e-12)
    kl_c = kl_class_bins(log_w, classes, 3, log_prior)
    q_c = w.view(5, 3, 2).sum(2)
    assert torch.allclose(kl_c, (q_c * (q_c.log() - log_prior)).sum(1), rtol=1e-12)
    certain = torch.full((1, 6), -1e9, dtype=torch.float64)
    certain[0, 2] = 0.0
    kl_1 = kl_class_bins(certain.log_softmax(1), classes[:1], 3, None)
    assert torch.allclose(kl_1, torch.tensor([math.log(3)], dtype=torch.float64))


def test_the_elbo_sums_every_class_and_bin_hypothesis_exactly():
    model = _model(3)
    cfg = model.config
    x = torch.randn(2, 1, 24, 24, dtype=torch.float64)
    eps = torch.randn(2, model.n_latent, dtype=torch.float64)
    with torch.no_grad():
        q, params = model(x, None, eps)
        terms = posterior_elbo(cfg, model.pixels(x), params, q)
        z, pose = model.sample(q, eps=eps)
        idx, log_w = q.bins.top(2)
        cls = q.bins.cell_class(idx)
        y = model.pixels(x)
        manual = sum(
            log_w[:, h].exp()
            * log_likelihood(cfg, y, model.decode(z, pose[:, h], classes=cls[:, h]))
            for h in range(6)
        )
    assert params.shape == (2, 6, 24 * 24, 1)  # 2 bins of each of 3 classes
    assert sorted(cls[0].tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(terms.log_lik, manual, rtol=1e-10)
    assert terms.kl_class is not None and bool((terms.kl_class >= -1e-12).all())
    assert torch.allclose(terms.kl, terms.kl_z + terms.kl_theta + terms.kl_shift + terms.kl_class)


def test_the_class_is_what_the_generator_renders_and_must_be_given():
    model = _model(2)
    z = torch.zeros(1, 1, dtype=torch.float64)
    with torch.no_grad():
        a = model.canonical(z, torch.tensor([0]))
        b = model.canonical(z, torch.tensor([1]))
        assert (a - b).abs().max() > 1e-3
        with pytest.raises(ValueError, match="classes"):
            model.canonical(z)


def test_quarter_turns_move_the_bins_within_each_class_and_keep_the_class():
    """The equivariant encoder's classes are invariant: a quarter turn (R = 4: one bin) rolls
    each class's bins by one and leaves q(class) alone."""
    model = _model(3)
    x = _blobs(24)
    with torch.no_grad():
        q0 = model.encode(x)
        q1 = model.encode(torch.rot90(x, 1, (-2, -1)))
    c0, c1 = (q.bins.log_q.view(1, 3, 4) for q in (q0, q1))
    assert torch.allclose(c1, torch.roll(c0, 1, 2), atol=1e-9)
    assert torch.allclose(q1.bins.class_log_prob(), q0.bins.class_log_prob(), atol=1e-9)
    assert q0.bins.class_log_prob().std() > 1e-4  # not vacuous: the classes differ


def test_the_table_and_star_file_report_1_based_classes(tiny_stack, tmp_path):
    """fit --classes 2 writes class (1-based) and class_prob, the STAR file RELION's
    rlnClassNumber and rlnMaxValueProbDistribution, metrics.csv the class's KL, and select
    reads ``class == 2``."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, "--classes", "2"])
    assert r.exit_code == 0, r.output
    table = read_table(out / "particles.csv")
    assert set(table["class"].unique()) <= {1, 2}
    assert table["class_prob"].between(0.5, 1.0).all()  # the most probable of two
    rows = starfile.read(out / "particles.star")["particles"]
    np.testing.assert_array_equal(rows["rlnClassNumber"], table["class"])
    np.testing.assert_allclose(rows["rlnMaxValueProbDistribution"], table["class_prob"], 1e-6)
    metrics = pd.read_csv(out / "metrics.csv")
    assert "train_kl_class" in metrics and "test_kl_class" in metrics
    assert (metrics["test_kl_class"] >= 0).all()
    mask = condition_mask(table, "class == 2 and class_prob >= 0.5")
    np.testing.assert_array_equal(mask, (table["class"] == 2).to_numpy())


def test_montages_and_analysis_go_class_by_class(tiny_stack, tmp_path):
    """A model of 2 classes: one montage set per class (montage/class1, class2, each class's
    pictures different), analyze's clusters are the table's classes, and the report shows each
    class's montages."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(out), *SMALL, "--classes", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["montage", str(out), "--no-gif", "--samples", "2", "--grid", "3"])
    assert r.exit_code == 0, r.output
    one, two = (out / "montage" / f"class{c}" for c in (1, 2))
    assert (one / "manifold.png").exists() and (two / "prior_samples.png").exists()
    a = np.asarray(Image.open(one / "prior_samples.png"), dtype=float)
    b = np.asarray(Image.open(two / "prior_samples.png"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5  # the classes' own images
    r = runner.invoke(app, ["analyze", str(out)])
    assert r.exit_code == 0, r.output
    table = read_table(out / "particles.csv")
    clusters = pd.read_csv(out / "analyze" / "clusters.csv")
    np.testing.assert_array_equal(clusters["cluster"], table["class"])
    np.testing.assert_allclose(clusters["cluster_prob"], table["class_prob"], rtol=1e-5)
    assert json.loads((out / "analyze" / "analyze.json").read_text())["method"] == "classes"
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    page = (out / "report" / "report.html").read_text()
    assert "montage/class1/manifold.png" in page and "montage/class2/manifold.png" in page
    # the traversals: a row per class and dimension, each drawn as its own class
    assert "each class's rows over its own particles' z" in page
    k = json.loads((out / "config.json").read_text())["model"]["zdim"]
    rows = np.asarray(Image.open(out / "report" / "latent_traversals.png").convert("L"), float)
    single = tmp_path / "one.png"
    model = Run.open(out).model()[0]
    z = table[[f"z{d + 1}" for d in range(k)]].to_numpy(np.float64)
    with model.rendering_class(0):
        tiles.save_png(mt.traversals(model, z_data=z), single, labels=mt.traversal_labels(k))
    one_class = np.asarray(Image.open(single).convert("L"), float)
    assert rows.shape[0] > 1.8 * one_class.shape[0]  # two classes' rows
    top, bottom = rows[: rows.shape[0] // 2], rows[rows.shape[0] - rows.shape[0] // 2 :]
    assert np.abs(top - bottom).mean() > 0.5  # each row drawn as its own class


def test_separate_class_generators_are_one_mlp_per_class_after_the_coordinates():
    """--class-generator separate: each rendering goes through its own class's layers, exactly
    an MLP with that class's weights; the classes share only the coordinates' first layer."""
    model = _model(3, class_generator="separate")
    g = model.generator
    cls = torch.tensor([2, 0, 1, 2])
    z = torch.randn(4, 1, dtype=torch.float64)
    with torch.no_grad():
        out = model.canonical(z, cls)  # (4, N, 1)
        coords = g.features(model.coords)
        for i, c in enumerate(cls.tolist()):
            h = g.coord_linear(coords) + g.latent_linear(model.latent(z[i : i + 1], cls[i : i + 1]))
            for layer in g.layers:
                h = torch.tanh(h) @ layer.weight[c] + layer.bias[c]
            assert torch.allclose(out[i], h, atol=1e-12)
    assert g.layers[0].weight.shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="separate"):
        ModelConfig(
            image_size=24, classes=2, class_generator="separate", generator="broadcast"
        ).validate()


def test_the_reported_pose_is_the_best_bin_of_the_reported_class():
    """theta_deg and class agree: the pose is that of the most probable bin within the most
    probable class, even where another class holds the single most probable cell."""
    model = _model(3, seed=4)
    x = torch.randn(64, 1, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        q = model.encode(x)
    log_q = q.bins.log_q.view(64, 3, 4)
    cls = q.best_class()
    best_bin = log_q[torch.arange(64), cls].argmax(1)
    theta = q.bins.theta.view(64, 3, 4)[torch.arange(64), cls, best_bin]
    torch.testing.assert_close(q.pose_mu[:, 0], theta)


def test_a_keyword_column_is_only_ever_a_column():
    """``class`` (and Python's other keywords the language does not use) name columns and
    nothing else; what cannot be read is refused in the user's own words."""
    table = pd.DataFrame({"class": [1, 2, 2], "z1": [0.0, 1.0, 2.0]})
    np.testing.assert_array_equal(condition_mask(table, "class == 2 & z1 > 1"), [0, 0, 1])
    for bad, said in [
        ("class.__class__ == 1", "'class.__class__'"),
        ("lambda == 1", "no column 'lambda'"),
        ("import os", "not a valid condition"),
    ]:
        with pytest.raises(ConfigError, match=said.replace(".", r"\.")):
            condition_mask(table, bad)
