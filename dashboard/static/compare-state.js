// The compare view's state and its query string: everything a view shows can be shared as a URL.
//
//   runs=a,b  key=k1&key=k2  smooth=0.6  x=step|wall|relative  log=1  bands=0  stack=0  stackrun=a
//   start=&end=  hide=a  colors=a:ff0000,b:3  colorby=config.lr  groupby=group|config.<key>  agg=median
//   outliers=ignore  ylim=<key>:<min>:<max> (repeat; either bound may be empty)
// Unknown or malformed values fall back to the defaults, so a hand-edited URL never breaks the page.

import { HEX } from "./palette.js";

import { RUN_ID } from "./wire.js"; export { RUN_ID };  // generated from losswatch.client.wire
export const X_MODES = ["step", "wall", "relative"];
export const AGGREGATES = ["mean", "median"];
const FIELD = /^(group|config\.[^\s]{1,200})$/;

const ids = (text) => (text || "").split(",").map((s) => s.trim()).filter((s) => RUN_ID.test(s));
const finite = (text) => (text === "" || text === null || text === undefined ? null
  : Number.isFinite(Number(text)) ? Number(text) : null);

export function readState(search, fixedRuns = null) {
  const p = new URLSearchParams(search);
  const runs = fixedRuns || ids(p.get("runs"));
  let keys = p.getAll("key");
  if (!keys.length && p.get("keys")) keys = p.get("keys").split(",");
  const smooth = Math.min(0.999, Math.max(0, parseFloat(p.get("smooth")) || 0));
  const int = (name) => { const v = p.get(name); return v !== null && /^\d+$/.test(v) ? Number(v) : null; };
  let start = int("start"), end = int("end");
  if (start !== null && end !== null && end <= start) { start = null; end = null; }
  const colors = {};
  for (const pair of (p.get("colors") || "").split(",")) {
    const [id, c] = pair.split(":");
    if (id && RUN_ID.test(id) && c && (HEX.test(c) || /^\d{1,3}$/.test(c))) colors[id] = c.toLowerCase();
  }
  const ylim = {};
  for (const spec of p.getAll("ylim")) {
    const m = /^(.+):([^:]*):([^:]*)$/.exec(spec);
    if (!m) continue;
    const lo = finite(m[2]), hi = finite(m[3]);
    if ((lo !== null || hi !== null) && !(lo !== null && hi !== null && hi <= lo)) ylim[m[1]] = [lo, hi];
  }
  const field = (name) => (FIELD.test(p.get(name) || "") ? p.get(name) : null);
  return {
    runs: [...new Set(runs)], keys: [...new Set(keys.filter(Boolean))], smooth,
    x: X_MODES.includes(p.get("x")) ? p.get("x") : "step",
    log: p.get("log") === "1", bands: p.get("bands") !== "0", stack: p.get("stack") !== "0",
    stackrun: p.get("stackrun") && RUN_ID.test(p.get("stackrun")) ? p.get("stackrun") : null,
    start, end,
    hide: [...new Set(ids(p.get("hide")))], colors,
    colorby: field("colorby"), groupby: field("groupby"),
    agg: AGGREGATES.includes(p.get("agg")) ? p.get("agg") : "mean",
    outliers: p.get("outliers") === "ignore", ylim,
  };
}

export function stateQuery(state, fixedRuns = false) {
  const p = new URLSearchParams();
  if (!fixedRuns && state.runs.length) p.set("runs", state.runs.join(","));
  for (const k of state.keys) p.append("key", k);
  if (state.smooth > 0) p.set("smooth", String(state.smooth));
  if (state.x !== "step") p.set("x", state.x);
  if (state.log) p.set("log", "1");
  if (!state.bands) p.set("bands", "0");
  if (!state.stack) p.set("stack", "0");
  if (state.stackrun) p.set("stackrun", state.stackrun);
  if (state.start !== null && state.end !== null) { p.set("start", String(state.start)); p.set("end", String(state.end)); }
  const hide = (state.hide || []).filter((id) => state.runs.includes(id));
  if (hide.length) p.set("hide", hide.join(","));
  const colors = Object.entries(state.colors || {}).filter(([id]) => state.runs.includes(id));
  if (colors.length) p.set("colors", colors.map(([id, c]) => `${id}:${c}`).join(","));
  if (state.colorby) p.set("colorby", state.colorby);
  if (state.groupby) p.set("groupby", state.groupby);
  if (state.agg && state.agg !== "mean") p.set("agg", state.agg);
  if (state.outliers) p.set("outliers", "ignore");
  for (const [key, [lo, hi]] of Object.entries(state.ylim || {})) p.append("ylim", `${key}:${lo ?? ""}:${hi ?? ""}`);
  return p.toString();
}
