// Entry of /p/{project}: the runs table. Filters and sort go to the server
// (GET /api/v1/projects/{project}/runs); the state lives in the URL.

import { el, clear, api, setStatus, fetchAlerts, fmtNum, fmtTime, fmtValue, fmtDuration, flatten, runColor,
  runDuration, runLabel, runUrl, projectUrl, bestOf, KIND_ORDER } from "./lib.js";

const project = document.body.dataset.project;
const form = document.getElementById("filters");
const status = document.getElementById("status");
const table = document.getElementById("runs");
const compareButton = document.getElementById("compare");
const selectionCount = document.getElementById("selection-count");
const pageInfo = document.getElementById("page-info");
const prev = document.getElementById("prev");
const next = document.getElementById("next");
const LIMIT = 50;

const selected = new Set();
let state = readState();
let lastRuns = [];
let localSort = null; // {id, desc} for columns the API cannot sort (tags, alerts)

function readState() {
  const p = new URLSearchParams(location.search);
  return {
    name: p.get("name") || "", tag: p.get("tag") || "", status: p.get("status") || "",
    config: p.get("config") || "", sort: p.get("sort") || "-created_at",
    offset: Math.max(0, parseInt(p.get("offset"), 10) || 0),
  };
}

function writeState() {
  const p = new URLSearchParams();
  for (const k of ["name", "tag", "status", "config"]) if (state[k]) p.set(k, state[k]);
  if (state.sort !== "-created_at") p.set("sort", state.sort);
  if (state.offset) p.set("offset", String(state.offset));
  const q = p.toString();
  history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
}

