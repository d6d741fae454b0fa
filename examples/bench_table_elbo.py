"""Images per second of the final table's ELBO pass (fit's full-size rendering without
autograd), with the generator under bf16 autocast and in float32, best of 3:

    python examples/bench_table_elbo.py RUN CHECKPOINT [N]

RUN: a fit's output folder (its particles and CTFs are read); CHECKPOINT: one of its
``checkpoints/*.pt``; N: the first N particles (default 512). On a CPU without AMX, bf16
autocast is a no-op (``emvae.train.autocast_for``) and the two rows measure the same thing.
"""

from __future__ import annotations

import sys
import time

import torch

from emvae.ctf import likelihood_ctf
from emvae.encode import encode
from emvae.run import Run, load_model
from emvae.train import autocast_for


def main(run: str, checkpoint: str, first: str = "512") -> None:
    n = int(first)
    model = load_model(checkpoint)[0]
    model.set_render_size(model.config.image_size)  # the table renders the full box
    particles = Run.open(run).particles()
    mode = model.config.ctf
    data, ctf = likelihood_ctf(particles.ctf(mode), mode, particles.load()[:n], "cpu")
    ctf = None if ctf is None else ctf[:n]
    cpu = torch.device("cpu")
    best = {"bf16": float("inf"), "float32": float("inf")}
    for _ in range(3):
        for name in best:
            amp = autocast_for(cpu) if name == "bf16" else None
            start = time.perf_counter()
            encode(model, data, cpu, ctf=ctf, amp=amp)
            best[name] = min(best[name], time.perf_counter() - start)
    size = model.config.image_size
    for name, seconds in best.items():
        print(f"{size} px, {n} images, {name}: {n / seconds:.1f} images/s")


if __name__ == "__main__":
    main(*sys.argv[1:])
