"""The figure registry (emvae.figures.page.FIGURES): every picture the report page shows has
one entry, with a title and a caption, and the page shows nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from emvae import analyze, convergence
from emvae.config import ModelConfig, RunConfig
from emvae.figures.page import FIGURES, Context

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_owns_every_figure_file_name():
    """A figure's file name is spelt once, in the registry: the modules that write figures
    name no picture file of their own, and no module of emvae/ or cli/ spells a registered
    one (they take it from its Figure)."""
    names = [f.name for f in FIGURES]
    assert len(names) == len(set(names))
    picture = re.compile(r"[\"'](\w+\.(?:png|gif))[\"']")
    for module in ("report.py", "montage.py", "analyze.py", "convergence.py"):
        assert not picture.findall((ROOT / "emvae" / module).read_text()), module
    spelt = re.compile("|".join(rf"[\"']{re.escape(n)}[\"']" for n in names))
    page = ROOT / "emvae" / "figures" / "page.py"
    for path in [*(ROOT / "emvae").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        if path != page:
            assert not spelt.search(path.read_text()), path
    assert set(analyze.FILES) >= {f.name for f in FIGURES if f.folder == "analyze/"}
    assert set(convergence.FILES) >= {f.name for f in FIGURES if f.folder == "convergence/"}


def test_every_caption_renders_for_every_kind_of_run():
    result = {"rotation": {"offset_deg": 3.0, "median_error_deg": 1.0}, "latent": {"z1": {}}}
    for k, pose in ((0, "rigid"), (1, "affine"), (2, "rigid"), (5, "tps")):
        config = RunConfig(model=ModelConfig(image_size=16, zdim=k, pose=pose))
        for f in FIGURES:
            assert f.caption(Context(result, config)).endswith((".", ".</b>"))


def test_every_plot_draws_in_the_one_style(tmp_path, monkeypatch):
    """The report's plots, the analysis and convergence plots and the benchmark's figure: their
    titles and axis labels in the text sizes of plotstyle.STYLE (issue 36: one style)."""
    import numpy as np
    import pandas as pd

    from emvae import bench
    from emvae.figures import plots
    from emvae.plotstyle import STYLE

    drawn = []

    def save(fig, path, dpi=None):
        drawn.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save", save)
    monkeypatch.setattr(bench, "save", save)
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 4, 50)
    epochs = pd.DataFrame({"epoch": [1, 2, 3]})
    for term in ("elbo", "error", "kl"):
        epochs[f"train_{term}"] = epochs[f"test_{term}"] = rng.normal(size=3)
    pairs = pd.DataFrame(
        {
            "epoch_a": [1, 2],
            "epoch_b": [2, 3],
            "z_r2": [0.5, 0.9],
            "theta_diff_deg": [3.0, 1.0],
            "cluster_ari": [0.4, 0.8],
        }
    )
    poses = pd.DataFrame({"theta_deg": rng.uniform(-180, 180, 50)})
    poses["shift_x_px"] = poses["shift_y_px"] = rng.normal(size=50)
    fig2 = pd.DataFrame(
        {"dataset": ["a", "a"], "model": ["m", "m"], "zdim": [1, 2], "test_neg_elbo": [2.0, 1.0]}
    )
    plots.learning_curves(epochs, tmp_path / "a.png")
    plots.pose_histograms(poses, tmp_path / "b.png")
    plots.clusters_2d(rng.normal(size=(50, 2)), labels, ("z1", "z2"), tmp_path / "c.png")
    plots.clusters_1d(rng.normal(size=50), labels, "z1", tmp_path / "d.png")
    plots.convergence(pairs, epochs, tmp_path / "e.png")
    bench.plot_fig2(fig2, tmp_path / "f.png")
    assert len(drawn) == 6
    for fig in drawn:
        for ax in fig.axes:
            texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
            sizes = {t.get_text(): t.get_fontsize() for t in texts if t.get_text()}
            wanted = {
                ax.title.get_text(): STYLE["axes.titlesize"],
                ax.xaxis.label.get_text(): STYLE["axes.labelsize"],
                ax.yaxis.label.get_text(): STYLE["axes.labelsize"],
            }
            assert sizes == {t: wanted[t] for t in sizes}
            ticks = [t.get_fontsize() for t in ax.get_xticklabels()]
            assert set(ticks) <= {STYLE["xtick.labelsize"]}
