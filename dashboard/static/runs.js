// Entry of /p/{project}: the runs table. Filters, sort, page and grouping go in the URL; filters and
// sort are done by the server (GET /api/v1/projects/{project}/runs). Column choice: runs-columns.js.
// While a run on the page is running, durations and "… ago" tick every second and the page is
// read again every LIVE_EVERY seconds (not while the tab is hidden).

import { el, clear, api, setStatus, fetchAlerts, fmtNum, fmtValue, fmtDuration, runDuration,
  runLabel, runUrl, projectUrl, timeAgo, refreshAgo } from "./lib.js";
import { columnCatalog, configValue, loadChoice, isVisible, ordered, renderManager } from "./runs-columns.js";
import { fetchSparks, sparkline } from "./sparkline.js";
import { PALETTE } from "./palette.js";

const project = document.body.dataset.project;
const form = document.getElementById("filters");
const status = document.getElementById("status");
const table = document.getElementById("runs");
const wrap = document.getElementById("runs-wrap");
const empty = document.getElementById("empty");
const toolbar = document.getElementById("runs-toolbar");
const compareButton = document.getElementById("compare");
const selectionCount = document.getElementById("selection-count");
const pageInfo = document.getElementById("page-info");
const prev = document.getElementById("prev");
const next = document.getElementById("next");
const manager = document.getElementById("columns-picker");
const groupBy = document.getElementById("group-by");
const liveBadge = document.getElementById("runs-live");
const LIMIT = 50;
const LIVE_EVERY = 5;
const FILTERS = ["name", "tag", "status", "config"];

const selected = new Set();
const folded = new Set();
let state = readState();
let lastRuns = [];
let alertCounts = new Map();
let sparks = new Map();
let signature = "";
// Colours, as W&B gives them: a run's colour is the palette slot of its row (page offset included), the
// same palette as the compare view; the compare link and the run link carry the slots (colors=<id>:<slot>),
// so a run has the same colour in the table, in the compare view and on its page.
let slotOf = new Map();
const seenSlots = new Map(); // slots of runs seen on any page, for a selection across pages
let localSort = null; // {id, desc} for columns the API cannot sort (tags, alerts, duration)
let choice = loadChoice(project);
let inflight = false;
let pending = null;
let tick = 0;

function readState() {
  const p = new URLSearchParams(location.search);
  return {
    name: p.get("name") || "", tag: p.get("tag") || "", status: p.get("status") || "",
    config: p.get("config") || "", sort: p.get("sort") || "-created_at",
    offset: Math.max(0, parseInt(p.get("offset"), 10) || 0), groupby: p.get("groupby") || "",
  };
}

function writeState() {
  const p = new URLSearchParams();
  for (const k of FILTERS) if (state[k]) p.set(k, state[k]);
  if (state.sort !== "-created_at") p.set("sort", state.sort);
  if (state.offset) p.set("offset", String(state.offset));
  if (state.groupby) p.set("groupby", state.groupby);
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
  for (const k of FILTERS) form.elements[k].value = state[k];
}

// ---------------------------------------------------------------------------------------------
// Cells

const LOCAL_KEYS = {
  alerts: (r) => alertCounts.get(r.id)?.total || 0,
  duration: (r) => runDuration(r) ?? -1,
  tags: (r) => (r.tags || []).join(","),
};

function statusBadge(r) {
  return el("span", { class: "badge status-" + String(r.status).replace(/[^a-z]/g, ""), text: r.status || "" });
}

function renderCell(col, r) {
  switch (col.id) {
    case "status": return statusBadge(r);
    case "alerts": {
      const a = alertCounts.get(r.id);
      if (!a || !a.total) return "";
      return el("a", { class: "badge alert-badge" + (a.critical ? " critical" : ""), title: a.rules.join(", "),
        href: `${projectUrl(project)}/alerts?run=${encodeURIComponent(r.id)}`, text: `${a.total} firing` });
    }
    case "spark": return sparks.has(r.id) ? sparkline(sparks.get(r.id)) : "";
    case "created_at": return timeAgo(r.created_at);
    case "duration": return el("span", { class: "duration", text: fmtDuration(runDuration(r)) });
    case "group": return r.group ? el("button", { type: "button", class: "link", text: r.group, title: "group the table by group",
      onclick: () => setGroupBy("group") }) : "";
    case "tags": return el("span", {}, ...(r.tags || []).map((t) =>
      el("button", { type: "button", class: "tag", text: t, title: "filter by this tag",
        onclick: () => { state.tag = t; state.offset = 0; fillForm(); load(); } })));
    default:
      if (col.section === "config") { const v = configValue(r, col.key); return v === undefined ? "" : fmtValue(v); }
      if (col.section === "series") {
        const s = r.summary && r.summary[col.key];
        return s ? fmtNum(s[col.stat || "last"]) : "";
      }
      return "";
  }
}

