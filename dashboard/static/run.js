// Entry of /runs/{run_id}: config, tags, status, timings, series, alerts and the run's charts.
import { el, clear, api, apiUrl, setStatus, fetchAlerts, fmtNum, fmtTime, fmtValue, fmtDuration, flatten,
  runDuration, runLabel, projectUrl, timeAgo, KIND_ORDER } from "./lib.js";
import { mountCompare } from "./compare.js";
import { mountRunPanels } from "./run-panels.js";
import { readState } from "./compare-state.js";
import { assignColors } from "./palette.js";

const runId = document.body.dataset.run;
const status = document.getElementById("status");

function fact(dl, label, value) {
  if (value === null || value === undefined || value === "") return;
  dl.append(el("dt", { text: label }), el("dd", {}, value));
}

async function main() {
  let run;
  try {
    run = await api(`/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    setStatus(status, err.status === 404 ? "There is no run with this id." : "Could not load the run: " + err.message, "error");
    return;
  }
  document.title = `${runLabel(run)} · losswatch`;
  document.getElementById("run-name").textContent = runLabel(run);
  const projectLink = document.getElementById("project-link");
  projectLink.textContent = run.project;
  projectLink.href = projectUrl(run.project);

  // One line above the charts: what a person checks first.
  const head = document.getElementById("run-head");
  // The run's colour in its charts: the palette's first, or the slot the runs table gave it (?colors=<id>:<slot>).
  const color = assignColors([run.id], readState(location.search, [run.id]).colors).colors.get(run.id);
  head.append(...[el("span", { class: "swatch", id: "run-swatch", title: "this run's colour", style: `background:${color}`,
    dataset: { color } }),el("span", { class: "badge status-" + String(run.status).replace(/[^a-z]/g, ""), text: run.status }),
    el("span", { class: "muted" }, "created ", timeAgo(run.created_at)),
    el("span", { class: "muted", text: "duration " + fmtDuration(runDuration(run)) }),
    run.group ? el("span", { class: "muted" }, "group ", el("span", { class: "mono", text: run.group })) : null,
    ...(run.tags || []).map((t) => el("span", { class: "tag", text: t }))].filter(Boolean));

  const facts = document.getElementById("facts");
  fact(facts, "id", el("span", { class: "mono", text: run.id }));
  fact(facts, "status", el("span", { class: "badge status-" + String(run.status).replace(/[^a-z]/g, ""), text: run.status }));
  fact(facts, "project", el("a", { href: projectUrl(run.project), text: run.project }));
  fact(facts, "group", run.group);
  fact(facts, "tags", (run.tags || []).length ? el("span", {}, ...run.tags.map((t) => el("span", { class: "tag", text: t }))) : null);
  fact(facts, "created", fmtTime(run.created_at));
  fact(facts, "started", run.started_at ? fmtTime(run.started_at) : null);
  fact(facts, "ended", run.ended_at ? fmtTime(run.ended_at) : null);
  fact(facts, "last heartbeat", run.heartbeat_at ? fmtTime(run.heartbeat_at) : null);
  fact(facts, "duration", fmtDuration(runDuration(run)));
  fact(facts, "host", run.host);
  const client = Object.entries(run.client || {}).map(([k, v]) => `${k} ${fmtValue(v)}`).join(", ");
  fact(facts, "client", client);
  fact(facts, "notes", run.notes ? el("span", { class: "notes", text: run.notes }) : null);

  const config = document.querySelector("#config tbody");
  const flat = flatten(run.config || {});
  if (!flat.length) config.append(el("tr", {}, el("td", { class: "muted", text: "no config" })));
  for (const [k, v] of flat) config.append(el("tr", {}, el("th", { class: "mono", text: k }), el("td", { class: "mono", text: fmtValue(v) })));

  const series = document.querySelector("#series tbody");
  const entries = Object.entries(run.summary || {}).sort((a, b) =>
    KIND_ORDER.indexOf(a[1].kind) - KIND_ORDER.indexOf(b[1].kind) || (a[0] < b[0] ? -1 : 1));
  for (const [key, s] of entries) {
    series.append(el("tr", { dataset: { key } },
      el("td", { class: "mono", text: key }), el("td", { text: s.kind }),
      el("td", { class: "num", text: fmtNum(s.count) }),
      el("td", { class: "num" + (s.nonfinite ? " bad" : ""), text: fmtNum(s.nonfinite) }),
      el("td", { class: "num", text: fmtNum(s.first_step) }), el("td", { class: "num", text: fmtNum(s.last_step) }),
      el("td", { class: "num", text: fmtNum(s.last) }), el("td", { class: "num", text: fmtNum(s.min) }),
      el("td", { class: "num", text: fmtNum(s.max) }),
      el("td", {}, el("a", { href: apiUrl(`/runs/${encodeURIComponent(run.id)}/export.csv`, { key }), download: `${run.id}.csv`, text: "CSV" }))));
  }

  document.getElementById("open-compare").href = `${projectUrl(run.project)}/compare?runs=${encodeURIComponent(run.id)}`;
  document.getElementById("run-details").hidden = false;
  setStatus(status, "");

  const alertsStatus = document.getElementById("alerts-status");
  const alertList = document.getElementById("alerts");
  fetchAlerts(run.project, { run: run.id }).then((got) => {
    if (!got.available) { alertsStatus.textContent = "Alerts are not available on this server."; return; }
    const mine = got.alerts.filter((a) => a.run === run.id);
    alertsStatus.textContent = mine.length ? "" : "No alerts.";
    for (const a of mine) {
      alertList.append(el("li", { class: "alert sev-" + String(a.severity).replace(/[^a-z]/g, "") },
        el("span", { class: "badge", text: a.status }), " ", el("b", { text: a.rule }), " on ",
        el("span", { class: "mono", text: a.series }), ` at step ${fmtNum(a.onset_step)}`,
        a.resolved_step !== null && a.resolved_step !== undefined ? ` (resolved at ${fmtNum(a.resolved_step)})` : "",
        ": ", el("span", { text: a.message })));
    }
  }).catch((err) => { alertsStatus.textContent = "Could not load the alerts: " + err.message; });

  const compareRoot = document.getElementById("compare");
  if (entries.length) {
    mountCompare(compareRoot, { fixedRuns: [run.id], urlState: true });
    mountRunPanels(compareRoot, { search: document.getElementById("panel-search"), count: document.getElementById("panel-count"),
      expandAll: document.getElementById("expand-all"), collapseAll: document.getElementById("collapse-all") });
  } else {
    document.getElementById("panel-tools").hidden = true;
    clear(compareRoot).append(el("p", { class: "muted", text: "This run has no series yet." }));
  }
}

main();
