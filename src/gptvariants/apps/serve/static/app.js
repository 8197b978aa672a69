// gptvariants playground: plain DOM, no framework, no network but this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** An element with a class, text and children (text always as textContent: model output is never HTML). */
function el(tag, cls, text, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  for (const c of children) if (c) e.append(c);
  return e;
}

const state = { runs: [], byName: {}, limits: {}, report: false };

// ------------------------------------------------------------------------------------------
// scores and colours

/** What a token can be coloured by. fixed: the scale is [0, log V] (comparable across runs and
 *  requests); otherwise [0, the largest value on the page]. */
const METRICS = {
  surprisal: { label: "surprisal −log p", unit: "nats", get: (t) => t.surprisal, fixed: true },
  entropy: { label: "entropy H[p]", unit: "nats", get: (t) => t.entropy, fixed: true },
  mi: { label: "mutual information (Bayesian)", unit: "nats", get: (t) => (t.mi ?? null), fixed: false },
  set: { label: "sigmoid set size", unit: "tokens", get: (t) => (t.set_size ?? null), fixed: false },
  conformal: { label: "conformal set size", unit: "tokens", get: (t) => (t.conformal_set_size ?? null), fixed: false },
};

// light (confident) to hot (uncertain); dark text stays readable on all but the last stops
const STOPS = [[0, [247, 251, 244]], [0.2, [255, 243, 176]], [0.45, [253, 200, 105]], [0.7, [244, 124, 72]], [1, [196, 38, 62]]];

function colourAt(x) {
  x = Math.min(1, Math.max(0, x));
  for (let i = 1; i < STOPS.length; i++) {
    const [x1, c1] = STOPS[i];
    if (x <= x1) {
      const [x0, c0] = STOPS[i - 1];
      const f = (x - x0) / (x1 - x0);
      return `rgb(${c0.map((c, k) => Math.round(c + f * (c1[k] - c))).join(",")})`;
    }
  }
  return "rgb(196,38,62)";
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return Number(x.toFixed(digits)).toString();
}

const pct = (p) => (p >= 0.995 ? (p * 100).toFixed(1) : (p * 100).toPrecision(3)) + "%";

/** A token's text with its whitespace visible (for the tooltip and lists). */
function visible(text) {
  if (text === "") return "∅";
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

/** Whether a listed alternative is the token itself (a word tokenizer's piece carries its leading space). */
const same = (alt, text) => alt === text || (alt.trim() !== "" && alt.trim() === text.trim());

/** Colours every token of a view from one shared scale, and draws the legend. */
class Colouring {
  constructor(view) {
    this.view = view;
    this.select = $(`#${view}-colour`);
    this.legend = $(`#${view}-legend`);
    this.columns = [];
    this.pending = false;
    for (const [key, m] of Object.entries(METRICS)) this.select.append(new Option(m.label, key));
    this.select.addEventListener("change", () => this.refresh());
  }
  get metric() { return METRICS[this.select.value]; }
  scale() {
    const m = this.metric;
    if (m.fixed) {
      const runs = this.columns.length ? this.columns.map((c) => c.run) : state.runs;
      const logV = Math.max(1, ...runs.map((r) => Math.log(r.vocab_size)));
      return [0, logV];
    }
    let hi = 0;
    for (const c of this.columns) for (const t of c.tokens) { const v = m.get(t); if (v !== null && v > hi) hi = v; }
    return [0, hi > 0 ? hi : 1];
  }
  /** Recolour at the next frame (tokens arrive faster than frames). */
  refresh() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.paint(); });
  }
  paint() {
    const m = this.metric;
    const [lo, hi] = this.scale();
    let missing = false;
    for (const c of this.columns) {
      c.tokens.forEach((t, i) => {
        const v = m.get(t);
        const span = c.spans[i];
        if (v === null) { span.classList.add("na"); span.style.backgroundColor = ""; span.style.color = ""; missing = true; return; }
        const x = (v - lo) / (hi - lo);
        span.classList.remove("na");
        span.style.backgroundColor = colourAt(x);
        span.style.color = x > 0.82 ? "#fff" : "";
      });
      if (c.onPaint) c.onPaint(m, hi);
    }
    this.drawLegend(m, lo, hi, missing);
  }
  drawLegend(m, lo, hi, missing) {
    const L = this.legend;
    L.replaceChildren();
    const bar = el("div", "bar");
    bar.style.backgroundImage = `linear-gradient(to right, ${[0, 0.2, 0.45, 0.7, 1].map((x) => colourAt(x)).join(", ")})`;
    const ticks = el("div", "ticks");
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const v = lo + f * (hi - lo);
      const label = m.unit === "tokens" ? String(Math.round(v)) : fmt(v, 2);
      ticks.append(el("span", "", f === 1 && m.fixed ? `${label} (log V)` : label));
    }
    const gradient = el("div", "gradient", null, bar, ticks);
    L.append(el("span", "legend-title", `${m.label}, ${m.unit}`), gradient,
      el("span", "legend-note", m.fixed ? "low = confident · high = surprised/uncertain" : "scale: 0 to the largest value shown"));
    if (missing) L.append(el("span", "na-swatch", "n/a for this head or mode"));
    if (this.columns.some((c) => c.tokens.some((t) => t.in_conformal_set === false))) {
      L.append(el("span", "out-swatch", "outside its conformal set"));
    }
  }
}

