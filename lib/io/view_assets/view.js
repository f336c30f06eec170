// The run's page (lib/io/view.py writes DATA into it): an index of the run's views, and one view at a time:
// an edge-level circuit (05, 06, 24), a feature circuit (09) or an attribution graph (10). No network, no library.
"use strict";
const DATA = JSON.parse(document.getElementById("view-data").textContent);
const SVGNS = "http://www.w3.org/2000/svg";
const W = 1000; // SVG user units across
const HELP = "#2166ac", HURT = "#b2182b", NEUTRAL = "#777";
// more drawn edges than svgEdges are painted on a canvas (SVG elements cost ~10 us each); of more kept edges than
// paintMax, the strongest paintMax are painted (the counts stay the kept ones)
const LIMITS = { svgEdges: 4000, paintMax: 20000 };
const state = { view: null, step: 0, pinned: null, drawn: null, nodeThreshold: null, edgeThreshold: null, lastRenderMs: 0 };

function fmt(x) {
  if (x === null || x === undefined || (typeof x === "number" && isNaN(x))) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return Number(x.toPrecision(6)).toString();
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function withInterval(v) {
  if (!Array.isArray(v)) return fmt(v);
  const [value, lo, hi] = v;
  if (lo === null || lo === undefined || isNaN(lo)) return fmt(value);
  return `${fmt(value)} [${fmt(lo)}, ${fmt(hi)}]`;
}
function rows(pairs) {
  return "<table>" + pairs.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`).join("") + "</table>";
}
function $(id) { return document.getElementById(id); }

// ---------- page frame: header, index, routing ----------

function buildFrame() {
  $("title").textContent = DATA.title;
  $("meta").textContent = DATA.meta;
  const head = "<tr><th>view</th><th>headline</th></tr>";
  $("index").innerHTML = "<table>" + head + DATA.views.map((v) =>
    `<tr data-view="${esc(v.id)}"><td><a href="#view=${encodeURIComponent(v.id)}">${esc(v.title)}</a></td>` +
    `<td>${esc(v.headline || "")}</td></tr>`).join("") + "</table>";
  const picker = $("picker");
  picker.innerHTML = DATA.views.map((v) => `<option value="${esc(v.id)}">${esc(v.title)}</option>`).join("");
  picker.addEventListener("change", () => { location.hash = "view=" + encodeURIComponent(picker.value); });
  window.addEventListener("hashchange", route);
}

function route() {
  const m = /view=([^&]*)/.exec(location.hash);
  const id = m ? decodeURIComponent(m[1]) : null;
  const view = DATA.views.find((v) => v.id === id) || DATA.views[0];
  if (view) show(view.id);
}

function show(id) {
  const view = DATA.views.find((v) => v.id === id);
  state.view = view; state.pinned = null;
  $("picker").value = id;
  for (const tr of document.querySelectorAll("#index tr[data-view]")) tr.classList.toggle("current", tr.dataset.view === id);
  $("view-title").textContent = view.title;
  $("note").innerHTML = view.note ? esc(view.note) : "";
  $("info").innerHTML = '<span class="hint">Hover a node or an edge for its numbers' +
    (view.kind === "graph" ? "; click a node to pin it and list its strongest inputs and outputs." : ".") + "</span>";
  const controls = $("controls");
  if (view.kind === "graph") {
    controls.innerHTML = slider("node-threshold", "node threshold (cumulative influence)", view.slider.node) +
      slider("edge-threshold", "edge threshold (cumulative influence)", view.slider.edge);
    state.nodeThreshold = view.thresholds.node; state.edgeThreshold = view.thresholds.edge;
    $("node-threshold").value = state.nodeThreshold; $("edge-threshold").value = state.edgeThreshold;
    $("node-threshold").addEventListener("input", (e) => { state.nodeThreshold = +e.target.value; draw(); });
    $("edge-threshold").addEventListener("input", (e) => { state.edgeThreshold = +e.target.value; draw(); });
  } else {
    controls.innerHTML = slider("step", view.slider_label, [0, view.steps.length - 1, 1]);
    state.step = view.default_step;
    $("step").value = state.step;
    $("step").addEventListener("input", (e) => { state.step = +e.target.value; draw(); });
  }
  drawLegend(view);
  draw();
}

function slider(id, label, [lo, hi, step]) {
  return `<div class="control"><label for="${id}">${esc(label)}: <span class="value" id="${id}-value"></span></label>` +
    `<input type="range" id="${id}" min="${lo}" max="${hi}" step="${step}"></div>`;
}

function draw() {
  const t0 = performance.now();
  const view = state.view;
  if (view.kind === "edges") drawEdges(view);
  else if (view.kind === "features") drawFeatures(view);
  else drawGraph(view);
  state.lastRenderMs = performance.now() - t0;
}

function drawLegend(view) {
  const l = view.legend;
  const swatch = (color, dash) => `<svg width="30" height="10"><line x1="2" x2="28" y1="5" y2="5" stroke="${color}" ` +
    `stroke-width="3"${dash ? ' stroke-dasharray="4 3"' : ""}/></svg> `;
  const items = [];
  if (l.help) items.push(swatch(HELP) + esc(l.help));
  if (l.hurt) items.push(swatch(HURT) + esc(l.hurt));
  if (l.dashed) items.push(swatch(NEUTRAL, true) + esc(l.dashed));
  if (l.size) items.push(esc(l.size));
  if (l.shapes) items.push(esc(l.shapes));
  $("legend").innerHTML = items.map((x) => `<div>${x}</div>`).join("");
}

function svgOpen(height) {
  return `<svg xmlns="${SVGNS}" viewBox="0 0 ${W} ${height}" preserveAspectRatio="xMidYMin meet">`;
}

function curvePlot(points, current, ylabel) {
  // points: [[size, value]], log x; current: index into points or -1
  const ok = points.filter(([x, y]) => x > 0 && y !== null && !isNaN(y));
  if (ok.length < 2) return "";
  const w = 300, h = 110, L = 34, B = 18;
  const xs = ok.map((p) => Math.log10(p[0])), ys = ok.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(1, ...ys);
  const X = (x) => L + (w - L - 6) * (x - x0) / ((x1 - x0) || 1), Y = (y) => h - B - (h - B - 6) * (y - y0) / ((y1 - y0) || 1);
  const path = ok.map((p, i) => `${i ? "L" : "M"}${X(Math.log10(p[0])).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
  let marker = "";
  if (current >= 0 && points[current] && points[current][0] > 0 && points[current][1] !== null && !isNaN(points[current][1]))
    marker = `<circle cx="${X(Math.log10(points[current][0]))}" cy="${Y(points[current][1])}" r="4" fill="#d62728"/>`;
  return `<svg width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" id="curve">` +
    `<line x1="${L}" x2="${w - 6}" y1="${Y(1)}" y2="${Y(1)}" stroke="#bbb" stroke-dasharray="3 3"/>` +
    `<line x1="${L}" x2="${w - 6}" y1="${Y(0)}" y2="${Y(0)}" stroke="#bbb" stroke-dasharray="3 3"/>` +
    `<path d="${path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>${marker}` +
    `<text x="2" y="${Y(1) + 4}" font-size="10">1</text><text x="2" y="${Y(0) + 4}" font-size="10">0</text>` +
    `<text x="${L}" y="${h - 4}" font-size="10">${fmt(10 ** x0)}</text>` +
    `<text x="${w - 40}" y="${h - 4}" font-size="10">${fmt(10 ** x1)}</text>` +
    `<text x="${L + 40}" y="${h - 4}" font-size="10">${esc(ylabel)} vs size (log)</text></svg>`;
}

function bindHover(svg, describe, onClick) {
  svg.addEventListener("mouseover", (e) => {
    const el = e.target.closest("[data-kind]");
    if (!el || state.pinned !== null) return;
    $("info").innerHTML = describe(el.dataset.kind, +el.dataset.i, el);
  });
  if (onClick) svg.addEventListener("click", (e) => onClick(e.target.closest("[data-kind]")));
}

// ---------- edge-level circuits (05, 06, 24) ----------

function headNode(name) { return name.replace(/<[qkv]>$/, ""); }

function edgeLayout(view) {
  const L = view.n_layers, H = view.n_heads, rowH = 46, top = 30;
  const height = top + rowH * (2 * L + 1) + 40;
  const xHead = (h) => 60 + (W - 200) * (H === 1 ? 0.5 : h / (H - 1));
  const pos = { input: [W / 2, height - 30], logits: [W / 2, top] };
  for (let l = 0; l < L; l++) {
    const yA = height - 30 - rowH * (2 * l + 1), yM = yA - rowH;
    for (let h = 0; h < H; h++) pos[`a${l}.h${h}`] = [xHead(h), yA];
    pos[`m${l}`] = [W - 70, view.parallel ? yA : yM];
  }
  return { pos, height, rowH };
}

function edgeMembers(view, step) {
  const s = view.steps[step];
  if (s.members) return s.members;
  return Array.from({ length: Math.min(s.size, view.edges.src.length) }, (_, i) => i);
}

function drawEdges(view) {
  const { pos, height } = view._layout || (view._layout = edgeLayout(view));
  const members = edgeMembers(view, state.step);
  const E = view.edges, st = view.steps[state.step];
  // a step may carry its own scores (ACDC's worsening is measured at each tau), ranked within the step
  state.scoreOf = new Map(members.map((i, j) => [i, st.scores ? st.scores[j] : E.score[i]]));
  state.rankOf = new Map(members.map((i, j) => [i, st.scores ? j + 1 : i + 1]));
  const maxAbs = Math.max(1e-30, ...members.map((i) => Math.abs(state.scoreOf.get(i)) || 0));
  const nodes = new Map();
  let edges = "";
  const kindShift = { "<q>": -7, "<k>": 0, "<v>": 7 };
  for (const i of members) {
    const src = E.src[i], rcv = E.rcv[i], target = headNode(rcv);
    nodes.set(src, (nodes.get(src) || 0) + 1); nodes.set(target, (nodes.get(target) || 0) + 1);
    const [x1, y1] = pos[src], [x2, y2] = pos[target];
    const shift = kindShift[rcv.slice(-3)] || 0;
    const s = state.scoreOf.get(i), width = 0.6 + 4.4 * (Math.abs(s) || 0) / maxAbs;
    const color = isNaN(s) ? NEUTRAL : (s * view.helps_sign > 0 ? HELP : HURT);
    const cls = view.canonical ? (view.canonical[i] ? "edge tp" : "edge fp") : "edge";
    const mx = (x1 + x2 + shift) / 2 + (y1 - y2) * 0.15, my = (y1 + y2) / 2;
    edges += `<path class="${cls}" data-kind="edge" data-i="${i}" d="M${x1},${y1} Q${mx},${my} ${x2 + shift},${y2 + 7}" ` +
      `stroke="${color}" stroke-width="${width.toFixed(2)}" stroke-opacity="0.75"/>`;
  }
  let ghosts = "", drawn = "", labels = "";
  for (const [name, [x, y]] of Object.entries(pos)) {
    if (nodes.has(name)) {
      const r = name === "input" || name === "logits" ? 9 : 7;
      drawn += `<circle class="node" data-kind="node" data-i="0" data-name="${name}" cx="${x}" cy="${y}" r="${r}" fill="#444"/>`;
      labels += `<text class="label" x="${x + 10}" y="${y - 8}">${name}</text>`;
    } else {
      ghosts += `<circle class="ghost" cx="${x}" cy="${y}" r="3" fill="#ccc"/>`;
    }
  }
  let axis = "";
  for (let l = 0; l < view.n_layers; l++) axis += `<text class="axis" x="4" y="${pos[`a${l}.h0`][1] + 4}">layer ${l}</text>`;
  $("canvas").innerHTML = svgOpen(height) + axis + ghosts + edges + drawn + labels + "</svg>";
  const svg = $("canvas").querySelector("svg");
  bindHover(svg, (kind, i, el) => kind === "edge" ? describeEdgeItem(view, i) : describeEdgeNode(view, el.dataset.name, members));
  state.drawn = { nodes: [...nodes.keys()], edges: members.map((i) => `${E.src[i]}->${E.rcv[i]}`) };
  $("step-value").textContent = st.label;
  let counts = [["edges drawn", members.length], ["nodes drawn", nodes.size]];
  if (view.canonical) {
    const tp = members.filter((i) => view.canonical[i]).length;
    const total = view.canonical.filter(Boolean).length;
    counts = counts.concat([["canonical edges kept (true positives)", tp], ["other edges (false positives)", members.length - tp],
      ["canonical edges missed", total - tp]]);
  }
  const numbers = Object.entries(st.numbers || {}).map(([k, v]) => [k, withInterval(v)]);
  const areas = Object.entries(view.areas || {}).map(([k, v]) => [k, withInterval(v)]);
  const points = view.steps.map((s) => [s.size, s.numbers && s.numbers.faithfulness ? s.numbers.faithfulness[0] : NaN]);
  $("numbers").innerHTML = "<h2>At this size</h2>" + rows(counts.map(([k, v]) => [k, fmt(v)]).concat(numbers)) +
    (areas.length ? "<h2>Over the whole curve</h2>" + rows(areas) : "") + curvePlot(points, state.step, "faithfulness");
}

function describeEdgeItem(view, i) {
  const E = view.edges;
  const pairs = [["edge", esc(`${E.src[i]}->${E.rcv[i]}`)], [view.score_label, fmt(state.scoreOf.get(i))],
    ["rank by |score|", fmt(state.rankOf.get(i))]];
  for (const [name, values] of Object.entries(view.edge_extra || {})) pairs.push([name, fmt(values[i])]);
  if (view.canonical) pairs.push(["in the canonical circuit", view.canonical[i] ? "yes" : "no"]);
  return "<h2>Edge</h2>" + rows(pairs);
}

function describeEdgeNode(view, name, members) {
  const E = view.edges;
  let nIn = 0, nOut = 0, sIn = 0, sOut = 0;
  for (const i of members) {
    const score = Math.abs(state.scoreOf.get(i)) || 0;
    if (E.src[i] === name) { nOut++; sOut += score; }
    if (headNode(E.rcv[i]) === name) { nIn++; sIn += score; }
  }
  const pairs = [["node", esc(name)], ["edges in (drawn)", fmt(nIn)], ["edges out (drawn)", fmt(nOut)],
    ["sum |score| in", fmt(sIn)], ["sum |score| out", fmt(sOut)]];
  for (const [metric, values] of Object.entries(view.node_extra || {})) if (name in values) pairs.push([metric, fmt(values[name])]);
  return "<h2>Node</h2>" + rows(pairs);
}

// ---------- feature circuits (09) ----------

function drawFeatures(view) {
  const step = view.steps[state.step], threshold = step.threshold;
  const N = view.nodes, n = N.id.length;
  const keep = [];
  for (let i = 0; i < n; i++) if (Math.abs(N.effect[i]) >= threshold) keep.push(i);
  const keepSet = new Set(keep);
  const rowH = 34, top = 20, left = 90;
  const height = top + rowH * view.sites.length + 40;
  const colW = (W - left - 10) / view.positions.length;
  const cells = new Map();
  for (const i of keep) {
    const key = N.site[i] + "|" + N.pos[i];
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(i);
  }
  const xy = new Map();
  for (const members of cells.values()) {
    members.sort((a, b) => Math.abs(N.effect[b]) - Math.abs(N.effect[a]));
    const i0 = members[0], row = view.sites.indexOf(N.site[i0]), col = view.positions.indexOf(N.pos[i0]);
    const gap = Math.min(26, (colW - 12) / members.length);
    members.forEach((i, k) => xy.set(i, [left + col * colW + 6 + gap * k, height - 40 - rowH * row - rowH / 2]));
  }
  const maxAbs = Math.max(1e-30, ...keep.map((i) => Math.abs(N.effect[i])));
  let edges = "", nodes = "", axis = "";
  const drawnEdges = [];
  const maxEdge = Math.max(1e-30, ...view.edges.effect.map(Math.abs));
  view.edges.up.forEach((u, k) => {
    const d = view.edges.down[k];
    if (!keepSet.has(u) || !keepSet.has(d)) return;
    drawnEdges.push(k);
    const [x1, y1] = xy.get(u), [x2, y2] = xy.get(d), e = view.edges.effect[k];
    edges += `<line class="edge" data-kind="edge" data-i="${k}" x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" ` +
      `stroke="${e * view.helps_sign > 0 ? HELP : HURT}" stroke-opacity="0.6" stroke-width="${(0.5 + 3.5 * Math.abs(e) / maxEdge).toFixed(2)}"/>`;
  });
  for (const i of keep) {
    const [x, y] = xy.get(i), r = 2.5 + 5 * Math.sqrt(Math.abs(N.effect[i]) / maxAbs);
    const color = N.effect[i] * view.helps_sign > 0 ? HELP : HURT;
    nodes += N.error[i]
      ? `<rect class="node" data-kind="node" data-i="${i}" x="${x - r}" y="${y - r}" width="${2 * r}" height="${2 * r}" fill="#fff" stroke="${color}" stroke-width="2"/>`
      : `<circle class="node" data-kind="node" data-i="${i}" cx="${x}" cy="${y}" r="${r.toFixed(2)}" fill="${color}"/>`;
  }
  view.sites.forEach((s, row) => {
    const y = height - 40 - rowH * row - rowH / 2;
    axis += `<line class="rowline" x1="${left}" x2="${W}" y1="${y}" y2="${y}"/><text class="axis" x="4" y="${y + 4}">${esc(s)}</text>`;
  });
  view.positions.forEach((p, col) => { axis += `<text class="axis" x="${left + col * colW + 4}" y="${height - 14}">${esc(p)}</text>`; });
  $("canvas").innerHTML = svgOpen(height) + axis + edges + nodes + "</svg>";
  const svg = $("canvas").querySelector("svg");
  bindHover(svg, (kind, i) => describeFeatureItem(view, kind, i));
  state.drawn = { nodes: keep.map((i) => N.id[i]), edges: drawnEdges.map((k) => `${N.id[view.edges.up[k]]}->${N.id[view.edges.down[k]]}`) };
  $("step-value").textContent = `|effect| ≥ ${fmt(threshold)}`;
  const features = keep.filter((i) => !N.error[i]).length;
  const counts = [["nodes drawn", fmt(keep.length)], ["features", fmt(features)], ["error nodes", fmt(keep.length - features)],
    ["edges drawn", fmt(drawnEdges.length)]];
  const numbers = Object.entries(step.numbers || {}).map(([k, v]) => [k, withInterval(v)]);
  const points = view.steps.map((s) => [s.nodes_kept, s.numbers.faithfulness ? s.numbers.faithfulness[0] : NaN]);
  $("numbers").innerHTML = "<h2>At this threshold</h2>" + rows(counts.concat(numbers)) + curvePlot(points, state.step, "faithfulness");
}

function describeFeatureItem(view, kind, i) {
  const N = view.nodes;
  if (kind === "edge") {
    const E = view.edges;
    return "<h2>Edge</h2>" + rows([["from", esc(N.id[E.up[i]])], ["to", esc(N.id[E.down[i]])], ["effect", fmt(E.effect[i])]]);
  }
  const pairs = [["node", esc(N.id[i])], ["site", esc(N.site[i])], ["position", esc(N.pos[i])], ["effect", fmt(N.effect[i])]];
  if (N.error[i]) pairs.push(["kind", "error node (what the dictionary does not reconstruct)"]);
  else {
    pairs.push(["feature", fmt(N.feature[i])]);
    if (N.promotes[i]) pairs.push(["promotes", esc(N.promotes[i])]);
    if (N.top[i]) pairs.push(["top activating prompts", esc(N.top[i])]);
  }
  return "<h2>Node</h2>" + rows(pairs);
}

// ---------- attribution graphs (10): circuit-tracer's prune_graph, in the page ----------

function findThreshold(sortedDesc, total, threshold, count) {
  // sortedDesc: the nonzero scores, descending; count: how many scores there are in all (zeros included).
  // The score at which the cumulative share first reaches threshold (torch.searchsorted, left), as influence.py.
  let cumulative = 0;
  for (let i = 0; i < sortedDesc.length; i++) {
    cumulative += sortedDesc[i];
    if (cumulative / total >= threshold) return sortedDesc[i];
  }
  return sortedDesc.length < count ? 0 : sortedDesc[sortedDesc.length - 1];
}

function prune(view, nodeThreshold, edgeThreshold) {
  // Returns {node: Uint8Array over view.nodes, edge: Uint8Array over view.edges}; the same rules as prune_graph.
  const N = view.nodes, E = view.edges, n = N.id.length, m = E.t.length;
  const nodeCut = findThreshold(view.influence_sorted, view.influence_total, nodeThreshold, view.n_total);
  const node = new Uint8Array(n);
  for (let i = 0; i < n; i++) node[i] = N.type[i] === "token" || N.type[i] === "logit" || N.influence[i] >= nodeCut ? 1 : 0;
  // normalized |A| of the pruned adjacency: rows (targets) divided by their sums over kept sources
  const rowSum = new Float64Array(n);
  for (let k = 0; k < m; k++) if (node[E.t[k]] && node[E.s[k]]) rowSum[E.t[k]] += Math.abs(E.w[k]);
  const norm = new Float64Array(m);
  for (let k = 0; k < m; k++) if (node[E.t[k]] && node[E.s[k]]) norm[k] = Math.abs(E.w[k]) / Math.max(rowSum[E.t[k]], 1e-10);
  // influence = w (A + A^2 + ...), w the logit probabilities; then each edge's score
  const weight = new Float64Array(n);
  for (let i = 0; i < n; i++) if (N.type[i] === "logit") weight[i] = N.prob[i];
  const total = new Float64Array(n);
  let current = weight;
  for (let iter = 0; ; iter++) {
    if (iter === 1000) throw new Error("influence did not converge (the adjacency has a cycle)");
    const next = new Float64Array(n);
    for (let k = 0; k < m; k++) if (norm[k] && current[E.t[k]]) next[E.s[k]] += current[E.t[k]] * norm[k];
    if (!next.some((x) => x !== 0)) break;
    for (let i = 0; i < n; i++) total[i] += next[i];
    current = next;
  }
  const score = new Float64Array(m);
  let count = 0, sum = 0;
  for (let k = 0; k < m; k++) {
    score[k] = norm[k] * (total[E.t[k]] + weight[E.t[k]]);
    if (score[k] > 0) { count++; sum += score[k]; }
  }
  const positive = new Float64Array(count);
  for (let k = 0, j = 0; k < m; k++) if (score[k] > 0) positive[j++] = score[k];
  positive.sort().reverse();  // typed arrays sort numerically
  const edgeCut = findThreshold(positive, sum, edgeThreshold, view.n_total * view.n_total);
  const edge = new Uint8Array(m);
  for (let k = 0; k < m; k++) edge[k] = score[k] >= edgeCut && score[k] > 0 ? 1 : 0;
  // drop features and errors without an outgoing edge, features without an incoming one, until nothing changes
  for (let changed = true; changed;) {
    changed = false;
    for (let k = 0; k < m; k++) if (edge[k] && !(node[E.t[k]] && node[E.s[k]])) edge[k] = 0;
    const out = new Uint8Array(n), inc = new Uint8Array(n);
    for (let k = 0; k < m; k++) if (edge[k]) { out[E.s[k]] = 1; inc[E.t[k]] = 1; }
    for (let i = 0; i < n; i++) {
      if (!node[i]) continue;
      const t = N.type[i];
      if ((t === "feature" || t === "error") && !out[i]) { node[i] = 0; changed = true; }
      else if (t === "feature" && !inc[i]) { node[i] = 0; changed = true; }
    }
  }
  for (let k = 0; k < m; k++) if (edge[k] && !(node[E.t[k]] && node[E.s[k]])) edge[k] = 0;
  return { node, edge, edgeCut, nodeCut };
}

function graphLayout(view) {
  const N = view.nodes, rows = view.n_layers + 2, rowH = 80, top = 30, bottom = 60, left = 70;
  const height = top + rowH * (rows - 1) + bottom;
  const colW = (W - left - 10) / view.n_pos;
  const row = (i) => N.type[i] === "token" ? 0 : N.type[i] === "logit" ? rows - 1 : N.layer[i] + 1;
  return { rows, rowH, top, bottom, left, height, colW, row, y: (r) => height - bottom - rowH * r };
}

function drawGraph(view) {
  const N = view.nodes, E = view.edges, n = N.id.length;
  const lay = view._layout || (view._layout = graphLayout(view));
  const p = prune(view, state.nodeThreshold, state.edgeThreshold);
  const used = new Uint8Array(n);
  for (let k = 0; k < E.t.length; k++) if (p.edge[k]) { used[E.t[k]] = 1; used[E.s[k]] = 1; }
  const keep = [];
  for (let i = 0; i < n; i++) if (p.node[i] && (used[i] || N.type[i] === "token" || N.type[i] === "logit")) keep.push(i);
  const cells = new Map();
  for (const i of keep) {
    const key = lay.row(i) + "|" + N.pos[i];
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(i);
  }
  const xy = new Map();
  for (const members of cells.values()) {
    members.sort((a, b) => N.influence[b] - N.influence[a]);
    const gap = Math.min(14, (lay.colW - 10) / members.length);
    const i0 = members[0], x0 = lay.left + N.pos[i0] * lay.colW + lay.colW / 2 - gap * (members.length - 1) / 2;
    members.forEach((i, k) => xy.set(i, [x0 + gap * k, lay.y(lay.row(i))]));
  }
  let maxW = 1e-30;
  for (let k = 0; k < E.t.length; k++) if (p.edge[k]) maxW = Math.max(maxW, Math.abs(E.w[k]));
  const pinned = state.pinned;
  let edges = "", nodes = "", axis = "", labels = "";
  const drawnEdges = [];
  for (let k = 0; k < E.t.length; k++) if (p.edge[k]) drawnEdges.push(k);
  // up to LIMITS.svgEdges edges are SVG elements (hover each); beyond, they are painted on a canvas under the SVG
  const onCanvas = drawnEdges.length > LIMITS.svgEdges;
  for (const k of onCanvas ? [] : drawnEdges) {
    const [x1, y1] = xy.get(E.s[k]), [x2, y2] = xy.get(E.t[k]);
    const dim = pinned !== null && E.s[k] !== pinned && E.t[k] !== pinned ? " dim" : "";
    edges += `<line class="edge${dim}" data-kind="edge" data-i="${k}" x1="${x1.toFixed(1)}" y1="${y1}" x2="${x2.toFixed(1)}" y2="${y2}" ` +
      `stroke="${E.w[k] > 0 ? HELP : HURT}" stroke-opacity="0.55" stroke-width="${(0.4 + 3.6 * Math.abs(E.w[k]) / maxW).toFixed(2)}"/>`;
  }
  for (const i of keep) {
    const [x, y] = xy.get(i), t = N.type[i];
    const cls = "node" + (pinned === i ? " pinned" : "");
    const attrs = `class="${cls}" data-kind="node" data-i="${i}"`;
    if (t === "feature") nodes += `<circle ${attrs} cx="${x.toFixed(1)}" cy="${y}" r="5" fill="#8c6bb1"/>`;
    else if (t === "error") nodes += `<rect ${attrs} x="${(x - 5).toFixed(1)}" y="${y - 5}" width="10" height="10" fill="#bbb" stroke="#666"/>`;
    else if (t === "token") nodes += `<rect ${attrs} x="${(x - 7).toFixed(1)}" y="${y - 7}" width="14" height="14" rx="3" fill="#fdd49e" stroke="#d7301f"/>`;
    else {
      nodes += `<rect ${attrs} x="${(x - 7).toFixed(1)}" y="${y - 7}" width="14" height="14" rx="3" fill="#c7e9c0" stroke="#238b45"/>`;
      labels += `<text class="label" x="${(x + 9).toFixed(1)}" y="${y - 9}">${esc(N.label[i])}</text>`;
    }
  }
  for (let r = 0; r < lay.rows; r++) {
    const name = r === 0 ? "tokens" : r === lay.rows - 1 ? "logits" : `layer ${r - 1}`;
    axis += `<line class="rowline" x1="${lay.left}" x2="${W}" y1="${lay.y(r)}" y2="${lay.y(r)}"/><text class="axis" x="4" y="${lay.y(r) + 4}">${name}</text>`;
  }
  view.prompt_tokens.forEach((tok, pos) => {
    const x = lay.left + pos * lay.colW + lay.colW / 2;
    axis += `<text class="axis" text-anchor="middle" x="${x.toFixed(1)}" y="${lay.height - lay.bottom + 28}">${esc(tok)}</text>` +
      `<text class="axis" text-anchor="middle" x="${x.toFixed(1)}" y="${lay.height - lay.bottom + 42}" font-size="9">${pos}</text>`;
  });
  $("canvas").innerHTML = (onCanvas ? "<canvas></canvas>" : "") + svgOpen(lay.height) + axis + edges + nodes + labels + "</svg>";
  const svg = $("canvas").querySelector("svg");
  if (onCanvas) paintEdges($("canvas").querySelector("canvas"), svg, lay.height, drawnEdges, E, xy, maxW, pinned);
  bindHover(svg, (kind, i) => describeGraphItem(view, kind, i, p), (el) => {
    if (!el || el.dataset.kind !== "node") { state.pinned = null; draw(); return; }
    const i = +el.dataset.i;
    state.pinned = state.pinned === i ? null : i;
    draw();
    $("info").innerHTML = state.pinned === null ? "" : describeGraphItem(view, "node", i, p) + neighbours(view, i, p);
  });
  state.drawn = {  // names, built when asked (a dense graph draws 10^5 edges)
    get nodes() { return keep.map((i) => N.id[i]); },
    get edges() { return drawnEdges.map((k) => `${N.id[E.s[k]]}->${N.id[E.t[k]]}`); },
  };
  $("node-threshold-value").textContent = fmt(state.nodeThreshold);
  $("edge-threshold-value").textContent = fmt(state.edgeThreshold);
  const features = keep.filter((i) => N.type[i] === "feature").length, errors = keep.filter((i) => N.type[i] === "error").length;
  const counts = [["features drawn", fmt(features)], ["error nodes drawn", fmt(errors)], ["edges drawn", fmt(drawnEdges.length)]];
  const scores = Object.entries(view.scores || {}).map(([k, v]) => [k, fmt(v)]);
  $("numbers").innerHTML = "<h2>At these thresholds</h2>" + rows(counts) +
    (onCanvas ? `<p class="note">${fmt(drawnEdges.length)} edges kept: ${drawnEdges.length > LIMITS.paintMax ? `the strongest ${LIMITS.paintMax} ` : ""}` +
      `painted, not hoverable (above ${LIMITS.svgEdges}); click a node to list its strongest edges.</p>` : "") +
    (features === 0 ? '<p class="note">No feature survives pruning at these thresholds: the tokens reach the logits through error nodes and direct paths only.</p>' : "") +
    "<h2>The graph (run's thresholds)</h2>" + rows(scores);
}

function paintEdges(canvas, svg, height, edges, E, xy, maxW, pinned) {
  // the SVG's user units (W across) mapped onto the canvas's pixels; weakest edges first, strongest on top
  const box = svg.getBoundingClientRect(), ratio = window.devicePixelRatio || 1, scale = box.width / W;
  canvas.width = Math.round(box.width * ratio); canvas.height = Math.round(height * scale * ratio);
  canvas.style.width = box.width + "px"; canvas.style.height = height * scale + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale * ratio, 0, 0, scale * ratio, 0, 0);
  // one path per (sign, width bucket, dimmed): a few strokes instead of one per edge; thin buckets first
  if (edges.length > LIMITS.paintMax) {  // the strongest paintMax: more lines than pixels show nothing more
    const w = Float64Array.from(edges, (k) => Math.abs(E.w[k])).sort();
    const cut = w[w.length - LIMITS.paintMax];
    edges = edges.filter((k) => Math.abs(E.w[k]) >= cut);
  }
  const BUCKETS = 8, paths = new Map();
  for (const k of edges) {
    const bucket = Math.min(BUCKETS - 1, Math.floor(BUCKETS * Math.abs(E.w[k]) / maxW));
    const dim = pinned !== null && E.s[k] !== pinned && E.t[k] !== pinned ? 1 : 0;
    const key = (dim * BUCKETS + bucket) * 2 + (E.w[k] > 0 ? 1 : 0);
    if (!paths.has(key)) paths.set(key, new Path2D());
    const [x1, y1] = xy.get(E.s[k]), [x2, y2] = xy.get(E.t[k]);
    const path = paths.get(key);
    path.moveTo(x1, y1); path.lineTo(x2, y2);
  }
  const parts = (key) => [key % 2, Math.floor(key / 2) % BUCKETS, Math.floor(key / 2 / BUCKETS)];
  const keys = [...paths.keys()].sort((a, b) => parts(b)[2] - parts(a)[2] || parts(a)[1] - parts(b)[1]);
  for (const key of keys) {  // dimmed first, then thin to wide
    const [positive, bucket, dim] = parts(key);
    ctx.globalAlpha = dim ? 0.05 : 0.45;
    ctx.strokeStyle = positive ? HELP : HURT;
    ctx.lineWidth = 0.3 + 3.2 * (bucket + 0.5) / BUCKETS;
    ctx.stroke(paths.get(key));
  }
}

function describeGraphItem(view, kind, i, p) {
  const N = view.nodes, E = view.edges;
  if (kind === "edge") return "<h2>Edge</h2>" + rows([["from", esc(N.id[E.s[i]])], ["to", esc(N.id[E.t[i]])], ["weight", fmt(E.w[i])]]);
  const kindName = { feature: "feature", error: "error node (the transcoder's reconstruction error)", token: "token embedding", logit: "logit" }[N.type[i]];
  const pairs = [["node", esc(N.id[i])], ["kind", kindName], ["label", esc(N.label[i])], ["layer", fmt(N.layer[i])],
    ["position", fmt(N.pos[i])]];
  if (N.type[i] === "feature") pairs.push(["activation", fmt(N.activation[i])]);
  if (N.type[i] === "logit") pairs.push(["probability", fmt(N.prob[i])]);
  pairs.push(["influence", fmt(N.influence[i])], ["cumulative influence share", fmt(N.cumulative[i])]);
  const iv = (view.interventions || {})[N.id[i]];
  if (iv) for (const [k, v] of Object.entries(iv)) pairs.push([k, fmt(v)]);
  return "<h2>Node</h2>" + rows(pairs);
}

function neighbours(view, i, p) {
  const N = view.nodes, E = view.edges, ins = [], outs = [];
  for (let k = 0; k < E.t.length; k++) {
    if (!p.edge[k]) continue;
    if (E.t[k] === i) ins.push(k);
    if (E.s[k] === i) outs.push(k);
  }
  const top = (list, end) => list.sort((a, b) => Math.abs(E.w[b]) - Math.abs(E.w[a])).slice(0, 6)
    .map((k) => [esc(N.id[end(k)]) + (N.label[end(k)] ? " " + esc(N.label[end(k)]) : ""), fmt(E.w[k])]);
  return "<h2>Strongest inputs</h2>" + rows(top(ins, (k) => E.s[k])) + "<h2>Strongest outputs</h2>" + rows(top(outs, (k) => E.t[k]));
}

window.viewer = { DATA, state, prune, show, draw, LIMITS };
window.addEventListener("DOMContentLoaded", () => { buildFrame(); route(); document.body.dataset.ready = "1"; });
