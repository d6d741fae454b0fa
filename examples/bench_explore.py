"""emvae explore at many points: load time and pan / zoom frame times in headless Chromium.

    python examples/bench_explore.py -n 1000000 [--frames 30] [--screenshot explore_1e6.png]

Fits a tiny run (60 simulated 16-px particles, 1 epoch), gives it a particle table of N rows (z
from a mixture of five Gaussians, the other columns drawn from the run's own rows), serves it
with the explorer's app (emvae.explore_app.make_app + uvicorn, in this process) and opens the
page in headless Chromium through Playwright (Debian's Chromium, as the tests use it; WebGL
runs on SwiftShader, Chromium's CPU renderer, where there is no GPU). It prints:

* the server's load of the run (the N-row table, its columns) and the page's load: the columns
  as float32 (4 bytes a particle each: x, y, colour), the scatter drawn, ready to use;
* frame times while the view pans and while it zooms, as requestAnimationFrame intervals (the
  page's own loop moves regl-scatterplot's camera once a frame: the frame includes the WebGL
  draw, the axes and, above 50,000 points in view, the density image), median and 95th
  percentile; and the CPU time Chromium's processes used per frame (from /proc: what the frames
  cost, whatever else the machine was doing), for the whole cloud (density view) and zoomed in
  to fewer than 50,000 points (points);
* a lasso over about a third of the cloud (the selection computed over every particle) and
  "save the rest" (the complement written as index lists).

Nothing here is a test; docs/reports.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "cli")]

# the page's loop: move the camera once a frame, return the frames' timestamps
FRAMES = """async ([kind, frames, distance]) => {
  const sp = explorer.scatter(), t = [];
  for (let k = 0; k <= frames; k++) {
    const a = k / 6;
    if (kind === "pan") sp.zoomToLocation([0.15 * Math.sin(a), 0.15 * Math.cos(a)], distance);
    else sp.zoomToLocation([0, 0], distance * (1 + 0.5 * Math.sin(a)));
    t.push(await new Promise(requestAnimationFrame));
  }
  return t;
}"""


class Results(dict):
    """The measurements, each printed as it is made (a slow machine still shows the first)."""

    def __init__(self, first: dict) -> None:
        super().__init__()
        for k, v in first.items():
            self[k] = v

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        print(f"{key}: {json.dumps(value)}", file=sys.stderr, flush=True)


def cpu_seconds_of_children() -> float:
    """User + system CPU seconds of every process descended from this one (Playwright's driver
    and Chromium's processes), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(d.name)] = int(fields[1])
        times[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in mine]
        mine.update(kids)
        todo.extend(kids)
    return sum(times.get(p, 0.0) for p in mine)


def tiny_run(root: Path) -> Path:
    from emvae_cli.main import app
    from typer.testing import CliRunner

    from emvae.simulate import write_simulation

    stack = write_simulation(root / "sim", n=60, size=16, snr=5.0, shift_std_px=0.5, seed=4)
    out = root / "tiny"
    args = ["fit", str(stack), "-o", str(out), "--zdim", "2", "--gen-hidden", "16"]
    args += ["--enc-hidden", "16", "-n", "1", "-b", "20", "--encoder", "mlp", "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, "-q"])
    assert r.exit_code == 0, r.output
    return out


def big_run(tiny: Path, out: Path, n: int, seed: int = 0) -> Path:
    """A copy of ``tiny`` whose table has ``n`` particles (z from a mixture of Gaussians)."""
    from emvae.io.tables import read_table, write_table

    shutil.copytree(tiny, out)
    table = read_table(tiny / "particles.h5")
    rng = np.random.default_rng(seed)
    big = table.iloc[rng.integers(0, len(table), n)].reset_index(drop=True)
    centres = rng.normal(0, 1.5, (5, 2))
    k = rng.integers(0, 5, n)
    z = centres[k] + rng.normal(0, 0.35, (n, 2)) * rng.uniform(0.5, 1.5, (5, 1))[k]
    big["z1"], big["z2"] = z[:, 0], z[:, 1]
    big["theta_deg"] = rng.uniform(-180, 180, n)
    big["elbo"] = -350 - 20 * np.abs(z[:, 0]) + rng.normal(0, 5, n)
    big["input_row"] = np.arange(n)
    big["image"] = [f"{i + 1}@particles.mrcs" for i in range(n)]
    (out / "particles.csv").unlink()
    write_table(big, out / "particles.h5", table.attrs.get("run_id", ""))
    config = json.loads((out / "config.json").read_text())
    config["data"]["n_images"] = n
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def serve(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="off", http="h11")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}/"


def frames(page, kind: str, count: int, distance: float) -> dict[str, float]:
    cpu = cpu_seconds_of_children()
    t = np.diff(page.evaluate(FRAMES, [kind, count, distance]))[1:]
    cpu = cpu_seconds_of_children() - cpu
    page.wait_for_timeout(400)  # the view settles (what is drawn is chosen again)
    return {
        "median_ms": round(float(np.median(t)), 1),
        "p95_ms": round(float(np.percentile(t, 95)), 1),
        "cpu_ms_per_frame": round(1000 * cpu / (len(t) + 2), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="particles (default 1e6)")
    ap.add_argument("--frames", type=int, default=30, help="frames per measurement")
    ap.add_argument("--chromium", default="/usr/lib/chromium/chromium")
    ap.add_argument("--screenshot", type=Path, help="a picture of the page at the end")
    ap.add_argument("--keep", type=Path, help="keep the N-particle run in this folder")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from emvae.explore_app import make_app

    root = Path(tempfile.mkdtemp(prefix="bench_explore_"))
    try:
        run = big_run(tiny_run(root), args.keep or root / "big", args.n)
        t0 = time.perf_counter()
        app = make_app(run, "cpu", out_dir=root / "selections")
        load_server = time.perf_counter() - t0
        server, url = serve(app)
        out = Results({"n": args.n, "server_load_s": round(load_server, 2)})
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium, headless=True, args=["--enable-unsafe-swiftshader"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            renderer = page.evaluate(
                """() => { const g = document.createElement('canvas').getContext('webgl');
                const d = g.getExtension('WEBGL_debug_renderer_info');
                return d ? g.getParameter(d.UNMASKED_RENDERER_WEBGL) : '?'; }"""
            )
            received = []
            page.on("response", lambda r: received.append(r) if "/arrays/" in r.url else None)
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_function("() => window.explorer.ready", timeout=600_000)
            out["page_ready_s"] = round(time.perf_counter() - t0, 2)
            out["page_timings_ms"] = {
                k: round(v) for k, v in page.evaluate("explorer.timings()").items()
            }
            out["array_bytes"] = sum(len(r.body()) for r in received)
            out["renderer"] = renderer
            out["display_full_view"] = page.evaluate("explorer.display()")
            for kind in ("pan", "zoom"):
                out[f"{kind}_full_view"] = frames(page, kind, args.frames, 1.0)
            # zoomed in until fewer than 50,000 points are in view: points, not density
            distance = 1.0
            while True:
                distance /= 2
                page.evaluate(f"explorer.scatter().zoomToLocation([0.15, 0.15], {distance})")
                page.wait_for_timeout(500)
                if page.evaluate("explorer.display()") == "points" or distance < 1e-3:
                    break
            out["zoomed_in"] = {
                "distance": distance,
                "in_view": page.evaluate("explorer.state.inView"),
            }
            for kind in ("pan", "zoom"):
                out[f"{kind}_zoomed_in"] = frames(page, kind, args.frames, distance)
            page.evaluate("explorer.scatter().zoomToOrigin()")
            page.wait_for_timeout(500)
            t0 = time.perf_counter()
            page.evaluate(
                """() => explorer.scatter().lassoSelect(
                    [[-1, -1], [0.2, -1], [0.2, 0.3], [-1, 0.3]], { isGl: true })"""
            )
            page.wait_for_function("() => explorer.state.nsel > 0", timeout=600_000)
            count = [page.evaluate("explorer.state.nsel"), 1000 * (time.perf_counter() - t0)]
            out["lasso"] = {"selected": count[0], "ms": round(count[1])}
            t0 = time.perf_counter()
            page.click("#save-rest")
            page.wait_for_selector("#selection-status[data-saved='1']", timeout=600_000)
            out["save_rest"] = {
                "written": int(page.get_attribute("#selection-status", "data-count") or 0),
                "s": round(time.perf_counter() - t0, 2),
            }
            if args.screenshot:
                page.screenshot(path=str(args.screenshot), full_page=True)
            browser.close()
        server.should_exit = True
        print(json.dumps(out, indent=1), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
