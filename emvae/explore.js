// emvae explore: the page's script, an ES module (served by emvae.explore_app).
// The scatter is regl-scatterplot (WebGL; shipped in emvae/vendor/, see its NOTICE): pan, zoom,
// hover, lasso. Above DENSITY_MIN points in view the page draws their density (a 2-D histogram
// binned here, on a canvas under the WebGL one) and only the selected points; zoomed in, points.
// Selections are computed here over every particle (never only the drawn ones) in table order.
// A run fitted with --classes K: the particles' classes (the table's class, 1-based) filter the
// scatter (the selection stays within the classes shown) and the generator draws a chosen class.
import createScatterplot from "regl-scatterplot";

const $ = (id) => document.getElementById(id);
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];
const MISSING = "#bbbbbb";
const MARGIN = { left: 56, right: 12, top: 12, bottom: 40 };
const DENSITY_MIN = 50000;  // "auto": density above this many points in view
const DENSITY_BIN = 2;  // screen pixels per density bin
const MAX_DRAWN_SELECTED = 50000;  // density view: selected points drawn as points up to this

const S = {
  run: null, meta: null, n: 0, x: null, y: null, c: null, colour: null, xlabel: "", ylabel: "",
  idx: null, inv: null, nx: null, ny: null, bounds: null, sel: null, nsel: 0,
  particle: null, particleData: null, sp: null, xScale: null, yScale: null,
  display: "points", inView: 0, shift: false, hist: null, cache: new Map(),
  gen: { z: [], theta: 0, shift: [0, 0] }, inflight: false, pending: false,
  rendered: null, renders: 0, timings: {}, drawn: null, settle: null, frameQueued: false,
  press: null, cls: null, shown: null, nshown: 0,
  walk: null, walkBusy: false, walkPending: false, walks: 0,
};
const WALK_STEPS = 9;  // as emvae montage's traversals

// --classes: is particle i of a class shown? (always, without classes)
function isShown(i) { return !S.cls || S.shown.has(S.cls[i]); }

function classRun() { return !!(S.meta && S.meta.classes.length); }

function showError(msg) { $("error").textContent = msg || ""; }

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : r.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    const err = new Error(`${r.status}: ${detail}`);
    err.status = r.status;
    throw err;
  }
  showError("");
  return data;
}

