"""Throughput and peak memory of ``emvae preprocess`` on a generated stack.

    python examples/bench_preprocess.py                 # 200,000 x 128^2 -> 64^2 (13 GB file)
    python examples/bench_preprocess.py -n 20000        # a quicker run

Writes a float32 MRCS stack of noisy images in chunks (in a child process), then runs
``emvae preprocess STACK -D 64 --norm background -o cache.h5`` in another child and prints its
images/s and peak resident memory (its own ru_maxrss, read at exit; each step runs in its own
process because Linux carries a parent's peak into the children it forks).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np


def write_stack(path: Path, n: int, size: int, chunk: int = 5000) -> None:
    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(path, shape=(n, size, size), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            mrc.data[start : start + m] = rng.standard_normal((m, size, size), dtype=np.float32)
        mrc.voxel_size = 1.0
        mrc.reset_header_stats()


# Runs emvae's CLI and reports the process's peak resident memory (KiB) on the last line.
MEASURE = """
import resource, sys
from emvae_cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def main() -> None:
    if sys.argv[1:2] == ["--generate"]:
        write_stack(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="images")
    ap.add_argument("--size", type=int, default=128, help="input box")
    ap.add_argument("-D", type=int, default=64, help="output box")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a tmp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stack, cache = Path(tmp) / "stack.mrcs", Path(tmp) / "cache.h5"
        t0 = time.perf_counter()
        gen = [sys.executable, __file__, "--generate", str(stack), str(args.n), str(args.size)]
        subprocess.run(gen, check=True)
        gb = stack.stat().st_size / 1e9
        dt = time.perf_counter() - t0
        print(f"generated {args.n} x {args.size}^2 ({gb:.1f} GB) in {dt:.0f} s")
        cmd = [
            sys.executable,
            "-c",
            MEASURE,
            "preprocess",
            str(stack),
            "-o",
            str(cache),
            "-D",
            str(args.D),
            "--norm",
            "background",
            "-q",
        ]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, check=True, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        print(run.stderr.strip().splitlines()[0])
        peak = int(run.stderr.strip().splitlines()[-1].split()[1]) / 2**20  # KiB -> GiB
        print(
            f"emvae preprocess {args.size}^2 -> {args.D}^2: {args.n / dt:.0f} images/s "
            f"({dt:.0f} s wall), peak resident memory {peak:.2f} GiB "
            f"(input stack {gb:.1f} GB, output {cache.stat().st_size / 1e9:.1f} GB)"
        )


if __name__ == "__main__":
    main()
