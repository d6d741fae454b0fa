"""Score every ``checkpoints/epoch_NNNN.pt`` of a fit against a simulation's truth.

    emvae fit --example -o ex --checkpoint-every 1
    python examples/score_checkpoints.py ex ex/example/truth.csv [N [DEG]]

(N: score the first N particles only, for large sets; DEG: encode with this rotation search,
``--pose-search``, instead of the run's own)

prints one row per epoch: theta's circular correlation (consensus frame), its median error,
its median error in each conformation's own frame (5 conformation bins, each with its own
offset),
the best |Pearson r| of a z dimension with the conformation, that dimension's spread of
posterior means over its median posterior std, the mean Pearson r of the x and y shifts with
the true shifts, (with a defocus column) the best |Pearson r| of a z dimension with the
defocus, and the KL of each z dimension (metrics.csv).
"""

from __future__ import annotations

import sys

import pandas as pd

from emvae.bench import pose_recovery
from emvae.ctf import likelihood_ctf
from emvae.run import Run, load_model


def main(run: str, truth_csv: str, first: str | None = None, search: str | None = None) -> None:
    run_dir = Run.open(run)
    truth = pd.read_csv(truth_csv)
    particles = run_dir.particles()
    data = particles.load()
    if first is not None:
        data, truth = data[: int(first)], truth.iloc[: int(first)].reset_index(drop=True)
    mode = run_dir.config.model.ctf
    params = particles.ctf(mode)  # phase-flip: as trained; on: the encoder's CTF
    data, ctf = likelihood_ctf(None if params is None else params[: len(data)], mode, data, "cpu")
    metrics = run_dir.metrics().set_index("epoch")
    kl = [c for c in metrics.columns if c.startswith("test_kl_z") and c[9:].isdigit()]
    extra = ",z_defocus_abs_r" if "defocus_um" in truth else ""
    head = (
        "epoch,stage_px,seconds,theta_circ_corr,theta_median_error_deg,theta_error_frames_deg,"
        "z_abs_r,z_spread_over_std,shift_r"
    )
    print(head + extra + "," + ",".join(kl))

    def stage(epoch: int) -> int:
        if "stage_px" in metrics:
            return int(metrics.loc[epoch, "stage_px"])
        return run_dir.config.model.image_size

    for path in run_dir.checkpoints():
        model, _, ckpt = load_model(path)
        if search is not None:
            model.config.pose_search = float(search)
        r = pose_recovery(model, data, truth, ctf=ctf)
        epoch = int(ckpt["epoch"])
        kls = ",".join(f"{metrics.loc[epoch, c]:.3f}" for c in kl)
        print(
            f"{epoch},{stage(epoch)},{metrics['seconds'].loc[:epoch].sum():.0f},"
            f"{r['theta_circ_corr']:.4f},{r['theta_median_error_deg']:.2f},"
            f"{r['theta_median_error_frames_deg']:.2f},"
            f"{r['z_conformation_pearson']:.3f},{r['z_spread_over_std']:.2f},"
            f"{r['shift_pearson']:.3f},"
            + (f"{r['z_defocus_pearson']:.3f}," if extra else "")
            + kls,
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:5])
