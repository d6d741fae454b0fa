"""Score every ``checkpoints/epoch_NNNN.pt`` of a fit against a simulation's truth.

    emvae fit --example -o ex --checkpoint-every 1
    python examples/score_checkpoints.py ex ex/example/truth.csv

prints one row per epoch: theta's circular correlation (consensus frame), its median error,
the best |Pearson r| of a z dimension with the conformation, that dimension's spread of
posterior means over its median posterior std, and the KL of each z dimension (metrics.csv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from emvae.bench import pose_recovery
from emvae.checkpoint import load_model
from emvae.ctf import likelihood_ctf
from emvae.data import load_images, normalize_
from emvae.io import open_like
from emvae.preprocess import prepare_for


def main(run: str, truth_csv: str) -> None:
    run_dir = Path(run)
    truth = pd.read_csv(truth_csv)
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.pt"))
    _, config, _ = load_model(checkpoints[0])
    stack = open_like(config.data)
    prepared = prepare_for(stack, config.data.preprocess)
    data = load_images(stack, torch.device("cpu"), prepared)
    normalize_(data, config.data.mean, config.data.std)
    likelihood_ctf(stack, config, prepared.scale, data, "cpu")  # --ctf phase-flip: as trained
    metrics = pd.read_csv(run_dir / "metrics.csv").set_index("epoch")
    kl = [c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()]
    extra = ",z_defocus_abs_r" if "defocus_um" in truth else ""
    head = "epoch,theta_circ_corr,theta_median_error_deg,z_abs_r,z_spread_over_std"
    print(head + extra + "," + ",".join(kl))
    for path in checkpoints:
        model, _, ckpt = load_model(path)
        r = pose_recovery(model, data, truth)
        epoch = int(ckpt["epoch"])
        kls = ",".join(f"{metrics.loc[epoch, c]:.3f}" for c in kl)
        print(
            f"{epoch},{r['theta_circ_corr']:.4f},{r['theta_median_error_deg']:.2f},"
            f"{r['z_conformation_pearson']:.3f},{r['z_spread_over_std']:.2f},"
            + (f"{r['z_defocus_pearson']:.3f}," if extra else "")
            + kls,
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
