"""Is a fit's z limited by its encoder or by its generator? (docs/benchmarks.md, "Users' sizes")

    python examples/generator_z.py RUN TRUTH_CSV N CHECKPOINT [CHECKPOINT ...]

For the first N particles and each checkpoint (zdim 1, a simulation's truth.csv with a
``conformation`` column): z's exact posterior mean under the checkpoint's *own* generator
(a grid of 49 values in [-3, 3] with the N(0, 1) prior; the encoder's rotation bins and shift
kept, the CTF as trained, at the checkpoint's stage size), correlated with the conformation,
beside the encoder's z. If the generator's posterior is no better than the encoder's, the
amortised encoder is not what loses z: the generator carries too little of the conformation.
"""

import copy
import sys

import numpy as np
import pandas as pd
import torch

from emvae.ctf import likelihood_ctf
from emvae.objective import posterior_elbo
from emvae.run import Run, load_model


@torch.no_grad()
def posterior_z(model, x: torch.Tensor, ctf: torch.Tensor | None, grid: torch.Tensor):
    """(encoder's z mean ``(B,)``, posterior mean of z under the generator ``(B,)``) for images
    ``x`` ``(B, 1, D, D)`` (zdim 1), the poses held at the encoder's."""
    q = model.encode(x, ctf=ctf)
    y = model.pixels(x)
    eps = torch.zeros(x.shape[0], model.n_latent)
    log_post = []
    for g in grid:
        at = copy.copy(q)
        at.z_mu = torch.full_like(q.z_mu, float(g))
        at.z_logstd = torch.full_like(q.z_logstd, -30.0)  # z exactly g
        z, pose = model.sample(at, eps=eps)
        params = model.decode(z, pose)
        terms = posterior_elbo(
            model.config, y, params.float(), at.float(), True, ctf, 1.0, model.stage
        )
        log_post.append(terms.log_lik - 0.5 * float(g) ** 2)
    w = torch.stack(log_post, 1).softmax(1)
    return q.z_mu[:, 0], (w * grid).sum(1)


def main(run: str, truth_csv: str, first: str, *checkpoints: str) -> None:
    n = int(first)
    r = Run.open(run)
    conf = pd.read_csv(truth_csv)["conformation"].to_numpy()[:n]
    parts = r.particles()
    data = parts.load()[:n]
    mode = r.config.model.ctf
    data, ctf = likelihood_ctf(parts.ctf(mode), mode, data, "cpu")  # --ctf phase-flip: as trained
    metrics = r.metrics().set_index("epoch")
    grid = torch.linspace(-3, 3, 49)
    for path in checkpoints:
        model, _, ckpt = load_model(path)
        model.eval()
        epoch = int(ckpt["epoch"])
        staged = "stage_px" in metrics
        size = int(metrics.loc[epoch, "stage_px"]) if staged else model.config.image_size
        model.set_render_size(size)
        pairs = [
            posterior_z(
                model, data[s : s + 50].float(), None if ctf is None else ctf[s : s + 50], grid
            )
            for s in range(0, n, 50)
        ]
        ze = torch.cat([p[0] for p in pairs]).numpy()
        zp = torch.cat([p[1] for p in pairs]).numpy()
        print(
            f"epoch {epoch} ({size} px): encoder's z |r| {abs(np.corrcoef(ze, conf)[0, 1]):.3f}, "
            f"generator's posterior z |r| {abs(np.corrcoef(zp, conf)[0, 1]):.3f}, "
            f"the two correlate {np.corrcoef(ze, zp)[0, 1]:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
