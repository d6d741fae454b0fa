"""Score a run on bent simulated particles (``emvae simulate --bend-std B``).

    python examples/score_bend.py RUN SIM

Prints, as JSON: the best |Pearson r| of a z dimension with the conformation and with the
bend, theta's median error after the best constant offset, and for a ``--pose tps`` run the
spline against the bend: each particle's control-point displacements (posterior means,
canonical frame) projected on the exact field of a unit bend, ``f(u) = -(u . e1)^2 e2`` with
(e1, e2) the body's axes in the model's frame (turned by the rotations' mean offset), as
Pearson r with the true bend and the slope (1: the spline takes the whole bend).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import torch

from emvae.encode import encode
from emvae.run import Run


def main(run_dir: str, sim: str) -> dict:
    truth = pd.read_csv(f"{sim}/truth.csv")
    run = Run.open(run_dir)
    table = run.table()
    zs = [c for c in table.columns if c[0] == "z" and c[1:].isdigit()]
    out: dict = {"run": run_dir}
    for factor in ("conformation", "bend"):
        out[f"z_vs_{factor}_abs_r"] = max(
            (abs(np.corrcoef(table[z], truth[factor])[0, 1]) for z in zs), default=None
        )
    fitted, body = np.radians(table["theta_deg"]), np.radians(truth["theta_body_deg"])
    phi = float(np.angle(np.mean(np.exp(1j * (fitted - body)))))
    d = fitted - np.radians(truth["theta_deg"])
    err = np.abs(np.angle(np.exp(1j * (d - np.angle(np.mean(np.exp(1j * d)))))))
    out["theta_median_error_deg"] = float(np.degrees(np.median(err)))
    model, config, _ = run.model("cpu")
    if config.model.tps:
        enc = encode(model, run.particles().load("cpu"), torch.device("cpu"), 512, 0)
        mc = config.model
        offset = mc.n_pose + (3 if mc.affine else 0)
        disp = enc.pose_mu[:, offset:].reshape(len(truth), -1, 2)
        control = model.transform.tps.control.numpy()
        e1, e2 = np.array([np.cos(phi), np.sin(phi)]), np.array([-np.sin(phi), np.cos(phi)])
        field = -((control @ e1) ** 2)[:, None] * e2
        field -= field.mean(0)  # a constant displacement is the shift's
        proj = (disp * field).sum((1, 2)) / (field * field).sum()
        out["spline_vs_bend_r"] = float(np.corrcoef(proj, truth["bend"])[0, 1])
        out["spline_vs_bend_slope"] = float(np.polyfit(truth["bend"], proj, 1)[0])
    metrics = run.metrics()
    out["test_elbo"] = float(metrics["test_elbo"].iloc[-1])
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1))