// ------------------------------------------------------------------------------------------
// the tooltip: probability, alternatives, sigmoid set, per-draw probabilities

const tip = { node: null, pinned: null };

function tipContent(t, run, span) {
  const box = el("div");
  const head = el("div", "tip-head", null, el("code", "tip-token", visible(t.text)),
    el("span", "tip-id", `id ${t.id} · ${run.name}`));
  box.append(head);
  const stats = el("dl", "tip-stats");
  const stat = (k, v) => stats.append(el("dt", "", k), el("dd", "", v));
  stat("probability", pct(t.prob));
  stat("surprisal", `${fmt(t.surprisal)} nats`);
  stat("entropy", `${fmt(t.entropy)} nats`);
  if (t.mi !== undefined) stat("mutual information", `${fmt(t.mi)} nats`);
  if (t.set_size !== undefined) stat("sigmoid set size", String(t.set_size));
  if (t.conformal_set_size !== undefined) {
    const n = t.conformal_set_size;
    stat(`conformal set (α ${span._alpha})`, `${n} token${n === 1 ? "" : "s"}, ${t.in_conformal_set ? "holds it" : "misses it"}`);
  }
  box.append(stats);
  if (t.top && t.top.length) {
    box.append(el("div", "tip-title", "Top alternatives"));
    const list = el("div", "alts");
    for (const [text, p] of t.top) {
      const bar = el("span", "alt-bar");
      bar.style.width = `${Math.max(1, p * 100)}%`;
      const row = el("div", same(text, t.text) ? "alt chosen" : "alt", null,
        el("code", "alt-text", visible(text)), el("span", "alt-track", null, bar), el("span", "alt-p", pct(p)));
      list.append(row);
    }
    box.append(list);
  }
  if (t.set) {
    const tau = span._tau ?? 0.5;
    box.append(el("div", "tip-title", `Sigmoid set {v : σ(z_v) > ${fmt(tau, 2)}}: ${t.set_size} token${t.set_size === 1 ? "" : "s"}`));
    const chips = el("div", "chips");
    for (const s of t.set) chips.append(el("code", same(s, t.text) ? "chip chosen" : "chip", visible(s)));
    if (t.set_size > t.set.length) chips.append(el("span", "more", `+${t.set_size - t.set.length} more`));
    if (!t.set_size) chips.append(el("span", "more", "empty: no token clears tau"));
    box.append(chips);
  }
  if (t.draws) box.append(drawsChart(t.draws, t.prob));
  if (!t.top) box.append(el("div", "tip-hint", "alternatives: set ‘alternatives’ above 0"));
  return box;
}

