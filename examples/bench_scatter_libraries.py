"""Choosing the explorer's scatter library: regl-scatterplot against Plotly's scattergl.

    mkdir npm && cd npm && npm pack regl-scatterplot@1.16.0 regl@2.1.1 pub-sub-es@3.0.0 \\
        plotly.js-gl2d-dist-min@3.7.0 && for f in *.tgz; do mkdir "${f%.tgz}" && \\
        tar xzf "$f" -C "${f%.tgz}"; done && cd ..
    python examples/bench_scatter_libraries.py npm -n 100000 1000000 [--frames 20]

Draws N random points (three Gaussian blobs, coloured by a random value, 2-px markers, alpha
0.5) with each library on a 600 x 600 canvas in headless Chromium (WebGL on SwiftShader where
there is no GPU), then moves the view once a frame from the page's own loop (pan: the centre
goes round a circle; zoom: the span shrinks and grows) and prints the requestAnimationFrame
intervals (median, 95th percentile) and the time to the first drawing. regl-scatterplot's view
moves through ``zoomToLocation``, Plotly's through ``Plotly.relayout`` of the axis ranges (what
its own pan and zoom do). "regl-filter" draws the same points with all but 30,000 filtered out
(what the explorer does in its density view: the cost of the drawn points, not of the data).

Nothing here is a test; docs/benchmarks.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
from pathlib import Path

import numpy as np

DATA = """const x = new Float32Array(n), y = new Float32Array(n), v = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const r = Math.sqrt(-2 * Math.log(Math.random() + 1e-12)), a = 2 * Math.PI * Math.random();
    x[i] = 0.3 * r * Math.cos(a) + ((i % 3) - 1) * 0.4; y[i] = 0.3 * r * Math.sin(a);
    v[i] = Math.random();
  }"""
REGL = f"""<!doctype html><html><head><meta charset=utf-8>
<script src="regl.min.js"></script>
<script type="importmap">
{{"imports": {{"regl": "./regl-shim.js", "pub-sub-es": "./pub-sub-es.js"}}}}
</script></head><body style="margin:0"><canvas id=c style="width:600px;height:600px"></canvas>
<script type="module">
import createScatterplot from "./regl-scatterplot.esm.js";
window.setup = async (n, filtered) => {{
  const t0 = performance.now();
  {DATA}
  const sp = createScatterplot({{canvas: document.getElementById("c"), width: 600, height: 600,
    pointSize: 2, backgroundColor: [1, 1, 1, 1], opacity: 0.5, colorBy: "valueB",
    pointColor: ["#440154", "#31688e", "#35b779", "#fde725"]}});
  await sp.draw({{x, y, valueA: new Float32Array(n), valueB: v}});
  if (filtered) {{
    const f = []; for (let i = 0; i < n; i += Math.ceil(n / 30000)) f.push(i);
    await sp.filter(f);
  }}
  window.move = async (kind, k) => kind === "pan"
    ? sp.zoomToLocation([0.3 * Math.sin(k / 8), 0.3 * Math.cos(k / 8)], 0.8)
    : sp.zoomToLocation([0, 0], 1 / (1 + (k % 30) / 10));
  return performance.now() - t0;
}};
window.ready = true;
</script></body></html>"""
PLOTLY = f"""<!doctype html><html><head><meta charset=utf-8><script src="plotly-gl2d.min.js">
</script></head><body style="margin:0"><div id=c style="width:600px;height:600px"></div><script>
window.setup = async (n) => {{
  const t0 = performance.now();
  {DATA}
  await Plotly.newPlot("c", [{{type: "scattergl", mode: "markers", x, y,
    marker: {{size: 2, color: v, colorscale: "Viridis", opacity: 0.5}}}}],
    {{dragmode: "pan", margin: {{l: 40, r: 10, t: 10, b: 30}}, width: 600, height: 600}});
  window.move = (kind, k) => {{
    let cx = 0, cy = 0, h = 1.5;
    if (kind === "pan") {{ cx = 0.3 * Math.sin(k / 8); cy = 0.3 * Math.cos(k / 8); }}
    else h = 1.5 / (1 + (k % 30) / 10);
    const range = {{"xaxis.range": [cx - h, cx + h], "yaxis.range": [cy - h, cy + h]}};
    return Plotly.relayout("c", range);
  }};
  return performance.now() - t0;
}};
window.ready = true;
</script></body></html>"""
MEASURE = """async ([kind, frames]) => { const t = [];
  for (let k = 0; k <= frames; k++) {
    await window.move(kind, k); t.push(await new Promise(requestAnimationFrame));
  }
  return t; }"""
FILES = {
    "regl.min.js": "regl-2.1.1/package/dist/regl.min.js",
    "pub-sub-es.js": "pub-sub-es-3.0.0/package/dist/index.js",
    "regl-scatterplot.esm.js": "regl-scatterplot-1.16.0/package/dist/regl-scatterplot.esm.js",
    "plotly-gl2d.min.js": "plotly.js-gl2d-dist-min-3.7.0/package/plotly-gl2d.min.js",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("npm", type=Path, help="the folder the npm tarballs were unpacked in")
    ap.add_argument("-n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--libraries", nargs="+", default=["regl", "regl-filter", "plotly"])
    ap.add_argument("--chromium", default="/usr/lib/chromium/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    files = {name: (args.npm / path).read_bytes() for name, path in FILES.items()}
    files["regl-shim.js"] = b"export default window.createREGL;\n"
    files["regl.html"] = REGL.encode()
    files["plotly.html"] = PLOTLY.encode()

    def fulfil(route) -> None:
        name = route.request.url.rsplit("/", 1)[1]
        kind = mimetypes.guess_type(name)[0] or "text/javascript"
        route.fulfill(body=files[name], content_type=kind)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=args.chromium, headless=True, args=["--enable-unsafe-swiftshader"]
        )
        for n in args.n:
            for lib in args.libraries:
                page = browser.new_page(viewport={"width": 800, "height": 700})
                page.route("http://bench.local/**", fulfil)
                page.goto(f"http://bench.local/{'plotly' if lib == 'plotly' else 'regl'}.html")
                page.wait_for_function("window.ready === true")
                out: dict[str, object] = {"library": lib, "n": n}
                out["first_draw_ms"] = round(
                    page.evaluate("([n, f]) => setup(n, f)", [n, lib == "regl-filter"])
                )
                page.wait_for_timeout(500)
                for kind in ("pan", "zoom"):
                    t = np.diff(page.evaluate(MEASURE, [kind, args.frames]))[1:]
                    out[kind] = {
                        "median_ms": round(float(np.median(t)), 1),
                        "p95_ms": round(float(np.percentile(t, 95)), 1),
                    }
                print(json.dumps(out), flush=True)
                page.close()
        browser.close()


if __name__ == "__main__":
    main()
