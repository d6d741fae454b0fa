"""A fit launched by torchrun on 2 CPU processes (gloo) equals a single-process fit with the
same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch.distributed
from conftest import SMALL

from emvae.checkpoint import load_checkpoint
from emvae.distributed import Dist, assemble
from emvae.simulate import write_simulation

# The MLP encoder: its outputs are smooth in the weights. The equivariant encoder keeps the k
# most probable rotation bins, so a summation-order difference can flip an ambiguous image's bin.
# float32 throughout (no bf16 autocast on CPUs with AMX): bf16's rounding depends on how a
# batch is split into passes, and this test is about the averaging, not the precision
ARGS = [*SMALL, "--encoder", "mlp", "--no-amp"]
# Gradients all-reduced over two half batches differ from one full batch by rounding only;
# two epochs amplify that to ~0.06 deg (measured). Averaging bugs (summed gradients, a lost
# partial batch) move the poses by degrees.
TOL = {"theta_deg": 0.5, "shift_x_px": 0.02, "shift_y_px": 0.02, "z1": 0.01, "elbo": 0.05}


def test_shares_cover_every_item_once():
    for n in (0, 1, 5, 20, 21):
        for world in (1, 2, 3):
            parts = [Dist(r, world).part(n) for r in range(world)]
            covered = np.concatenate([np.arange(n)[p] for p in parts])
            assert covered.tolist() == list(range(n))
    parts = [
        (np.array([0, 2]), {"a": np.array([10.0, 12.0])}),
        (np.array([1]), {"a": np.array([11.0])}),
    ]
    assert assemble(parts, 3)["a"].tolist() == [10.0, 11.0, 12.0]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_process_fit_equals_one_process_fit(tmp_path):
    # 90 images: 81 train, batches of 20 end with one image, which one process alone computes
    stack = write_simulation(tmp_path / "sim", n=90, size=16, snr=5.0, shift_std_px=0.5, seed=1)
    # both fits in fresh processes: nothing an earlier test set in this one (threads, RNG,
    # autocast) can make them differ
    one_cmd = [sys.executable, "-m", "emvae_cli.main", "fit", str(stack), "-o"]
    r = subprocess.run([*one_cmd, str(tmp_path / "one"), *ARGS], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "emvae_cli.main",
        "fit",
        str(stack),
        "-o",
        str(tmp_path / "two"),
        *ARGS,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr.count("wrote ") == 1  # only rank 0 reports and writes
    # config.json's command names emvae, not "python -m emvae_cli.main" (nor torchrun)
    for name in ("one", "two"):
        command = json.loads((tmp_path / name / "config.json").read_text())["command"]
        assert command.startswith(f"emvae fit {stack} --out {tmp_path / name} "), command
    one = pd.read_csv(tmp_path / "one" / "particles.csv")
    two = pd.read_csv(tmp_path / "two" / "particles.csv")
    assert one["image"].tolist() == two["image"].tolist()  # gathered in input order
    for col, tol in TOL.items():
        assert np.abs(one[col] - two[col]).max() < tol, col
    m1 = pd.read_csv(tmp_path / "one" / "metrics.csv")
    m2 = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert np.allclose(m1["test_elbo"], m2["test_elbo"], rtol=1e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_seed_the_classes_as_one(tmp_path):
    """--class-seed under torchrun: the processes share the encoding and every one takes rank
    0's targets (a rank that went its own way would hang or fail the all-gathers)."""
    stack = write_simulation(tmp_path / "sim", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=1)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", "-m", "emvae_cli.main", "fit", str(stack), "-o", str(out), *ARGS]
    cmd += ["--classes", "2", "--class-seed", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "classes seeded: " in (out / "run.log").read_text()
    seeds = load_checkpoint(out / "checkpoints" / "last.pt")["class_seeds"]
    assert seeds.shape == (60,) and set(seeds.tolist()) <= {-1, 0, 1}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_take_the_same_junk_out(tmp_path):
    """--junk-out without classes under torchrun: every process takes rank 0's flags, so both
    train on one set (a process with another set would hang in the all-reduces)."""
    stack = write_simulation(
        tmp_path / "sim", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=1, junk=0.25,
        junk_kinds=("noise",),
    )  # fmt: skip
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", "-m", "emvae_cli.main", "fit", str(stack), "-o", str(out), *ARGS]
    cmd += ["--junk-out", "1", "-n", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "junk left out of training: " in (out / "run.log").read_text()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["junk_out"].shape == (60,)
