"""How far the encoder's rotations are from the best its own generator allows: a local search.

For the first N particles, each rotation from the checkpoint's encoder (the best bin's mean,
as the table reports it) is moved to the angle within +-HALF degrees (STEP apart) where the
image's likelihood under the checkpoint's own generator is highest (z and shifts kept), and
z is then taken as the posterior mean over a grid under that generator at the new rotation;
this is repeated ``--iterations`` times. Each round prints the median rotation error in the
conformations' frames and z's |Pearson r| with the conformation (`emvae simulate
--structure` sets, ``--zdim 1`` runs); run from the folder the run was fitted in.

    python examples/refine_poses.py RUN SIM CHECKPOINT -n 1000
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from emvae.bench import error_in_frames
from emvae.ctf import likelihood_ctf
from emvae.encode import encode
from emvae.geometry import model_to_image_pose
from emvae.objective import compared, log_likelihood
from emvae.run import Run, load_model


def main() -> None:
    """Print the rotation error and z |r| before and after each round of the search."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("sim", help="the emvae simulate folder (truth.csv)")
    ap.add_argument("checkpoint")
    ap.add_argument("-n", type=int, default=1000, help="the first n particles")
    ap.add_argument("--size", type=int, default=24, help="render size, px")
    ap.add_argument("--half", type=float, default=10.0, help="search half-width, degrees")
    ap.add_argument("--step", type=float, default=0.5, help="search step, degrees")
    ap.add_argument("--iterations", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    run = Run.open(args.run)
    truth = pd.read_csv(f"{args.sim}/truth.csv").iloc[: args.n]
    conf, true = truth["conformation"].to_numpy(float), truth["theta_deg"].to_numpy(float)
    particles = run.particles()
    mode = run.config.model.ctf
    params = particles.ctf(mode)
    data, ctf = likelihood_ctf(
        None if params is None else params[: args.n], mode, particles.load()[: args.n], "cpu"
    )
    model, _, _ = load_model(args.checkpoint)
    cfg = model.config
    enc = encode(model, data, "cpu", 100, ctf=ctf, elbo=False, search=False)
    model.set_render_size(args.size)
    stage = model.stage
    pose = torch.from_numpy(enc.pose_mu[:, :3]).float()
    z = torch.from_numpy(enc.z_mu[:, :1]).float()
    turns = torch.deg2rad(torch.arange(-args.half, args.half + 1e-6, args.step))
    grid = torch.linspace(-3, 3, 31)

    def log_lik(s: slice, zs: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        c = None if ctf is None else ctf[s]
        out = compared(cfg, model.decode(zs, poses), c, stage)
        return log_likelihood(cfg, model.pixels(data[s]), out, stage.noise_logstd)

    def report(label: str) -> None:
        theta, _ = model_to_image_pose(pose[:, 0].double(), pose[:, 1:3].double(), cfg.image_size)
        error = error_in_frames(theta.numpy(), true, conf)
        r = abs(np.corrcoef(z[:, 0].numpy(), conf)[0, 1])
        print(f"{label}: rotation error in the frames {error:.2f} deg, z |r| {r:.3f}", flush=True)

    report("encoder")
    for it in range(1, args.iterations + 1):
        for start in range(0, args.n, 50):
            s = slice(start, start + 50)
            ll = torch.stack([log_lik(s, z[s], pose[s] + turn * OFFSET) for turn in turns], 1)
            pose[s, 0] += turns[ll.argmax(1)]
            ones = torch.ones_like(z[s])
            ll = torch.stack([log_lik(s, float(g) * ones, pose[s]) for g in grid], 1)
            z[s, 0] = ((ll - grid**2 / 2).softmax(1) * grid).sum(1)
        report(f"search {it}")


OFFSET = torch.tensor([1.0, 0.0, 0.0])  # a turn moves the rotation only

if __name__ == "__main__":
    main()
