"""How much of the conformation the learned generator itself can tell: z on a grid.

For each particle the pose comes from the run's encoder, as in the table; z is then not
taken from the encoder but from the posterior over a grid of z values under the learned
generator (the likelihood of the image rendered at each z, times the N(0, 1) prior). If this
z correlates with the truth no better than the encoder's, the encoder's amortisation is not
what limits z: the generator renders too little of the motion per unit z. ``--zdim 1`` runs
of `emvae simulate` sets only (truth.csv's ``conformation``).

    python examples/grid_z.py RUN SIM -n 1000 --render 24
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from emvae.ctf import likelihood_ctf
from emvae.io import open_stack
from emvae.objective import posterior_elbo
from emvae.particles import Particles
from emvae.run import load_model


def main() -> None:
    """Print the encoder's and the grid's z |r| with the truth, and the grid posterior's std."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("sim", help="the emvae simulate folder (particles.star, truth.csv)")
    ap.add_argument("-n", type=int, default=1000, help="the first n particles")
    ap.add_argument("--render", type=int, default=None, help="render size, px (default: box)")
    ap.add_argument("--points", type=int, default=41, help="grid points over z in [-3, 3]")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, config, _ = load_model(args.run)
    particles = Particles.described(open_stack(f"{args.sim}/particles.star"), config.data)
    data = particles.load("cpu", config.model.likelihood)
    cpu = torch.device("cpu")
    data, ctf = likelihood_ctf(particles.ctf(config.model.ctf), config.model.ctf, data, cpu)
    model.set_render_size(args.render or config.model.image_size)
    truth = pd.read_csv(f"{args.sim}/truth.csv")["conformation"].to_numpy()[: args.n]
    grid = torch.linspace(-3, 3, args.points)
    enc, mean, std = [], [], []
    for s in range(0, args.n, 100):
        x = data[s : s + 100]
        c = None if ctf is None else ctf[s : s + 100]
        q = model.encode(x, ctf=c)
        z, pose = model.sample(q, eps=torch.zeros(x.shape[0], model.n_latent))
        log_lik = []
        for g in grid:  # the pose's hypotheses as the ELBO weighs them; z set to g
            params = model.decode(torch.full_like(z, float(g)), pose).float()
            terms = posterior_elbo(
                config.model, model.pixels(x), params, q, True, c, 1.0, model.stage
            )
            log_lik.append(terms.log_lik)
        w = (torch.stack(log_lik, 1) - grid**2 / 2).softmax(1)
        m = (w * grid).sum(1)
        enc.append(q.z_mu[:, 0])
        mean.append(m)
        std.append(((w * grid**2).sum(1) - m**2).clamp_min(0).sqrt())
    e, g, sd = (torch.cat(v).numpy() for v in (enc, mean, std))

    def r(a: np.ndarray) -> float:
        return float(abs(np.corrcoef(a, truth)[0, 1]))

    print(
        f"{args.n} particles rendered at {model.render_size} px: z |r| encoder {r(e):.3f}, "
        f"grid {r(g):.3f}; the grid posterior's std {sd.mean():.3f} against the spread of its "
        f"means {g.std():.3f} (the encoder's z: {e.std():.3f})"
    )


if __name__ == "__main__":
    main()
