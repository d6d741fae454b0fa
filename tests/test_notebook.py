"""examples/explore_run.ipynb, executed on a tiny fit through a real Jupyter kernel (nbclient):
it must run from top to bottom, draw its figure, and write a STAR file holding exactly the
particles its condition selects, with the run's poses."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import starfile
from conftest import SMALL, runner
from emvae_cli.main import app
from nbclient import NotebookClient

from emvae.io.star_export import table_pose

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "explore_run.ipynb"


def test_explore_notebook_selects_and_writes_the_runs_poses(tiny_stack, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["fit", str(tiny_stack), "-o", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(run / "particles.csv")
    cut = float(np.median(table["z1"]))
    star = tmp_path / "chosen.star"

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook has one cell tagged 'parameters'"
    params[0].source = f"RUN = {str(run)!r}\nQUERY = 'z1 > {cut!r}'\nSTAR = {str(star)!r}"
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure drawn"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    want = table[table["z1"] > cut].reset_index(drop=True)
    assert 0 < len(want) < len(table)
    assert f"keeps {len(want)} of {len(table)} particles" in text

    blocks = starfile.read(star, always_dict=True)
    got = blocks["particles"]
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == 1.5  # the stack's pixel size
    names = [n.partition("@") for n in got["rlnImageName"]]
    assert [f"{int(k)}@{p}" for k, _, p in names] == list(want["image"])
    assert np.allclose(got["rlnAnglePsi"], want["theta_deg"], atol=1e-5)
    origin_px = got[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 1.5
    shift = table_pose(got["rlnAnglePsi"].to_numpy(), origin_px, 16)
    assert np.allclose(shift, want[["shift_x_px", "shift_y_px"]].to_numpy(), atol=1e-4)
