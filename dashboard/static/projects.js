// Entry of /: the projects visible to the caller.
import { el, api, setStatus, projectUrl, timeAgo } from "./lib.js";

const status = document.getElementById("status");
const table = document.getElementById("projects");
const body = table.querySelector("tbody");

function projectName(p) {
  return typeof p === "string" ? p : p.name ?? p.id ?? "";
}

async function main() {
  const answer = await api("/projects");
  const projects = Array.isArray(answer) ? answer : answer.projects || [];
  if (!projects.length) {
    setStatus(status, "No projects yet. Start a run with losswatch.init(project=...) or `losswatch demo`.");
    return;
  }
  for (const p of projects) {
    const name = projectName(p);
    const runs = typeof p === "object" ? p.runs ?? p.run_count ?? p.runs_count ?? "" : "";
    body.append(el("tr", {},
      el("td", {}, el("a", { href: projectUrl(name), class: "mono", text: name })),
      el("td", { class: "num", text: typeof runs === "number" ? String(runs) : "" }),
      el("td", {}, typeof p === "object" && p.created_at ? timeAgo(p.created_at) : ""),
      el("td", {}, el("a", { href: projectUrl(name) + "/alerts", class: "small", text: "alerts" }))));
  }
  table.hidden = false;
  setStatus(status, "");
}

main().catch((err) => setStatus(status, "Could not load the projects: " + err.message, "error"));