function nameCell(r) {
  const box = el("input", { type: "checkbox", "aria-label": "select " + runLabel(r), dataset: { run: r.id } });
  box.checked = selected.has(r.id);
  box.addEventListener("change", () => { if (box.checked) selected.add(r.id); else selected.delete(r.id); updateSelection(); });
  const slot = slotOf.get(r.id) ?? 0;
  return el("td", { class: "pin" }, el("span", { class: "name-cell" }, box,
    el("span", { class: "swatch", style: `background:${PALETTE[slot]}`, dataset: { slot: String(slot) } }),
    el("a", { href: `${runUrl(r.id)}?colors=${encodeURIComponent(`${r.id}:${slot}`)}`, class: "run-name",
      text: runLabel(r), title: `${runLabel(r)} · ${r.id}` })));
}

// ---------------------------------------------------------------------------------------------
// Header and sorting

function sortOf(col) {
  if (col.sort) return state.sort === col.sort ? "ascending" : state.sort === "-" + col.sort ? "descending" : "none";
  if (localSort && localSort.id === col.id) return localSort.desc ? "descending" : "ascending";
  return "none";
}

function applySort(col) {
  if (col.sort) {
    state.sort = state.sort === col.sort ? "-" + col.sort : col.sort;
    state.offset = 0;
    localSort = null;
    load({ focusCol: col.id });
  } else {
    localSort = { id: col.id, desc: localSort && localSort.id === col.id ? !localSort.desc : false };
    render({ focusCol: col.id });
  }
}

/** A key as text with line-break chances after "/", "." and "_", taken only when the table is tight. */
function breakable(label) {
  const out = [];
  for (const part of String(label).split(/(?<=[/._])/)) out.push(part, el("wbr"));
  out.pop();
  return out;
}

function headerCell(col) {
  const sortable = !!(col.sort || LOCAL_KEYS[col.id]);
  const th = el("th", { class: (col.cls || "") + (sortable ? " sortable" : "") + (col.pin ? " pin" : ""), dataset: { col: col.id },
    scope: "col" });
  th.append(el("span", {}, ...breakable(col.label)));
  if (col.sub) th.append(el("span", { class: "sub", text: col.sub }));
  if (!sortable) return th;
  const sort = sortOf(col);
  th.setAttribute("aria-sort", sort);
  th.tabIndex = 0;
  th.title = `sort by ${col.sub && col.sub !== "config" ? col.label + " (" + col.sub + ")" : col.label}`;
  if (sort !== "none") th.append(el("span", { class: "sort-mark", "aria-hidden": "true", text: sort === "ascending" ? " ▲" : " ▼" }));
  th.addEventListener("click", (ev) => { if (!(ev.target instanceof HTMLInputElement)) applySort(col); });
  th.addEventListener("keydown", (ev) => {
    if (ev.target !== th || (ev.key !== "Enter" && ev.key !== " ")) return;
    ev.preventDefault();
    applySort(col);
  });
  return th;
}

// ---------------------------------------------------------------------------------------------
// Groups

function groupValue(r) {
  if (state.groupby === "group") return r.group || "";
  if (state.groupby.startsWith("config.")) {
    const v = configValue(r, state.groupby.slice(7));
    return v === undefined ? "" : fmtValue(v);
  }
  return null;
}

function setGroupBy(value) {
  state.groupby = value;
  groupBy.value = value;
  writeState();
  render();
}

function groupRow(name, rows, cols) {
  const open = !folded.has(name);
  const toggle = el("button", { type: "button", class: "link group-toggle", "aria-expanded": String(open),
    text: `${open ? "▾" : "▸"} ${name === "" ? "(none)" : name}`,
    onclick: () => { if (folded.has(name)) folded.delete(name); else folded.add(name); render(); } });
  const pick = el("input", { type: "checkbox", "aria-label": `select the runs of ${name || "(none)"}` });
  pick.checked = rows.every((r) => selected.has(r.id));
  pick.addEventListener("change", () => {
    for (const r of rows) { if (pick.checked) selected.add(r.id); else selected.delete(r.id); }
    render();
    updateSelection();
  });
  const tr = el("tr", { class: "group-row", dataset: { group: name } },
    el("td", { class: "pin" }, el("span", { class: "name-cell" }, pick, toggle,
      el("span", { class: "muted small", text: `${rows.length} run${rows.length === 1 ? "" : "s"}` }))));
  for (const col of cols) {
    let v = "";
    if (col.section === "series") { // the group's mean, as W&B shows for a group
      const xs = rows.map((r) => r.summary && r.summary[col.key] ? Number(r.summary[col.key][col.stat || "last"]) : NaN)
        .filter(Number.isFinite);
      if (xs.length) v = el("span", { title: `mean of ${xs.length}`, text: "μ " + fmtNum(xs.reduce((a, b) => a + b, 0) / xs.length) });
    }
    tr.append(el("td", { class: col.cls || "" }, v));
  }
  return tr;
}

