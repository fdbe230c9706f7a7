// The wrun dashboard: a snapshot at load, then server-sent `update`
// events (at most four a second). No libraries.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"];
// As wrun-draw's `colour`: FNV-1a of the name's UTF-8 bytes.
function colour(name) {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(name)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return PALETTE[hash % PALETTE.length];
}

const MAX_BARS = 2000;
const ROW_HEIGHT = 16, STREAM_TOP = 4, STREAM_LEFT = 130;
const SVG = "http://www.w3.org/2000/svg";
let records = [];
let seen = 0;
let graphVersion = -1;

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function renderSummary(status) {
  const t = status.tasks;
  document.getElementById("summary").textContent =
    `${status.workers.length} worker(s) · ${t.total} task(s): ${t.done} done, ` +
    `${t.on_workers} on workers, ${t.queued} queued, ${t.waiting} waiting, ${t.failed} failed · ` +
    `${status.clients} client(s)`;
}

function renderWorkers(status) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  const now = Date.now();
  for (const w of status.workers) {
    const row = document.createElement("tr");
    row.className = "worker";
    cell(row, w.name + (w.retiring ? " (retiring)" : ""));
    cell(row, w.threads);
    cell(row, w.assigned);
    cell(row, w.running);
    cell(row, bytes(w.memory_bytes));
    cell(row, bytes(w.held_bytes));
    cell(row, bytes(w.spilled_bytes));
    cell(row, w.slurm_job_id || "");
    cell(row, w.end_time_ms ? Math.max(0, Math.round((w.end_time_ms - now) / 1000)) + " s" : "");
    body.appendChild(row);
  }
}

function renderProgress(progress) {
  const body = document.querySelector("#progress tbody");
  body.replaceChildren();
  for (const p of progress) {
    const total = p.done + p.running + p.queued + p.waiting + p.failed;
    const row = document.createElement("tr");
    row.className = "progress-row";
    row.dataset.name = p.name;
    row.dataset.done = p.done;
    row.dataset.total = total;
    cell(row, p.name);
    const bar = document.createElement("div");
    bar.className = "progress-bar";
    for (const part of ["done", "running", "queued", "waiting", "failed"]) {
      const seg = document.createElement("div");
      seg.className = "seg-" + part;
      seg.style.width = (total ? (100 * p[part]) / total : 0) + "%";
      bar.appendChild(seg);
    }
    cell(row, "").appendChild(bar);
    cell(row, `${p.done} / ${total}`);
    cell(row, p.running);
    cell(row, p.queued);
    cell(row, p.waiting);
    cell(row, p.failed);
    body.appendChild(row);
  }
}

// The task stream is drawn incrementally: a new run adds its rects to a
// group whose transform maps milliseconds to pixels; the oldest go past
// MAX_BARS; only the transform changes as time moves. A new row (a worker
// thread not seen yet) redraws everything.
const stream = { rows: new Map(), origin: 0, shown: [], labels: null, group: null };

function rowKey(r) { return `${r.worker}/${r.thread}`; }

function rebuildStream() {
  const svg = document.getElementById("task-stream");
  svg.replaceChildren();
  const keys = [...new Set(records.map(rowKey))].sort();
  stream.rows = new Map(keys.map((k, i) => [k, i]));
  stream.origin = records.length ? records[0].start_us : 0;
  stream.shown = [];
  for (const [key, i] of stream.rows) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 2);
    label.setAttribute("y", STREAM_TOP + i * ROW_HEIGHT + 11);
    label.textContent = key;
    svg.appendChild(label);
  }
  stream.group = document.createElementNS(SVG, "g");
  svg.appendChild(stream.group);
  svg.setAttribute("height", STREAM_TOP + stream.rows.size * ROW_HEIGHT + 6);
  for (const r of records) addBar(r);
}

function rect(cls, x, y, w, h, fill) {
  const el = document.createElementNS(SVG, "rect");
  el.setAttribute("class", cls);
  el.setAttribute("x", x);
  el.setAttribute("y", y);
  el.setAttribute("width", w);
  el.setAttribute("height", h);
  el.setAttribute("fill", fill);
  return el;
}

