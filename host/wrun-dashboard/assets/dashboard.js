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

function renderStream() {
  const svg = document.getElementById("task-stream");
  const bars = records.slice(-MAX_BARS);
  const rows = [...new Set(bars.map(r => `${r.worker}/${r.thread}`))].sort();
  const index = new Map(rows.map((r, i) => [r, i]));
  const width = svg.clientWidth || 900;
  const left = 130, rowHeight = 16, top = 4;
  svg.setAttribute("height", top + rows.length * rowHeight + 6);
  svg.replaceChildren();
  if (!bars.length) { svg.dataset.bars = 0; return; }
  const begin = Math.min(...bars.map(r => r.transfer ? Math.min(r.transfer.start_us, r.start_us) : r.start_us));
  const end = Math.max(...bars.map(r => r.end_us), begin + 1);
  const x = t => left + ((t - begin) / (end - begin)) * (width - left - 10);
  for (const [name, i] of index) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 2);
    label.setAttribute("y", top + i * rowHeight + 11);
    label.textContent = name;
    svg.appendChild(label);
  }
  for (const r of bars) {
    const y = top + index.get(`${r.worker}/${r.thread}`) * rowHeight + 1;
    if (r.transfer) {
      const t = document.createElementNS(SVG, "rect");
      t.setAttribute("class", "transfer");
      t.setAttribute("x", x(r.transfer.start_us));
      t.setAttribute("y", y + 5);
      t.setAttribute("width", Math.max(0.5, x(r.transfer.end_us) - x(r.transfer.start_us)));
      t.setAttribute("height", 4);
      t.setAttribute("fill", "#d62728");
      t.setAttribute("opacity", 0.6);
      svg.appendChild(t);
    }
    const bar = document.createElementNS(SVG, "rect");
    const failed = r.status !== "done";
    bar.setAttribute("class", failed ? "bar failed" : "bar");
    bar.setAttribute("x", x(r.start_us));
    bar.setAttribute("y", y);
    bar.setAttribute("width", Math.max(0.5, x(r.end_us) - x(r.start_us)));
    bar.setAttribute("height", rowHeight - 3);
    bar.setAttribute("fill", failed ? "#d62728" : colour(r.name));
    if (failed) bar.setAttribute("stroke", "#000");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${r.name} (${r.task}) on ${r.worker}/${r.thread}: ` +
      `${((r.end_us - r.start_us) / 1000).toFixed(3)} ms, ${r.status}`;
    bar.appendChild(title);
    svg.appendChild(bar);
  }
  svg.dataset.bars = bars.length;
  document.getElementById("stream-note").textContent =
    `${seen} run(s) seen; the newest ${bars.length} drawn`;
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
  if (records.length > MAX_BARS * 2) records = records.slice(-MAX_BARS);
  renderSummary(view.status);
  renderWorkers(view.status);
  renderProgress(view.progress);
  renderStream();
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
