// Entry of /p/{project}/tokens: the project's API tokens (admin), never their secrets; make one
// (POST .../tokens, its text shown once) or revoke one (DELETE .../tokens/{id}; every server process
// stops accepting it within a second, and the tokens it made go with it).

import { el, clear, api, send, setStatus, fmtTime } from "./lib.js";

const project = document.body.dataset.project;
const base = `/projects/${encodeURIComponent(project)}/tokens`;
const table = document.getElementById("tokens");
const status = document.getElementById("status");
const form = document.getElementById("create");
let shown = [];

function row(t) {
  const revoke = el("button", { type: "button", class: "link", text: "revoke", "data-token": String(t.id) });
  revoke.disabled = !!t.revoked_at;
  revoke.addEventListener("click", async () => {
    revoke.disabled = true;
    try {
      await send("DELETE", `${base}/${t.id}`);
      await load();
    } catch (err) {
      setStatus(status, `Could not revoke token #${t.id}: ${err.message}`, "error");
      revoke.disabled = false;
    }
  });
  return el("tr", { "data-id": String(t.id), "data-revoked": t.revoked_at ? "1" : "0" },
    el("td", { class: "num", text: String(t.id) }), el("td", { text: t.name }), el("td", { text: t.scope }),
    el("td", { class: "mono", text: `${t.prefix}…` }), el("td", { text: fmtTime(t.created_at) }),
    el("td", { text: t.expires_at ? fmtTime(t.expires_at) : "never" }),
    el("td", { text: t.revoked_at ? fmtTime(t.revoked_at) : "" }),
    el("td", { text: t.parent_id ? `#${t.parent_id}` : "" }), el("td", {}, revoke));
}

async function load() {
  try {
    const answer = await api(base);
    shown = answer.tokens;
    const body = table.tBodies[0];
    clear(body);
    for (const t of shown) body.append(row(t));
    table.hidden = shown.length === 0;
    setStatus(status, shown.length ? `${shown.length} token(s)` : "No tokens yet.");
  } catch (err) {
    table.hidden = true;
    setStatus(status, err.status === 403 ? "Only an admin token of this project can see its tokens."
      : `Could not load the tokens: ${err.message}`, "error");
  }
  document.body.dataset.ready = "1";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { name: form.elements.name.value.trim() || "api", scope: form.elements.scope.value };
  if (form.elements.expires.value) body.expires_at = `${form.elements.expires.value}T00:00:00Z`;
  try {
    const made = await send("POST", base, body);
    document.getElementById("new-token").textContent = made.token;
    document.getElementById("created").hidden = false;
    await load();
  } catch (err) {
    setStatus(status, `Could not make a token: ${err.message}`, "error");
  }
});

window.__losswatch = { info: () => ({ tokens: shown.map((t) => ({ id: t.id, revoked: !!t.revoked_at })) }) };
load();
