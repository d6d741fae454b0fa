"""Throughput of one spatial-VAE training step (images/s), the figure quoted in docs.

    python examples/bench_train_step.py                      # 40x40, 500 hidden, batch 100, CPU
    python examples/bench_train_step.py --device cuda --size 64 --hidden 1000

Times full steps (augmentation, encoder, generator, ELBO, backward, Adam) on random data that
lives on the device, after warm-up, and prints images per second.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from emvae.config import ModelConfig
from emvae.models import SpatialVAE
from emvae.train import training_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--zdim", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--generator", default="spatial", choices=["spatial", "vanilla"])
    args = ap.parse_args()

    dev = torch.device(args.device)
    vanilla = args.generator == "vanilla"
    cfg = ModelConfig(
        image_size=args.size,
        zdim=args.zdim,
        gen_hidden=args.hidden,
        enc_hidden=args.hidden,
        generator=args.generator,
        rotation=not vanilla,
        translation=not vanilla,
    )
    model = SpatialVAE(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 1, args.size, args.size, device=dev)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda" and not args.no_amp
        else contextlib.nullcontext()
    )
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    def step() -> None:
        training_step(model, opt, x, augment=True, amp=amp)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"{args.generator} {args.size}x{args.size}, hidden {args.hidden}, batch {args.batch}, "
        f"{name}, torch {torch.__version__}: {dt * 1000:.1f} ms/step, "
        f"{args.batch / dt:.0f} images/s"
    )


if __name__ == "__main__":
    main()
