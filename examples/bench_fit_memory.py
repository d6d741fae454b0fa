"""Peak resident memory of ``emvae fit`` with its defaults on a large generated stack.

    python examples/bench_fit_memory.py                  # 100,000 x 128^2 (6.6 GB file), 180 s
    python examples/bench_fit_memory.py -n 20000 --size 64 --seconds 120

Writes a float32 MRCS stack of noisy images (``bench_preprocess.write_stack``, in a child
process), then runs ``emvae fit STACK --zdim 1`` in another child, stops it with SIGINT after
``--seconds`` (a fit of 10^5 particles at 128 px takes hours on a CPU; its memory is set in the
first steps: the reader, the passes of the generator, the stage's grid), and prints the
fit's peak resident memory (the child's ru_maxrss, which covers its reader processes) and the
steps it reached. ``--stages off`` and other fit options can follow ``--``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs emvae's CLI and reports the peak resident memory (KiB) of the process and of its reader
# processes on its last line (the stack's writer runs in another child: its memory-mapped
# pages must not count).
MEASURE = """
import resource, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it off
from emvae_cli.main import app
try:
    app(sys.argv[1:], standalone_mode=False)
except KeyboardInterrupt:
    pass
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("peak_kib", own, kids, file=sys.stderr)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--dir", type=Path, default=None, help="where the stack goes (default: tmp)")
    p.add_argument("extra", nargs="*", help="more fit options, after --")
    a = p.parse_args()
    folder = a.dir or Path(tempfile.mkdtemp(prefix="emvae-fitmem-"))
    stack = folder / f"noise_{a.n}x{a.size}.mrcs"
    if not stack.exists():
        t0 = time.perf_counter()
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from bench_preprocess import "
            "write_stack; from pathlib import Path; "
            "write_stack(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
        )
        here = str(Path(__file__).parent)
        subprocess.run([sys.executable, "-c", code, here, str(stack), str(a.n), str(a.size)],
                       check=True)  # fmt: skip
        print(f"wrote {stack} in {time.perf_counter() - t0:.0f} s", flush=True)
    out = folder / "run"
    fit = ["fit", str(stack), "-o", str(out), "--zdim", "1", "--force", *a.extra]
    cmd = [sys.executable, "-c", MEASURE, *fit]
    t0 = time.perf_counter()
    with open(folder / "fit.log", "w+") as log_file:
        child = subprocess.Popen(cmd, stderr=log_file, env=_plain_env())
        try:
            child.wait(timeout=a.seconds)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            child.wait()
        wall = time.perf_counter() - t0
        log_file.seek(0)
        log = log_file.read()
    peaks = [line.split()[1:] for line in log.splitlines() if line.startswith("peak_kib")]
    own, readers = (int(k) / 2**20 for k in peaks[-1]) if peaks else (float("nan"),) * 2
    said = [line for line in log.splitlines() if "images/s" in line or "epoch" in line]
    what = f"fit {a.n} x {a.size}^2 {' '.join(a.extra)}".rstrip()
    print(f"{what}: peak RSS {own:.2f} GB (a reader process: {readers:.2f} GB) after {wall:.0f} s")
    print("\n".join(said[-3:]))


def _plain_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["EMVAE_PROGRESS"] = "plain"  # the within-epoch lines: how far the fit got
    return env


if __name__ == "__main__":
    main()