// ---------------------------------------------------------------------------------------------
// Render

function visibleColumns() {
  const catalog = columnCatalog(lastRuns);
  return { catalog, cols: ordered(catalog, choice).filter((c) => isVisible(c, choice)) };
}

function renderGroupOptions(catalog) {
  const options = [["", "nothing"], ["group", "group"],
    ...catalog.filter((c) => c.section === "config").map((c) => ["config." + c.key, c.key])];
  const current = state.groupby;
  clear(groupBy).append(...options.map(([v, t]) => el("option", { value: v, text: t })));
  if (current && !options.some(([v]) => v === current)) groupBy.append(el("option", { value: current, text: current.replace(/^config\./, "") }));
  groupBy.value = current;
}

function render({ focusCol = null } = {}) {
  const { catalog, cols } = visibleColumns();
  renderManager(manager, project, catalog, choice, () => render());
  renderGroupOptions(catalog);
  const thead = clear(table.querySelector("thead"));
  const tbody = clear(table.querySelector("tbody"));
  const all = el("input", { type: "checkbox", id: "select-all", "aria-label": "select every run on this page" });
  all.checked = lastRuns.length > 0 && lastRuns.every((r) => selected.has(r.id));
  all.addEventListener("change", () => {
    for (const r of lastRuns) { if (all.checked) selected.add(r.id); else selected.delete(r.id); }
    render();
    updateSelection();
  });
  const nameCol = { id: "name", label: "name", sort: "name", pin: true };
  const nameTh = headerCell(nameCol);
  nameTh.prepend(all, " ");
  thead.append(el("tr", {}, nameTh, ...cols.map(headerCell)));
  let rows = lastRuns.slice();
  if (localSort && LOCAL_KEYS[localSort.id]) {
    const key = LOCAL_KEYS[localSort.id];
    rows.sort((a, b) => { const x = key(a), y = key(b); const c = x < y ? -1 : x > y ? 1 : 0; return localSort.desc ? -c : c; });
  }
  const runRow = (r) => {
    const tr = el("tr", { dataset: { run: r.id, status: r.status } }, nameCell(r));
    for (const col of cols) tr.append(el("td", { class: col.cls || "", dataset: { col: col.id } }, renderCell(col, r)));
    return tr;
  };
  let groups = null;
  if (state.groupby) {
    groups = new Map();
    for (const r of rows) { const g = groupValue(r); groups.set(g, [...(groups.get(g) || []), r]); }
  }
  // A run's colour follows its row (folded groups keep their slots, so folding never recolours).
  const order = groups ? [...groups.values()].flat() : rows;
  slotOf = new Map(order.map((r, i) => [r.id, (state.offset + i) % PALETTE.length]));
  for (const [id, slot] of slotOf) seenSlots.set(id, slot);
  if (groups) {
    for (const [name, members] of groups) {
      tbody.append(groupRow(name, members, cols));
      if (!folded.has(name)) for (const r of members) tbody.append(runRow(r));
    }
  } else {
    for (const r of rows) tbody.append(runRow(r));
  }
  if (focusCol) thead.querySelector(`th[data-col="${CSS.escape(focusCol)}"]`)?.focus();
  updateSelection();
}

function updateSelection() {
  compareButton.disabled = selected.size === 0;
  selectionCount.textContent = selected.size ? `${selected.size} selected` : "select runs to compare them";
}

/** Durations of running runs and every "… ago" move with the clock. */
function tickClock() {
  for (const tr of table.querySelectorAll("tbody tr[data-status='running']")) {
    const r = lastRuns.find((x) => x.id === tr.dataset.run);
    const cell = tr.querySelector("td[data-col='duration'] .duration");
    if (r && cell) cell.textContent = fmtDuration(runDuration(r));
  }
  refreshAgo(table);
}

// ---------------------------------------------------------------------------------------------
// Loading

async function alertCountsFor() {
  const counts = new Map();
  const got = await fetchAlerts(project, { status: "firing", limit: 1000 }).catch(() => ({ available: false, alerts: [] }));
  for (const a of got.alerts) {
    const c = counts.get(a.run) || { total: 0, critical: 0, rules: [] };
    c.total++;
    if (a.severity === "critical") c.critical++;
    c.rules.push(`${a.rule} on ${a.series || "the run"}`);
    counts.set(a.run, c);
  }
  return counts;
}