// One column of every particle, as float32 (NaN missing): binary, not JSON (1e6 points: 4 MB).
async function column(name, codes) {
  const key = `${S.run}\u0000${name}\u0000${codes ? 1 : 0}`;
  if (S.cache.has(key)) return S.cache.get(key);
  const r = await fetch(runPath(`/arrays/${encodeURIComponent(name)}${codes ? "?codes=1" : ""}`));
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${r.status}: ${detail}`);
  }
  const a = new Float32Array(await r.arrayBuffer());
  S.cache.set(key, a);
  return a;
}

function runPath(rest) { return `api/runs/${encodeURIComponent(S.run)}${rest || ""}`; }

function fmt(v) {
  if (v === null || v === undefined || (typeof v === "number" && Number.isNaN(v))) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4);
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text === undefined ? value : text;
  select.appendChild(o);
}

// ------------------------------------------------------------------ colours

function viridisRGB(t) {
  if (!(t >= 0)) t = 0;
  if (t > 1) t = 1;
  const f = t * (VIRIDIS.length - 1), i = Math.min(Math.floor(f), VIRIDIS.length - 2), u = f - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return a.map((c, k) => Math.round(c + (b[k] - c) * u));
}

function viridis(t) { return `rgb(${viridisRGB(t).join(",")})`; }

function hex(rgb) { return "#" + rgb.map((c) => c.toString(16).padStart(2, "0")).join(""); }

const CONTINUOUS = Array.from({ length: 64 }, (_, k) => hex(viridisRGB(k / 63)));

function drawLegend() {
  const el = $("legend");
  el.innerHTML = "";
  const c = S.colour;
  if (!c) return;
  const name = document.createElement("span");
  name.textContent = c.name + ":";
  el.appendChild(name);
  if (c.kind === "category") {
    c.labels.forEach((label, k) => {
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = PALETTE[k % PALETTE.length];
      el.appendChild(sw);
      el.appendChild(document.createTextNode(`${label} (${c.counts[k]})`));
    });
    return;
  }
  const bar = document.createElement("canvas");
  bar.width = 140; bar.height = 10;
  const g = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) { g.fillStyle = viridis(x / (bar.width - 1)); g.fillRect(x, 0, 1, 10); }
  el.appendChild(document.createTextNode(" " + fmt(c.range[0])));
  el.appendChild(bar);
  el.appendChild(document.createTextNode(fmt(c.range[1])));
}

// The two values regl-scatterplot draws per point: valueA a category (0.. labels, the last one
// "missing"), valueB a continuous value in [0, 1].
function pointValues() {
  const m = S.idx.length, a = new Float32Array(m), b = new Float32Array(m), c = S.colour;
  if (!c || !S.c) return { a, b, colours: ["#1f77b4"], by: null };
  if (c.kind === "category") {
    const miss = c.labels.length;
    for (let k = 0; k < m; k++) { const v = S.c[S.idx[k]]; a[k] = Number.isNaN(v) ? miss : v; }
    const colours = c.labels.map((_, k) => PALETTE[k % PALETTE.length]).concat([MISSING]);
    return { a, b, colours, by: "valueA" };
  }
  const [lo, hi] = c.range, span = hi > lo ? hi - lo : 1;
  for (let k = 0; k < m; k++) {
    const v = S.c[S.idx[k]];
    b[k] = Number.isNaN(v) ? 0 : Math.min(1, Math.max(0, (v - lo) / span));
  }
  return { a, b, colours: CONTINUOUS, by: "valueB" };
}

// ------------------------------------------------------------------ scales and axes

// A linear scale with the parts of d3-scale's API regl-scatterplot uses (domain, range).
function linearScale(d0, d1, r0, r1) {
  let dom = [d0, d1], ran = [r0, r1];
  const s = (v) => ran[0] + ((v - dom[0]) / (dom[1] - dom[0])) * (ran[1] - ran[0]);
  s.invert = (p) => dom[0] + ((p - ran[0]) / (ran[1] - ran[0])) * (dom[1] - dom[0]);
  s.domain = (d) => { if (d === undefined) return dom.slice(); dom = [d[0], d[1]]; return s; };
  s.range = (r) => { if (r === undefined) return ran.slice(); ran = [r[0], r[1]]; return s; };
  s.copy = () => linearScale(dom[0], dom[1], ran[0], ran[1]);
  return s;
}

function tickText(v, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return decimals > 6 ? v.toExponential(1) : v.toFixed(decimals);
}

function tickStep(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return 1;
  let step = Math.pow(10, Math.floor(Math.log10(span / n)));
  const err = span / n / step;
  if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
  return step;
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const step = tickStep(lo, hi, n);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(+v.toPrecision(12));
  return out;
}

function plotSize() { const cv = $("scatter"); return [cv.clientWidth, cv.clientHeight]; }

function drawAxes() {
  const cv = $("axes"), g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  if (!S.xScale) return;
  const [w, h] = plotSize();
  const [x0, x1] = S.xScale.domain(), [y0, y1] = S.yScale.domain();
  g.strokeStyle = "#999"; g.strokeRect(MARGIN.left - 0.5, MARGIN.top - 0.5, w + 1, h + 1);
  g.fillStyle = "#444"; g.font = "11px sans-serif"; g.textAlign = "center";
  const xs = tickStep(x0, x1, 6), ys = tickStep(y0, y1, 6);
  for (const t of niceTicks(x0, x1, 6)) {
    const px = MARGIN.left + ((t - x0) / (x1 - x0)) * w;
    g.fillRect(px, MARGIN.top + h, 1, 4);
    g.fillText(tickText(t, xs), px, MARGIN.top + h + 15);
  }
  g.textAlign = "right";
  for (const t of niceTicks(y0, y1, 6)) {
    const py = MARGIN.top + (1 - (t - y0) / (y1 - y0)) * h;
    g.fillRect(MARGIN.left - 4, py, 4, 1);
    g.fillText(tickText(t, ys), MARGIN.left - 6, py + 4);
  }
  g.textAlign = "center"; g.font = "12px sans-serif";
  g.fillText(S.xlabel, MARGIN.left + w / 2, cv.height - 6);
  g.save(); g.translate(12, MARGIN.top + h / 2); g.rotate(-Math.PI / 2);
  g.fillText(S.ylabel, 0, 0); g.restore();
  const i = S.particle;  // the particle shown: a red ring
  if (i !== null && S.inv && S.inv[i] >= 0) {
    const px = MARGIN.left + ((S.x[i] - x0) / (x1 - x0)) * w;
    const py = MARGIN.top + (1 - (S.y[i] - y0) / (y1 - y0)) * h;
    if (px >= MARGIN.left && px <= MARGIN.left + w && py >= MARGIN.top && py <= MARGIN.top + h) {
      g.strokeStyle = "#e00"; g.lineWidth = 2;
      g.beginPath(); g.arc(px, py, 7, 0, 2 * Math.PI); g.stroke(); g.lineWidth = 1;
    }
  }
}

// Screen position (CSS pixels in the plot area) of table row i; null when not drawn.
function screenOf(i) {
  if (!S.inv || S.inv[i] < 0) return null;
  return [S.xScale(S.x[i]), S.yScale(S.y[i])];
}

// ------------------------------------------------------------------ density and what is drawn

// Bins every point in view into DENSITY_BIN-pixel cells; returns how many are in view. With
// `paint` it draws the counts (log scale, greys) and the selected points' counts (orange).
function densityPass(paint) {
  const [w, h] = plotSize();
  const bw = Math.ceil(w / DENSITY_BIN), bh = Math.ceil(h / DENSITY_BIN);
  const [x0, x1] = S.xScale.domain(), [y0, y1] = S.yScale.domain();
  const kx = bw / (x1 - x0), ky = bh / (y1 - y0);
  const counts = paint ? new Uint32Array(bw * bh) : null;
  const chosen = paint && S.nsel ? new Uint32Array(bw * bh) : null;
  const { x, y, idx, sel } = S;
  let inView = 0;
  for (let k = 0, m = idx.length; k < m; k++) {
    const i = idx[k];
    const fx = (x[i] - x0) * kx, fy = (y1 - y[i]) * ky;
    if (fx < 0 || fy < 0 || fx >= bw || fy >= bh) continue;
    inView++;
    if (counts) {
      const b = (fy | 0) * bw + (fx | 0);
      counts[b]++;
      if (chosen && sel[i]) chosen[b]++;
    }
  }
  if (paint) {
    S.inView = inView; S.countedView = viewKey();
    const cv = $("density"), g = cv.getContext("2d");
    let top = 1;
    for (let b = 0; b < counts.length; b++) if (counts[b] > top) top = counts[b];
    const img = new ImageData(bw, bh), d = img.data, scale = 1 / Math.log1p(top);
    for (let b = 0; b < counts.length; b++) {
      if (!counts[b]) continue;
      const t = Math.log1p(counts[b]) * scale, o = 4 * b;
      if (chosen && chosen[b]) {
        const u = 0.35 + 0.65 * Math.log1p(chosen[b]) * scale;
        d[o] = 255; d[o + 1] = Math.round(140 - 90 * u); d[o + 2] = 0; d[o + 3] = 255;
      } else {
        const v = Math.round(225 - 205 * t);
        d[o] = v; d[o + 1] = v; d[o + 2] = Math.min(255, v + 20); d[o + 3] = 255;
      }
    }
    const tmp = S.densityTmp || (S.densityTmp = document.createElement("canvas"));
    tmp.width = bw; tmp.height = bh;
    tmp.getContext("2d").putImageData(img, 0, 0);
    g.clearRect(0, 0, cv.width, cv.height);
    g.imageSmoothingEnabled = false;
    g.drawImage(tmp, 0, 0, bw * DENSITY_BIN * (cv.width / w), bh * DENSITY_BIN * (cv.height / h));
  }
  return inView;
}

function viewKey() { return `${S.xScale.domain()}|${S.yScale.domain()}`; }

// How many points are in view: over the points drawn when they cover the view, else all.
function countInView() {
  const [x0, x1] = S.xScale.domain(), [y0, y1] = S.yScale.domain(), r = S.region;
  let n = 0;
  if (S.want && r && x0 >= r.x0 && x1 <= r.x1 && y0 >= r.y0 && y1 <= r.y1) {
    for (const k of S.want) {
      const i = S.idx[k];
      if (S.x[i] >= x0 && S.x[i] <= x1 && S.y[i] >= y0 && S.y[i] <= y1) n++;
    }
  } else {
    n = densityPass(false);
  }
  S.countedView = viewKey();
  return n;
}

function clearDensity() {
  const cv = $("density");
  cv.getContext("2d").clearRect(0, 0, cv.width, cv.height);
}

// What regl-scatterplot draws: every point (few of them), the points in (and around) the view
// (zoomed in on many), or in the density view only the selected ones.
function updateDrawn(force) {
  if (!S.sp) return;
  const mode = $("display").value, m = S.idx.length;
  const inView = viewKey() === S.countedView ? S.inView : countInView();
  S.inView = inView;
  const density = mode === "density" || (mode === "auto" && inView > DENSITY_MIN);
  S.display = density ? "density" : "points";
  let want = null;  // null: all points
  if (density) {
    if (!force && S.drawn === "density") { paintDensity(); return; }
    want = [];
    if (S.nsel <= MAX_DRAWN_SELECTED) for (let k = 0; k < m; k++) if (S.sel[S.idx[k]]) want.push(k);
    S.region = null;
  } else if (m > DENSITY_MIN) {
    const [x0, x1] = S.xScale.domain(), [y0, y1] = S.yScale.domain(), r = S.region;
    // the points drawn still cover the view, at about this zoom: nothing to hand over again
    if (!force && r && S.display === r.display && x0 >= r.x0 && x1 <= r.x1 && y0 >= r.y0 &&
        y1 <= r.y1 && x1 - x0 > r.span / 2) { paintDensity(); return; }
    const mx = (x1 - x0) * 0.25, my = (y1 - y0) * 0.25;  // a margin: a short pan shows points
    S.region = { x0: x0 - mx, x1: x1 + mx, y0: y0 - my, y1: y1 + my, span: x1 - x0, display: S.display };
    const g = S.region;
    want = [];
    for (let k = 0; k < m; k++) {
      const i = S.idx[k], xv = S.x[i], yv = S.y[i];
      if (xv >= g.x0 && xv <= g.x1 && yv >= g.y0 && yv <= g.y1) want.push(k);
    }
  }
  S.want = density ? null : want;
  const key = density ? "density" : want === null ? "all" : `${want.length}:${want[0]}:${want[want.length - 1]}`;
  if (!force && key === S.drawn) { paintDensity(); return; }
  S.drawn = key;
  if (want === null) S.sp.unfilter({ preventEvent: true });
  else S.sp.filter(want.length ? want : [m], { preventEvent: true });  // [m]: none (out of range)
  applySelection();
  paintDensity();
}

function paintDensity() {
  if (S.display === "density") densityPass(true); else clearDensity();
  const shown = S.display === "density" ? "density" : "points";
  $("view-status").textContent = `${S.inView} in view (${shown})`;
  $("plot").dataset.display = shown;
}

// After every view change: axes and density each frame, what is drawn once the view settles.
function viewChanged() {
  if (S.frameQueued) return;
  S.frameQueued = true;
  requestAnimationFrame(() => {
    S.frameQueued = false;
    drawAxes();
    if (S.display === "density") densityPass(true);
    clearTimeout(S.settle);
    S.settle = setTimeout(() => updateDrawn(false), 120);
  });
}

// ------------------------------------------------------------------ selection

function applySelection() {
  if (!S.sp) return;
  const out = [];
  if (S.nsel) for (let k = 0, m = S.idx.length; k < m; k++) if (S.sel[S.idx[k]]) out.push(k);
  S.sp.select(out, { preventEvent: true });
}

function insidePolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const xi = poly[i][0], yi = poly[i][1], xj = poly[j][0], yj = poly[j][1];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

// Plot-area pixels -> the points' normalised space (regl-scatterplot's, [-1, 1] at the start).
function toNormal([px, py]) {
  const b = S.bounds;
  return [
    ((S.xScale.invert(px) - b.x0) * 2) / (b.x1 - b.x0) - 1,
    ((S.yScale.invert(py) - b.y0) * 2) / (b.y1 - b.y0) - 1,
  ];
}

// A polygon in the points' normalised space -> every particle inside it, over all points
// (drawn or not). A drag on the scatter gives the mouse's own path from where it was pressed to
// where it was released (a box: the rectangle between the two), recorded here rather than taken
// from regl-scatterplot's lasso, which starts at the first move and, on a busy machine, can
// miss a quick drag.
function lassoSelect(coordinates) {
  coordinates = coordinates || [];
  if (coordinates.length < 3) { applySelection(); return; }
  let bx0 = Infinity, bx1 = -Infinity, by0 = Infinity, by1 = -Infinity;
  for (const [px, py] of coordinates) {
    bx0 = Math.min(bx0, px); bx1 = Math.max(bx1, px); by0 = Math.min(by0, py); by1 = Math.max(by1, py);
  }
  if (!S.shift) { S.sel.fill(0); S.nsel = 0; }
  for (let k = 0, m = S.idx.length; k < m; k++) {
    const px = S.nx[k], py = S.ny[k];
    if (px < bx0 || px > bx1 || py < by0 || py > by1) continue;
    if (insidePolygon(px, py, coordinates)) {
      const i = S.idx[k];
      if (!S.sel[i]) { S.sel[i] = 1; S.nsel++; }
    }
  }
  selectionChanged();
}

function selectRange(lo, hi, add) {  // the histogram: z1 in [lo, hi]
  if (!add) { S.sel.fill(0); S.nsel = 0; }
  const z = S.hist.z;
  for (let i = 0; i < S.n; i++) {
    if (z[i] >= lo && z[i] <= hi && !S.sel[i] && isShown(i)) { S.sel[i] = 1; S.nsel++; }
  }
  selectionChanged();
}

function selectedList() {
  const out = [];
  for (let i = 0; i < S.n; i++) if (S.sel[i]) out.push(i);
  return out;
}

function selectionChanged() {
  const n = S.nsel;
  $("selected-count").textContent = `${n} of ${S.nshown} selected`;
  $("save-selection").disabled = n === 0;
  $("save-rest").disabled = n === 0 || n === S.nshown;
  $("clear-selection").disabled = n === 0;
  if (S.sp) updateDrawn(true);
  drawHistogram();
}

// "save selection" / "save the rest": the smaller of the two lists goes to the server.
async function save(rest) {
  const typed = $("selection-name").value.trim();
  const name = typed || (rest ? S.meta.next_rest : S.meta.next_selection);
  const selected = S.nsel, others = S.nshown - S.nsel;
  let body;
  if ((rest ? others : selected) <= S.nshown / 2) {
    body = { indices: rest ? unselectedList() : selectedList(), name, rest: false };
  } else {
    body = { indices: rest ? selectedList() : unselectedList(), name, rest: true };
  }
  if (classRun()) body.classes = shownClasses();  // the rest: of the classes shown
  for (const id of ["save-selection", "save-rest"]) $(id).disabled = true;
  try {
    const r = await api(runPath("/selections"), body);
    const what = rest ? "the rest" : "the selection";
    const suffixes = r.paths.slice(1).map((p) => p.slice(p.lastIndexOf("."))).join(", ");
    $("selection-status").textContent =
      `saved ${what}, ${r.count} of ${r.total} particles: ${r.paths[0]} (${suffixes})` +
      (r.note ? `; ${r.note}` : "");
    $("selection-status").dataset.count = r.count;
    $("selection-status").dataset.path = r.paths[0];
    $("selection-status").dataset.saved = (Number($("selection-status").dataset.saved) || 0) + 1;
    $("selection-name").value = "";
    S.meta.next_selection = r.next_name; S.meta.next_rest = r.next_rest;
    $("selection-name").placeholder = `${r.next_name} / ${r.next_rest}`;
  } catch (e) {
    $("selection-status").textContent = "";
    showError(e.message);
  } finally {
    selectionChanged();
  }
}

function unselectedList() {  // of the classes shown
  const out = [];
  for (let i = 0; i < S.n; i++) if (!S.sel[i] && isShown(i)) out.push(i);
  return out;
}

// ------------------------------------------------------------------ classes (--classes K)

function shownClasses() { return S.meta.classes.map((c) => c.class).filter((c) => S.shown.has(c)); }

function countShown() {
  let n = 0;
  for (let i = 0; i < S.n; i++) if (isShown(i)) n++;
  S.nshown = n;
}

// The class filter's boxes (coloured as the scatter colours the class column) and the
// generator's class menu; hidden without classes.
function buildClasses() {
  const m = S.meta, boxes = $("class-boxes"), menu = $("gen-class");
  boxes.innerHTML = ""; menu.innerHTML = "";
  $("class-filter").hidden = !m.classes.length;
  $("gen-class-label").hidden = !m.classes.length;
  $("from-particle").textContent = m.classes.length ? "use the particle's z and class" : "use the particle's z";
  m.classes.forEach((c, k) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    Object.assign(box, { type: "checkbox", id: `class-${c.class}`, checked: true });
    box.addEventListener("change", () => {
      if (!S.meta.classes.some((d) => $(`class-${d.class}`).checked)) box.checked = true;  // one at least
      classFilterChanged().catch((e) => showError(e.message));
    });
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = PALETTE[k % PALETTE.length];
    label.append(box, sw, document.createTextNode(`${c.class} (${c.count}) `));
    boxes.appendChild(label);
    option(menu, String(c.class), `${c.class} (${c.count} particles)`);
  });
  if (m.classes.length) {  // the generator starts on the largest class, at its median z
    const big = m.classes.reduce((a, b) => (b.count > a.count ? b : a));
    menu.value = String(big.class);
  }
}

// The classes shown changed: particles of the others leave the selection and the scatter.
async function classFilterChanged() {
  S.shown = new Set(S.meta.classes.map((c) => c.class).filter((c) => $(`class-${c}`).checked));
  for (let i = 0; i < S.n; i++) if (S.sel[i] && !isShown(i)) { S.sel[i] = 0; S.nsel--; }
  countShown();
  $("plot").dataset.classes = shownClasses().join(",");
  await drawPoints();
  selectionChanged();
}

function selectShown() {
  for (let i = 0; i < S.n; i++) if (isShown(i) && !S.sel[i]) { S.sel[i] = 1; S.nsel++; }
  selectionChanged();
}

function classMedian(c) {
  const d = S.meta.classes.find((x) => x.class === c);
  return d ? d.z : S.meta.z.map((x) => x.value);
}

// ------------------------------------------------------------------ the histogram (1-D z)

function drawHistogram() {
  const cv = $("histogram"), H = S.hist;
  if (!H) { cv.hidden = true; return; }
  cv.hidden = false;
  const g = cv.getContext("2d"), w = cv.width, h = cv.height;
  const left = MARGIN.left, right = w - MARGIN.right, top = 8, bottom = h - 30;
  const nb = 80, all = new Uint32Array(nb), chosen = new Uint32Array(nb);
  const lo = H.lo, span = H.hi - H.lo;
  for (let i = 0; i < S.n; i++) {
    const v = H.z[i];
    if (!(v >= lo && v <= H.hi) || !isShown(i)) continue;
    const b = Math.min(nb - 1, Math.floor(((v - lo) / span) * nb));
    all[b]++;
    if (S.sel[i]) chosen[b]++;
  }
  let peak = 1;
  for (const c of all) peak = Math.max(peak, c);
  g.clearRect(0, 0, w, h);
  const bw = (right - left) / nb;
  for (let b = 0; b < nb; b++) {
    const hh = ((bottom - top) * all[b]) / peak, hs = ((bottom - top) * chosen[b]) / peak;
    g.fillStyle = "#9ab"; g.fillRect(left + b * bw, bottom - hh, Math.max(1, bw - 1), hh);
    if (hs) { g.fillStyle = "#f70"; g.fillRect(left + b * bw, bottom - hs, Math.max(1, bw - 1), hs); }
  }
  g.strokeStyle = "#999"; g.strokeRect(left - 0.5, top - 0.5, right - left + 1, bottom - top + 1);
  g.fillStyle = "#444"; g.font = "11px sans-serif"; g.textAlign = "center";
  const step = tickStep(lo, H.hi, 6);
  for (const t of niceTicks(lo, H.hi, 6)) {
    const px = left + ((t - lo) / span) * (right - left);
    g.fillRect(px, bottom, 1, 4);
    g.fillText(tickText(t, step), px, bottom + 15);
  }
  g.fillText(`${H.name} (${S.nshown} particles; drag selects a range, a click sets the z1 slider)`, (left + right) / 2, h - 2);
  const z1 = S.gen.z[0];  // the generator's z1
  if (z1 !== undefined) {
    const px = left + ((z1 - lo) / span) * (right - left);
    g.strokeStyle = "#e00"; g.lineWidth = 2;
    g.beginPath(); g.moveTo(px, top); g.lineTo(px, bottom); g.stroke(); g.lineWidth = 1;
  }
  if (H.drag) {
    const [a, b] = H.drag;
    g.fillStyle = "rgba(0,0,0,0.12)"; g.fillRect(Math.min(a, b), top, Math.abs(b - a), bottom - top);
  }
}

function setupHistogram() {
  const cv = $("histogram");
  const zAt = (ev) => {
    const r = cv.getBoundingClientRect(), px = ((ev.clientX - r.left) * cv.width) / r.width;
    const left = MARGIN.left, right = cv.width - MARGIN.right;
    return [px, S.hist.lo + ((px - left) / (right - left)) * (S.hist.hi - S.hist.lo)];
  };
  cv.addEventListener("mousedown", (ev) => {
    if (!S.hist) return;
    ev.preventDefault();
    const [px, z] = zAt(ev);
    S.hist.drag = [px, px]; S.hist.z0 = z; S.hist.add = ev.shiftKey;
  });
  window.addEventListener("mousemove", (ev) => {
    if (!S.hist || !S.hist.drag) return;
    S.hist.drag[1] = zAt(ev)[0]; drawHistogram();
  });
  window.addEventListener("mouseup", (ev) => {
    if (!S.hist || !S.hist.drag) return;
    const [a, b] = S.hist.drag, z1 = zAt(ev)[1], z0 = S.hist.z0;
    S.hist.drag = null;
    if (Math.abs(b - a) < 3) {  // a click: the z1 slider goes there
      setGenerator([z0, ...S.gen.z.slice(1)], S.gen.theta, S.gen.shift);
      drawHistogram();
      return;
    }
    selectRange(Math.min(z0, z1), Math.max(z0, z1), S.hist.add);
  });
}

// ------------------------------------------------------------------ the scatter

function nearest(px, py, radius) {  // table row nearest to the plot-area point, within radius
  let best = null, bd = radius * radius;
  const [x0, x1] = S.xScale.domain(), [y0, y1] = S.yScale.domain(), [w, h] = plotSize();
  const kx = w / (x1 - x0), ky = h / (y1 - y0);
  for (let k = 0, m = S.idx.length; k < m; k++) {
    const i = S.idx[k];
    const dx = (S.x[i] - x0) * kx - px, dy = (y1 - S.y[i]) * ky - py;
    const dd = dx * dx + dy * dy;
    if (dd <= bd) { bd = dd; best = i; }
  }
  return best;
}

function setMode() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  $("plot").classList.toggle("pan", mode === "pan");
  if (!S.sp) return;
  S.sp.set({
    mouseMode: mode === "pan" ? "panZoom" : "lasso",
    lassoType: mode === "box" ? "rectangle" : "freeform",
  });
}

function createScatter() {
  const cv = $("scatter"), [w, h] = plotSize();
  S.xScale = linearScale(S.bounds.x0, S.bounds.x1, 0, w);
  S.yScale = linearScale(S.bounds.y0, S.bounds.y1, h, 0);
  const sp = createScatterplot({
    canvas: cv, width: w, height: h, xScale: S.xScale, yScale: S.yScale,
    backgroundColor: [1, 1, 1, 0], opacity: S.n > 3000 ? 0.6 : 0.85,
    pointSize: S.n > 20000 ? 2 : S.n > 3000 ? 3 : 5,
    pointColorActive: [0, 0, 0, 1], pointOutlineWidth: 1, pointSizeSelected: 1,
    pointColorHover: [0.9, 0, 0, 1], lassoColor: [0, 0, 0, 0.8], lassoLineWidth: 1.5,
    lassoMinDelay: 0, lassoMinDist: 0, deselectOnDblClick: false, deselectOnEscape: false,
    actionKeyMap: { merge: "shift" }, pointScaleMode: "constant",
  });
  sp.subscribe("view", viewChanged);
  // boxes and lassos are selected from the pointer's own path on pointerup (below), never
  // from the library's lasso: its path starts at the first move and its end event can come
  // after ours on a busy machine, replacing the selection with a different one
  // clicks and the library's own picks must not change the selection: it is ours
  sp.subscribe("select", () => setTimeout(applySelection, 0));
  sp.subscribe("deselect", () => setTimeout(applySelection, 0));
  sp.subscribe("pointover", (k) => showTooltip(S.idx[k]));
  sp.subscribe("pointout", () => { $("tooltip").style.display = "none"; });
  let down = null, moved = 0;  // where the pointer was pressed; how far it has been since
  const at = (ev) => { const r = cv.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
  cv.addEventListener("pointerdown", (ev) => {
    down = [ev.clientX, ev.clientY]; moved = 0; S.shift = ev.shiftKey;
    const mode = document.querySelector("input[name=mode]:checked").value;
    S.press = mode === "pan" ? null : { path: [at(ev)], box: mode === "box" };
  });
  window.addEventListener("pointermove", (ev) => {
    if (!down) return;
    // the farthest from the press: a lasso that closes where it began is still a drag
    moved = Math.max(moved, Math.abs(ev.clientX - down[0]) + Math.abs(ev.clientY - down[1]));
    if (S.press) S.press.path.push(at(ev));
  });
  window.addEventListener("pointerup", (ev) => {
    if (!down) return;
    moved = Math.max(moved, Math.abs(ev.clientX - down[0]) + Math.abs(ev.clientY - down[1]));
    const press = S.press;
    down = null; S.press = null;
    if (moved > 4) {
      if (!press) return;  // a pan
      press.path.push(at(ev));
      const path = press.path.map(toNormal), a = path[0], b = path[path.length - 1];
      lassoSelect(press.box ? [a, [b[0], a[1]], b, [a[0], b[1]]] : path);
      return;
    }
    if (ev.target !== cv) return;
    const [px, py] = at(ev), i = nearest(px, py, 10);
    if (i !== null) showParticle(i);
  });
  S.sp = sp;
  setMode();
}

function showTooltip(i) {
  const tip = $("tooltip"), p = screenOf(i);
  if (p === null || i === undefined) return;
  const c = S.colour;
  let colour = "";
  if (c && S.c) {
    const v = S.c[i];
    colour = c.kind === "category" ? (Number.isNaN(v) ? "–" : c.labels[v]) : fmt(v);
    colour = `, ${c.name} ${colour}`;
  }
  if (S.cls && !(c && c.name === "class")) colour += `, class ${S.cls[i]}`;
  tip.textContent = `#${i}: ${S.xlabel} ${fmt(S.x[i])}, ${S.ylabel} ${fmt(S.y[i])}${colour}`;
  tip.style.left = `${MARGIN.left + p[0] + 10}px`;
  tip.style.top = `${MARGIN.top + p[1] - 24}px`;
  tip.style.display = "block";
  tip.dataset.index = String(i);
}