/** This token's probability under each posterior draw, as bars with the mixture's p marked. */
function drawsChart(draws, mean) {
  const n = draws.length;
  const mu = draws.reduce((a, b) => a + b, 0) / n;
  const sd = Math.sqrt(draws.reduce((a, b) => a + (b - mu) ** 2, 0) / n);
  const wrap = el("div", "draws", null, el("div", "tip-title", `p under each of ${n} posterior draws`));
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  // the draws' own range, so that their spread is visible however small
  const top = Math.max(...draws, mean), bottom = Math.min(...draws, mean);
  const pad = (top - bottom) * 0.25 || top * 0.05 || 1e-6;
  const lo = Math.max(0, bottom - pad), span = top - lo || 1;
  const W = 240, H = 44, w = W / n;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "draws-svg");
  draws.forEach((p, i) => {
    const r = document.createElementNS(NS, "rect");
    const h = Math.max(1, ((p - lo) / span) * (H - 4));
    r.setAttribute("x", String(i * w + 1)); r.setAttribute("width", String(Math.max(1, w - 2)));
    r.setAttribute("y", String(H - h)); r.setAttribute("height", String(h));
    svg.append(r);
  });
  const line = document.createElementNS(NS, "line");
  const y = H - ((mean - lo) / span) * (H - 4);
  line.setAttribute("x1", "0"); line.setAttribute("x2", String(W)); line.setAttribute("y1", String(y)); line.setAttribute("y2", String(y));
  svg.append(line);
  wrap.append(svg, el("div", "tip-hint", `min ${pct(Math.min(...draws))} · max ${pct(Math.max(...draws))} · sd ${fmt(sd * 100, 2)} pts · axis from ${pct(lo)} · dashed: mixture p`));
  return wrap;
}

function showTip(span) {
  const t = span._tok, run = span._run;
  if (!t) return;
  tip.node.replaceChildren(tipContent(t, run, span));
  tip.node.hidden = false;
  const r = span.getBoundingClientRect();
  const tw = tip.node.offsetWidth, th = tip.node.offsetHeight;
  let x = Math.min(Math.max(8, r.left), window.innerWidth - tw - 8);
  let y = r.bottom + 6;
  if (y + th > window.innerHeight - 8) y = Math.max(8, r.top - th - 6);
  tip.node.style.left = `${x}px`;
  tip.node.style.top = `${y}px`;
}

function hideTip() {
  if (tip.pinned) return;
  tip.node.hidden = true;
}

function setupTips() {
  tip.node = $("#tip");
  document.addEventListener("mouseover", (e) => {
    const span = e.target.closest?.(".tok");
    if (span && !tip.pinned) { $$(".tok.hover").forEach((s) => s.classList.remove("hover")); span.classList.add("hover"); showTip(span); }
  });
  document.addEventListener("mouseout", (e) => {
    const span = e.target.closest?.(".tok");
    if (span && !tip.pinned) { span.classList.remove("hover"); hideTip(); }
  });
  // a click or tap pins the details (touch screens have no hover); another click unpins
  document.addEventListener("click", (e) => {
    const span = e.target.closest?.(".tok");
    if (tip.pinned) { tip.pinned.classList.remove("pinned"); tip.pinned = null; tip.node.hidden = true; }
    if (span && !e.target.closest(".tip")) { tip.pinned = span; span.classList.add("pinned"); showTip(span); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && tip.pinned) { tip.pinned.classList.remove("pinned"); tip.pinned = null; tip.node.hidden = true; }
  });
  window.addEventListener("scroll", () => { if (!tip.pinned) tip.node.hidden = true; }, true);
}

// ------------------------------------------------------------------------------------------
// runs and columns

function badges(run) {
  const b = el("span", "badges");
  if (run.variant !== run.name) b.append(el("span", "badge variant", run.variant));
  if (run.bayesian) b.append(el("span", "badge bayes", "Bayesian"));
  if (run.sigmoid) b.append(el("span", "badge sig", "sigmoid"));
  return b;
}