// Milliseconds since the stream's origin: the group's own unit.
function ms(us) { return (us - stream.origin) / 1000; }

function addBar(r) {
  const y = STREAM_TOP + stream.rows.get(rowKey(r)) * ROW_HEIGHT + 1;
  const parts = [];
  if (r.transfer) {
    const t = rect("transfer", ms(r.transfer.start_us), y + 5,
      Math.max(0.001, (r.transfer.end_us - r.transfer.start_us) / 1000), 4, "#d62728");
    t.setAttribute("opacity", 0.6);
    parts.push(t);
  }
  const failed = r.status !== "done";
  const bar = rect(failed ? "bar failed" : "bar", ms(r.start_us), y,
    Math.max(0.001, (r.end_us - r.start_us) / 1000), ROW_HEIGHT - 3,
    failed ? "#d62728" : colour(r.name));
  if (failed) {
    bar.setAttribute("stroke", "#000");
    bar.setAttribute("vector-effect", "non-scaling-stroke");
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = `${r.name} (${r.task}) on ${rowKey(r)}: ` +
    `${((r.end_us - r.start_us) / 1000).toFixed(3)} ms, ${r.status}`;
  bar.appendChild(title);
  parts.push(bar);
  for (const p of parts) stream.group.appendChild(p);
  stream.shown.push({ record: r, parts });
}

function renderStream(fresh) {
  if (!stream.group || fresh.some(r => !stream.rows.has(rowKey(r)))) {
    rebuildStream();
  } else {
    for (const r of fresh) addBar(r);
  }
  while (stream.shown.length > MAX_BARS) {
    for (const p of stream.shown.shift().parts) p.remove();
  }
  const svg = document.getElementById("task-stream");
  const shown = stream.shown.map(s => s.record);
  svg.dataset.bars = shown.length;
  svg.dataset.failed = shown.filter(r => r.status !== "done").length;
  if (!shown.length) return;
  let begin = Infinity, end = -Infinity;
  for (const r of shown) {
    begin = Math.min(begin, r.transfer ? Math.min(r.transfer.start_us, r.start_us) : r.start_us);
    end = Math.max(end, r.end_us);
  }
  const width = (svg.clientWidth || 900) - STREAM_LEFT - 10;
  const scale = width / Math.max(0.001, (end - begin) / 1000);
  stream.group.setAttribute("transform",
    `translate(${STREAM_LEFT - ms(begin) * scale},0) scale(${scale},1)`);
  document.getElementById("stream-note").textContent =
    `${seen} run(s) seen; the newest ${shown.length} drawn, over ${((end - begin) / 1000).toFixed(1)} ms`;
}

async function renderGraph(view) {
  const note = document.getElementById("graph-note");
  const box = document.getElementById("graph");
  if (view.graph_version === graphVersion) return;
  graphVersion = view.graph_version;
  if (!view.graph_tasks) { note.textContent = "no tasks"; box.replaceChildren(); return; }
  const answer = await fetch("/api/graph.svg", { credentials: "same-origin" });
  if (!answer.ok) {
    note.textContent = `${view.graph_tasks} task(s): too many to draw`;
    box.replaceChildren();
    return;
  }
  note.textContent = `${view.graph_tasks} task(s)`;
  box.innerHTML = await answer.text();
}

function apply(message) {
  const view = message.view;
  for (const r of message.records) records.push(r);
  seen += message.records.length + (message.skipped || 0);
  if (records.length > MAX_BARS) records = records.slice(-MAX_BARS);
  renderSummary(view.status);
  renderWorkers(view.status);
  renderProgress(view.progress);
  renderStream(message.records);
  renderGraph(view);
}

async function start() {
  const answer = await fetch("/api/snapshot", { credentials: "same-origin" });
  if (answer.ok) apply(await answer.json());
  const events = new EventSource("/api/stream");
  const live = document.getElementById("live");
  events.onopen = () => { live.className = "on"; live.title = "live"; };
  events.onerror = () => { live.className = "off"; live.title = "reconnecting"; };
  events.addEventListener("update", e => apply(JSON.parse(e.data)));
}

start();