function filtering() {
  return FILTERS.some((k) => state[k]);
}

function showEmpty() {
  const origin = location.origin;
  const code = [
    "import losswatch",
    `run = losswatch.init(project=${JSON.stringify(project)}, url=${JSON.stringify(origin)})`,
    'run.log({"train/loss": loss}, step=step)  # in your training loop; run.finish() at the end',
  ].join("\n");
  clear(empty).append(
    el("h2", { text: "No runs in this project yet" }),
    el("p", { text: "Log a first run from your training script:" }),
    el("pre", { class: "code", id: "first-run" }, el("code", { text: code })),
    el("p", { class: "muted" }, "Or try it with three small torch models: ",
      el("code", { text: `losswatch demo --url ${origin} --project ${project}` }), "."));
  empty.hidden = false;
}

async function load({ quiet = false, focusCol = null } = {}) {
  if (inflight) { // one request at a time; a user's change waits for the one in flight, a poll is dropped
    if (!quiet) pending = { focusCol };
    return;
  }
  inflight = true;
  writeState();
  if (!quiet) setStatus(status, "Loading…");
  const params = { limit: LIMIT, offset: state.offset, sort: state.sort, name: state.name, status: state.status,
    tag: state.tag ? state.tag.split(",").map((t) => t.trim()).filter(Boolean) : null, ...configParams(state.config) };
  try {
    const [page, counts] = await Promise.all([api(`/projects/${encodeURIComponent(project)}/runs`, params), alertCountsFor()]);
    const runs = page.runs || [];
    const total = page.total ?? runs.length;
    const sig = JSON.stringify([runs, [...counts]]);
    const changed = sig !== signature;
    signature = sig;
    lastRuns = runs;
    alertCounts = counts;
    pageInfo.textContent = total ? `${state.offset + 1}–${state.offset + runs.length} of ${total}` : "";
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + runs.length >= total;
    const none = !runs.length;
    wrap.hidden = none;
    empty.hidden = true;
    toolbar.hidden = false;
    if (none && !filtering() && !state.offset) {
      setStatus(status, "");
      toolbar.hidden = true;
      showEmpty();
    } else {
      setStatus(status, none ? "No runs match these filters." : "");
    }
    liveBadge.hidden = !runs.some((r) => r.status === "running");
    if (changed || !quiet) render({ focusCol });
    if (changed && runs.length) {
      fetchSparks(runs).then((got) => {
        sparks = got;
        for (const td of table.querySelectorAll("tbody td[data-col='spark']")) {
          const id = td.parentElement.dataset.run;
          clear(td).append(sparks.has(id) ? sparkline(sparks.get(id)) : "");
        }
        document.body.dataset.sparks = "1";
      }).catch((err) => console.warn("losswatch: sparklines not loaded:", err.message));
    }
    document.body.dataset.ready = "1";
  } catch (err) {
    setStatus(status, err.status === 404 ? "There is no project with this name." : "Could not load the runs: " + err.message, "error");
  } finally {
    inflight = false;
    if (pending) { const again = pending; pending = null; load(again); }
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  for (const k of FILTERS) state[k] = form.elements[k].value.trim();
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
groupBy.addEventListener("change", () => setGroupBy(groupBy.value));

/** The compare view of the selected runs (in the order they were ticked), each keeping its table colour. */
function compareHref(ids, slots) {
  const taken = new Set(), pins = [];
  for (const id of ids) {
    const slot = slots.get(id);
    // Two ticked runs twenty rows apart share a slot: the later one is left unpinned and the compare
    // view gives it a free colour (as does a run never shown in this table).
    if (slot === undefined || taken.has(slot)) continue;
    taken.add(slot);
    pins.push(`${id}:${slot}`);
  }
  const q = new URLSearchParams({ runs: ids.join(",") });
  if (pins.length) q.set("colors", pins.join(","));
  return `${projectUrl(project)}/compare?${q.toString().replace(/%2C/g, ",").replace(/%3A/g, ":")}`;
}

compareButton.addEventListener("click", () => {
  if (!selected.size) return;
  location.assign(compareHref([...selected], seenSlots));
});

setInterval(() => {
  tick++;
  if (!lastRuns.some((r) => r.status === "running")) { if (tick % 30 === 0) refreshAgo(table); return; }
  tickClock();
  if (tick % LIVE_EVERY === 0 && document.visibilityState === "visible") load({ quiet: true });
}, 1000);

fillForm();
updateSelection();
load();
