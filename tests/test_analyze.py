"""``emvae analyze``: PCA, clusters numbered by size, Hungarian accuracy, its plots, and the
command on a tiny fitted run (files, rows matched to the run's table, the report's section)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, runner
from emvae_cli.main import app
from sklearn.metrics import adjusted_rand_score

from emvae import analyze as az
from emvae import bench as bn
from emvae.errors import ConfigError
from emvae.figures import plots
from emvae.io import read_table
from emvae.simulate import write_simulation


def _two_groups(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3)`` z in two well-separated Gaussian groups of unequal size, and the truth."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.35).astype(int)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, -3.0, 2.0]])
    return centres[truth] + 0.3 * rng.standard_normal((n, 3)), truth


# ----------------------------------------------------------------------------- pure functions


def test_hungarian_accuracy_of_renamings_and_a_known_confusion():
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    for renamed in ({0: 7, 1: 3, 2: 5}, {0: 2, 1: 0, 2: 1}):
        assert az.hungarian_accuracy(truth, np.vectorize(renamed.get)(truth)) == 1.0
    # cluster "b" holds 2 zeros and 1 one, "a" holds 1 zero and 2 ones, "c" the four twos:
    # best matching a->1, b->0, c->2 gets 2 + 2 + 4 = 8 of 10 right
    pred = np.array(["b", "b", "a", "a", "a", "b", "c", "c", "c", "c"])
    assert az.hungarian_accuracy(truth, pred) == pytest.approx(0.8)
    # more clusters than labels: the unmatched cluster's items count as wrong
    assert az.hungarian_accuracy(np.zeros(4, int), np.array([1, 1, 1, 2])) == 0.75


def test_clusters_split_two_groups_for_both_methods():
    z, truth = _two_groups()
    for method in ("kmeans", "gmm"):
        labels = az.cluster(z, 2, method, seed=0)
        assert set(labels) == {1, 2}
        assert adjusted_rand_score(truth, labels) >= 0.9, method
        # numbered by size: cluster 1 is the larger (the 65 % group, truth 0)
        assert (labels == 1).sum() > (labels == 2).sum()
        assert np.mean(labels[truth == 0] == 1) > 0.95


def test_cluster_numbering_is_by_size_and_reproducible():
    assert az.number_by_size(np.array([5, 9, 9, 2, 9, 5])).tolist() == [2, 1, 1, 3, 1, 2]
    # equal sizes: the order of first appearance
    assert az.number_by_size(np.array(["x", "y", "y", "x"])).tolist() == [1, 2, 2, 1]
    rng = np.random.default_rng(1)
    z = rng.standard_normal((150, 2))
    for method in ("kmeans", "gmm"):
        a, b = az.cluster(z, 4, method, seed=3), az.cluster(z, 4, method, seed=3)
        assert np.array_equal(a, b)
        sizes = np.bincount(a)[1:]
        assert len(sizes) == 4 and np.all(np.diff(sizes) <= 0)
    with pytest.raises(ConfigError):
        az.cluster(z, 151, "kmeans")
    with pytest.raises(ConfigError):
        az.cluster(z, 2, "spectral")


def test_pca_matches_numpy_on_a_known_matrix():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((500, 3)) @ np.array([[3.0, 0, 0], [1.0, 1.0, 0], [0, 0, 0.2]])
    scores, components, explained = az.pca(z)
    eig = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    assert np.allclose(explained, eig / eig.sum())
    assert explained.sum() == pytest.approx(1.0)
    assert np.allclose(scores.var(0, ddof=1), eig)
    assert np.allclose(components @ components.T, np.eye(3), atol=1e-12)
    assert np.allclose(z.mean(0) + scores @ components, z)  # mapped back exactly
    # 1-D z: PC1 is z1 about its mean
    s1, c1, e1 = az.pca(z[:, :1])
    assert c1.tolist() == [[1.0]] and e1.tolist() == [1.0]
    assert np.allclose(s1[:, 0], z[:, 0] - z[:, 0].mean())
    # the walk along each PC: +-2 std of its scores through the mean
    path = az.pc_path(z, steps=5)
    assert path.shape == (3, 5, 3)
    assert np.allclose(path[0, 2], z.mean(0))
    assert np.allclose((path[1, -1] - z.mean(0)) @ components[1], 2 * scores[:, 1].std())


def test_cluster_plots_take_arrays_and_any_number_of_clusters(tmp_path):
    """emvae.figures.plots draws analyze's figures from arrays: the density of a point is the
    count of its cell; more than ten clusters (tab20, cycled past 20) draw as two do."""
    points = np.array([[0.0, 0.0], [0.1, 0.1], [1.0, 1.0]])
    assert plots.density(points, bins=2).tolist() == [2, 2, 1]
    z = np.random.default_rng(5).standard_normal((60, 2))
    for k in (2, 12, 25):
        labels = np.arange(60) % k + 1
        drawn = (
            plots.clusters_2d(z, labels, ("z1", "z2"), tmp_path / f"plane{k}.png"),
            plots.clusters_1d(z[:, 0], labels, "z1", tmp_path / f"line{k}.png"),
        )
        assert all(path.read_bytes()[:4] == b"\x89PNG" for path in drawn)


# ----------------------------------------------------------------------------- the command


def _fit(root, zdim: int):
    stack = write_simulation(root / f"sim{zdim}", n=40, size=16, snr=5.0, shift_std_px=0.5, seed=4)
    out = root / f"run{zdim}"
    args = ["fit", str(stack), "-o", str(out), *SMALL, "--zdim", str(zdim)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("analyze"), 2)


def test_analyze_command_writes_clusters_matching_the_table_and_the_report_shows_them(run2):
    r = runner.invoke(app, ["analyze", str(run2), "-k", "3", "--method", "gmm"])
    assert r.exit_code == 0, r.output
    dest = run2 / "analyze"
    info = json.loads((dest / "analyze.json").read_text())
    assert info["k"] == 3 and info["method"] == "gmm" and sum(info["cluster_sizes"]) == 40
    assert info["cluster_sizes"] == sorted(info["cluster_sizes"], reverse=True)
    assert sum(info["explained_variance_ratio"]) == pytest.approx(1.0)
    for name in (
        "class_generator.png",
        "class_averages.png",
        "z_scatter.png",
        "pca_scatter.png",
        "pc_trajectories.png",
    ):
        assert (dest / name).exists() and name in info["figures"], name
    clusters = pd.read_csv(dest / "clusters.csv")
    table = read_table(run2 / "particles.csv")
    assert list(clusters.columns) == ["image", "input_row", "cluster", "cluster_prob", "PC1", "PC2"]
    assert clusters["cluster_prob"].between(1 / 3 - 1e-9, 1).all()  # the largest of 3
    assert clusters["image"].tolist() == table["image"].tolist()
    assert clusters["input_row"].tolist() == table["input_row"].tolist()
    assert sorted(set(clusters["cluster"])) == [1, 2, 3]
    assert np.bincount(clusters["cluster"])[1:].tolist() == info["cluster_sizes"]
    scores, _, _ = az.pca(table[["z1", "z2"]].to_numpy(float))
    assert np.allclose(clusters[["PC1", "PC2"]], scores, atol=1e-5)
    assert not list(dest.glob(".emvae-analyze.*"))  # the staging folder is gone

    r = runner.invoke(app, ["report", str(run2)])
    assert r.exit_code == 0, r.output
    html = (run2 / "report" / "report.html").read_text()
    assert "Latent analysis (emvae analyze)" in html and "analyze/class_generator.png" in html
    report = json.loads((run2 / "report" / "report.json").read_text())
    assert report["analyze"]["cluster_sizes"] == info["cluster_sizes"]

    # a second analysis replaces the first (k-means, 2 clusters)
    r = runner.invoke(app, ["analyze", str(run2), "-k", "2"])
    assert r.exit_code == 0, r.output
    again = pd.read_csv(dest / "clusters.csv")
    assert sorted(set(again["cluster"])) == [1, 2] and "cluster_prob" not in again  # hard


def test_classes_as_relion_writes_them(run2, tmp_path):
    """classes.mrcs (the generator at each centre), class_averages.mrcs and classes.star
    (model_classes: reference images, distribution, sizes, mean z); numbered, sized strips."""
    import mrcfile
    import starfile
    import torch
    from PIL import Image

    from emvae import montage as mt
    from emvae.run import Run

    dest = tmp_path / "a"
    r = runner.invoke(app, ["analyze", str(run2), "-k", "3", "-o", str(dest)])
    assert r.exit_code == 0, r.output
    info = json.loads((dest / "analyze.json").read_text())
    assert info["class_files"] == ["classes.mrcs", "class_averages.mrcs", "classes.star"]
    model, _, _ = Run(run2).model()
    centres = torch.tensor(info["cluster_centres_z"], dtype=torch.float32)
    with mrcfile.open(dest / "classes.mrcs") as m:
        assert m.data.shape == (3, 16, 16)
        assert np.allclose(m.data, mt.decode_mean(model, centres)[:, 0].numpy(), atol=1e-4)
    with mrcfile.open(dest / "class_averages.mrcs") as m:
        assert m.data.shape == (3, 16, 16) and np.isfinite(m.data).all()
    star = starfile.read(dest / "classes.star", always_dict=True)
    classes = star["model_classes"]
    assert classes["rlnReferenceImage"].tolist() == [f"{c:06d}@classes.mrcs" for c in (1, 2, 3)]
    assert classes["emvaeClassSize"].tolist() == info["cluster_sizes"]
    assert np.allclose(classes["rlnClassDistribution"], np.array(info["cluster_sizes"]) / 40)
    assert np.allclose(
        classes[["emvaeMeanZ1", "emvaeMeanZ2"]], info["cluster_centres_z"], atol=1e-5
    )
    assert classes["emvaeAverageImage"].iloc[1] == "000002@class_averages.mrcs"
    assert int(star["model_general"]["rlnNrClasses"].iloc[0]) == 3
    # the strips carry a header line and a size line: taller than the bare tiles (3 x 16 px)
    for name in ("class_generator.png", "class_averages.png"):
        with Image.open(dest / name) as im:
            assert im.height > 3 * 16 + 2 * 8, name


def _has_umap() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_umap(), reason="umap-learn installed")
def test_umap_without_umap_learn_is_one_line(run2, tmp_path):
    r = runner.invoke(app, ["analyze", str(run2), "--umap", "-o", str(tmp_path / "a")])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "install umap-learn (pip install 'emvae[umap]')" in lines[0]
    assert not (tmp_path / "a" / "clusters.csv").exists()


def test_one_and_zero_latent_dimensions(tmp_path):
    run1 = _fit(tmp_path, 1)
    (tmp_path / "sim1" / "particles.mrcs").rename(tmp_path / "moved.mrcs")  # inputs gone
    info = az.analyze_run(run1, k=2)
    assert info["explained_variance_ratio"] == [1.0]
    assert "class_averages.png" not in info["figures"]
    assert len(info["notes"]) == 1
    assert "aligned averages of the particles skipped" in info["notes"][0]
    assert "pca_scatter.png" not in info["figures"] and "z_scatter.png" in info["figures"]
    assert info["class_files"] == ["classes.mrcs", "classes.star"]  # no averages to write
    # the report's caption says what the 1-D figure draws: z1 by rank and its histogram
    from emvae.figures.page import Z_SCATTER, Context
    from emvae.run import Run

    text = Z_SCATTER.caption(Context({}, Run(run1).config))
    assert "rank" in text and "histogram" in text and "density" not in text
    clusters = pd.read_csv(run1 / "analyze" / "clusters.csv")
    z1 = read_table(run1 / "particles.csv")["z1"].to_numpy(float)
    assert np.allclose(clusters["PC1"], z1 - z1.mean(), atol=1e-5)

    run0 = _fit(tmp_path, 0)
    r = runner.invoke(app, ["analyze", str(run0)])
    assert r.exit_code == 1 and "no latent dimensions" in r.output


def _idx(path, data: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, data.ndim]) + np.array(data.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + data.astype(np.uint8).tobytes())


def test_mnist_bench_reports_kmeans_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    images = np.zeros((120, 28, 28), np.uint8)
    for k in range(120):
        r = rng.integers(6, 22)
        images[k, r - 2 : r + 2, 6:22] = 255
    labels = rng.integers(0, 10, 120).astype(np.uint8)
    data = tmp_path / "mnist"
    data.mkdir()
    _idx(data / "train-images-idx3-ubyte.gz", images[:80])
    _idx(data / "train-labels-idx1-ubyte.gz", labels[:80])
    _idx(data / "t10k-images-idx3-ubyte.gz", images[80:])
    _idx(data / "t10k-labels-idx1-ubyte.gz", labels[80:])
    tiny = {"epochs": 1, "hidden": 16, "device": "cpu", "progress": False}
    table = bn.run_mnist(data, tmp_path / "b", ["mnist"], ["vanilla"], [2], cluster=True, **tiny)
    acc = table["kmeans_accuracy"].iloc[0]
    assert 0.1 <= acc <= 1.0  # at least the largest digit's share of one cluster
    assert "kmeans_accuracy" not in bn.run_mnist(
        data, tmp_path / "c", ["mnist"], ["vanilla"], [2], **tiny
    )


def test_cluster_averages_are_the_aligned_averages_of_each_cluster(tmp_path):
    from emvae.align import align_stack

    rng = np.random.default_rng(5)
    images = rng.standard_normal((12, 16, 16)).astype(np.float32)
    theta, shift = rng.uniform(-180, 180, 12), rng.normal(0, 1, (12, 2))
    labels = np.array([1, 2] * 6)
    stack = bn.array_stack(images, "s")
    averages, counts = az.cluster_averages(stack, theta, shift, labels, 2)
    assert averages.shape == (2, 1, 16, 16) and counts.tolist() == [6, 6]
    for c in (1, 2):
        m = labels == c
        one = align_stack(bn.array_stack(images[m], "s"), theta[m], shift[m], tmp_path / "a.mrcs")
        assert np.allclose(averages[c - 1], one, atol=1e-5)