async function drawPoints() {
  const { x, y } = S, n = S.n;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, m = 0;
  for (let i = 0; i < n; i++) {
    const a = x[i], b = y[i];
    if (Number.isNaN(a) || Number.isNaN(b) || !Number.isFinite(a) || !Number.isFinite(b)) continue;
    if (!isShown(i)) continue;
    m++;
    if (a < x0) x0 = a; if (a > x1) x1 = a; if (b < y0) y0 = b; if (b > y1) y1 = b;
  }
  if (!m) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  const px = (x1 - x0) * 0.05 || 1, py = (y1 - y0) * 0.05 || 1;
  S.bounds = { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
  S.idx = new Int32Array(m); S.inv = new Int32Array(n).fill(-1);
  S.nx = new Float32Array(m); S.ny = new Float32Array(m);
  const b = S.bounds, sx = 2 / (b.x1 - b.x0), sy = 2 / (b.y1 - b.y0);
  for (let i = 0, k = 0; i < n; i++) {
    const a = x[i], c = y[i];
    if (!Number.isFinite(a) || !Number.isFinite(c) || !isShown(i)) continue;
    S.idx[k] = i; S.inv[i] = k;
    S.nx[k] = (a - b.x0) * sx - 1; S.ny[k] = (c - b.y0) * sy - 1;
    k++;
  }
  if (S.sp) { S.sp.destroy(); S.sp = null; }
  createScatter();
  const v = pointValues();
  S.sp.set({ pointColor: v.colours, colorBy: v.by });
  S.drawn = null; S.region = null; S.want = null; S.countedView = null;
  await S.sp.draw({ x: S.nx, y: S.ny, valueA: v.a, valueB: v.b }, { zDataType: "categorical", wDataType: "continuous" });
  updateDrawn(true);
  drawAxes();
}

async function recolour() {
  const v = pointValues();
  S.sp.set({ pointColor: v.colours, colorBy: v.by });
  await S.sp.draw({ x: S.nx, y: S.ny, valueA: v.a, valueB: v.b }, { zDataType: "categorical", wDataType: "continuous", preventFilterReset: true });
  S.drawn = null;
  updateDrawn(true);
}

// ------------------------------------------------------------------ data

async function loadPoints() {
  const xl = $("x").value, yl = $("y").value, t0 = performance.now();
  const [x, y] = await Promise.all([column(xl), column(yl)]);
  S.timings.columns_ms = performance.now() - t0;
  S.x = x; S.y = y; S.xlabel = xl; S.ylabel = yl;
  const t1 = performance.now();
  await drawPoints();
  S.timings.draw_ms = performance.now() - t1;
}

async function loadColour(name) {
  const [meta, values] = await Promise.all([
    api(runPath(`/colours/${encodeURIComponent(name)}?values=false`)),
    column(name, true),
  ]);
  S.colour = meta; S.c = values;
  drawLegend();
}

async function showParticle(i) {
  S.particle = i; drawAxes();
  $("particle-index").textContent = `${i}`;
  try {
    const p = await api(runPath(`/particles/${i}`));
    if (S.particle !== i) return;
    S.particleData = p;
    $("particle-name").textContent = p.row.image ? ` ${p.row.image}` : "";
    const imgs = [["observed-img", p.observed], ["recon-img", p.reconstruction], ["canonical-img", p.generator]];
    await Promise.all(imgs.map(([id, src]) => { const im = $(id); im.src = src; return im.decode().catch(() => null); }));
    const table = $("particle-row");
    table.innerHTML = "";
    const rows = Object.entries(p.row);
    rows.push(["pose (model px)", `θ ${fmt(p.theta_deg)}°, shift (${p.shift_px.map(fmt).join(", ")})`]);
    for (const [k, v] of rows) {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td>";
      tr.children[0].textContent = k; tr.children[1].textContent = fmt(v);
      table.appendChild(tr);
    }
    $("from-particle").disabled = S.meta.zdim === 0 && p.class === undefined;
    $("canonical-caption").textContent = p.class === undefined
      ? "generator, θ = 0, Δx = 0" : `generator as class ${p.class}, θ = 0, Δx = 0`;
    $("particle-panel").dataset.index = String(i);
  } catch (e) {
    showError(e.message);
  }
}

// ------------------------------------------------------------------ the generator

function genRequest() {
  const body = { z: S.gen.z.slice(), theta_deg: S.gen.theta, shift_px: S.gen.shift.slice() };
  if (S.gen.cls !== undefined) body.class = S.gen.cls;  // --classes: the class drawn
  return body;
}

function requestRender() {
  if (S.inflight) { S.pending = true; return; }
  S.inflight = true; S.pending = false;
  const body = genRequest();
  api(runPath("/generate"), body).then(async (r) => {
    const img = $("gen-img");
    img.src = r.images[0];
    await img.decode().catch(() => null);
    S.rendered = JSON.stringify(body);
    img.dataset.rendered = S.rendered;
    S.renders += 1;
  }).catch((e) => showError(e.message)).finally(() => {
    S.inflight = false;
    if (S.pending) requestRender();
  });
  if (S.walk !== null) drawWalk();
}

// ------------------------------------------------------------------ the walk along one z

// WALK_STEPS z from the 2nd to the 98th percentile of z_k over the particles (of the class
// drawn, with --classes), the other z, theta and shift at the sliders': emvae montage's
// traversal of that class at the sliders' start.
function walkRequest(k) {
  const m = S.meta, c = S.gen.cls;
  const d = c !== undefined ? m.classes.find((x) => x.class === c) : null;
  const [lo, hi] = d ? d.walk[k] : m.z[k].walk;
  const z = [];
  for (let j = 0; j < WALK_STEPS; j++) {
    const row = S.gen.z.slice();
    row[k] = lo + ((hi - lo) * j) / (WALK_STEPS - 1);
    z.push(row);
  }
  const body = { z, theta_deg: S.gen.theta, shift_px: S.gen.shift.slice() };
  if (c !== undefined) body.class = c;
  return body;
}

function drawWalk() {
  if (S.walkBusy) { S.walkPending = true; return; }
  S.walk = +$("walk-dim").value;
  S.walkBusy = true; S.walkPending = false;
  const k = S.walk, body = walkRequest(k);
  api(runPath("/generate"), body).then(async (r) => {
    const strip = $("walk-strip");
    strip.innerHTML = "";
    const imgs = r.images.map((src, j) => {
      const fig = document.createElement("figure"), im = document.createElement("img");
      im.src = src; im.id = `walk-${j}`;
      const cap = document.createElement("figcaption");
      cap.textContent = fmt(body.z[j][k]);
      fig.append(im, cap); strip.appendChild(fig);
      return im.decode().catch(() => null);
    });
    await Promise.all(imgs);
    const c = body.class !== undefined ? ` of class ${body.class}` : "";
    $("walk-caption").textContent = `z${k + 1} from the 2nd to the 98th percentile${c}`;
    strip.dataset.walk = JSON.stringify(body);
    S.walks += 1;
    strip.dataset.drawn = String(S.walks);
  }).catch((e) => showError(e.message)).finally(() => {
    S.walkBusy = false;
    if (S.walkPending) drawWalk();
  });
}

function slider(label, range, value, step, onInput, id) {
  const row = document.createElement("div");
  row.className = "slider";
  const name = document.createElement("label");
  name.textContent = label; name.htmlFor = id;
  const input = document.createElement("input");
  Object.assign(input, { type: "range", id, min: range.min, max: range.max, step, value });
  const out = document.createElement("output");
  out.id = id + "-value";
  out.textContent = fmt(+input.value);
  input.addEventListener("input", () => { out.textContent = fmt(+input.value); onInput(+input.value); requestRender(); drawHistogram(); });
  row.append(name, input, out);
  $("sliders").appendChild(row);
  return input;
}

function buildSliders() {
  const m = S.meta;
  $("sliders").innerHTML = "";
  S.gen = { z: m.z.map((d) => d.value), theta: m.theta.value, shift: [m.shift.value, m.shift.value] };
  if (m.classes.length) {  // --classes: the class chosen, its sliders at its particles' median z
    S.gen.cls = +$("gen-class").value;
    S.gen.z = classMedian(S.gen.cls).slice();
  }
  m.z.forEach((d, k) => {
    const s = slider(`z${k + 1}`, d, S.gen.z[k], (d.max - d.min) / 1000, (v) => { S.gen.z[k] = v; }, `z${k + 1}-slider`);
    S.gen.z[k] = +s.value;  // the value on the slider's steps
  });
  const t = slider("θ (°)", m.theta, m.theta.value, 1, (v) => { S.gen.theta = v; }, "theta-slider");
  const sx = slider("Δx (px)", m.shift, 0, 0.25, (v) => { S.gen.shift[0] = v; }, "shift-x-slider");
  const sy = slider("Δy (px)", m.shift, 0, 0.25, (v) => { S.gen.shift[1] = v; }, "shift-y-slider");
  if (!m.posed) [t, sx, sy].forEach((s) => { s.disabled = true; });
  $("walk-dim").innerHTML = "";
  m.z.forEach((d, k) => option($("walk-dim"), String(k), `z${k + 1}`));
  $("walk-row").hidden = m.z.length === 0;
  $("walk-strip").innerHTML = ""; S.walk = null;
  $("gen-caption").textContent = m.posed
    ? "θ: counter-clockwise turn (as theta_deg); Δx, Δy: centre's shift, model pixels, +y up"
    : "this generator draws a fixed frame (no pose)";
}

function setGenerator(z, theta, shift) {
  const m = S.meta;
  z.forEach((v, k) => {
    const s = $(`z${k + 1}-slider`);
    s.value = v; S.gen.z[k] = +s.value; $(`z${k + 1}-slider-value`).textContent = fmt(+s.value);
  });
  [["theta-slider", theta], ["shift-x-slider", shift[0]], ["shift-y-slider", shift[1]]].forEach(([id, v]) => {
    $(id).value = v; $(`${id}-value`).textContent = fmt(+$(id).value);
  });
  S.gen.theta = +$("theta-slider").value;
  S.gen.shift = [+$("shift-x-slider").value, +$("shift-y-slider").value];
  if (!m.posed) { S.gen.theta = 0; S.gen.shift = [0, 0]; }
  requestRender();
  drawHistogram();
}

// ------------------------------------------------------------------ setup

async function loadRun(name) {
  const t0 = performance.now();
  S.run = name; S.particle = null; S.colour = null; S.c = null; S.hist = null;
  const m = await api(runPath());
  S.meta = m; S.n = m.particles; S.sel = new Uint8Array(m.particles); S.nsel = 0;
  S.cls = m.classes.length ? await column("class") : null;
  S.shown = new Set(m.classes.map((c) => c.class));
  countShown();
  const kind = m.kind === "rgb" ? "RGB" : m.kind === "grey" ? "grey" : `${m.channels}-channel`;
  $("summary").textContent =
    `${m.path}: ${m.particles} particles, ${m.zdim}-D z, ${m.size} px ${kind} (${m.likelihood}` +
    `${m.ctf !== "off" ? ", CTF " + m.ctf : ""})` +
    `${m.classes.length ? `, ${m.classes.length} classes` : ""}, on ${m.device}; selections go to ${m.selections}`;
  $("notes").textContent = m.notes.join(" ");
  $("selection-name").placeholder = `${m.next_selection} / ${m.next_rest}`;
  for (const id of ["view", "x", "y", "colour"]) $(id).innerHTML = "";
  m.views.forEach((v, k) => option($("view"), String(k), v.name));
  option($("view"), "custom", "custom");
  m.numeric.forEach((c) => { option($("x"), c); option($("y"), c); });
  m.colours.forEach((c) => option($("colour"), c));
  $("x").value = m.views[0].x; $("y").value = m.views[0].y;
  $("colour").value = m.default_colour;
  buildClasses();
  buildSliders();
  await Promise.all([loadColour(m.default_colour), (async () => {
    const xl = $("x").value, yl = $("y").value;
    await Promise.all([column(xl), column(yl)]);
  })()]);
  S.timings.data_ms = performance.now() - t0;
  await loadPoints();
  if (m.zdim === 1) {
    const z = await column(m.z[0].name), d = m.z[0];
    S.hist = { z, lo: d.min, hi: d.max, name: m.z[0].name, drag: null };
  }
  selectionChanged();
  requestRender();
  S.timings.load_ms = performance.now() - t0;
  window.explorer.ready = true;
}

async function main() {
  setupHistogram();
  const reload = () => loadPoints().catch((e) => showError(e.message));
  $("view").addEventListener("change", () => {
    const v = S.meta.views[+$("view").value];
    if (!v) return;
    $("x").value = v.x; $("y").value = v.y; reload();
  });
  for (const id of ["x", "y"]) {
    $(id).addEventListener("change", () => {
      const k = S.meta.views.findIndex((v) => v.x === $("x").value && v.y === $("y").value);
      $("view").value = k >= 0 ? String(k) : "custom";
      reload();
    });
  }
  $("colour").addEventListener("change", () => loadColour($("colour").value).then(recolour).catch((e) => showError(e.message)));
  $("display").addEventListener("change", () => updateDrawn(true));
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", setMode));
  $("reset-view").addEventListener("click", () => { if (S.sp) S.sp.zoomToOrigin(); });
  $("save-selection").addEventListener("click", () => save(false));
  $("save-rest").addEventListener("click", () => save(true));
  $("clear-selection").addEventListener("click", () => { S.sel.fill(0); S.nsel = 0; selectionChanged(); });
  $("reset").addEventListener("click", () => {
    const m = S.meta;
    const z = S.gen.cls !== undefined ? classMedian(S.gen.cls) : m.z.map((d) => d.value);
    setGenerator(z, m.theta.value, [0, 0]);
  });
  $("from-particle").addEventListener("click", () => {
    const p = S.particleData;
    if (!p) return;
    if (p.class !== undefined) { $("gen-class").value = String(p.class); S.gen.cls = p.class; }
    setGenerator(p.z, +$("theta-slider").value, [+$("shift-x-slider").value, +$("shift-y-slider").value]);
  });
  // --classes: the same z, theta and shift drawn as another class
  $("gen-class").addEventListener("change", () => { S.gen.cls = +$("gen-class").value; requestRender(); });
  $("all-classes").addEventListener("click", () => {
    S.meta.classes.forEach((c) => { $(`class-${c.class}`).checked = true; });
    classFilterChanged().catch((e) => showError(e.message));
  });
  $("select-shown").addEventListener("click", selectShown);
  $("walk").addEventListener("click", drawWalk);
  $("walk-dim").addEventListener("change", () => { if (S.walk !== null) drawWalk(); });
  try {
    const { runs } = await api("api/runs");
    const wanted = new URLSearchParams(location.search).get("run");
    const sel = $("run");
    runs.forEach((r) => option(sel, r));
    sel.hidden = runs.length < 2;
    sel.addEventListener("change", () => loadRun(sel.value).catch((e) => showError(e.message)));
    const name = wanted && runs.includes(wanted) ? wanted : runs[0];
    sel.value = name;
    if (wanted && !runs.includes(wanted)) showError(`no run named ${wanted}; showing ${name}`);
    await loadRun(name);
  } catch (e) {
    showError(e.message);
  }
}

window.explorer = {
  ready: false,
  state: S,
  // each particle's position in the scatter's canvas (CSS pixels from its top-left), null when
  // it has no finite position; for tests
  screenPoints: () => Array.from({ length: S.n }, (_, i) => screenOf(i)),
  selected: () => selectedList(),
  shownClasses: () => (S.cls ? shownClasses() : null),
  // select exactly these table rows (of the classes shown), as a lasso would; for tests
  select: (rows) => {
    S.sel.fill(0); S.nsel = 0;
    for (const i of rows) if (isShown(i) && !S.sel[i]) { S.sel[i] = 1; S.nsel++; }
    selectionChanged();
  },
  display: () => S.display,
  timings: () => S.timings,
  scatter: () => S.sp,
  idle: () => !S.inflight && !S.pending && S.rendered === JSON.stringify(genRequest()) &&
    !S.walkBusy && !S.walkPending,
  pixels: (id) => {
    const img = $(id), c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    return Array.from(g.getImageData(0, 0, c.width, c.height).data);
  },
};

main();
