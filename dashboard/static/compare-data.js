// The compare view's data: the API calls it makes and the pure transformations of their answers
// (wire decoding, stacked-contribution plans, groups aligned by step, config differences).
// Nothing here touches the page.

import { api, flatten } from "./lib.js";

/** Every run of `ids`, fetched in parallel; a run that cannot be read comes back as {__error, id}. */
export function fetchRuns(ids) {
  return Promise.all(ids.map((id) => api(`/runs/${encodeURIComponent(id)}`).catch((err) => ({ __error: err, id }))));
}

/**
 * Send the first /query of a view (state from compare-state.js): every key (or the state's), the state's
 * step range, about as many buckets as a panel of a grid `total` px wide is wide. Returns {params,
 * promise of {body, ms}}; a failure is left to whoever awaits the promise.
 */
export function startQuery(state, total) {
  const gap = 14, min = 480; // .panel-grid in app.css: columns of at least 480 px, 14 px apart
  const cols = Math.max(1, Math.floor((total + gap) / (min + gap)));
  const width = Math.floor((total - gap * (cols - 1)) / cols) - 18;
  const params = { run: state.runs, buckets: Math.max(100, Math.min(4000, width)) };
  if (state.keys.length) params.key = state.keys;
  if (state.start !== null && state.end !== null) { params.start = state.start; params.end = state.end; }
  const t0 = performance.now();
  const promise = fetchQuery(params).then((body) => ({ body, ms: performance.now() - t0 }));
  promise.catch(() => {});
  return { params, promise };
}

// What compare-early.js started for the page's URL, until the view takes it (once).
let prefetched = null;
let prefetchTaken = false;

/** Start the page's first requests (the query and the run fetches) unless the view has already begun. */
export function prefetch(state, total) {
  if (prefetchTaken || !state.runs.length) return;
  prefetched = { search: location.search, sent: performance.now(), query: startQuery(state, total), runs: fetchRuns(state.runs) };
}

/** What prefetch() started for this URL ({search, sent, query, runs}), or null; after this, prefetch() does nothing. */
export function takePrefetched() {
  prefetchTaken = true;
  const pre = prefetched;
  prefetched = null;
  return pre && pre.search === location.search ? pre : null;
}

/** The runs of a project, newest first, for the "add runs" picker. */
export async function fetchProjectRuns(project, name = "") {
  const body = await api(`/projects/${encodeURIComponent(project)}/runs`, { limit: 100, name: name || null });
  return body.runs || [];
}

/**
 * One /query call in its binary format (server/services/query.py encode_binary, docs/api.md), decoded:
 * {series: [{run, key, kind, width, step, lastStep, wall, last, min, max, nonfinite, count}]}, with JS
 * numbers (NaN and ±Inf in `last`; null for a min or max without a finite value). The columns are read
 * as typed arrays over the body, not parsed number by number; a failure is an ApiError as for any call.
 */
export async function fetchQuery(params, { signal } = {}) {
  return decodeQuery(await api("/query", { ...params, format: "binary" }, { signal, binary: true }));
}

const QUERY_MAGIC = "LWQ1";

/** The binary /query answer (an ArrayBuffer) as {series: [decoded series]}. */
export function decodeQuery(buf) {
  const bytes = new Uint8Array(buf);
  if (bytes.length < 8 || String.fromCharCode(...bytes.subarray(0, 4)) !== QUERY_MAGIC) throw new Error("not a binary query answer");
  const size = new DataView(buf).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + size)));
  const total = header.series.reduce((a, s) => a + s.n, 0);
  let at = Math.ceil((8 + size) / 8) * 8;
  const cols = {};
  for (const c of header.columns) {
    const Type = c.type === "u4" ? Uint32Array : Float64Array;
    cols[c.name] = new Type(buf, at, total);
    at += Type.BYTES_PER_ELEMENT * total;
  }
  // Plain arrays, as the JSON answer gives: the panels map them and place nulls in them. A min or max
  // without a finite value is NaN here and null there. (A loop: Array.from over a typed array is
  // several times slower.)
  const plain = (col, a, z) => { const out = new Array(z - a); for (let i = a; i < z; i++) out[i - a] = col[i]; return out; };
  const finiteOrNull = (col, a, z) => {
    const out = new Array(z - a);
    for (let i = a; i < z; i++) { const v = col[i]; out[i - a] = v === v && v !== Infinity && v !== -Infinity ? v : null; }
    return out;
  };
  let from = 0;
  const series = header.series.map((s) => {
    const a = from, z = from + s.n;
    from = z;
    const step = plain(cols.step, a, z);
    return {
      run: s.run, key: s.key, kind: s.kind, width: s.width || 1,
      step, lastStep: plain(cols.last_step, a, z), wall: plain(cols.wall, a, z),
      last: plain(cols.last, a, z), min: finiteOrNull(cols.min, a, z), max: finiteOrNull(cols.max, a, z),
      nonfinite: plain(cols.nonfinite, a, z), count: plain(cols.count, a, z),
    };
  });
  return { series };
}

/**
 * Which loss components to stack for a run, and their total.
 *
 * losswatch.client.torch_helpers.LossComponents logs `train/loss/box` (raw term), `train/loss/box_weighted`
 * (its contribution) and extra terms such as `train/loss/l2` (added as they are), so that the total equals
 * the sum of every `*_weighted` plus the extra terms. Generic rule: take every series of kind
 * loss_component, drop a raw term when its `_weighted` twin exists, keep one top-level group (train/).
 */
