"""Shared helpers: an analytic template, a renderer through the generator's transform, the
CLI runner and a small training recipe, RELION's aligner, and where the real data files are.

Test modules import these from here (``from conftest import ...``), never from one another."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from emvae.geometry import coordinate_grid, transform_coordinates
from emvae.io import write_mrc
from emvae.simulate import hinge_blobs

#: Real files written by other programs (RELION, cryoSPARC, cryoDRGN, telescopes); they stay
#: outside the repository (their owners' licences; ../shared/data/README.md asks for no copies)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Small files of the same formats that this project made with RELION, cryosparc-tools and
#: astropy (tests/data/README.md says how; tests/data/make.py remakes them): in every checkout
DATA = Path(__file__).resolve().parent / "data"

runner = CliRunner()
SMALL = [
    "--zdim",
    "1",
    "--gen-hidden",
    "16",
    "--enc-hidden",
    "16",
    "-n",
    "2",
    "-b",
    "20",
    "--lr",
    "1e-3",
    "--device",
    "cpu",
    "-q",
]

RELION = shutil.which("relion_stack_create")


def real_data(*names: str) -> Path:
    """``../shared/data`` when it holds every one of ``names`` (paths such as
    ``"em/relion31.mrcs"``); else the test is skipped."""
    if all((SHARED / name).exists() for name in names):
        return SHARED
    where = "../shared/data lacks them" if SHARED.is_dir() else "../shared/data is absent"
    pytest.skip(f"{', '.join(names)}: {where}")


def optics_table(
    apix: float = 1.5, size: int = 16, voltage: float = 200.0, cs: float = 2.0, ac: float = 0.07
) -> pd.DataFrame:
    """A RELION 3.1 data_optics block of one group (pixel size in A, box in px, kV, mm)."""
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["g1"],
            "rlnVoltage": [voltage],
            "rlnSphericalAberration": [cs],
            "rlnAmplitudeContrast": [ac],
            "rlnImagePixelSize": [apix],
            "rlnImageSize": [size],
            "rlnImageDimensionality": [2],
        }
    )


def relion_align(star: Path) -> np.ndarray:
    """RELION's aligned images ``(N, D, D)`` for a STAR file (run in the STAR's folder)."""
    out = star.with_name(star.stem + "_relion")
    r = subprocess.run(
        [RELION, "--i", star.name, "--o", out.name, "--apply_transformation"],
        cwd=star.parent,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return mrcfile.read(out.with_suffix(".mrcs")).astype(np.float64)


def template(points: torch.Tensor, conformation: float = 0.3) -> torch.Tensor:
    """The canonical hinge molecule evaluated at template coordinates ``(..., 2)`` -> ``(...)``."""
    centres, sigmas, amps = hinge_blobs(np.array([conformation]))
    c = torch.as_tensor(centres[0], dtype=points.dtype)
    s = torch.as_tensor(sigmas, dtype=points.dtype)
    a = torch.as_tensor(amps, dtype=points.dtype)
    d2 = ((points[..., None, :] - c) ** 2).sum(-1)
    return (a * torch.exp(-d2 / (2 * s**2))).sum(-1)


def render_model(
    theta: torch.Tensor, shift: torch.Tensor | None, size: int, fn=template
) -> torch.Tensor:
    """Images ``(B, 1, D, D)`` rendered the way the generator sees them: T(x R(theta) + dx)."""
    grid = coordinate_grid(size, size, dtype=torch.float64)
    pts = transform_coordinates(grid, theta.double(), None if shift is None else shift.double())
    return fn(pts).reshape(-1, 1, size, size)


def corr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture
def tiny_stack(tmp_path: Path) -> Path:
    """A 60-image 16x16 noisy hinge stack with known poses (truth.csv beside it)."""
    from emvae.simulate import write_simulation

    return write_simulation(
        tmp_path / "tiny", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=3, apix=1.5
    )


@pytest.fixture
def write_stack(tmp_path: Path):
    """Write an arbitrary array as an MRC stack and return its path."""

    def _write(images: np.ndarray, name: str = "stack.mrcs", apix: float | None = None) -> Path:
        p = tmp_path / name
        write_mrc(p, images, apix)
        return p

    return _write


def write_pictures(folder: Path, n: int, size: int, suffix: str = ".png", seed: int = 0) -> Path:
    """``n`` RGB pictures ``size x size``: a bar of a random colour on black, off centre."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c, w = size // 2, max(1, size // 8)
    for k in range(n):
        a = np.zeros((size, size, 3), np.uint8)
        a[c - 2 * w : c + 2 * w, c - w + 1 : c + w + 1] = rng.integers(60, 255, size=3)
        Image.fromarray(a).save(folder / f"g{k:02d}{suffix}")
    return folder


def stamp_analysis(run: Path) -> None:
    """Stamp a hand-made analyze/clusters.csv as emvae analyze does: analyze.json with the run
    id and checkpoint epoch, both recorded in the folder's manifest (select checks them)."""
    import json

    from emvae.checkpoint import load_checkpoint
    from emvae.config import read_config
    from emvae.safety import record_outputs

    made = {
        "run_id": read_config(run / "config.json").run_id,
        "epoch": int(load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]),
    }
    (run / "analyze" / "analyze.json").write_text(json.dumps(made))
    record_outputs(run / "analyze", ["clusters.csv", "analyze.json"])
