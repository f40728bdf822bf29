// Entry of /p/{project}/alerts: the project's alerts with run names, filtered by status, severity and
// rule (by the server) and by series and run name or id (on the page); each can be acknowledged
// (POST/DELETE .../alerts/{id}/ack) or its rule silenced for the run (the run's rule configuration,
// PUT /runs/{id}/alert-config {"silenced": [...]}), and links into the compare chart zoomed on it.

import { el, clear, api, send, setStatus, fetchAlerts, fmtNum, fmtTime, projectUrl, runUrl, timeAgo, refreshAgo } from "./lib.js";
import { ALERT_RULES } from "./wire.js";

const project = document.body.dataset.project;
const form = document.getElementById("filters");
const status = document.getElementById("status");
const table = document.getElementById("alerts");
const FIELDS = ["status", "severity", "rule", "series", "run"];
const LIMIT = 1000;
const runConfigs = new Map(); // run id -> its rule configuration (for "silenced")

for (const rule of ALERT_RULES) form.elements.rule.append(el("option", { value: rule, text: rule }));

function readState() {
  const p = new URLSearchParams(location.search);
  const pick = (name, allowed) => (allowed.includes(p.get(name)) ? p.get(name) : "");
  return {
    status: pick("status", ["firing", "resolved"]), severity: pick("severity", ["critical", "warning", "info"]),
    rule: pick("rule", ALERT_RULES), series: p.get("series") || "", run: p.get("run") || "",
  };
}

/** The compare view of the alert's run and series, zoomed around its onset (and resolution). */
function chartUrl(a) {
  const p = new URLSearchParams({ runs: a.run });
  if (a.series) p.set("key", a.series);
  const onset = a.onset_step ?? a.step;
  if (onset !== null && onset !== undefined) {
    const last = Math.max(onset, a.resolved_step ?? a.step ?? onset);
    const pad = Math.max(50, last - onset);
    p.set("start", String(Math.max(0, onset - pad)));
    p.set("end", String(last + pad));
  }
  return `${projectUrl(project)}/compare?${p}`;
}

function matches(a, state) {
  if (state.series && !String(a.series || "").toLowerCase().includes(state.series.toLowerCase())) return false;
  if (state.run) {
    const q = state.run.toLowerCase();
    if (a.run !== state.run && !String(a.run_name || "").toLowerCase().includes(q)) return false;
  }
  return true;
}

function silenced(a) {
  const cfg = runConfigs.get(a.run);
  return !!(cfg && Array.isArray(cfg.silenced) && cfg.silenced.includes(a.rule));
}

async function setSilenced(a, on) {
  const cfg = await api(`/runs/${encodeURIComponent(a.run)}/alert-config`);
  const list = new Set(Array.isArray(cfg.silenced) ? cfg.silenced : []);
  if (on) list.add(a.rule); else list.delete(a.rule);
  const next = { ...cfg, silenced: [...list].sort() };
  if (!next.silenced.length) delete next.silenced;
  runConfigs.set(a.run, await send("PUT", `/runs/${encodeURIComponent(a.run)}/alert-config`, next));
}

