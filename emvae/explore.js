// emvae explore: the page's script (no libraries; served by emvae.explore_app).
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];
const MARGIN = { left: 56, right: 12, top: 12, bottom: 40 };

const S = {
  run: null, meta: null, pts: null, colour: null,
  sx: [], sy: [], bounds: null, selected: new Set(), particle: null, particleData: null,
  gen: { z: [], theta: 0, shift: [0, 0] }, inflight: false, pending: false,
  rendered: null, renders: 0, drag: null, base: null,
};

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

function runPath(rest) { return `api/runs/${encodeURIComponent(S.run)}${rest || ""}`; }

function fmt(v) {
  if (v === null || v === undefined) return "–";
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

function viridis(t) {
  if (!(t >= 0)) t = 0;
  if (t > 1) t = 1;
  const f = t * (VIRIDIS.length - 1), i = Math.min(Math.floor(f), VIRIDIS.length - 2), u = f - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return `rgb(${a.map((c, k) => Math.round(c + (b[k] - c) * u)).join(",")})`;
}

function pointColour(i) {
  const c = S.colour;
  if (!c) return "#1f77b4";
  if (c.kind === "category") {
    const k = c.codes[i];
    return k === null ? "#bbb" : PALETTE[k % PALETTE.length];
  }
  const v = c.values[i];
  if (v === null) return "#bbb";
  const [lo, hi] = c.range;
  return viridis(hi > lo ? (v - lo) / (hi - lo) : 0.5);
}

function drawLegend() {
  const el = $("legend");
  el.innerHTML = "";
  const c = S.colour;
  if (!c) return;
  const name = document.createElement("span");
  name.textContent = c.name + ":";
  el.appendChild(name);
  if (c.kind === "category") {
    const counts = new Array(c.labels.length).fill(0);
    c.codes.forEach((k) => { if (k !== null) counts[k] += 1; });
    c.labels.forEach((label, k) => {
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = PALETTE[k % PALETTE.length];
      el.appendChild(sw);
      el.appendChild(document.createTextNode(`${label} (${counts[k]})`));
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

// ------------------------------------------------------------------ the scatter

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

function computeBounds() {
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  const { x, y } = S.pts;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === null || y[i] === null) continue;
    x0 = Math.min(x0, x[i]); x1 = Math.max(x1, x[i]);
    y0 = Math.min(y0, y[i]); y1 = Math.max(y1, y[i]);
  }
  if (!isFinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  const px = (x1 - x0) * 0.05 || 1, py = (y1 - y0) * 0.05 || 1;
  S.bounds = { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
}

function project() {
  const cv = $("scatter"), b = S.bounds;
  const w = cv.width - MARGIN.left - MARGIN.right, h = cv.height - MARGIN.top - MARGIN.bottom;
  const { x, y } = S.pts;
  S.sx = new Array(x.length); S.sy = new Array(x.length);
  for (let i = 0; i < x.length; i++) {
    if (x[i] === null || y[i] === null) { S.sx[i] = null; S.sy[i] = null; continue; }
    S.sx[i] = MARGIN.left + ((x[i] - b.x0) / (b.x1 - b.x0)) * w;
    S.sy[i] = MARGIN.top + (1 - (y[i] - b.y0) / (b.y1 - b.y0)) * h;
  }
}

function drawBase() {
  const cv = $("scatter");
  if (!S.pts || !S.bounds) return;
  if (!S.base) { S.base = document.createElement("canvas"); }
  S.base.width = cv.width; S.base.height = cv.height;
  const g = S.base.getContext("2d"), b = S.bounds;
  g.fillStyle = "#fff"; g.fillRect(0, 0, cv.width, cv.height);
  const w = cv.width - MARGIN.left - MARGIN.right, h = cv.height - MARGIN.top - MARGIN.bottom;
  g.strokeStyle = "#999"; g.strokeRect(MARGIN.left, MARGIN.top, w, h);
  g.fillStyle = "#444"; g.font = "11px sans-serif"; g.textAlign = "center";
  const xs = tickStep(b.x0, b.x1, 6), ys = tickStep(b.y0, b.y1, 6);
  for (const t of niceTicks(b.x0, b.x1, 6)) {
    const px = MARGIN.left + ((t - b.x0) / (b.x1 - b.x0)) * w;
    g.fillRect(px, MARGIN.top + h, 1, 4);
    g.fillText(tickText(t, xs), px, MARGIN.top + h + 15);
  }
  g.textAlign = "right";
  for (const t of niceTicks(b.y0, b.y1, 6)) {
    const py = MARGIN.top + (1 - (t - b.y0) / (b.y1 - b.y0)) * h;
    g.fillRect(MARGIN.left - 4, py, 4, 1);
    g.fillText(tickText(t, ys), MARGIN.left - 6, py + 4);
  }
  g.textAlign = "center"; g.font = "12px sans-serif";
  g.fillText(S.pts.xlabel, MARGIN.left + w / 2, cv.height - 6);
  g.save(); g.translate(12, MARGIN.top + h / 2); g.rotate(-Math.PI / 2);
  g.fillText(S.pts.ylabel, 0, 0); g.restore();
  const n = S.sx.length, r = n > 20000 ? 1 : n > 3000 ? 2 : 3;
  g.globalAlpha = n > 3000 ? 0.6 : 0.85;
  for (let i = 0; i < n; i++) {
    if (S.sx[i] === null || S.selected.has(i)) continue;
    g.fillStyle = pointColour(i);
    g.fillRect(S.sx[i] - r, S.sy[i] - r, 2 * r, 2 * r);
  }
  g.globalAlpha = 1;
  for (const i of S.selected) {  // selected points on top, outlined
    if (S.sx[i] === null) continue;
    g.fillStyle = pointColour(i);
    g.fillRect(S.sx[i] - r - 1, S.sy[i] - r - 1, 2 * r + 2, 2 * r + 2);
    g.strokeStyle = "#000"; g.lineWidth = 0.8;
    g.strokeRect(S.sx[i] - r - 1.5, S.sy[i] - r - 1.5, 2 * r + 3, 2 * r + 3);
  }
  draw();
}

function draw() {
  const cv = $("scatter"), g = cv.getContext("2d");
  if (!S.base) return;
  g.drawImage(S.base, 0, 0);
  const i = S.particle;
  if (i !== null && S.sx[i] !== null && S.sx[i] !== undefined) {
    g.strokeStyle = "#e00"; g.lineWidth = 2;
    g.beginPath(); g.arc(S.sx[i], S.sy[i], 7, 0, 2 * Math.PI); g.stroke();
  }
  const d = S.drag;
  if (d && d.moved) {
    g.strokeStyle = "#000"; g.lineWidth = 1; g.setLineDash([4, 3]);
    g.fillStyle = "rgba(0,0,0,0.06)";
    if (d.mode === "box") {
      const [a, b] = [d.path[0], d.path[d.path.length - 1]];
      g.fillRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
      g.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    } else {
      g.beginPath(); g.moveTo(d.path[0][0], d.path[0][1]);
      for (const p of d.path) g.lineTo(p[0], p[1]);
      g.closePath(); g.fill(); g.stroke();
    }
    g.setLineDash([]);
  }
}

function insidePolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function pointsIn(d) {
  const out = [];
  if (d.mode === "box") {
    const [a, b] = [d.path[0], d.path[d.path.length - 1]];
    const x0 = Math.min(a[0], b[0]), x1 = Math.max(a[0], b[0]);
    const y0 = Math.min(a[1], b[1]), y1 = Math.max(a[1], b[1]);
    for (let i = 0; i < S.sx.length; i++) {
      if (S.sx[i] !== null && S.sx[i] >= x0 && S.sx[i] <= x1 && S.sy[i] >= y0 && S.sy[i] <= y1) out.push(i);
    }
  } else {
    for (let i = 0; i < S.sx.length; i++) {
      if (S.sx[i] !== null && insidePolygon(S.sx[i], S.sy[i], d.path)) out.push(i);
    }
  }
  return out;
}

function nearest(x, y, radius) {
  let best = null, bd = radius * radius;
  for (let i = 0; i < S.sx.length; i++) {
    if (S.sx[i] === null) continue;
    const dd = (S.sx[i] - x) ** 2 + (S.sy[i] - y) ** 2;
    if (dd <= bd) { bd = dd; best = i; }
  }
  return best;
}

function canvasXY(ev) {
  const cv = $("scatter"), r = cv.getBoundingClientRect();
  return [((ev.clientX - r.left) * cv.width) / r.width, ((ev.clientY - r.top) * cv.height) / r.height];
}

function setupScatterEvents() {
  const cv = $("scatter");
  cv.addEventListener("mousedown", (ev) => {
    if (!S.pts) return;
    ev.preventDefault();
    const mode = document.querySelector("input[name=mode]:checked").value;
    S.drag = { mode, path: [canvasXY(ev)], moved: false, add: ev.shiftKey };
  });
  window.addEventListener("mousemove", (ev) => {
    const d = S.drag;
    if (!d) return;
    const p = canvasXY(ev), a = d.path[0];
    if (Math.abs(p[0] - a[0]) + Math.abs(p[1] - a[1]) > 4) d.moved = true;
    if (d.mode === "box") d.path[1] = p; else d.path.push(p);
    draw();
  });
  window.addEventListener("mouseup", (ev) => {
    const d = S.drag;
    if (!d) return;
    S.drag = null;
    if (!d.moved) {
      const [x, y] = d.path[0];
      const i = nearest(x, y, 10);
      if (i !== null) showParticle(i);
      draw();
      return;
    }
    if (d.mode === "box" && d.path.length < 2) d.path.push(canvasXY(ev));
    const hits = pointsIn(d);
    if (!d.add) S.selected = new Set();
    hits.forEach((i) => S.selected.add(i));
    selectionChanged();
  });
}

function selectionChanged() {
  const n = S.selected.size;
  $("selected-count").textContent = `${n} of ${S.meta.particles} selected`;
  $("save-selection").disabled = n === 0;
  $("clear-selection").disabled = n === 0;
  drawBase();
}

async function saveSelection() {
  const name = $("selection-name").value.trim();
  const indices = Array.from(S.selected).sort((a, b) => a - b);
  $("save-selection").disabled = true;
  try {
    const r = await api(runPath("/selections"), { indices, name: name || null });
    const rest = r.paths.slice(1).map((p) => p.slice(p.lastIndexOf("."))).join(", ");
    $("selection-status").textContent =
      `saved ${r.count} of ${r.total} particles: ${r.paths[0]} (${rest})` + (r.note ? `; ${r.note}` : "");
    $("selection-status").dataset.count = r.count;
    $("selection-status").dataset.path = r.paths[0];
    $("selection-name").value = "";
    $("selection-name").placeholder = r.next_name;
  } catch (e) {
    $("selection-status").textContent = "";
    showError(e.message);
  } finally {
    $("save-selection").disabled = S.selected.size === 0;
  }
}

// ------------------------------------------------------------------ data

async function loadPoints() {
  const x = $("x").value, y = $("y").value;
  const pts = await api(runPath(`/points?x=${encodeURIComponent(x)}&y=${encodeURIComponent(y)}`));
  S.pts = pts;
  computeBounds(); project(); drawBase();
}

async function loadColour() {
  S.colour = await api(runPath(`/colours/${encodeURIComponent($("colour").value)}`));
  drawLegend(); drawBase();
}

async function showParticle(i) {
  S.particle = i; draw();
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
    $("from-particle").disabled = S.meta.zdim === 0;
    $("particle-panel").dataset.index = String(i);
  } catch (e) {
    showError(e.message);
  }
}

// ------------------------------------------------------------------ the generator

function genRequest() {
  return { z: S.gen.z.slice(), theta_deg: S.gen.theta, shift_px: S.gen.shift.slice() };
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
  input.addEventListener("input", () => { out.textContent = fmt(+input.value); onInput(+input.value); requestRender(); });
  row.append(name, input, out);
  $("sliders").appendChild(row);
  return input;
}

function buildSliders() {
  const m = S.meta;
  $("sliders").innerHTML = "";
  S.gen = { z: m.z.map((d) => d.value), theta: m.theta.value, shift: [m.shift.value, m.shift.value] };
  m.z.forEach((d, k) => {
    const s = slider(`z${k + 1}`, d, d.value, (d.max - d.min) / 1000, (v) => { S.gen.z[k] = v; }, `z${k + 1}-slider`);
    S.gen.z[k] = +s.value;  // the value on the slider's steps
  });
  const t = slider("θ (°)", m.theta, m.theta.value, 1, (v) => { S.gen.theta = v; }, "theta-slider");
  const sx = slider("Δx (px)", m.shift, 0, 0.25, (v) => { S.gen.shift[0] = v; }, "shift-x-slider");
  const sy = slider("Δy (px)", m.shift, 0, 0.25, (v) => { S.gen.shift[1] = v; }, "shift-y-slider");
  if (!m.posed) [t, sx, sy].forEach((s) => { s.disabled = true; });
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
}

// ------------------------------------------------------------------ setup

async function loadRun(name) {
  S.run = name; S.selected = new Set(); S.particle = null; S.colour = null; S.base = null;
  const m = await api(runPath());
  S.meta = m;
  const kind = m.kind === "rgb" ? "RGB" : m.kind === "grey" ? "grey" : `${m.channels}-channel`;
  $("summary").textContent =
    `${m.path}: ${m.particles} particles, ${m.zdim}-D z, ${m.size} px ${kind} (${m.likelihood}` +
    `${m.ctf !== "off" ? ", CTF " + m.ctf : ""}), on ${m.device}; selections go to ${m.selections}`;
  $("notes").textContent = m.notes.join(" ");
  $("selection-name").placeholder = "selection_NNN";
  for (const id of ["view", "x", "y", "colour"]) $(id).innerHTML = "";
  m.views.forEach((v, k) => option($("view"), String(k), v.name));
  option($("view"), "custom", "custom");
  m.numeric.forEach((c) => { option($("x"), c); option($("y"), c); });
  m.colours.forEach((c) => option($("colour"), c));
  $("x").value = m.views[0].x; $("y").value = m.views[0].y;
  $("colour").value = m.default_colour;
  buildSliders();
  selectionChanged();
  S.colour = await api(runPath(`/colours/${encodeURIComponent(m.default_colour)}`));
  drawLegend();
  await loadPoints();
  requestRender();
  window.explorer.ready = true;
}

async function main() {
  setupScatterEvents();
  $("view").addEventListener("change", () => {
    const v = S.meta.views[+$("view").value];
    if (!v) return;
    $("x").value = v.x; $("y").value = v.y; loadPoints().catch((e) => showError(e.message));
  });
  for (const id of ["x", "y"]) {
    $(id).addEventListener("change", () => {
      const k = S.meta.views.findIndex((v) => v.x === $("x").value && v.y === $("y").value);
      $("view").value = k >= 0 ? String(k) : "custom";
      loadPoints().catch((e) => showError(e.message));
    });
  }
  $("colour").addEventListener("change", () => loadColour().catch((e) => showError(e.message)));
  $("save-selection").addEventListener("click", saveSelection);
  $("clear-selection").addEventListener("click", () => { S.selected = new Set(); selectionChanged(); });
  $("reset").addEventListener("click", () => {
    const m = S.meta;
    setGenerator(m.z.map((d) => d.value), m.theta.value, [0, 0]);
  });
  $("from-particle").addEventListener("click", () => {
    const p = S.particleData;
    if (p) setGenerator(p.z, +$("theta-slider").value, [+$("shift-x-slider").value, +$("shift-y-slider").value]);
  });
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
  screenPoints: () => S.sx.map((x, i) => (x === null ? null : [x, S.sy[i]])),
  selected: () => Array.from(S.selected).sort((a, b) => a - b),
  idle: () => !S.inflight && !S.pending && S.rendered === JSON.stringify(genRequest()),
  pixels: (id) => {
    const img = $(id), c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    return Array.from(g.getImageData(0, 0, c.width, c.height).data);
  },
};

main();
