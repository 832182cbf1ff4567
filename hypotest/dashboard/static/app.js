// hypotest live dashboard: one page, no external resources. Talks to the REST API under /api and
// listens to /ws (one JSON message per session event). Everything is re-read from the API after an
// event (throttled to one refresh in flight), so a missed WebSocket message never leaves the page
// wrong for longer than the next event or the 3 s poll used while the WebSocket is down.
"use strict";

const TOKEN_KEY = "hypotest-dashboard-token";
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac"];
const LOG_FLOOR = 1e-6;  // the log axis shows posteriors from 1e-6 to 1

const S = {
  status: null, hyps: [], history: null, proposals: [], selected: null, logScale: false,
  ws: null, wsOpen: false, refreshing: false, dirty: false, imgStamp: 0, events: [],
  sites: [], site: null, frameShape: null,
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const SVG_NS = "http://www.w3.org/2000/svg";
const svgEl = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

// ---- numbers ------------------------------------------------------------------------------
const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toPrecision(digits);
const fmtP = (p) => (p === null || p === undefined) ? "–" : (p >= 0.001 ? p.toFixed(3) : p.toExponential(1));
const fmtMs = (s) => (s === null || s === undefined) ? "–" : (1000 * s).toFixed(s < 0.01 ? 1 : 0);
function colourOf(id) {
  const ids = S.history && S.history.ids.length ? S.history.ids : S.hyps.map((h) => h.id);
  const i = Math.max(0, ids.indexOf(id));
  return i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360} 55% 60%)`;
}
const nameOf = (id) => { const h = S.hyps.find((x) => x.id === id); return h ? h.name : id.slice(0, 8); };

// ---- API ----------------------------------------------------------------------------------
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && token()) headers["Authorization"] = `Bearer ${token()}`;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    const err = new Error(detail || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function say(text, kind = "error") {
  const m = $("#message");
  m.textContent = text;
  m.dataset.kind = kind;
  m.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { m.hidden = true; }, kind === "error" ? 12000 : 4000);
}

function logEvent(text) {
  const li = el("li", {}, `${new Date().toLocaleTimeString()}  ${text}`);
  const log = $("#event-log");
  log.prepend(li);
  while (log.children.length > 30) log.lastChild.remove();
}

// ---- refresh: everything from the API, one refresh in flight --------------------------------
async function refresh() {
  if (S.refreshing) { S.dirty = true; return; }
  S.refreshing = true;
  try {
    const [status, hyps, history, proposals] = await Promise.all([
      api("/api/status"), api("/api/hypotheses"), api("/api/history"), api("/api/proposals")]);
    S.status = status; S.hyps = hyps; S.history = history; S.proposals = proposals;
    renderStatus(); renderChart(); renderTimeline(); renderHypotheses(); renderProposals();
    refreshImages();
    if (status.field_of_view) await refreshSites();
    await renderRefinement();
  } catch (e) {
    if (!S.wsOpen) renderWs("offline");
    console.warn("refresh failed", e);
  } finally {
    S.refreshing = false;
    if (S.dirty) { S.dirty = false; setTimeout(refresh, 50); }
  }
}

function focusId() {
  if (S.selected && S.hyps.some((h) => h.id === S.selected)) return S.selected;
  const live = S.hyps.filter((h) => !h.dropped);
  if (!live.length) return null;
  return live.reduce((a, b) => ((b.posterior || 0) > (a.posterior || 0) ? b : a)).id;
}

function loadImage(img, url) {
  // Swap only once the new image decoded: no flicker and no broken-image icon while waiting.
  const probe = new Image();
  probe.onload = () => { img.src = probe.src; img.dataset.loaded = String(Number(img.dataset.loaded) + 1); img.classList.remove("missing"); };
  probe.onerror = () => { if (img.dataset.loaded === "0") img.classList.add("missing"); };
  probe.src = url;
}

function refreshImages() {
  const step = S.status ? S.status.step : 0;
  const stamp = `${step}-${++S.imgStamp}`;
  loadImage($("#img-frame"), `/api/frames/latest.png?t=${stamp}`);
  loadImage($("#img-residual"), `/api/residual.png?t=${stamp}`);
  const id = focusId();
  if (id) {
    loadImage($("#img-sim"), `/api/simulations/${encodeURIComponent(id)}.png?t=${stamp}`);
    $("#sim-name").textContent = nameOf(id);
  }
  $("#frame-caption").textContent = step ? `(step ${step})` : "";
}

// ---- header ------------------------------------------------------------------------------
function beamSummary(b) {
  if (!b || typeof b !== "object") return "–";
  const parts = [];
  if (b.energy) parts.push(`${(b.energy / 1000).toFixed(0)} kV`);
  const ab = b.aberrations || {};
  for (const [k, v] of Object.entries(ab)) {  // Krivanek C_nm [Å] (shown in µm when large), phi_nm [rad]
    const val = Math.abs(v) >= 1e4 ? `${(v / 1e4).toFixed(2)} µm` : `${Number(v).toFixed(1)} Å`;
    parts.push(`${k} ${k.startsWith("phi") ? Number(v).toFixed(2) + " rad" : val}`);
  }
  if (b.semiangle_cutoff !== undefined) parts.push(`α ${b.semiangle_cutoff} mrad`);
  if (b.tilt && (b.tilt[0] || b.tilt[1])) parts.push(`tilt ${b.tilt[0]}, ${b.tilt[1]} mrad`);
  if (b.dose !== undefined) parts.push(`${b.dose} e⁻/Å²`);
  if (b.detector && b.detector.mode) parts.push(b.detector.mode);
  return parts.join(" · ");
}

function renderBeam(beam, label) {
  const bc = $("#beam-current");
  bc.replaceChildren(...(label ? [el("div", { class: "beam-label" }, label)] : []), el("div", {}, beamSummary(beam)));
  bc.dataset.beam = JSON.stringify(beam || {});
  bc.dataset.label = label || "";
}

function renderStatus() {
  const s = S.status;
  if (!s) return;
  const st = $("#session-state");
  st.textContent = s.state; st.dataset.state = s.state;
  $("#step").textContent = s.step;
  $("#frame-rate").textContent = s.frame_rate_hz === null ? "–" : s.frame_rate_hz.toFixed(1);
  const tot = (s.latency_s || {}).total || {};  // null before the first step
  $("#latency").textContent = `${fmtMs(tot.p50)} / ${fmtMs(tot.p99)} ms`;
  const f = s.frames || {};
  const c = $("#counters");
  c.textContent = `${f.received} in · ${f.scored} scored · ${f.coalesced} coalesced · ${f.rejected} rejected · ${f.bad_messages} bad`;
  c.classList.toggle("warn", (f.coalesced || 0) + (f.rejected || 0) + (f.bad_messages || 0) > 0);
  $("#dose-used").textContent = s.dose_used_e_per_A2 === null ? "–" : `${s.dose_used_e_per_A2.toFixed(0)} e⁻/Å²`;
  const src = $("#source-connection");
  src.textContent = `${s.source} (${s.connection})`; src.dataset.connection = s.connection;
  const d = $("#decision");
  if (s.field_of_view) {  // a field of view: no one decision, one per site
    const fv = s.field_of_view;
    d.textContent = `${fv.n_sites} sites · ${fv.undecided} undecided`;
    d.className = fv.undecided === 0 ? "decided" : "";
  } else if (s.decision) { d.textContent = `${s.decision.name} ✔ P=${fmtP(s.decision.posterior)}`; d.className = "decided"; }
  else if (s.fit_check && s.fit_check.unexplained) {  // no hypothesis explains the last frame: never a decision
    const best = S.hyps.length ? S.hyps.reduce((a, b) => ((b.posterior || 0) > (a.posterior || 0) ? b : a)) : null;
    const seg = s.fit_check.segment && s.fit_check.segment.unexplained ? s.fit_check.segment : null;
    const z = seg ? `z=${seg.z.toFixed(1)} over ${seg.steps} steps` : `z=${s.fit_check.z.toFixed(1)}`;
    d.textContent = `unexplained (fit ${z}; least wrong ${best ? best.name : "–"})`;
    d.className = "unexplained";
  } else {
    const best = S.hyps.length ? S.hyps.reduce((a, b) => ((b.posterior || 0) > (a.posterior || 0) ? b : a)) : null;
    d.textContent = best ? `${best.name} P=${fmtP(best.posterior)}` : "–"; d.className = "";
  }
  d.title = d.textContent;
  renderBeam(s.beam, s.beam_label);
  $("#auto-apply").checked = !!s.auto_apply;
  const w = $("#warnings"), ws = s.warnings || [];  // what the session wants the operator to know
  w.hidden = ws.length === 0;
  w.replaceChildren(...ws.map((t) => el("p", {}, `⚠ ${t}`)));
  const tb = $("#latency-table tbody");
  tb.replaceChildren(...Object.entries(s.latency_s || {}).map(([stage, v]) =>
    el("tr", {}, el("td", {}, stage), el("td", {}, fmtMs(v && v.p50)), el("td", {}, fmtMs(v && v.p99)))));
}

function renderWs(state) {
  const w = $("#ws-state");
  w.textContent = state; w.dataset.ws = state;
}

// ---- posterior chart (SVG, one path per hypothesis) ---------------------------------------
function renderChart() {
  const svg = $("#posterior-chart");
  const h = S.history;
  const W = Math.max(300, svg.clientWidth || svg.parentElement.clientWidth || 600);
  const H = Math.max(160, svg.clientHeight || 330);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const m = { l: 44, r: 8, t: 8, b: 24 };
  const n = h ? h.steps.length : 0;
  svg.replaceChildren();
  svg.dataset.steps = String(n);
  const x0 = n ? h.steps[0] : 0, x1 = n ? Math.max(h.steps[n - 1], x0 + 1) : 1;
  const X = (step) => m.l + ((step - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = S.logScale
    ? (p) => m.t + (Math.log10(Math.max(p, LOG_FLOOR)) / Math.log10(LOG_FLOOR)) * (H - m.t - m.b)
    : (p) => m.t + (1 - p) * (H - m.t - m.b);
  const ticks = S.logScale ? [1, 1e-2, 1e-4, 1e-6] : [0, 0.25, 0.5, 0.75, 1];
  for (const t of ticks) {
    svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
    const lab = svgEl("text", { x: m.l - 4, y: Y(t) + 4, class: "tick", "text-anchor": "end" });
    lab.textContent = S.logScale ? (t === 1 ? "1" : `1e${Math.log10(t)}`) : String(t);
    svg.append(lab);
  }
  const xl = svgEl("text", { x: W - m.r, y: H - 6, class: "tick", "text-anchor": "end" });
  xl.textContent = n ? `step ${h.steps[n - 1]}` : "waiting for frames";
  svg.append(xl);
  const x0l = svgEl("text", { x: m.l, y: H - 6, class: "tick" });
  x0l.textContent = n ? String(x0) : "";
  svg.append(x0l);
  if (!n) return;
  for (const cp of h.change_points || []) {
    svg.append(svgEl("line", { x1: X(cp), x2: X(cp), y1: m.t, y2: H - m.b, class: "changepoint" }));
  }
  h.ids.forEach((id, j) => {
    let d = "";
    for (let i = 0; i < n; i++) {
      const p = h.posterior[i][j];
      if (p === null || p === undefined) continue;
      d += `${d ? "L" : "M"}${X(h.steps[i]).toFixed(1)},${Y(p).toFixed(1)}`;
    }
    const hyp = S.hyps.find((x) => x.id === id);
    const path = svgEl("path", {
      d, "data-id": id, class: `series ${hyp ? hyp.state : ""} ${id === S.selected ? "selected" : ""}`,
      stroke: colourOf(id),
    });
    const title = svgEl("title");
    title.textContent = nameOf(id);
    path.append(title);
    svg.append(path);
  });
  renderLegend();
}

function renderLegend() {
  const ul = $("#posterior-legend");
  const h = S.history;
  if (!h) return;
  const last = h.posterior.length ? h.posterior[h.posterior.length - 1] : [];
  ul.replaceChildren(...h.ids.map((id, j) => {
    const hyp = S.hyps.find((x) => x.id === id);
    return el("li", {
      "data-id": id, class: `${hyp ? hyp.state : ""} ${id === S.selected ? "selected" : ""}`,
      onclick: () => select(id), title: "show this hypothesis' simulation and refinement",
    }, el("i", { style: `background:${colourOf(id)}` }), el("span", { class: "name" }, nameOf(id)), ` ${fmtP(last[j])}`);
  }));
}

function renderTimeline() {
  const svg = $("#state-timeline");
  const h = S.history;
  const W = Math.max(300, svg.clientWidth || svg.parentElement.clientWidth || 600);
  const H = 30;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const n = h ? h.map_state.length : 0;
  if (!n) { svg.dataset.segments = "0"; return; }
  const m = { l: 44, r: 8 };
  const w = (W - m.l - m.r) / n;
  let segments = 0;
  for (let i = 0; i < n; i++) {
    const id = h.map_state[i];
    if (i === 0 || id !== h.map_state[i - 1]) segments++;
    const r = svgEl("rect", { x: m.l + i * w, y: 4, width: Math.max(w, 1), height: 16, fill: colourOf(id), "data-step": h.steps[i] });
    const t = svgEl("title");
    t.textContent = `step ${h.steps[i]}: ${nameOf(id)} (${(h.beams || [])[i] || ""})`;
    r.append(t);
    svg.append(r);
  }
  for (const cp of h.change_points || []) {
    const i = h.steps.indexOf(cp);
    if (i < 0) continue;
    svg.append(svgEl("line", { x1: m.l + i * w, x2: m.l + i * w, y1: 0, y2: 24, class: "changepoint" }));
    const mark = svgEl("path", { d: `M${m.l + i * w - 4},0 L${m.l + i * w + 4},0 L${m.l + i * w},6 Z`, class: "cp-mark" });
    svg.append(mark);
  }
  svg.dataset.segments = String(segments);
}

// ---- tables ------------------------------------------------------------------------------
function renderProposals() {
  const tb = $("#proposals tbody");
  if (!S.proposals.length) {
    tb.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" },
      S.status && S.status.decision ? "decided: no proposals" : "no proposals yet")));
    return;
  }
  tb.replaceChildren(...S.proposals.map((p) => el("tr", { "data-index": p.index },
    el("td", { title: JSON.stringify(p.beam) }, p.label),
    el("td", {}, p.dose_share == null ? "–" : `${Math.round(100 * p.dose_share)}%`),
    el("td", {}, p.expected_dose_to_decision == null ? "–" : fmt(p.expected_dose_to_decision, 3)),
    el("td", {}, fmt(p.expected_gain_bits, 3)),
    el("td", {}, fmt(p.gain_bits_per_electron, 2)),
    el("td", { class: "separates" }, (p.separates || []).slice(0, 3).map((s) => s.join(" | ")).join("; ")),
    el("td", {}, el("button", {
      type: "button", "data-apply-index": p.index, "data-label": p.label, onclick: (ev) => applyProposal(p, ev.target),
    }, "Apply")))));
}

async function applyProposal(p, button) {
  button.disabled = true;
  try {
    const r = await api(`/api/proposals/${p.index}/apply`, { method: "POST", body: { label: p.label } });
    renderBeam(r.beam, r.label || p.label);
    say(`applied: ${p.label}`, "info");
    logEvent(`beam ← ${p.label} (operator)`);
  } catch (e) {
    say(`Apply failed (${e.status || "network"}): ${e.message}`);
    if (e.status === 401) $("#token-input").focus();
  } finally {
    button.disabled = false;
    refresh();
  }
}

function renderHypotheses() {
  const tb = $("#hypotheses tbody");
  const fov = !!(S.status && S.status.field_of_view);
  if (fov) {  // per type: the expected fraction of its class's sites, the sites decided as it
    const th = document.querySelectorAll("#hypotheses thead th");
    th[2].textContent = "fraction"; th[2].title = "expected fraction of the sites of its class that are it";
    th[3].textContent = "decided"; th[3].title = "sites decided as it";
    th[4].textContent = "site class";
    $("#chart-title").textContent = "Expected fraction of sites per type, over frames";
  }
  const sorted = [...S.hyps].sort((a, b) => (b.posterior || 0) - (a.posterior || 0));
  tb.replaceChildren(...sorted.map((h) => el("tr", {
    "data-id": h.id, class: `${h.state} ${h.id === S.selected ? "selected" : ""}`, onclick: () => select(h.id),
  },
  el("td", {}, el("i", { class: "swatch", style: `background:${colourOf(h.id)}` })),
  el("td", { class: "name", title: `${h.name} · ${h.family} · ${h.id}` }, h.name),
  el("td", {}, fmtP(h.posterior)),
  el("td", {}, fov ? String(h.sites_decided) : (h.log10_bayes_factor === null ? "−∞" : h.log10_bayes_factor.toFixed(1))),
  el("td", {}, fov ? h.site_class : h.state),
  el("td", {}, (fov || h.state === "dropped") ? "" : el("button", {
    type: "button", class: "small", "data-drop-id": h.id, title: "stop scoring this hypothesis",
    onclick: (ev) => { ev.stopPropagation(); dropHypothesis(h); },
  }, "drop")))));
  const out = S.hyps.filter((h) => h.state !== "surviving");
  $("#rejections").replaceChildren(...(out.length ? out.map((h) => el("li", { "data-id": h.id, class: h.state },
    el("b", {}, h.name), ` ${h.state}: ${h.reason || (h.dropped ? "dropped by the operator" : "")}`))
    : [el("li", { class: "muted" }, "none yet")]));
}

async function dropHypothesis(h) {
  if (!window.confirm(`Stop scoring ${h.name}? It stays in the record as dropped.`)) return;
  try {
    await api(`/api/hypotheses/${encodeURIComponent(h.id)}`, { method: "DELETE" });
    logEvent(`dropped ${h.name}`);
  } catch (e) {
    say(`Drop failed (${e.status || "network"}): ${e.message}`);
  }
  refresh();
}

function select(id) {
  S.selected = S.selected === id ? null : id;
  renderChart(); renderHypotheses(); refreshImages(); renderRefinement();
}

async function renderRefinement() {
  const id = focusId();
  const box = $("#refinement");
  if (!id) { box.replaceChildren(); return; }
  let d;
  try { d = await api(`/api/hypotheses/${encodeURIComponent(id)}`); } catch (_) { return; }
  $("#refined-name").textContent = `${d.name} (${d.n_atoms} atoms)`;
  const rows = [];
  if (d.refinement && d.refinement.parameters) {
    for (const [k, v] of Object.entries(d.refinement.parameters)) {
      const ratio = v.sd && v.crlb ? v.sd / v.crlb : null;
      rows.push(el("tr", {}, el("td", {}, k), el("td", {}, `${fmt(v.value, 4)} ± ${fmt(v.sd, 2)}`),
        el("td", { title: "Cramér–Rao lower bound; sd/CRLB = 1 is the best possible" },
          v.crlb === null || v.crlb === undefined ? (v.unit || "") : `CRLB ${fmt(v.crlb, 2)}${ratio ? ` (×${ratio.toFixed(1)})` : ""}`)));
    }
  }
  const table = rows.length
    ? el("table", { class: "compact", id: "refinement-table" }, el("tbody", {}, ...rows))
    : el("p", { class: "muted" }, "not refined yet");
  const prov = Object.entries(d.provenance || {}).filter(([, v]) => v !== null && v !== "" && typeof v !== "object")
    .slice(0, 6).map(([k, v]) => `${k}: ${v}`).join(" · ");
  box.replaceChildren(table, el("p", { class: "prov muted" }, prov));
}

// ---- field-of-view sessions: site markers and details ------------------------------------
const SITE_COLOURS = { host: "#59a14f", defect: "#e15759", undecided: "#edc948", unexplained: "#b07aa1", off_specimen: "#888" };
function siteKind(s) {
  if (s.status !== "ok") return s.status;
  if (!s.decided) return "undecided";
  return s.is_host ? "host" : "defect";
}

async function refreshSites() {
  $("#sites-panel").hidden = false;
  try {
    S.sites = await api("/api/sites");
  } catch (e) { console.warn("sites", e); return; }
  const fov = S.status.field_of_view;
  const c = fov.calibration || {};
  const counts = Object.entries(fov.counts || {}).map(([k, v]) => `${k.split(" @")[0]} ${v}`).join(" · ");
  $("#site-summary").textContent = `${fov.n_sites} sites, ${fov.undecided} undecided, ${fov.frames} frames; `
    + `pixel ${fmt(c.pixel_x_A, 5)} × ${fmt(c.pixel_y_A, 5)} Å, rotation ${fmt(c.rotation_deg, 4)}°. ${counts}`;
  renderSiteOverlay();
  if (S.site !== null) await showSite(S.site, false);
}

function renderSiteOverlay() {
  const svg = $("#site-overlay");
  const img = $("#img-frame");
  const nx = img.naturalWidth || 128, ny = img.naturalHeight || 128;
  svg.setAttribute("viewBox", `0 0 ${nx} ${ny}`);
  svg.hidden = false;
  const r = Math.max(1.2, nx / 100);
  const marks = S.sites.map((s) => {
    const kind = siteKind(s);
    const dot = svgEl("circle", { cx: s.frame_x_px + 0.5, cy: ny - s.frame_y_px - 0.5, r: kind === "host" ? r * 0.6 : r,
      fill: SITE_COLOURS[kind], stroke: SITE_COLOURS[kind], "data-k": s.k, "data-kind": kind,
      class: S.site === s.k ? "selected" : "" });
    const t = svgEl("title");
    t.textContent = `site ${s.k} (${s.class}): ${s.best_name.split(" @")[0]} P=${fmtP(s.p_best)} · ${kind}`;
    dot.append(t);
    dot.addEventListener("click", () => showSite(s.k, true));
    return dot;
  });
  svg.replaceChildren(...marks);
  svg.dataset.sites = String(marks.length);
}

async function showSite(k, fresh) {
  S.site = k;
  let d;
  try { d = await api(`/api/sites/${k}`); } catch (e) { say(`site ${k}: ${e.message}`); return; }
  $("#site-title").textContent = `${k} · ${d.class} · (${fmt(d.x_A, 4)}, ${fmt(d.y_A, 4)}) Å · ${siteKind(d)}`;
  const rows = d.posterior_named.map((p) => el("tr", {}, el("td", {}, p.name), el("td", {}, fmtP(p.p))));
  const f = d.fit || {};
  $("#site-detail").replaceChildren(
    el("table", { class: "compact", id: "site-posterior" }, el("thead", {}, el("tr", {}, el("th", {}, "hypothesis"), el("th", {}, "P"))),
      el("tbody", {}, ...rows)),
    el("p", { class: "muted" }, `log₁₀ BF vs host ${fmt(d.log10_bayes_factor)}; fit check z = ${fmt(f.z)}, `
      + `p = ${fmtP(f.p_value)} (${f.statistic}, ${f.n_pixels} px)`
      + (d.near_defect.length ? `; near defect site ${d.near_defect.join(", ")}` : "")
      + (d.scored_with && d.scored_with.length ? `; scored with the defects of site ${d.scored_with.join(", ")}` : "")));
  $("#site-images").hidden = false;
  const stamp = `${S.status ? S.status.step : 0}-${++S.imgStamp}`;
  for (const layer of ["frame", "best", "residual"]) loadImage($(`#site-img-${layer}`), `/api/sites/${k}/${layer}.png?t=${stamp}`);
  if (fresh) renderSiteOverlay();
}