function humanCount(n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(0)}k` : String(n);
}

function runsPicker(container, onChange) {
  container.replaceChildren(el("span", "picker-title", "runs"));
  for (const run of state.runs) {
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.value = run.name;
    box.addEventListener("change", onChange || (() => {}));
    container.append(el("label", "run-chip", null, box, el("span", "", run.name), badges(run)));
  }
}

function pickedRuns(container) {
  return $$("input:checked", container).map((b) => state.byName[b.value]);
}

/** One run's column: header, (sparkline), coloured tokens, footer. */
class Column {
  constructor(parent, run, colouring) {
    this.run = run; this.tokens = []; this.spans = []; this.colouring = colouring;
    this.node = el("div", "column");
    this.node.dataset.run = run.name;
    const meta = `${run.n_layer} layers · ${run.n_embd} wide · ${humanCount(run.params)} params · V ${run.vocab_size}` +
      (run.step !== null ? ` · step ${run.step}` : "");
    this.head = el("div", "col-head", null, el("div", "col-title", null, el("strong", "", run.name), badges(run)),
      el("div", "col-meta", meta));
    this.stats = el("div", "col-stats");
    this.text = el("div", "tokens");
    this.foot = el("div", "col-foot");
    this.node.append(this.head, this.stats, this.text, this.foot);
    parent.append(this.node);
    colouring.columns.push(this);
  }
  addPlain(text, cls = "plain") { if (text) this.text.append(el("span", cls, text)); }
  addToken(t) {
    const span = el("span", "tok", t.text === "\n" ? "↵\n" : t.text);
    if (t.text.trim() === "" && t.text !== "\n") span.classList.add("ws");
    if (t.in_conformal_set === false) span.classList.add("out-of-set");
    span._tok = t; span._run = this.run; span._tau = this.tau; span._alpha = this.alpha; // what its sets were computed with
    this.tokens.push(t); this.spans.push(span);
    const box = this.text;
    const following = box.scrollHeight - box.scrollTop - box.clientHeight < 40; // the reader is at the end
    box.append(span);
    if (following) box.scrollTop = box.scrollHeight;
    this.colouring.refresh();
  }
  error(message) {
    this.node.classList.add("failed");
    this.foot.replaceChildren(el("div", "error", message));
  }
  setStats(pairs) {
    this.stats.replaceChildren(...pairs.map(([k, v]) => el("span", "stat", null, el("span", "k", k), el("span", "v", v))));
  }
}

async function errorOf(response) {
  try { const j = await response.json(); return j.error || JSON.stringify(j); } catch { return `HTTP ${response.status}`; }
}

/** The server-sent events of a fetch response, as {event, data} objects. */
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { event, data: JSON.parse(data) };
    }
  }
}

// ------------------------------------------------------------------------------------------
// Generate

const gen = { colouring: null, controllers: [] };

// a Bayesian mode of the menus as the request's prediction: mean = 0 draws, sequence = a method
function prediction(mode, draws) {
  if (mode === "mean") return { mc_samples: 0 };
  return mode === "sequence" ? { method: "sequence", mc_samples: draws } : { mc_samples: draws };
}

function numberOr(id, fallback = null) {
  const v = $(id).value.trim();
  return v === "" ? fallback : Number(v);
}

function sampling(run) {
  const o = {
    max_new_tokens: numberOr("#o-max_new_tokens", 100), temperature: numberOr("#o-temperature", 1),
    top_k: numberOr("#o-top_k"), top_p: numberOr("#o-top_p"), repetition_penalty: numberOr("#o-repetition_penalty", 1),
    seed: numberOr("#o-seed"), greedy: $("#o-greedy").checked, top_n: numberOr("#o-top_n", 0),
    sig_mode: $("#o-sig_mode").value, tau: numberOr("#o-tau", 0.5),
  };
  const stop = $("#o-stop").value;
  o.stop = stop ? stop.split("|").map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t")).filter((s) => s) : [];
  if (run.bayesian) Object.assign(o, prediction($("#o-bayes_mode").value, numberOr("#o-mc_samples")));
  return o;
}

async function generateOne(col, prompt, signal) {
  const options = sampling(col.run);
  col.tau = options.tau;
  const t0 = performance.now();
  let first = null;
  col.setStats([["status", "waiting…"]]);
  const response = await fetch("/api/generate", {
    method: "POST", headers: { "Content-Type": "application/json" }, signal,
    body: JSON.stringify({ run: col.run.name, prompt, ...options }),
  });
  if (!response.ok) { col.setStats([]); col.error(await errorOf(response)); return; }
  for await (const { event, data } of sseEvents(response)) {
    if (event === "token") {
      if (first === null) first = performance.now() - t0;
      col.addToken(data);
      col.setStats([["tokens", String(col.tokens.length)], ["first token", `${first.toFixed(0)} ms`]]);
    } else if (event === "done") {
      col.setStats([["tokens", String(data.n_tokens)], ["tok/s", fmt(data.tokens_per_s, 0)],
        ["first token", `${(first ?? 0).toFixed(0)} ms`], ["nats/token", fmt(data.nats_per_token)],
        ["mean H", fmt(data.mean_entropy)], ...(data.mean_mi !== null ? [["mean MI", fmt(data.mean_mi)]] : []),
        ["ended", data.finish_reason === "length" ? "max tokens" : "stop"]]);
    } else if (event === "error") {
      col.error(data.error);
    }
  }
}

async function runGenerate() {
  stopGenerate();
  const prompt = $("#gen-prompt").value;
  const runs = pickedRuns($("#gen-runs"));
  const box = $("#gen-columns");
  box.replaceChildren();
  gen.colouring.columns = [];
  if (!prompt) { box.append(el("div", "empty error", "Write a prompt first.")); return; }
  if (!runs.length) { box.append(el("div", "empty error", "Pick at least one run.")); return; }
  $("#gen-go").disabled = true; $("#gen-stop").disabled = false;
  const jobs = runs.map((run) => {
    const col = new Column(box, run, gen.colouring);
    col.addPlain(prompt, "prompt");
    const controller = new AbortController();
    gen.controllers.push(controller);
    return generateOne(col, prompt, controller.signal).catch((e) => {
      if (e.name !== "AbortError") col.error(String(e.message || e)); else col.foot.replaceChildren(el("div", "muted", "stopped"));
    });
  });
  await Promise.all(jobs);
  $("#gen-go").disabled = false; $("#gen-stop").disabled = true;
  gen.colouring.refresh();
}

function stopGenerate() {
  for (const c of gen.controllers) c.abort();
  gen.controllers = [];
}

// ------------------------------------------------------------------------------------------
// Score

const score = { colouring: null };

/** The chosen score along the text: the raw values and a moving average, with a cursor that
 *  finds the token under the pointer. */
function sparkline(col) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 56;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  const raw = document.createElementNS(NS, "polyline"); raw.setAttribute("class", "raw");
  const avg = document.createElementNS(NS, "polyline"); avg.setAttribute("class", "avg");
  const cursor = document.createElementNS(NS, "line"); cursor.setAttribute("class", "cursor");
  cursor.setAttribute("y1", "0"); cursor.setAttribute("y2", String(H)); cursor.setAttribute("x1", "-9"); cursor.setAttribute("x2", "-9");
  svg.append(raw, avg, cursor);
  const wrap = el("div", "spark-wrap", null, svg, el("div", "spark-label"));
  const label = wrap.lastChild;
  col.onPaint = (metric, hi) => {
    const vals = col.tokens.map((t) => metric.get(t));
    const n = vals.length;
    if (!n || vals.every((v) => v === null)) { raw.setAttribute("points", ""); avg.setAttribute("points", ""); label.textContent = `${metric.label}: n/a`; return; }
    const x = (i) => (n === 1 ? W / 2 : (i / (n - 1)) * W);
    const y = (v) => H - 3 - (Math.min(v, hi) / hi) * (H - 6);
    raw.setAttribute("points", vals.map((v, i) => `${x(i).toFixed(1)},${y(v ?? 0).toFixed(1)}`).join(" "));
    const k = Math.max(1, Math.round(n / 40));
    let sum = 0; const pts = [];
    vals.forEach((v, i) => { sum += v ?? 0; if (i >= k) sum -= vals[i - k] ?? 0; pts.push(`${x(i).toFixed(1)},${y(sum / Math.min(i + 1, k)).toFixed(1)}`); });
    avg.setAttribute("points", pts.join(" "));
    label.textContent = `${metric.label} along the text (moving average of ${k})`;
  };
  const locate = (e) => {
    const r = svg.getBoundingClientRect();
    const n = col.tokens.length;
    return Math.min(n - 1, Math.max(0, Math.round(((e.clientX - r.left) / r.width) * (n - 1))));
  };
  svg.addEventListener("mousemove", (e) => {
    if (!col.tokens.length) return;
    const i = locate(e);
    const xx = col.tokens.length === 1 ? W / 2 : (i / (col.tokens.length - 1)) * W;
    cursor.setAttribute("x1", String(xx)); cursor.setAttribute("x2", String(xx));
    $$(".tok.located", col.text).forEach((s) => s.classList.remove("located"));
    col.spans[i].classList.add("located");
    const v = col.colouring.metric.get(col.tokens[i]);
    label.textContent = `token ${i + 1}: ${visible(col.tokens[i].text)} · ${fmt(v)} ${col.colouring.metric.unit} (click to scroll to it)`;
  });
  svg.addEventListener("click", (e) => { if (col.tokens.length) col.spans[locate(e)].scrollIntoView({ block: "center", behavior: "smooth" }); });
  return wrap;
}

/** The key of a run's conformal fits that the Score options ask for: a Bayesian head's posterior
 *  mean (0 draws) has its own sets, fitted with gptv conformal --mc-samples 0. */
function scorePrediction(run) {
  return run.bayesian ? prediction($("#s-bayes_mode").value, numberOr("#s-mc_samples")) : {};
}
const conformalKey = (run) => (scorePrediction(run).mc_samples === 0 ? "point" : "default");
const fittedAlphas = (run) => (run.conformal?.[conformalKey(run)] ?? []).map(String);

/** The alpha menu: those fitted for any picked run (GET /api/runs), disabled when there are none. */
function refreshConformal() {
  const select = $("#s-conformal"), was = select.value;
  const alphas = [...new Set(pickedRuns($("#score-runs")).flatMap(fittedAlphas))].sort((a, b) => a - b);
  select.replaceChildren(new Option("off", ""), ...alphas.map((a) => new Option(a, a)));
  select.value = alphas.includes(was) ? was : "";
  select.disabled = !alphas.length;
  $("#s-conformal-label").title = alphas.length
    ? "each token's conformal set size and whether it holds the token; tokens outside their set are underlined"
    : "no conformal sets fitted for the picked runs: gptv conformal RUN --alpha 0.1 (then reload)";
}

async function scoreOne(col, text) {
  col.setStats([["status", "scoring…"]]);
  col.tau = numberOr("#s-tau", 0.5);
  const body = { run: col.run.name, text, top_n: numberOr("#s-top_n", 0), tau: col.tau, seed: numberOr("#s-seed") };
  Object.assign(body, scorePrediction(col.run));
  const alpha = $("#s-conformal").value;
  if (alpha && fittedAlphas(col.run).includes(alpha)) { body.conformal = Number(alpha); col.alpha = alpha; }
  else if (alpha) col.foot.replaceChildren(el("div", "muted", `no conformal set at α ${alpha} for this run: gptv conformal RUN --alpha ${alpha}`));
  const response = await fetch("/api/score", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) { col.setStats([]); col.error(await errorOf(response)); return; }
  const data = await response.json();
  col.addPlain(data.prefix, "prompt");
  for (const t of data.tokens) col.addToken(t);
  col.setStats([["nats/token", fmt(data.nats_per_token)], ["perplexity", fmt(data.perplexity, 2)],
    ["tokens", String(data.n_tokens)], ["mean H", fmt(data.mean_entropy)],
    ...(data.mean_mi !== null ? [["mean MI", fmt(data.mean_mi)]] : []),
    ...(data.mean_set_size !== null ? [[`mean set (α ${col.alpha})`, fmt(data.mean_set_size, 2)], ["in set", pct(data.set_coverage)]] : []),
    ["time", `${fmt(data.seconds * 1000, 0)} ms`]]);
}

async function runScore() {
  const text = $("#score-text").value;
  const runs = pickedRuns($("#score-runs"));
  const box = $("#score-columns");
  box.replaceChildren();
  score.colouring.columns = [];
  if (!text) { box.append(el("div", "empty error", "Paste or upload a text first.")); return; }
  if (!runs.length) { box.append(el("div", "empty error", "Pick at least one run.")); return; }
  $("#score-go").disabled = true;
  await Promise.all(runs.map((run) => {
    const col = new Column(box, run, score.colouring);
    col.stats.after(sparkline(col));
    return scoreOne(col, text).catch((e) => col.error(String(e.message || e)));
  }));
  $("#score-go").disabled = false;
  score.colouring.refresh();
}

// ------------------------------------------------------------------------------------------
// Report

/** Sort a table by a column on a click of its header (numbers numerically, '-' last). */
function sortable(table) {
  const heads = $$("thead th", table);
  heads.forEach((th, k) => {
    th.title = "click to sort";
    th.addEventListener("click", () => {
      const asc = th.dataset.sort !== "asc";
      heads.forEach((h) => delete h.dataset.sort);
      th.dataset.sort = asc ? "asc" : "desc";
      const body = $("tbody", table);
      const key = (tr) => { const s = tr.children[k]?.textContent.trim() ?? ""; const v = Number(s); return s === "" || s === "-" ? null : Number.isNaN(v) ? s : v; };
      const rows = $$("tr", body).sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === null) return 1; if (y === null) return -1;
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      body.append(...rows);
    });
  });
}

async function loadReport() {
  const body = $("#report-body"), plots = $("#report-plots");
  const response = await fetch("/api/report");
  if (!response.ok) {
    const p = el("p", "", "This server was started on runs, not on an experiment folder. ");
    p.append("To browse an experiment's report table and plots here: ", el("code", "", "gptv experiment --out runs/experiment"),
      ", then ", el("code", "", "gptv serve runs/experiment"), ".");
    body.replaceChildren(el("h2", "", "No report"), p, el("p", "muted", await errorOf(response)));
    return;
  }
  const data = await response.json();
  body.innerHTML = data.html; // rendered on the server by markdown-it with raw HTML disabled
  for (const table of $$("table", body)) {
    const wrap = el("div", "table-wrap");
    table.replaceWith(wrap);
    wrap.append(table);
    sortable(table);
  }
  const files = data.files.filter((f) => !f.endsWith(".png") && f !== "report.md");
  if (files.length) {
    const p = el("p", "downloads", "Files: ");
    for (const f of files) { const a = el("a", "", f); a.href = `/report/${encodeURIComponent(f)}`; a.download = f; p.append(a, " "); }
    body.append(p);
  }
  plots.replaceChildren();
  for (const name of data.plots) {
    const img = el("img"); img.src = `/report/${encodeURIComponent(name)}`; img.alt = name; img.loading = "lazy";
    const a = el("a", "", null, img); a.href = img.src; a.target = "_blank"; a.rel = "noopener";
    plots.append(el("figure", "plot", null, a, el("figcaption", "", name)));
  }
}

// ------------------------------------------------------------------------------------------
// start

function switchView(name) {
  $$(".tabs button").forEach((b) => { const on = b.dataset.view === name; b.classList.toggle("active", on); b.setAttribute("aria-selected", String(on)); });
  $$(".view").forEach((v) => v.classList.toggle("active", v.dataset.view === name));
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "report" && !state.reportLoaded) { state.reportLoaded = true; loadReport(); }
}

async function start() {
  setupTips();
  gen.colouring = new Colouring("gen");
  score.colouring = new Colouring("score");
  $$(".tabs button").forEach((b) => b.addEventListener("click", () => switchView(b.dataset.view)));
  $("#gen-go").addEventListener("click", runGenerate);
  $("#gen-stop").addEventListener("click", stopGenerate);
  $("#gen-prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runGenerate(); });
  $("#score-go").addEventListener("click", runScore);
  $("#score-text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runScore(); });
  $("#score-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (f) $("#score-text").value = (await f.text()).slice(0, state.limits.text_chars || 20000);
  });
  const response = await fetch("/api/runs");
  const data = await response.json();
  state.runs = data.runs; state.limits = data.limits; state.report = data.report;
  for (const r of state.runs) state.byName[r.name] = r;
  $("#status").textContent = `${state.runs.length} run${state.runs.length === 1 ? "" : "s"}` + (data.report ? " · experiment report" : "");
  runsPicker($("#gen-runs"));
  runsPicker($("#score-runs"), refreshConformal);
  refreshConformal();
  for (const id of ["#s-bayes_mode", "#s-mc_samples"]) $(id).addEventListener("change", refreshConformal);
  $("#o-max_new_tokens").max = String(data.limits.max_new_tokens);
  $("#gen-prompt").maxLength = data.limits.prompt_chars;
  $("#score-text").maxLength = data.limits.text_chars;
  document.body.dataset.ready = "true";
  gen.colouring.paint();
  score.colouring.paint();
  const asked = location.hash.slice(1);
  switchView(["generate", "score", "report"].includes(asked) ? asked : "generate");
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((e) => { $("#status").textContent = `cannot reach the server: ${e.message || e}`; });
});
