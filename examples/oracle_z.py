"""The best z any method could find on an `emvae simulate --structure` set: the ceiling.

Given each particle's true rotation, shift, out-of-plane tilt and CTF, the conformation's
posterior under the simulation's own model (the clean image rendered on a grid of
conformations, white Gaussian noise of the known std, a uniform prior) is computed exactly;
its mean correlates with the true conformation at most as well as any learned z can, since a
learned model also has to find the poses and the object. Printed for the full box and for the
Fourier crops a coarse stage sees (the likelihood over the crop's frequencies only).

    python examples/oracle_z.py SIM --structure tests/data/1gbt_trypsin.pdb --domain A:133-245 \\
        --hinge-deg 30 --size 64 --apix 1.0 --ctf 1:2.5 --tilt-deg 10 --seed 1 [--crops 32]

The options must repeat those the set was simulated with (shift std, seed, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from emvae import structure as st
from emvae.augment import rotate_images
from emvae.ctf import apply_ctf
from emvae.simulate import draw_ctf
from emvae.stages import fourier_crop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sim", type=Path)
    p.add_argument("--structure", required=True)
    p.add_argument("--domain", action="append", default=[])
    p.add_argument("--hinge-deg", type=float, default=30.0)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--apix", type=float, required=True)
    p.add_argument("--ctf", default=None, help="LOW:HIGH defocus, um")
    p.add_argument("--tilt-deg", type=float, default=0.0)
    p.add_argument("--shift-std", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=21, help="conformations evaluated in [0, 1]")
    p.add_argument("--crops", default="32", help="comma-separated coarse sizes to score too")
    near_help = ("or marginalise over turns within this many degrees of the truth and of its "
                 "180-degree flip, 1 degree apart (where the likelihood is)")  # fmt: skip
    p.add_argument("--theta-near", type=float, default=0.0, help=near_help)
    p.add_argument("--crops-only", action="store_true", help="score the crops, not the box")
    p.add_argument("-n", type=int, default=None, help="first n particles only")
    p.add_argument("--theta-bins", type=int, default=0,
                   help="also marginalise the rotation over this many in-plane turns (the "
                        "clean images turned about the box centre, bilinear)")  # fmt: skip
    p.add_argument("--tilt-samples", type=int, default=0,
                   help="the out-of-plane wobble unknown: marginalise it over this many tilts "
                        "drawn from the simulation's own wobble (the same for every particle; "
                        "a Monte Carlo average of the likelihood)")  # fmt: skip
    a = p.parse_args()
    if a.tilt_samples and (a.theta_bins or a.theta_near):
        p.error("--tilt-samples goes with the true rotation (no --theta-bins / --theta-near)")

    obj = st.structure_object(a.structure, a.size, a.apix, None, a.domain, a.hinge_deg,
                              st.parse_view("auto"))  # fmt: skip
    with mrcfile.mmap(a.sim / "particles.mrcs", mode="r") as m:
        n_all = m.data.shape[0]
        n = n_all if a.n is None else min(a.n, n_all)
        noisy = torch.from_numpy(np.array(m.data[:n], dtype=np.float32))
    truth = pd.read_csv(a.sim / "truth.csv").iloc[:n]
    conf, theta, shift = st.draw_poses(n_all, a.shift_std, a.seed)
    rot = st.draw_tilts(n_all, a.tilt_deg, a.seed)[0] if a.tilt_deg else None
    assert np.allclose(conf[:n], truth["conformation"].to_numpy(), atol=1e-5), "not this set"
    params = None
    if a.ctf:
        lo, hi = (float(v) for v in a.ctf.split(":"))
        params = draw_ctf(n_all, a.seed, (lo, hi), a.apix)[0][:n]

    def clean(c: np.ndarray, tilt: np.ndarray | None = None) -> torch.Tensor:
        """Clean images ``(n, D, D)`` of the particles at conformations ``c`` ``(n,)``, seen
        with their own wobble or the rotation ``tilt`` ``(3, 3)`` for all."""
        own = None if rot is None else rot[:n]
        img = obj.render(
            c, theta[:n], shift[:n], own if tilt is None else np.repeat(tilt[None], n, 0)
        )
        x = torch.from_numpy(img)
        return x if params is None else apply_ctf(x[:, None], params)[:, 0]

    grid = np.linspace(0.0, 1.0, a.grid)
    sizes = [] if a.crops_only else [a.size]
    sizes += [int(s) for s in a.crops.split(",") if s and int(s) < a.size]
    ys = {s: fourier_crop(noisy, s).double() for s in sizes}
    true_clean = clean(conf[:n])
    sigma = {s: float((ys[s] - fourier_crop(true_clean, s).double()).std()) for s in sizes}
    turns = torch.arange(max(a.theta_bins, 1)) * (2 * np.pi / max(a.theta_bins, 1))
    if a.theta_near > 0:
        near = torch.arange(-a.theta_near, a.theta_near + 0.5, 1.0, dtype=torch.float64)
        turns = torch.deg2rad(torch.cat([near, near + 180.0])).float()
    turning = a.theta_bins > 0 or a.theta_near > 0
    tilts = st.draw_tilts(a.tilt_samples, a.tilt_deg, a.seed + 1)[0] if a.tilt_samples else None
    axis = len(turns) if tilts is None else len(tilts)
    sse = {s: np.empty((n, len(grid), axis)) for s in sizes}
    for j, c in enumerate(grid):
        x = clean(np.full(n, c)) if tilts is None else None
        for t in range(axis):
            if tilts is not None:
                xt = clean(np.full(n, c), tilts[t])
            else:
                assert x is not None
                xt = x if not turning else rotate_images(x[:, None], turns[t].expand(n))[:, 0]
            for s in sizes:
                d = ys[s] - fourier_crop(xt, s).double()
                sse[s][:, j, t] = (d**2).sum((1, 2)).numpy()
    how = f"theta marginalised over {len(turns)} turns" if turning else "true poses"
    if tilts is not None:
        how = f"true rotations, the wobble marginalised over {len(tilts)} drawn tilts"
    for s in sizes:
        logp = -sse[s] / (2 * sigma[s] ** 2)
        logp -= logp.max((1, 2), keepdims=True)
        w = np.exp(logp).sum(2)  # the rotation marginalised
        w /= w.sum(1, keepdims=True)
        mean = w @ grid
        best = grid[np.argmax(w, 1)]
        r_mean = abs(np.corrcoef(mean, conf[:n])[0, 1])
        r_map = abs(np.corrcoef(best, conf[:n])[0, 1])
        spread = float(np.sqrt((w * (grid[None] - mean[:, None]) ** 2).sum(1)).mean())
        print(f"{s:4d} px: z |r| ceiling {r_mean:.3f} (posterior mean), {r_map:.3f} (MAP); "
              f"posterior std {spread:.3f} of a [0, 1] range; noise std {sigma[s]:.4g}; "
              f"n {n}; {how}")  # fmt: skip


if __name__ == "__main__":
    main()
