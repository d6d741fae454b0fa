"""What the poses and z a run found cost its generator: a generator trained with given poses and z.

A fresh generator of a run's configuration is trained alone (Adam, batch 32, at a coarse
stage's size) on a simulation's first 18,000 particles, each rendered at a pose and z that
are either the simulation's truth or what the run's encoder infers (``--poses run``, ``--z
run``: posterior means, with ``--z-sampled`` a draw from z's posterior as training makes),
through each particle's CTF. After each epoch the z posterior over a grid under that
generator, at the same kind of poses, is computed for the particles 18,000-19,000, and its
mean's |Pearson r| with the conformation printed: how much of the conformation a generator
trained on such poses and z can tell. ``--zdim 1`` runs of `emvae simulate --structure`
sets (truth.csv's ``conformation``, ``theta_deg``, ``shift_x_px``, ``shift_y_px``); run from
the folder the run was fitted in.

    python examples/supervised_generator.py RUN SIM --poses true --z true
    python examples/supervised_generator.py RUN SIM --poses run --z true --checkpoint CKPT

``--poses run-angle``: the run's angles with the true shifts; ``--poses run-shift``: the true
angles with the run's shifts (both in the image frame), to tell which of the two costs the
generator more. ``--search``: the run's poses as its table has them (the rotation searched
under its generator, ``--pose-search``), not the pose network's own.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import pandas as pd
import torch

from emvae.ctf import likelihood_ctf
from emvae.encode import encode
from emvae.geometry import image_to_model_pose, model_to_image_pose
from emvae.models.vae import SpatialVAE
from emvae.objective import compared, log_likelihood
from emvae.run import Run, load_model

TRAIN, HELD = 18_000, slice(18_000, 19_000)


def main() -> None:
    """Train the generator and print one line per epoch."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("sim", help="the emvae simulate folder (truth.csv)")
    ap.add_argument("--checkpoint", help="the run's checkpoint whose encoder gives poses or z")
    ap.add_argument("--poses", choices=["true", "run", "run-angle", "run-shift"], default="true")
    ap.add_argument("--search", action="store_true", help="the table's searched rotations")
    ap.add_argument("--z", choices=["true", "run"], default="true")
    ap.add_argument("--z-sampled", action="store_true", help="train on draws from q(z)")
    ap.add_argument("--size", type=int, default=24, help="render size, px")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE of the model config")
    args = ap.parse_args()
    torch.manual_seed(0)
    run = Run.open(args.run)
    cfg = copy.deepcopy(run.config.model)
    for item in args.set:  # e.g. gen_hidden=256
        key, _, value = item.partition("=")
        if key not in vars(cfg) or not isinstance(getattr(cfg, key), (int, float, str)):
            ap.error(f"--set {item!r}: not a number or word of the model config")
        try:
            setattr(cfg, key, type(getattr(cfg, key))(value))
        except ValueError:
            ap.error(f"--set {item!r}: {value!r} is not a {type(getattr(cfg, key)).__name__}")
    truth = pd.read_csv(f"{args.sim}/truth.csv")
    conf = truth["conformation"].to_numpy(float)
    particles = run.particles()
    data, ctf = likelihood_ctf(
        particles.ctf(cfg.ctf), cfg.ctf, particles.load(), torch.device("cpu")
    )
    if ctf is None:
        ap.error(f"{args.run}: its fit does not model the CTF (this diagnostic needs one)")
    d = cfg.image_size
    theta, shift = image_to_model_pose(
        torch.tensor(truth["theta_deg"].to_numpy(float)),
        torch.tensor(truth[["shift_x_px", "shift_y_px"]].to_numpy(float)),
        d,
    )
    pose = torch.cat([theta[:, None], shift], 1).float()
    z_mu = torch.tensor((conf - 0.5) * math.sqrt(12), dtype=torch.float32)[:, None]
    z_std = None
    model = SpatialVAE(cfg)
    if args.poses != "true" or args.z == "run":
        trained, _, _ = load_model(args.checkpoint or args.run)
        enc = encode(
            trained, data, torch.device("cpu"), 200, ctf=ctf, elbo=False, search=args.search
        )
        print(f"the run's z |r| {abs(np.corrcoef(enc.z_mu[:, 0], conf)[0, 1]):.3f}", flush=True)
        if args.poses == "run":
            pose = torch.from_numpy(enc.pose_mu[:, :3]).float()
        elif args.poses in ("run-angle", "run-shift"):  # mixed in the image frame
            found = torch.from_numpy(enc.pose_mu[:, :3]).double()
            run_theta, run_shift = model_to_image_pose(found[:, 0], found[:, 1:3], d)
            true_theta = torch.tensor(truth["theta_deg"].to_numpy(float))
            true_shift = torch.tensor(truth[["shift_x_px", "shift_y_px"]].to_numpy(float))
            angle = run_theta if args.poses == "run-angle" else true_theta
            where = true_shift if args.poses == "run-angle" else run_shift
            theta, shift = image_to_model_pose(angle, where, d)
            pose = torch.cat([theta[:, None], shift], 1).float()
        if args.z == "run":
            sign = float(np.sign(np.corrcoef(enc.z_mu[:, 0], conf)[0, 1]))
            z_mu = torch.from_numpy(enc.z_mu[:, :1]).float() * sign  # as the truth runs
            if args.z_sampled:
                z_std = torch.from_numpy(enc.z_std[:, :1]).float()
    model.set_render_size(args.size)
    stage = model.stage
    opt = torch.optim.Adam(model.generator.parameters(), lr=1e-3)

    def log_lik(idx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = compared(cfg, model.decode(z, pose[idx]), ctf[idx], stage)
        return log_likelihood(cfg, model.pixels(data[idx]), out, stage.noise_logstd)

    held = torch.arange(TRAIN, len(data))[: HELD.stop - HELD.start]
    grid = torch.linspace(-3, 3, 41)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        for idx in torch.randperm(TRAIN).split(32):
            z = z_mu[idx] if z_std is None else z_mu[idx] + z_std[idx] * torch.randn_like(z_mu[idx])
            loss = -log_lik(idx, z).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            ll = torch.stack([
                torch.cat([log_lik(i, torch.full((len(i), 1), float(g))) for i in held.split(100)])
                for g in grid
            ], 1)  # fmt: skip
        w = (ll - grid**2 / 2).softmax(1)
        mean = (w * grid).sum(1)
        std = ((w * grid**2).sum(1) - mean**2).clamp_min(0).sqrt()
        r = abs(np.corrcoef(mean.numpy(), conf[HELD])[0, 1])
        print(
            f"epoch {epoch}: grid z |r| {r:.3f}, posterior std {std.mean():.3f} against its "
            f"means' spread {mean.std():.3f} ({time.time() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
