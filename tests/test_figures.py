"""The figure registry (emvae.figures.page.FIGURES): every picture the report page shows has
one entry, with a title and a caption, and the page shows nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from emvae import analyze, convergence
from emvae.config import ModelConfig, RunConfig
from emvae.figures.page import FIGURES, MONTAGES, REPORT_FIGURES, caption

LIBRARY = Path(__file__).resolve().parents[1] / "emvae"


def _written(module: str) -> set[str]:
    """The picture files a module names (``"name.png"``, ``"name.gif"``)."""
    return set(re.findall(r'"(\w+\.(?:png|gif))"', (LIBRARY / module).read_text()))


def test_the_registry_covers_every_figure_the_report_shows():
    names = [f.name for f in FIGURES]
    assert len(names) == len(set(names))
    assert _written("report.py") == set(REPORT_FIGURES)
    assert _written("montage.py") == set(MONTAGES)
    analyzed = {n for n in analyze.FILES if n.endswith(".png")}
    assert analyzed == {f.name for f in FIGURES if f.folder == "analyze/"}
    assert _written("analyze.py") == analyzed
    assert _written("convergence.py") == {f.name for f in FIGURES if f.folder == "convergence/"}
    assert set(convergence.FILES) >= {f.name for f in FIGURES if f.folder == "convergence/"}


def test_every_caption_renders_for_every_kind_of_run():
    result = {"rotation": {"offset_deg": 3.0, "median_error_deg": 1.0}, "latent": {"z1": {}}}
    for k, pose in ((0, "rigid"), (1, "affine"), (2, "rigid"), (5, "tps")):
        config = RunConfig(model=ModelConfig(image_size=16, zdim=k, pose=pose))
        for f in FIGURES:
            title, text = caption(f.name, result, config)
            assert title == f.title and text.endswith((".", ".</b>"))