function row(a) {
  const sev = String(a.severity).replace(/[^a-z]/g, "");
  const acked = a.details && a.details.acknowledged_at;
  const mute = silenced(a);
  const act = async (button, fn) => {
    button.disabled = true;
    try {
      await fn();
      setStatus(status, "");
    } catch (err) {
      setStatus(status, `Could not change alert ${a.id}: ${err.message}`, "error");
    }
    button.disabled = false;
  };
  const ackButton = el("button", { type: "button", class: "small ack-button", text: acked ? "undo ack" : "ack",
    title: acked ? "take the acknowledgement back" : "acknowledge: mark as seen" });
  ackButton.addEventListener("click", () => act(ackButton, async () => {
    const fresh = await send(acked ? "DELETE" : "POST", `/projects/${encodeURIComponent(project)}/alerts/${a.id}/ack`);
    tr.replaceWith(row(fresh));
  }));
  const muteButton = el("button", { type: "button", class: "small silence-button", text: mute ? "unsilence" : "silence",
    title: mute ? `let ${a.rule} alert on this run again` : `silence ${a.rule} for this run (the run's rule configuration)` });
  muteButton.addEventListener("click", () => act(muteButton, async () => {
    await setSilenced(a, !mute);
    for (const other of table.querySelectorAll(`tbody tr[data-run="${CSS.escape(a.run)}"][data-rule="${CSS.escape(a.rule)}"]`)) {
      other.replaceWith(row(JSON.parse(other.dataset.alert)));
    }
  }));
  const steps = a.resolved_step === null || a.resolved_step === undefined
    ? fmtNum(a.onset_step) : `${fmtNum(a.onset_step)} → ${fmtNum(a.resolved_step)}`;
  const tr = el("tr", { class: `sev-${sev}` + (acked ? " acked" : ""),
    dataset: { alert: JSON.stringify(a), id: String(a.id), run: a.run, rule: a.rule } },
    el("td", {}, el("span", { class: `badge sev sev-${sev}`, text: a.severity })),
    el("td", {}, el("span", { class: "badge", text: a.status }),
      acked ? el("span", { class: "badge ack", text: "acked", title: `by ${a.details.acknowledged_by || "?"}, ${fmtTime(acked)}` }) : null,
      mute ? el("span", { class: "badge ack silenced", text: "silenced", title: `${a.rule} is silenced for this run` }) : null),
    el("td", { class: "run-cell" }, el("a", { href: runUrl(a.run), class: "run-name", text: a.run_name || a.run, title: a.run })),
    el("td", { class: "mono series", text: a.series || "—" }),
    el("td", { text: a.rule }),
    el("td", { class: "num", text: steps }),
    el("td", { class: "message", text: a.message }),
    el("td", {}, timeAgo(a.created_at)),
    el("td", { class: "actions" }, el("a", { href: chartUrl(a), class: "small chart-link", text: "chart",
      title: "the compare chart, zoomed on this alert" }), " ", ackButton, " ", muteButton));
  return tr;
}

async function load() {
  const state = readState();
  for (const k of FIELDS) form.elements[k].value = state[k];
  setStatus(status, "Loading…");
  let got;
  try {
    got = await fetchAlerts(project, { status: state.status, severity: state.severity, rule: state.rule, limit: LIMIT });
  } catch (err) {
    setStatus(status, "Could not load the alerts: " + err.message, "error");
    return;
  }
  if (!got.available) {
    table.hidden = true;
    setStatus(status, "Alerts are not available on this server yet.", "warn");
    return;
  }
  const shown = got.alerts.filter((a) => matches(a, state));
  const runs = [...new Set(shown.map((a) => a.run))].slice(0, 100);
  await Promise.all(runs.map((id) => api(`/runs/${encodeURIComponent(id)}/alert-config`)
    .then((cfg) => runConfigs.set(id, cfg)).catch(() => null)));
  const body = clear(table.querySelector("tbody"));
  for (const a of shown) body.append(row(a));
  table.hidden = !shown.length;
  const filtered = FIELDS.some((k) => state[k]);
  setStatus(status, shown.length ? "" : filtered ? "No alerts match these filters." : "No alerts: no rule has fired in this project.");
  document.body.dataset.ready = "1";
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const p = new URLSearchParams();
  for (const k of FIELDS) { const v = form.elements[k].value.trim(); if (v) p.set(k, v); }
  const q = p.toString();
  history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
  load();
});
for (const k of ["status", "severity", "rule"]) form.elements[k].addEventListener("change", () => form.requestSubmit());
document.getElementById("clear-filters").addEventListener("click", () => {
  history.replaceState(null, "", location.pathname);
  load();
});
setInterval(() => refreshAgo(table), 30_000);

load();
