// Ops dashboard: polls /dashboard/data and draws it with the vendored uPlot (no network needed).
// The first request fetches the whole window; later ones pass ?since=<sampled_at> and get only
// new points, which are merged here and trimmed to the window.
"use strict";

const DATA_URL = "/dashboard/data";
const POLL_MS = 2000;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac"];
const AXIS = { stroke: "#6b7686", grid: { stroke: "#eef1f5", width: 1 }, ticks: { stroke: "#e3e7ee", width: 1 } };
// One line of local clock time per tick; seconds only when ticks are under a minute apart.
const TIME_AXIS = {
  ...AXIS,
  space: 70,
  values: (u, ticks, axis, space, incr) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString(
    [], { hour: "2-digit", minute: "2-digit", second: incr < 60 ? "2-digit" : undefined, hour12: false })),
};

// ---- formatting ---------------------------------------------------------------------------
function fmtNum(v) {
  if (v == null || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return Math.round(v).toLocaleString("en-US");
  return v.toPrecision(3).replace(/\.?0+$/, "");
}

function fmtDur(s) {
  if (s == null || !Number.isFinite(s)) return "–";
  if (s === 0) return "0";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function color(i) {
  return i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360} 55% 50%)`;
}

// An opaque tint: stacked areas are drawn over each other, so fills must not blend.
function tint(hex, amount = 0.55) {
  if (!hex.startsWith("#")) return hex;
  const n = parseInt(hex.slice(1), 16);
  const mix = (c) => Math.round(c + (255 - c) * amount);
  return `rgb(${mix(n >> 16)}, ${mix((n >> 8) & 255)}, ${mix(n & 255)})`;
}

// ---- client-side history -------------------------------------------------------------------
const state = { since: null, windowS: 1800, series: {}, reasons: {}, sizes: {}, doc: null };

function mergeRing(ring, points, horizon) {
  for (const p of points) {
    if (!ring.length || p[0] > ring[ring.length - 1][0]) ring.push(p);
  }
  while (ring.length && ring[0][0] < horizon) ring.shift();
  return ring;
}

function mergeKeyed(target, incoming, horizon) {
  for (const [key, points] of Object.entries(incoming)) {
    target[key] = mergeRing(target[key] || [], points, horizon);
  }
  for (const key of Object.keys(target)) {
    if (!target[key].length) delete target[key];
  }
}

function merge(doc) {
  // A restarted worker starts a new history: drop ours.
  if (state.since != null && (doc.sampled_at == null || doc.sampled_at < state.since)) {
    Object.assign(state, { since: null, series: {}, reasons: {}, sizes: {} });
  }
  state.windowS = doc.window_s;
  const horizon = (doc.sampled_at ?? doc.now) - doc.window_s;
  mergeKeyed(state.series, doc.series, horizon);
  mergeKeyed(state.reasons, doc.dead_letters_by_reason, horizon);
  for (const [segmentation, segments] of Object.entries(doc.segment_sizes)) {
    state.sizes[segmentation] = state.sizes[segmentation] || {};
    mergeKeyed(state.sizes[segmentation], segments, horizon);
  }
  for (const segmentation of Object.keys(state.sizes)) {
    mergeKeyed(state.sizes[segmentation], {}, horizon);
    if (!Object.keys(state.sizes[segmentation]).length) delete state.sizes[segmentation];
  }
  if (doc.sampled_at != null) state.since = doc.sampled_at;
  state.doc = doc;
}

function last(name) {
  const ring = state.series[name];
  return ring && ring.length ? ring[ring.length - 1][1] : null;
}

// Rings sampled at (mostly) the same instants -> uPlot's columnar [xs, ys1, ys2, ...].
function align(rings, missing) {
  const xs = [...new Set(rings.flatMap((r) => r.map((p) => p[0])))].sort((a, b) => a - b);
  const at = new Map(xs.map((t, i) => [t, i]));
  const cols = rings.map((r) => {
    const col = new Array(xs.length).fill(missing);
    for (const [t, v] of r) col[at.get(t)] = v ?? missing;
    return col;
  });
  return [xs, ...cols];
}

// ---- charts --------------------------------------------------------------------------------
class Chart {
  // fmt formats y values; stacked draws cumulative opaque areas (legend shows own values).
  constructor(el, { fmt = fmtNum, stacked = false } = {}) {
    this.el = el;
    this.fmt = fmt;
    this.stacked = stacked;
    this.plot = null;
    this.key = null;
    this.raw = null;
    this.height = el.classList.contains("tall") ? 300 : 190;
    this.empty = document.createElement("div");
    this.empty.className = "empty";
    this.empty.textContent = "No data yet";
    el.appendChild(this.empty);
    new ResizeObserver(() => this.plot && this.plot.setSize(this.size())).observe(el);
  }

  size() {
    return { width: Math.max(200, this.el.clientWidth), height: this.height };
  }

  // names: series labels; rings: their [[t, v], ...] in the same order.
  update(names, rings) {
    let data = align(rings, this.stacked ? 0 : null);
    const order = names.map((_, i) => i);
    if (this.stacked) {
      this.raw = data;
      // Cumulative sums, top layer first: each later (lower) area is painted over the earlier.
      const cum = [];
      let acc = new Array(data[0].length).fill(0);
      for (let i = 1; i < data.length; i++) {
        acc = acc.map((a, j) => a + data[i][j]);
        cum.push(acc);
      }
      order.reverse();
      data = [data[0], ...order.map((i) => cum[i])];
    }
    const key = JSON.stringify(names);
    if (!this.plot || key !== this.key) {
      if (this.plot) this.plot.destroy();
      this.key = key;
      this.plot = new uPlot(this.options(names, order), data, this.el);
    } else {
      this.plot.setData(data);
    }
  }

  options(names, order) {
    const fmt = this.fmt;
    // The legend shows the value under the cursor, or the latest one when there is none.
    const at = (u, idx) => idx ?? u.data[0].length - 1;
    const series = order.map((i) => {
      const s = { label: names[i], stroke: color(i), width: 1.5, points: { show: false } };
      if (this.stacked) {
        s.fill = tint(color(i));
        s.value = (u, v, si, idx) => fmt(this.raw[i + 1][at(u, idx)]);
      } else {
        s.value = (u, v, si, idx) => fmt(u.data[si][at(u, idx)]);
        if (names.length === 1) s.fill = color(i) + "22";
      }
      return s;
    });
    return {
      ...this.size(),
      series: [{
        value: (u, v, si, idx) => {
          const t = u.data[0][at(u, idx)];
          return t == null ? "–" : new Date(t * 1000).toLocaleTimeString();
        },
      }, ...series],
      scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
      axes: [TIME_AXIS, { ...AXIS, size: 60, values: (u, vals) => vals.map(fmt) }],
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      hooks: { draw: [(u) => this.drawn(u)] },
    };
  }

  drawn(u) {
    // data-points: real points drawn (the browser test reads it).
    let n = 0;
    for (let i = 1; i < u.data.length; i++) {
      for (const v of u.data[i]) if (v != null && Number.isFinite(v)) n++;
    }
    this.el.dataset.points = String(n);
    this.empty.hidden = n > 0;
  }
}

const charts = {
  throughput: new Chart(document.getElementById("chart-throughput")),
  lag: new Chart(document.getElementById("chart-lag")),
  dead: new Chart(document.getElementById("chart-dead"), { stacked: true }),
  changes: new Chart(document.getElementById("chart-changes")),
  latency: new Chart(document.getElementById("chart-latency"), { fmt: fmtDur }),
  eventLatency: new Chart(document.getElementById("chart-event-latency"), { fmt: fmtDur }),
  segments: new Chart(document.getElementById("chart-segments"), { stacked: true }),
};
const picker = document.getElementById("segmentation");
picker.addEventListener("change", () => renderSegments());

function ring(name) {
  return state.series[name] || [];
}

function renderSegments() {
  const segmentations = Object.keys(state.sizes).sort();
  const current = [...picker.options].map((o) => o.value);
  if (JSON.stringify(current) !== JSON.stringify(segmentations)) {
    const keep = picker.value;
    picker.replaceChildren(...segmentations.map((s) => new Option(s, s)));
    if (segmentations.includes(keep)) picker.value = keep;
    else if (segmentations.includes("behavior")) picker.value = "behavior";
  }
  const segments = state.sizes[picker.value] || {};
  const names = Object.keys(segments).sort();
  charts.segments.update(names, names.map((n) => segments[n]));
}

function render() {
  charts.throughput.update(["events/s", "messages/s", "duplicates/s"],
    [ring("events_per_s"), ring("messages_per_s"), ring("duplicates_per_s")]);
  charts.lag.update(["lag"], [ring("lag_total")]);
  const reasons = Object.keys(state.reasons).sort();
  if (reasons.length) charts.dead.update(reasons, reasons.map((r) => state.reasons[r]));
  else charts.dead.update(["all reasons"], [ring("dead_letters_per_s")]);
  charts.changes.update(["changes/min"], [ring("changes_per_min")]);
  charts.latency.update(["ingest → change", "batch processing"],
    [ring("p99_latency_s"), ring("p99_batch_s")]);
  charts.eventLatency.update(["event time → change"], [ring("p99_event_latency_s")]);
  renderSegments();
  renderFigures();
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function renderFigures() {
  const doc = state.doc;
  setText("kpi-events", fmtNum(last("events_per_s")));
  setText("kpi-events-total", `${fmtNum(doc.totals.events)} since start`);
  setText("kpi-changes", fmtNum(last("changes_per_min")));
  setText("kpi-changes-total", `${fmtNum(doc.totals.changes)} since start`);
  setText("kpi-dead", fmtNum(last("dead_letters_per_s")));
  setText("kpi-dead-total", `${fmtNum(doc.totals.dead_letters)} since start`);
  setText("kpi-lag", fmtNum(last("lag_total")));
  setText("kpi-latency", fmtDur(last("p99_latency_s")));
  setText("kpi-event-latency", fmtDur(last("p99_event_latency_s")));
  setText("kpi-model", doc.model.version == null ? "none yet" : `v${doc.model.version}`);
  setText("kpi-model-age", doc.model.age_s == null ? "" : `trained ${fmtDur(doc.model.age_s)} ago`);
  setText("updated", `Updated ${new Date(doc.now * 1000).toLocaleTimeString()}`);
}

function setStatus(kind, text) {
  const el = document.getElementById("status");
  el.dataset.state = kind;
  el.textContent = text;
}

async function poll() {
  try {
    const url = state.since == null ? DATA_URL : `${DATA_URL}?since=${state.since}`;
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const doc = await response.json();
    merge(doc);
    render();
    if (doc.sampled_at == null) setStatus("stale", "Waiting for the first sample");
    else if (doc.now - doc.sampled_at > 3 * doc.interval_s) setStatus("stale", "Samples stopped");
    else if (last("broker_stalled") > 0) setStatus("stalled", "Broker stalled");
    else setStatus("live", "Live");
  } catch (err) {
    setStatus("down", `Worker unreachable (${err.message})`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// The behavioural model's set changes (appeared, returned, split, merged, retired), from /segments:
// what the model topic publishes as segment_set_change events.
const SET_CHANGE_WORDS = {
  appeared: (c) => `${label(c.segment, c.name)} appeared`,
  returned: (c) => `${label(c.segment, c.name)} returned`,
  split: (c) => `${label(c.segment, c.name)} split from ${c.from}`,
  merged: (c) => `${label(c.segment, c.name)} merged into ${c.into}`,
  retired: (c) => `${label(c.segment, c.name)} retired`,
};

function label(id, name) {
  return name ? `${id} (${name})` : id;
}

async function pollSetChanges() {
  try {
    const response = await fetch("/segments?scope=local", { cache: "no-store" });
    if (response.ok) {
      const doc = await response.json();
      const behavior = (doc.segmentations || []).find((s) => s.name === "behavior");
      const list = document.getElementById("set-changes");
      const changes = (behavior && behavior.set_changes) || [];
      if (behavior && behavior.version != null) {
        setText("set-changes-model", `model v${behavior.version}, generation ${behavior.generation ?? "–"}; latest first`);
      }
      list.replaceChildren(...(changes.length ? changes : [null]).slice(0, 12).map((c) => {
        const item = document.createElement("li");
        if (c == null) {
          item.className = "muted";
          item.textContent = behavior && behavior.version != null ? "No changes yet" : "No model yet";
        } else {
          const words = SET_CHANGE_WORDS[c.change];
          item.dataset.change = c.change;
          item.textContent = `v${c.version}: ${words ? words(c) : c.change}`;
        }
        return item;
      }));
    }
  } catch (err) {
    // the main poll reports an unreachable worker
  } finally {
    setTimeout(pollSetChanges, 10 * POLL_MS);
  }
}

// --- predictions (GET /predictions/distribution: this worker's customers, sampled) -------
function bars(id, edges, counts, fmtEdge, openLast) {
  const total = counts.reduce((a, b) => a + b, 0) || 1;
  const peak = Math.max(1, ...counts);
  document.getElementById(id).replaceChildren(...counts.map((n, i) => {
    const item = document.createElement("li");
    const upper = i + 1 < edges.length ? fmtEdge(edges[i + 1]) : null;
    item.dataset.count = n;
    item.innerHTML = '<span class="edge"></span><span class="bar"><span></span></span><span class="n"></span>';
    item.querySelector(".edge").textContent = openLast && upper == null
      ? `${fmtEdge(edges[i])}+` : `${fmtEdge(edges[i])}–${upper}`;
    item.querySelector(".bar span").style.width = `${(100 * n) / peak}%`;
    item.querySelector(".n").textContent = `${fmtNum(n)} (${Math.round((100 * n) / total)}%)`;
    return item;
  }));
}

async function pollPredictions() {
  try {
    const response = await fetch("/predictions/distribution", { cache: "no-store" });
    if (response.ok) {
      const doc = await response.json();
      if (doc.off) {
        setText("predictions-model", "predictions off (SEGMENTER_PREDICTIONS)");
      } else if (doc.version != null) {
        bars("bars-p-alive", doc.p_alive.edges, doc.p_alive.counts, (v) => v.toFixed(1), false);
        bars("bars-revenue", doc.expected_revenue_90d.edges, doc.expected_revenue_90d.counts,
          (v) => fmtNum(v), true);
        const rows = doc.by_segment.map((g) => {
          const row = document.createElement("tr");
          for (const text of [g.segment ?? "(none)", fmtNum(g.customers), g.mean_p_alive.toFixed(2),
            g.mean_expected_revenue_90d == null ? "–" : g.mean_expected_revenue_90d.toFixed(2)]) {
            const cell = document.createElement("td");
            cell.textContent = text;
            row.append(cell);
          }
          return row;
        });
        if (rows.length) document.getElementById("predictions-by-segment").replaceChildren(...rows);
        setText("predictions-model", `model v${doc.version}; ${fmtNum(doc.customers)} customers with an order` +
          (doc.sampled_every > 1 ? ` (every ${doc.sampled_every}th)` : ""));
      }
    }
  } catch (err) {
    // the main poll reports an unreachable worker
  } finally {
    setTimeout(pollPredictions, 10 * POLL_MS);
  }
}

poll();
pollSetChanges();
pollPredictions();
