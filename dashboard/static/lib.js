// Shared helpers of the dashboard pages: DOM building (text only), the API client, formatting.
//
// Every user-supplied string reaches the page through textContent or setAttribute on an attribute
// we chose (never innerHTML), so a run named `<img src=x onerror=alert(1)>` shows exactly that.

/** Build an element. attrs: {class, text, dataset, title, href, on<event>: fn, ...}; children: nodes or text. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function setStatus(node, text, kind = "") {
  node.textContent = text || "";
  node.hidden = !text;
  node.className = "status" + (kind ? " " + kind : "");
}

// ---------------------------------------------------------------------------------------------
// API client: same-origin fetch (the sign-in cookie travels with it), one error shape.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || "http_" + status;
    this.details = details;
  }
}

/** A URL under /api/v1 with query parameters; array values become repeated parameters. */
export function apiUrl(path, params = {}) {
  const url = new URL("/api/v1" + path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => url.searchParams.append(name, String(v)));
    else url.searchParams.set(name, String(value));
  }
  return url.pathname + url.search;
}

export function loginUrl() {
  return "/login?reason=unauthorized&next=" + encodeURIComponent(location.pathname + location.search);
}

/**
 * GET a JSON answer (or, with `binary: true`, the body as an ArrayBuffer; an error is still JSON); 401
 * sends the browser to the sign-in page.
 */
export async function api(path, params = {}, { signal, binary = false } = {}) {
  const url = apiUrl(path, params);
  const res = await fetch(url, { credentials: "same-origin", headers: { Accept: binary ? "*/*" : "application/json" }, signal });
  if (res.status === 401) {
    location.assign(loginUrl());
    throw new ApiError(401, "unauthorized", "sign-in required");
  }
  if (!res.ok) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    const err = body && body.error ? body.error : {};
    throw new ApiError(res.status, err.code, err.message || res.statusText, err.details);
  }
  return binary ? res.arrayBuffer() : res.json();
}

/** POST/PUT/DELETE a JSON body (same origin, JSON content type: what the server's CSRF check wants). */
export async function send(method, path, body = {}) {
  const res = await fetch(apiUrl(path), { method, credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (res.status === 401) {
    location.assign(loginUrl());
    throw new ApiError(401, "unauthorized", "sign-in required");
  }
  let answer = null;
  try { answer = await res.json(); } catch { /* empty or not JSON */ }
  if (!res.ok) {
    const err = answer && answer.error ? answer.error : {};
    throw new ApiError(res.status, err.code, err.message || res.statusText, err.details);
  }
  return answer;
}

/** A wire value (number or "NaN"/"Infinity"/"-Infinity") as a JS number; null stays null. */
export function num(value) {
  if (typeof value === "number") return value;
  if (value === null || value === undefined) return null;
  if (value === "NaN") return NaN;
  if (value === "Infinity") return Infinity;
  if (value === "-Infinity") return -Infinity;
  const n = Number(value);
  return Number.isNaN(n) ? null : n;
}

/** The project's alerts, or {available: false} when the server has no alerts API yet (404). */
export async function fetchAlerts(project, params = {}) {
  try {
    const body = await api(`/projects/${encodeURIComponent(project)}/alerts`, params);
    return { available: true, alerts: Array.isArray(body.alerts) ? body.alerts : [] };
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501)) {
      // A 404 for an unknown project is still "no alerts"; a missing route means none can exist yet.
      const missingRoute = err.code === "http_404" || err.code === "not_found";
      return { available: !missingRoute, alerts: [] };
    }
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Formatting

export function fmtNum(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "string") v = num(v);
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(3);
  return String(Number(v.toPrecision(5)));
}

/** Short tick labels: 0.001 -> 1e-3, 250000 -> 2.5e5, 0.25 -> 0.25. */
export function fmtAxis(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
  return String(Number(v.toPrecision(4)));
}

export function fmtValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** "just now", "3 min ago", "2 h ago", "5 days ago" ("in 3 min" for a clock ahead of ours). */
export function fmtAgo(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (!iso || Number.isNaN(t)) return "—";
  const s = (now - t) / 1000;
  const a = Math.abs(s);
  let text;
  if (a < 45) return "just now";
  if (a < 3600) text = `${Math.round(a / 60)} min`;
  else if (a < 86400) text = `${Math.round(a / 3600)} h`;
  else if (a < 86400 * 60) { const d = Math.round(a / 86400); text = `${d} day${d === 1 ? "" : "s"}`; }
  else return new Date(t).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

/** A <time> showing fmtAgo(iso), the full date on hover; refreshAgo() keeps it current. */
export function timeAgo(iso) {
  if (!iso) return "—";
  return el("time", { class: "ago", datetime: iso, title: fmtTime(iso), text: fmtAgo(iso) });
}

export function refreshAgo(root = document) {
  const now = Date.now();
  for (const t of root.querySelectorAll("time.ago")) {
    const text = fmtAgo(t.getAttribute("datetime"), now);
    if (t.textContent !== text) t.textContent = text;
  }
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.round(Math.abs(seconds));
  const sign = seconds < 0 ? "-" : "";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return `${sign}${h}h${String(m).padStart(2, "0")}m`;
  if (m) return `${sign}${m}m${String(r).padStart(2, "0")}s`;
  return `${sign}${r}s`;
}

export function runDuration(run) {
  const start = Date.parse(run.started_at || run.created_at);
  const end = run.ended_at ? Date.parse(run.ended_at) : (run.status === "running" ? Date.now() : Date.parse(run.heartbeat_at));
  if (Number.isNaN(start) || Number.isNaN(end)) return null;
  return (end - start) / 1000;
}

/** Nested config as [["optim.lr", 0.001], ...], sorted by key. */
export function flatten(obj, prefix = "", out = []) {
  if (obj && typeof obj === "object" && !Array.isArray(obj)) {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flatten(v, key, out);
      else out.push([key, v]);
    }
  }
  if (!prefix) out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return out;
}

// Colours: palette.js (one palette for the runs table, the run page and the compare view).

export { SERIES_KINDS as KIND_ORDER } from "./wire.js";  // generated from losswatch.client.wire
export const KIND_TITLES = {
  loss: "Loss", loss_component: "Loss components", metric: "Evaluation metrics",
  lr: "Learning rate", grad_norm: "Gradient norm", other: "Other series",
};

/** The best value of a series: max for evaluation metrics, min for losses, none otherwise. */
export function bestOf(kind) {
  if (kind === "metric") return "max";
  if (kind === "loss" || kind === "loss_component") return "min";
  return null;
}

export function runLabel(run) {
  return run && run.name ? run.name : run ? run.id : "";
}

export function projectUrl(project) {
  return `/p/${encodeURIComponent(project)}`;
}

export function runUrl(runId) {
  return `/runs/${encodeURIComponent(runId)}`;
}