/** "lr=0.001; optim.name=adam" -> {"config.lr": "0.001", "config.optim.name": "adam"} */
function configParams(text) {
  const out = {};
  for (const part of text.split(";")) {
    const i = part.indexOf("=");
    if (i <= 0) continue;
    out["config." + part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

function fillForm() {
  for (const k of ["name", "tag", "status", "config"]) form.elements[k].value = state[k];
}

function columns(runs, alertCounts) {
  const configKeys = new Set();
  const seriesKinds = new Map();
  for (const r of runs) {
    for (const [k] of flatten(r.config || {})) configKeys.add(k);
    for (const [k, s] of Object.entries(r.summary || {})) if (!seriesKinds.has(k)) seriesKinds.set(k, (s && s.kind) || "other");
  }
  const cols = [
    { id: "select", label: "", render: (r) => {
      const box = el("input", { type: "checkbox", "aria-label": "select " + runLabel(r), dataset: { run: r.id } });
      box.checked = selected.has(r.id);
      box.addEventListener("change", () => { if (box.checked) selected.add(r.id); else selected.delete(r.id); updateSelection(); });
      return box;
    } },
    { id: "name", label: "name", sort: "name", render: (r) => el("span", { class: "name-cell" },
      el("span", { class: "swatch", style: `background:${runColor(r.id)}` }),
      el("a", { href: runUrl(r.id), class: "run-name", text: runLabel(r), title: r.id })) },
    { id: "status", label: "status", sort: "status", render: (r) => el("span", { class: "badge status-" + String(r.status).replace(/[^a-z]/g, ""), text: r.status || "" }) },
    { id: "alerts", label: "alerts", local: (r) => alertCounts.get(r.id)?.total || 0, render: (r) => {
      const a = alertCounts.get(r.id);
      if (!a || !a.total) return "";
      return el("a", { class: "badge alert-badge" + (a.critical ? " critical" : ""), href: `${projectUrl(project)}/alerts?run=${encodeURIComponent(r.id)}`,
        title: a.rules.join(", "), text: `${a.total} firing` });
    } },
    { id: "tags", label: "tags", local: (r) => (r.tags || []).join(","), render: (r) => el("span", {}, ...(r.tags || []).map((t) =>
      el("button", { type: "button", class: "tag", text: t, title: "filter by this tag", onclick: () => { state.tag = t; state.offset = 0; fillForm(); load(); } }))) },
    { id: "group", label: "group", sort: null, local: (r) => r.group || "", render: (r) => r.group || "" },
    { id: "created_at", label: "created", sort: "created_at", render: (r) => fmtTime(r.created_at) },
    { id: "duration", label: "duration", local: (r) => runDuration(r) ?? -1, render: (r) => fmtDuration(runDuration(r)) },
  ];
  for (const k of [...configKeys].sort()) {
    cols.push({ id: "config." + k, label: k, group: "config", sort: "config." + k, cls: "num", render: (r) => {
      const found = flatten(r.config || {}).find(([key]) => key === k);
      return found ? fmtValue(found[1]) : "";
    } });
  }
  const keys = [...seriesKinds.entries()].sort((a, b) => KIND_ORDER.indexOf(a[1]) - KIND_ORDER.indexOf(b[1]) || (a[0] < b[0] ? -1 : 1));
  for (const [k, kind] of keys) {
    const best = bestOf(kind);
    cols.push({ id: "last:" + k, label: k, sub: "last", group: "series", sort: "last:" + k, cls: "num",
      render: (r) => (r.summary && r.summary[k] ? fmtNum(r.summary[k].last) : "") });
    if (best) cols.push({ id: best + ":" + k, label: k, sub: best === "max" ? "best (max)" : "best (min)", group: "series",
      sort: best + ":" + k, cls: "num", render: (r) => (r.summary && r.summary[k] ? fmtNum(r.summary[k][best]) : "") });
  }
  return cols;
}

function sortIndicator(col) {
  if (col.sort) {
    if (state.sort === col.sort) return " ▲";
    if (state.sort === "-" + col.sort) return " ▼";
  } else if (localSort && localSort.id === col.id) return localSort.desc ? " ▼" : " ▲";
  return "";
}

function render(runs, alertCounts) {
  const cols = columns(runs, alertCounts);
  const thead = clear(table.querySelector("thead"));
  const tbody = clear(table.querySelector("tbody"));
  const head = el("tr");
  for (const col of cols) {
    const sortable = !!(col.sort || col.local);
    const th = el("th", { class: (col.cls || "") + (sortable ? " sortable" : ""), dataset: { col: col.id },
      title: sortable ? "sort by " + col.id : null });
    th.append(el("span", { text: col.label }));
    if (col.sub) th.append(el("span", { class: "sub", text: col.sub }));
    if (col.group === "config") th.append(el("span", { class: "sub", text: "config" }));
    th.append(sortIndicator(col));
    if (col.sort) th.addEventListener("click", () => {
      state.sort = state.sort === col.sort ? "-" + col.sort : col.sort;
      state.offset = 0;
      localSort = null;
      load();
    });
    else if (col.local) th.addEventListener("click", () => {
      localSort = { id: col.id, desc: localSort && localSort.id === col.id ? !localSort.desc : false, key: col.local };
      render(lastRuns, alertCounts);
    });
    head.append(th);
  }
  thead.append(head);
  let rows = runs.slice();
  if (localSort) {
    const key = cols.find((c) => c.id === localSort.id)?.local;
    if (key) rows.sort((a, b) => { const x = key(a), y = key(b); const c = x < y ? -1 : x > y ? 1 : 0; return localSort.desc ? -c : c; });
  }
  for (const r of rows) {
    const tr = el("tr", { dataset: { run: r.id } });
    for (const col of cols) {
      const v = col.render(r);
      tr.append(el("td", { class: col.cls || "" }, v));
    }
    tbody.append(tr);
  }
}

function updateSelection() {
  compareButton.disabled = selected.size === 0;
  selectionCount.textContent = selected.size ? `${selected.size} selected` : "select runs to compare them";
}

async function alertCountsFor() {
  const counts = new Map();
  const got = await fetchAlerts(project, { status: "firing" }).catch(() => ({ available: false, alerts: [] }));
  for (const a of got.alerts) {
    const c = counts.get(a.run) || { total: 0, critical: 0, rules: [] };
    c.total++;
    if (/crit|error|high/i.test(String(a.severity))) c.critical++;
    c.rules.push(`${a.rule} on ${a.series}`);
    counts.set(a.run, c);
  }
  return counts;
}

async function load() {
  writeState();
  setStatus(status, "Loading…");
  const params = { limit: LIMIT, offset: state.offset, sort: state.sort, name: state.name, status: state.status,
    tag: state.tag ? state.tag.split(",").map((t) => t.trim()).filter(Boolean) : null, ...configParams(state.config) };
  try {
    const [page, alertCounts] = await Promise.all([api(`/projects/${encodeURIComponent(project)}/runs`, params), alertCountsFor()]);
    lastRuns = page.runs || [];
    render(lastRuns, alertCounts);
    const total = page.total ?? lastRuns.length;
    pageInfo.textContent = total ? `${state.offset + 1}–${state.offset + lastRuns.length} of ${total}` : "";
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + lastRuns.length >= total;
    setStatus(status, lastRuns.length ? "" : "No runs match.");
  } catch (err) {
    setStatus(status, err.status === 404 ? "There is no project with this name." : "Could not load the runs: " + err.message, "error");
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  for (const k of ["name", "tag", "status", "config"]) state[k] = form.elements[k].value.trim();
  state.offset = 0;
  load();
});
form.elements.status.addEventListener("change", () => form.requestSubmit());
document.getElementById("clear-filters").addEventListener("click", () => {
  state = { ...state, name: "", tag: "", status: "", config: "", offset: 0 };
  fillForm();
  load();
});
prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - LIMIT); load(); });
next.addEventListener("click", () => { state.offset += LIMIT; load(); });
compareButton.addEventListener("click", () => {
  if (!selected.size) return;
  location.assign(`${projectUrl(project)}/compare?runs=${[...selected].map(encodeURIComponent).join(",")}`);
});

fillForm();
updateSelection();
load();