// ---- live link -------------------------------------------------------------------------
function onEvent(ev) {
  switch (ev.type) {
    case "hello":
    case "status":
    case "step":
      if (ev.status) { S.status = ev.status; renderStatus(); }
      refresh();
      break;
    case "beam":
      renderBeam(ev.beam, ev.label);
      logEvent(`beam changed (${ev.by}): ${ev.label || beamSummary(ev.beam)}`);
      refresh();
      break;
    case "hypotheses":
      logEvent("hypotheses changed");
      refresh();
      break;
    case "stream":
      logEvent(`source ${ev.kind}${ev.detail ? ": " + ev.detail : ""}`);
      refresh();
      break;
    case "stopped":
      logEvent("session stopped");
      refresh();
      break;
    default:  // "proposals" (computed after the step) and anything newer: re-read the API
      refresh();
      break;
  }
}

function connect(delay = 500) {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  renderWs("connecting");
  const ws = new WebSocket(url);
  S.ws = ws;
  ws.onopen = () => { S.wsOpen = true; renderWs("live"); delay = 500; };
  ws.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.warn(e); } };
  ws.onclose = () => {
    S.wsOpen = false;
    renderWs("reconnecting");
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  };
}

function init() {
  const ti = $("#token-input");
  ti.value = token();
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, ti.value.trim());
    say(ti.value.trim() ? "token set for this tab" : "token cleared", "info");
  });
  $("#scale-toggle").addEventListener("click", () => {
    S.logScale = !S.logScale;
    $("#scale-toggle").textContent = S.logScale ? "linear" : "log";
    renderChart();
  });
  $("#auto-apply").addEventListener("change", async (ev) => {
    try {
      S.status = await api("/api/auto_apply", { method: "POST", body: { on: ev.target.checked } });
      renderStatus();
    } catch (e) {
      ev.target.checked = !ev.target.checked;
      say(`auto-apply not changed (${e.status || "network"}): ${e.message}`);
    }
  });
  window.addEventListener("resize", () => { renderChart(); renderTimeline(); });
  $("#img-frame").addEventListener("load", () => { if (S.sites.length) renderSiteOverlay(); });
  setInterval(() => { if (!S.wsOpen) refresh(); }, 3000);
  refresh();
  connect();
}

document.addEventListener("DOMContentLoaded", init);
