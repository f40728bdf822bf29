// Entry of /p/{project}/alerts: the project's alerts, filtered by status and run.
import { el, clear, setStatus, fetchAlerts, fmtNum, fmtTime, projectUrl, runUrl } from "./lib.js";

const project = document.body.dataset.project;
const form = document.getElementById("filters");
const status = document.getElementById("status");
const table = document.getElementById("alerts");

function readState() {
  const p = new URLSearchParams(location.search);
  return { status: ["firing", "resolved"].includes(p.get("status")) ? p.get("status") : "", run: p.get("run") || "" };
}

async function load() {
  const state = readState();
  form.elements.status.value = state.status;
  form.elements.run.value = state.run;
  setStatus(status, "Loading…");
  let got;
  try {
    got = await fetchAlerts(project, { status: state.status, run: state.run });
  } catch (err) {
    setStatus(status, "Could not load the alerts: " + err.message, "error");
    return;
  }
  if (!got.available) {
    table.hidden = true;
    setStatus(status, "Alerts are not available on this server yet.", "warn");
    return;
  }
  const body = clear(table.querySelector("tbody"));
  for (const a of got.alerts) {
    const compare = `${projectUrl(project)}/compare?runs=${encodeURIComponent(a.run)}&key=${encodeURIComponent(a.series)}`;
    body.append(el("tr", { class: "sev-" + String(a.severity).replace(/[^a-z]/g, "") },
      el("td", {}, el("span", { class: "badge sev", text: a.severity })),
      el("td", {}, el("span", { class: "badge", text: a.status })),
      el("td", {}, el("a", { href: runUrl(a.run), class: "mono", text: a.run })),
      el("td", { class: "mono", text: a.series }), el("td", { text: a.rule }),
      el("td", { class: "num", text: fmtNum(a.onset_step) }),
      el("td", { class: "num", text: a.resolved_step === null || a.resolved_step === undefined ? "" : fmtNum(a.resolved_step) }),
      el("td", { text: a.message }), el("td", { text: fmtTime(a.created_at) }),
      el("td", {}, el("a", { href: compare, class: "small", text: "chart" }))));
  }
  table.hidden = !got.alerts.length;
  setStatus(status, got.alerts.length ? "" : "No alerts.");
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const p = new URLSearchParams();
  if (form.elements.status.value) p.set("status", form.elements.status.value);
  if (form.elements.run.value.trim()) p.set("run", form.elements.run.value.trim());
  const q = p.toString();
  history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
  load();
});

load();