export function stackPlan(run) {
  const entries = Object.entries((run && run.summary) || {});
  const all = new Set(entries.filter(([, s]) => s && s.kind === "loss_component").map(([k]) => k));
  const comps = [...all].filter((k) => !all.has(k + "_weighted"));
  const losses = entries.filter(([, s]) => s && s.kind === "loss").map(([k]) => k);
  const top = (k) => (k.includes("/") ? k.slice(0, k.indexOf("/")) : "");
  const groups = new Map();
  for (const k of comps) groups.set(top(k), [...(groups.get(top(k)) || []), k]);
  let best = null;
  for (const [g, ks] of groups) if (!best || ks.length > best[1].length || (ks.length === best[1].length && g === "train")) best = [g, ks];
  if (!best || best[1].length < 2) return null;
  const members = best[1].sort();
  const total = losses.find((l) => members.every((c) => c.startsWith(l + "/") || c.startsWith(l + "_")))
    || losses.find((l) => top(l) === best[0]) || null;
  return { comps: members, total };
}

/** A run's value of a field: "group" or "config.<dotted key>"; undefined when it has none. */
export function fieldValue(run, field) {
  if (!run || !field) return undefined;
  if (field === "group") return run.group ?? undefined;
  const key = field.slice("config.".length);
  for (const [k, v] of flatten(run.config || {})) if (k === key) return v;
  return undefined;
}

/** "a value" as a short label. */
export function valueLabel(v) {
  if (v === undefined) return "(none)";
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** Sort values: numbers by value, then strings, then the rest; undefined last. */
export function compareValues(a, b) {
  const rank = (v) => (v === undefined ? 3 : typeof v === "number" ? 0 : typeof v === "string" ? 1 : 2);
  if (rank(a) !== rank(b)) return rank(a) - rank(b);
  if (typeof a === "number") return a - b;
  const x = valueLabel(a), y = valueLabel(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Flattened config keys whose values differ between the runs: [[key, [value per run]], ...]. */
export function configDiff(runs) {
  const flat = runs.map((r) => new Map(flatten(r.config || {}).map(([k, v]) => [k, JSON.stringify(v)])));
  const keys = new Set();
  for (const m of flat) for (const k of m.keys()) keys.add(k);
  const out = [];
  for (const k of [...keys].sort()) {
    const vals = flat.map((m) => m.get(k));
    if (new Set(vals).size > 1) out.push([k, vals.map((v) => (v === undefined ? undefined : JSON.parse(v)))]);
  }
  return out;
}

/** The fields a view can group or colour by: "group" when runs have one, then every config key. */
export function groupFields(runs) {
  const fields = [];
  if (runs.some((r) => r.group)) fields.push("group");
  const keys = new Set();
  for (const r of runs) for (const [k] of flatten(r.config || {})) keys.add(k);
  for (const k of [...keys].sort()) fields.push("config." + k);
  return fields;
}

function interpolate(xs, ys, x, from) {
  // xs sorted; the index hint `from` makes a sweep over sorted x linear.
  let i = from;
  while (i < xs.length && xs[i] < x) i++;
  if (i < xs.length && xs[i] === x) return [ys[i], i];
  if (i === 0 || i >= xs.length) return [null, i];
  const a = ys[i - 1], b = ys[i];
  if (a === null || b === null || !Number.isFinite(a) || !Number.isFinite(b)) return [null, i];
  return [a + ((b - a) * (x - xs[i - 1])) / (xs[i] - xs[i - 1]), i];
}

/**
 * Members' lines (each {xs sorted, last}) aligned by x: on the union of their x (or, when that is much
 * longer than the longest member, an even grid of as many points), each member linearly interpolated
 * inside its own range; per x the mean or median, min and max over the members present there.
 */
export function aggregate(members, agg = "mean") {
  const withData = members.filter((m) => m.xs.length);
  if (!withData.length) return { xs: [], last: [], min: [], max: [], n: [] };
  let longest = 0, lo = Infinity, hi = -Infinity;
  const all = new Set();
  for (const m of withData) {
    longest = Math.max(longest, m.xs.length);
    lo = Math.min(lo, m.xs[0]);
    hi = Math.max(hi, m.xs[m.xs.length - 1]);
    if (all.size <= 2 * longest + 1) for (const x of m.xs) all.add(x);
  }
  let xs;
  if (all.size <= 2 * longest) xs = [...all].sort((a, b) => a - b);
  else {
    xs = new Array(longest);
    for (let i = 0; i < longest; i++) xs[i] = longest === 1 ? lo : lo + ((hi - lo) * i) / (longest - 1);
  }
  const n = xs.length;
  const last = new Array(n), min = new Array(n), max = new Array(n), count = new Array(n);
  const cursors = withData.map(() => 0);
  const vals = [];
  for (let i = 0; i < n; i++) {
    vals.length = 0;
    withData.forEach((m, j) => {
      const [v, at] = interpolate(m.xs, m.last, xs[i], cursors[j]);
      cursors[j] = Math.max(0, at - 1);
      if (v !== null && Number.isFinite(v)) vals.push(v);
    });
    count[i] = vals.length;
    if (!vals.length) { last[i] = min[i] = max[i] = null; continue; }
    let s = 0, mn = Infinity, mx = -Infinity;
    for (const v of vals) { s += v; if (v < mn) mn = v; if (v > mx) mx = v; }
    min[i] = mn; max[i] = mx;
    if (agg === "median") {
      const sorted = vals.slice().sort((a, b) => a - b);
      const h = sorted.length >> 1;
      last[i] = sorted.length % 2 ? sorted[h] : (sorted[h - 1] + sorted[h]) / 2;
    } else last[i] = s / vals.length;
  }
  return { xs, last, min, max, n: count };
}
