// The compare view: one panel per series key, one line per run, all from one /api/v1/query call.
//
// View state lives in the URL (see readState/writeState) so a view can be shared. The panels ask
// for about as many buckets as they are wide in pixels, never for raw points; a zoom asks the
// server for the visible step range again (finer buckets); running runs are polled every second.

import { el, clear, api, apiUrl, num, fetchAlerts, setStatus, runColor, runHue, runLabel, runUrl, projectUrl,
  KIND_ORDER, KIND_TITLES, fmtNum } from "./lib.js";
import { Panel } from "./chart.js";

const RUN_ID = /^[A-Za-z0-9_-]{1,64}$/;
const X_MODES = ["step", "wall", "relative"];
const LIVE_INTERVAL_MS = 1000;

/** The view state in a query string: runs=a,b&key=k1&key=k2&smooth=0.6&x=step&log=1&start=&end=... */
export function readState(search, fixedRuns = null) {
  const p = new URLSearchParams(search);
  const runs = fixedRuns || (p.get("runs") || "").split(",").map((s) => s.trim()).filter((s) => RUN_ID.test(s));
  let keys = p.getAll("key");
  if (!keys.length && p.get("keys")) keys = p.get("keys").split(",");
  const smooth = Math.min(0.999, Math.max(0, parseFloat(p.get("smooth")) || 0));
  const int = (name) => { const v = p.get(name); return v !== null && /^\d+$/.test(v) ? Number(v) : null; };
  let start = int("start"), end = int("end");
  if (start !== null && end !== null && end <= start) { start = null; end = null; }
  return {
    runs: [...new Set(runs)], keys: [...new Set(keys.filter(Boolean))], smooth,
    x: X_MODES.includes(p.get("x")) ? p.get("x") : "step",
    log: p.get("log") === "1", bands: p.get("bands") !== "0", stack: p.get("stack") !== "0",
    stackrun: p.get("stackrun") && RUN_ID.test(p.get("stackrun")) ? p.get("stackrun") : null,
    start, end,
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
  return p.toString();
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

function kindRank(kind) {
  const i = KIND_ORDER.indexOf(kind);
  return i < 0 ? KIND_ORDER.length : i;
}

function decodeSeries(s) {
  const n = (s.step || []).length;
  const last = new Array(n), min = new Array(n), max = new Array(n);
  for (let i = 0; i < n; i++) {
    const v = num(s.last[i]);
    last[i] = v === null ? null : v;
    min[i] = s.min ? num(s.min[i]) : null;
    max[i] = s.max ? num(s.max[i]) : null;
  }
  return {
    run: s.run, key: s.key, kind: s.kind, width: s.width || 1,
    step: s.step || [], lastStep: s.last_step || s.step || [], wall: s.wall || [],
    last, min, max, nonfinite: s.nonfinite || new Array(n).fill(0), count: s.count || [],
  };
}

export class Compare {
  constructor(root, { project = null, fixedRuns = null, urlState = true } = {}) {
    this.root = root;
    this.project = project;
    this.fixedRuns = fixedRuns;
    this.urlState = urlState;
    this.state = readState(urlState ? location.search : "", fixedRuns);
    this.runs = new Map(); // id -> run JSON
    this.series = new Map(); // run + "\u0000" + key -> decoded series
    this.origins = new Map(); // run -> origin of relative time (seconds)
    this.panels = [];
    this.stackPanel = null;
    this.alerts = [];
    this.alertsAvailable = true;
    this.queries = [];
    this.inflight = null;
    this.tick = 0;
    let resolveReady;
    this.ready = new Promise((r) => { resolveReady = r; });
    this._resolveReady = resolveReady;
    this._build();
  }

  _build() {
    clear(this.root);
    this.runBar = el("div", { class: "run-chips", id: "run-chips" });
    this.smoothInput = el("input", { type: "range", min: "0", max: "0.99", step: "0.01", id: "smoothing",
      value: String(this.state.smooth), "aria-label": "smoothing" });
    this.smoothText = el("output", { class: "mono", id: "smoothing-value", text: this.state.smooth.toFixed(2) });
    this.logInput = el("input", { type: "checkbox", id: "log-scale" });
    this.logInput.checked = this.state.log;
    this.bandsInput = el("input", { type: "checkbox", id: "bands" });
    this.bandsInput.checked = this.state.bands;
    this.stackInput = el("input", { type: "checkbox", id: "stacked" });
    this.stackInput.checked = this.state.stack;
    this.xSelect = el("select", { id: "x-axis" }, ...X_MODES.map((m) => el("option", { value: m, text: m === "wall" ? "wall time" : m === "relative" ? "relative time" : "step" })));
    this.xSelect.value = this.state.x;
    this.resetButton = el("button", { type: "button", id: "reset-zoom", text: "reset zoom", onclick: () => this.resetZoom() });
    this.liveBadge = el("span", { class: "badge live", id: "live", text: "live", hidden: true, title: "running runs update every second" });
    this.keysBox = el("details", { class: "picker", id: "keys-picker" });
    this.exportBox = el("details", { class: "picker", id: "export" });
    this.statusLine = el("p", { class: "status", role: "status", text: "Loading…" });
    this.alertBar = el("ul", { class: "alerts compact", id: "alert-list" });
    this.panelBox = el("div", { class: "panels", id: "panels" });

    const label = (text, input) => el("label", { class: "control" }, text, " ", input);
    this.controls = el("div", { class: "controls" },
      el("label", { class: "control" }, "smoothing ", this.smoothInput, " ", this.smoothText),
      label("log scale", this.logInput), label("x axis", this.xSelect), label("min/max bands", this.bandsInput),
      label("stacked contributions", this.stackInput), this.resetButton, this.liveBadge,
      el("span", { class: "spacer" }), this.keysBox, this.exportBox);
    this.root.append(this.runBar, this.controls, this.statusLine, this.alertBar, this.panelBox);

    this.smoothInput.addEventListener("input", () => {
      this.state.smooth = Number(this.smoothInput.value);
      this.smoothText.textContent = this.state.smooth.toFixed(2);
      this._scheduleRedraw();
    });
    this.logInput.addEventListener("change", () => { this.state.log = this.logInput.checked; this._scheduleRedraw(); });
    this.bandsInput.addEventListener("change", () => { this.state.bands = this.bandsInput.checked; this._scheduleRedraw(); });
    this.stackInput.addEventListener("change", () => {
      this.state.stack = this.stackInput.checked;
      this._writeUrl();
      this._rebuildPanels();
      this.refresh();
    });
    this.xSelect.addEventListener("change", () => {
      this.state.x = this.xSelect.value;
      this._writeUrl();
      this._rebuildPanels();
      this._distribute();
    });
    window.addEventListener("resize", () => { for (const p of this._allPanels()) p.resize(); });
  }

  _allPanels() {
    return this.stackPanel ? [...this.panels, this.stackPanel] : this.panels;
  }

  _writeUrl() {
    if (!this.urlState) return;
    const q = stateQuery(this.state, !!this.fixedRuns);
    history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
  }

  _scheduleRedraw() {
    if (this._redrawPending) return;
    this._redrawPending = true;
    requestAnimationFrame(() => { this._redrawPending = false; this._writeUrl(); this._distribute(); });
  }

  async start() {
    try {
      this.marks = { start: performance.now() };
      if (!this.state.runs.length) {
        setStatus(this.statusLine, "No runs selected: pick runs on the runs table.", "warn");
        this._resolveReady(this.info());
        return;
      }
      // The series query does not need the runs' metadata: send it now, alongside the run fetches.
      const early = this._earlyQuery();
      let alertsPromise = this.project ? this._fetchAlerts() : null;
      const answers = await Promise.all(this.state.runs.map((id) => api(`/runs/${encodeURIComponent(id)}`)
        .catch((err) => ({ __error: err, id }))));
      this.marks.runs = performance.now();
      const missing = answers.filter((a) => a.__error).map((a) => a.id);
      for (const a of answers) if (!a.__error) this.runs.set(a.id, a);
      if (!this.runs.size) {
        setStatus(this.statusLine, `None of the runs could be loaded (${missing.join(", ")}).`, "error");
        this._resolveReady(this.info());
        return;
      }
      if (!this.project) this.project = [...this.runs.values()][0].project;
      if (!alertsPromise && this.project) alertsPromise = this._fetchAlerts();
      this._renderRunChips(missing);
      this._renderKeysPicker();
      this._rebuildPanels();
      await this.refresh({ early });
      this.marks.drawn = performance.now();
      if (alertsPromise) {
        const got = await alertsPromise;
        this.alertsAvailable = got.available;
        const ids = new Set(this.runs.keys());
        this.alerts = got.alerts.filter((a) => ids.has(a.run));
        this._renderAlerts();
        if (this.alerts.length) this._distribute();
      }
      await new Promise((r) => requestAnimationFrame(() => r()));
      document.body.dataset.ready = "1";
      this.readyAt = performance.now();
      this._resolveReady(this.info());
      this._startLive();
    } catch (err) {
      setStatus(this.statusLine, "Could not load the comparison: " + err.message, "error");
      this._resolveReady(this.info());
      throw err;
    }
  }

  _fetchAlerts() {
    return fetchAlerts(this.project).catch(() => ({ available: false, alerts: [] }));
  }

  /** The first query, sent before the panels exist: all keys (or the URL's), buckets from the layout. */
  _earlyQuery() {
    const total = this.panelBox.clientWidth || this.root.clientWidth || 1000;
    const gap = 14, min = 480;
    const cols = Math.max(1, Math.floor((total + gap) / (min + gap)));
    const width = Math.floor((total - gap * (cols - 1)) / cols) - 18;
    const params = { run: this.state.runs, buckets: Math.max(100, Math.min(4000, width)) };
    if (this.state.keys.length) params.key = this.state.keys;
    if (this.zoomed()) { params.start = this.state.start; params.end = this.state.end; }
    const t0 = performance.now();
    const promise = api("/query", params).then((body) => ({ body, ms: performance.now() - t0 }));
    promise.catch(() => {});
    return { params, promise };
  }

  _renderRunChips(missing) {
    clear(this.runBar);
    for (const [id, run] of this.runs) {
      const chip = el("span", { class: "chip", dataset: { run: id } },
        el("span", { class: "swatch", style: `background:${runColor(id)}` }),
        el("a", { href: runUrl(id), class: "run-name", text: runLabel(run), title: id }),
        el("span", { class: "badge status-" + String(run.status).replace(/[^a-z]/g, ""), text: run.status || "" }));
      if (!this.fixedRuns && this.runs.size > 1) {
        chip.append(el("button", { type: "button", class: "link remove", title: "remove from the comparison", text: "×",
          onclick: () => this.removeRun(id) }));
      }
      this.runBar.append(chip);
    }
    if (missing.length) this.runBar.append(el("span", { class: "error", text: `not found: ${missing.join(", ")}` }));
    if (this.project && !this.fixedRuns) this.runBar.append(el("a", { class: "small", href: projectUrl(this.project), text: "add runs…" }));
  }

  removeRun(id) {
    this.state.runs = this.state.runs.filter((r) => r !== id);
    this.runs.delete(id);
    for (const k of [...this.series.keys()]) if (k.startsWith(id + "\u0000")) this.series.delete(k);
    if (this.state.stackrun === id) this.state.stackrun = null;
    this._writeUrl();
    this._renderRunChips([]);
    this._rebuildPanels();
    this._distribute();
  }

  /** Every key of the selected runs with its kind, sorted by kind then name. */
  allKeys() {
    const kinds = new Map();
    for (const run of this.runs.values()) {
      for (const [k, s] of Object.entries(run.summary || {})) if (!kinds.has(k)) kinds.set(k, (s && s.kind) || "other");
    }
    return [...kinds.entries()].sort((a, b) => kindRank(a[1]) - kindRank(b[1]) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  viewKeys() {
    const all = this.allKeys();
    if (!this.state.keys.length) return all;
    const kinds = new Map(all);
    return this.state.keys.map((k) => [k, kinds.get(k) || "other"]);
  }

  _renderKeysPicker() {
    clear(this.keysBox);
    const all = this.allKeys();
    const shown = new Set(this.viewKeys().map(([k]) => k));
    this.keysBox.append(el("summary", { text: `series (${shown.size} of ${all.length})` }));
    const list = el("div", { class: "picker-list" });
    for (const [k, kind] of all) {
      const box = el("input", { type: "checkbox", value: k });
      box.checked = shown.has(k);
      list.append(el("label", { class: "picker-item" }, box, " ", el("span", { class: "mono", text: k }), " ",
        el("span", { class: "kind", text: kind })));
    }
    const apply = el("button", { type: "button", text: "show", onclick: () => {
      const chosen = [...list.querySelectorAll("input:checked")].map((b) => b.value);
      this.state.keys = chosen.length === all.length ? [] : chosen;
      this._writeUrl();
      this._renderKeysPicker();
      this._rebuildPanels();
      this.refresh();
    } });
    const allButton = el("button", { type: "button", class: "link", text: "all",
      onclick: () => list.querySelectorAll("input").forEach((b) => { b.checked = true; }) });
    const noneButton = el("button", { type: "button", class: "link", text: "none",
      onclick: () => list.querySelectorAll("input").forEach((b) => { b.checked = false; }) });
    this.keysBox.append(list, el("div", {}, apply, " ", allButton, " ", noneButton));
  }

  _renderExport() {
    clear(this.exportBox);
    this.exportBox.append(el("summary", { text: "export" }));
    const keys = this.viewKeys().map(([k]) => k);
    const list = el("div", { class: "picker-list" });
    for (const [id, run] of this.runs) {
      const href = apiUrl(`/runs/${encodeURIComponent(id)}/export.csv`, { key: keys });
      list.append(el("a", { class: "csv-link", href, download: `${id}.csv`, dataset: { run: id } },
        "CSV of ", el("span", { text: runLabel(run) })));
    }
    list.append(el("p", { class: "muted small", text: "PNG: the button on each panel." }));
    this.exportBox.append(list);
  }

  _stackRun() {
    const ids = [...this.runs.keys()];
    if (this.state.stackrun && this.runs.has(this.state.stackrun)) return this.state.stackrun;
    return ids.find((id) => stackPlan(this.runs.get(id))) || null;
  }

  _rebuildPanels() {
    for (const p of this._allPanels()) p.destroy();
    this.panels = [];
    this.stackPanel = null;
    clear(this.panelBox);
    const sections = new Map();
    const section = (kind) => {
      if (!sections.has(kind)) {
        const grid = el("div", { class: "panel-grid" });
        const sec = el("section", { class: "panel-section", dataset: { kind } },
          el("h2", { text: KIND_TITLES[kind] || kind }), grid);
        sections.set(kind, grid);
        this.panelBox.append(sec);
      }
      return sections.get(kind);
    };
    const common = {
      syncKey: "lw-" + Math.random().toString(36).slice(2),
      onZoom: (a, b) => this.zoomX(a, b),
      onReset: () => this.resetZoom(),
    };
    const keys = this.viewKeys();
    keys.sort((a, b) => kindRank(a[1]) - kindRank(b[1]));
    for (const [key, kind] of keys) {
      const sectionKind = KIND_ORDER.includes(kind) ? kind : "other";
      this.panels.push(new Panel(section(sectionKind), { ...common, key, kind, title: key }));
    }
    const stackRun = this.state.stack ? this._stackRun() : null;
    if (stackRun) {
      const plan = stackPlan(this.runs.get(stackRun));
      const grid = section("loss");
      this.stackPanel = new Panel(grid, { ...common, key: "stacked:" + stackRun, kind: "loss_component", stacked: true,
        title: `stacked contributions · ${runLabel(this.runs.get(stackRun))}`, pngName: "stacked-" + stackRun, plan, run: stackRun });
      const candidates = [...this.runs.keys()].filter((id) => stackPlan(this.runs.get(id)));
      if (candidates.length > 1) {
        const pick = el("select", { class: "small", title: "run whose contributions are stacked" },
          ...candidates.map((id) => el("option", { value: id, text: runLabel(this.runs.get(id)) })));
        pick.value = stackRun;
        pick.addEventListener("change", () => { this.state.stackrun = pick.value; this._writeUrl(); this._rebuildPanels(); this.refresh(); });
        this.stackPanel.toolbar.prepend(pick);
      }
    }
    this._renderExport();
  }

  _queryKeys() {
    const keys = new Set(this.panels.map((p) => p.key));
    if (this.stackPanel) {
      const plan = this.stackPanel.opts.plan;
      for (const k of plan.comps) keys.add(k);
      if (plan.total) keys.add(plan.total);
    }
    return [...keys];
  }

  buckets() {
    const w = this.panels.length ? this.panels[0].width() : 800;
    return Math.max(100, Math.min(4000, Math.round(w)));
  }

  zoomed() {
    return this.state.start !== null && this.state.end !== null;
  }

  /** Fetch every panel's buckets in one call, then redraw. */
  async refresh({ live = false, early = null } = {}) {
    const keys = this._queryKeys();
    if (!keys.length || !this.runs.size) { this._distribute(); return; }
    if (this.inflight) this.inflight.abort();
    const ctrl = new AbortController();
    this.inflight = ctrl;
    let params = { run: [...this.runs.keys()], key: keys, buckets: this.buckets() };
    if (this.zoomed()) { params.start = this.state.start; params.end = this.state.end; }
    // The early query covers what is needed unless it named keys and the stack panel needs more.
    const covered = early && (!early.params.key || keys.every((k) => early.params.key.includes(k)));
    let t0 = performance.now();
    let body, earlyMs = null;
    try {
      if (covered) {
        params = early.params;
        ({ body, ms: earlyMs } = await early.promise);
      } else {
        body = await api("/query", params, { signal: ctrl.signal });
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      if (!live) setStatus(this.statusLine, "Could not load the series: " + err.message, "error");
      return;
    } finally {
      if (this.inflight === ctrl) this.inflight = null;
    }
    if (earlyMs !== null) t0 = performance.now() - earlyMs;
    const ms = performance.now() - t0;
    this.queries.push({ url: apiUrl("/query", params), ms, live, start: params.start ?? null, end: params.end ?? null,
      buckets: params.buckets, at: performance.now() });
    if (this.queries.length > 200) this.queries.splice(0, 100);
    this.series.clear();
    for (const s of body.series || []) {
      const d = decodeSeries(s);
      this.series.set(s.run + "\u0000" + s.key, d);
      if (!this.zoomed() && d.wall.length && Number.isFinite(d.wall[0])) {
        const known = this._runStart(d.run);
        if (known === null || d.wall[0] < known) this.origins.set(d.run, d.wall[0]);
      }
    }
    setStatus(this.statusLine, "");
    this._distribute();
  }

  /** Origin of relative time: the run's start, or its first point when that is earlier (backfilled data). */
  _runStart(id) {
    if (this.origins.has(id)) return this.origins.get(id);
    const run = this.runs.get(id);
    const t = Date.parse(run.started_at || run.created_at);
    return Number.isNaN(t) ? null : t / 1000;
  }

  /** Per-run panel data for one key in the current x mode. */
  _panelRun(id, s, colorSeed = id) {
    const mode = this.state.x;
    const n = s.step.length;
    let xs;
    if (mode === "step") xs = s.step.slice();
    else {
      const origin = mode === "relative" ? (this._runStart(id) ?? (n ? s.wall[0] : 0)) : 0;
      xs = s.wall.map((w) => w - origin);
    }
    let idx = null;
    for (let i = 1; i < n; i++) if (!(xs[i] > xs[i - 1])) { idx = [...xs.keys()].sort((a, b) => xs[a] - xs[b]); break; }
    const pick = (arr) => (idx ? idx.map((i) => arr[i]) : arr);
    const hue = runHue(colorSeed);
    return {
      id, label: runLabel(this.runs.get(id)), color: runColor(colorSeed), colorFaint: runColor(colorSeed, 0.28),
      colorBand: runColor(colorSeed, 0.16), colorFill: `hsl(${hue}, 65%, 78%)`, width: s.width,
      xs: idx ? idx.map((i) => xs[i]) : xs, last: pick(s.last), min: pick(s.min), max: pick(s.max),
      nonfinite: pick(s.nonfinite), steps: pick(s.step), lastSteps: pick(s.lastStep),
    };
  }

  /** The x of a step for one run (nearest bucket), in the current x mode. */
  _stepToX(id, step, key) {
    if (this.state.x === "step") return step;
    const s = this.series.get(id + "\u0000" + key) || [...this.series.values()].find((v) => v.run === id);
    if (!s || !s.step.length) return null;
    let best = 0;
    for (let i = 0; i < s.step.length; i++) if (s.step[i] <= step) best = i; else break;
    const origin = this.state.x === "relative" ? (this._runStart(id) ?? s.wall[0]) : 0;
    return s.wall[best] - origin;
  }

  _alertMarkers(key) {
    return this.alerts.filter((a) => a.series === key && this.runs.has(a.run) && a.onset_step !== null && a.onset_step !== undefined)
      .map((a) => ({
        x: this._stepToX(a.run, a.onset_step, key), severity: a.severity,
        color: /crit|error|high/i.test(String(a.severity)) ? "#c40000" : "#e07b00",
        text: `${runLabel(this.runs.get(a.run))} · ${a.rule} (${a.severity}, ${a.status}) at step ${a.onset_step}: ${a.message}`,
      }));
  }

  /** Hand the fetched series to the panels (no network). */
  _distribute() {
    const view = { smoothing: this.state.smooth, log: this.state.log, bands: this.state.bands, xMode: this.state.x };
    const perPanel = [];
    let lo = Infinity, hi = -Infinity;
    for (const p of this.panels) {
      const runs = [];
      for (const id of this.runs.keys()) {
        const s = this.series.get(id + "\u0000" + p.key);
        if (s) runs.push(this._panelRun(id, s));
      }
      for (const r of runs) if (r.xs.length) { lo = Math.min(lo, r.xs[0]); hi = Math.max(hi, r.xs[r.xs.length - 1]); }
      perPanel.push([p, runs]);
    }
    if (this.stackPanel) {
      const plan = this.stackPanel.opts.plan;
      const id = this.stackPanel.opts.run;
      const comps = [];
      plan.comps.forEach((k, i) => {
        const s = this.series.get(id + "\u0000" + k);
        if (s) comps.push({ ...this._panelRun(id, s, k + "#" + i), id: k, label: k });
      });
      if (plan.total) {
        const s = this.series.get(id + "\u0000" + plan.total);
        if (s) comps.push({ ...this._panelRun(id, s), id: plan.total, label: plan.total + " (total)", isTotal: true, color: "#111" });
      }
      perPanel.push([this.stackPanel, comps]);
    }
    // Every panel shares one x range, so evaluation metrics line up with the loss step for step.
    let xRange = lo <= hi ? [lo, hi] : null;
    if (this.zoomed() && this.state.x === "step") xRange = [this.state.start, this.state.end];
    else if (this._pendingXRange) xRange = this._pendingXRange;
    if (xRange && xRange[0] === xRange[1]) xRange = [xRange[0] - 1, xRange[1] + 1];
    for (const [p, runs] of perPanel) {
      p.setView({ ...view, xRange });
      p.setData(runs, p.opts.stacked ? [] : this._alertMarkers(p.key));
    }
    this._pendingXRange = null;
    this._updateLiveBadge();
  }

  _renderAlerts() {
    clear(this.alertBar);
    if (!this.alertsAvailable) return;
    for (const a of this.alerts.slice(0, 20)) {
      const item = el("li", { class: "alert sev-" + String(a.severity).replace(/[^a-z]/g, "") + " st-" + String(a.status).replace(/[^a-z]/g, "") },
        el("span", { class: "badge", text: a.status }), " ",
        el("span", { class: "mono", text: runLabel(this.runs.get(a.run)) }), " · ",
        el("span", { class: "mono", text: a.series }), " · ", el("b", { text: a.rule }),
        ` at step ${fmtNum(a.onset_step)}: `, el("span", { text: a.message }));
      item.addEventListener("click", () => {
        const s = Number(a.onset_step);
        const span = Math.max(50, Math.round((this._extentSteps() || 1000) * 0.05));
        this.zoomSteps(Math.max(0, s - span), s + span);
      });
      this.alertBar.append(item);
    }
    if (this.alerts.length > 20) this.alertBar.append(el("li", { class: "muted", text: `… ${this.alerts.length - 20} more on the alerts page` }));
  }

  _extentSteps() {
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series.values()) if (s.step.length) { lo = Math.min(lo, s.step[0]); hi = Math.max(hi, s.lastStep[s.lastStep.length - 1]); }
    return hi >= lo ? hi - lo : null;
  }

  /** A drag on any panel (x in the panel's units): fetch that step range again, finer. */
  zoomX(xmin, xmax) {
    if (this.state.x === "step") return this.zoomSteps(Math.floor(xmin), Math.ceil(xmax));
    let lo = Infinity, hi = -Infinity;
    for (const p of this.panels) {
      for (const r of p.runs) {
        for (let i = 0; i < r.xs.length; i++) {
          if (r.xs[i] < xmin || r.xs[i] > xmax) continue;
          lo = Math.min(lo, r.steps[i]);
          hi = Math.max(hi, r.lastSteps[i]);
        }
      }
    }
    if (!(hi > lo)) return Promise.resolve();
    this._pendingXRange = [xmin, xmax];
    return this.zoomSteps(lo, hi, [xmin, xmax]);
  }

  zoomSteps(start, end, xRange = null) {
    start = Math.max(0, Math.floor(start));
    end = Math.max(start + 1, Math.ceil(end));
    this.state.start = start;
    this.state.end = end;
    this._writeUrl();
    const range = xRange || (this.state.x === "step" ? [start, end] : null);
    if (range) for (const p of this._allPanels()) if (p.u) { p.view.xRange = range; p.u.setScale("x", { min: range[0], max: range[1] }); }
    this._pendingXRange = xRange;
    return this.refresh();
  }

  resetZoom() {
    if (!this.zoomed()) return Promise.resolve();
    this.state.start = null;
    this.state.end = null;
    this._writeUrl();
    return this.refresh();
  }

  anyRunning() {
    for (const r of this.runs.values()) if (r.status === "running") return true;
    return false;
  }

  _updateLiveBadge() {
    this.liveBadge.hidden = !this.anyRunning();
    this.liveBadge.classList.toggle("paused", this.zoomed());
    this.liveBadge.title = this.zoomed() ? "live updates paused while zoomed (reset zoom to follow)" : "running runs update every second";
  }

  _startLive() {
    if (this._liveTimer) return;
    this._liveTimer = setInterval(() => this._liveTick(), LIVE_INTERVAL_MS);
  }

  async _liveTick() {
    if (!this.anyRunning() || this.zoomed() || document.hidden || this.inflight) return;
    this.tick++;
    if (this.tick % 5 === 0) {
      // Refresh the status of running runs, so polling stops once they finish.
      const running = [...this.runs.values()].filter((r) => r.status === "running");
      const fresh = await Promise.all(running.map((r) => api(`/runs/${encodeURIComponent(r.id)}`).catch(() => null)));
      let changed = false;
      for (const r of fresh) if (r) { changed = changed || r.status !== this.runs.get(r.id)?.status; this.runs.set(r.id, r); }
      if (changed) this._renderRunChips([]);
      const known = new Set(this.allKeys().map(([k]) => k));
      if (!this.state.keys.length && known.size !== this.panels.length) { this._renderKeysPicker(); this._rebuildPanels(); }
    }
    await this.refresh({ live: true });
  }

  info() {
    return {
      ready: document.body.dataset.ready === "1",
      readyAt: this.readyAt ?? null,
      state: { ...this.state },
      panels: this._allPanels().map((p) => p.info()),
      queries: this.queries.slice(),
      alerts: this.alerts.length,
      alertsAvailable: this.alertsAvailable,
      marks: { ...(this.marks || {}) },
    };
  }
}

/** Mount a compare view and expose it to tests and the benchmark as window.__losswatch. */
export function mountCompare(root, options) {
  const compare = new Compare(root, options);
  window.__losswatch = {
    compare,
    ready: compare.ready,
    info: () => compare.info(),
    zoom: (start, end) => compare.zoomSteps(start, end).then(() => compare.info()),
    resetZoom: () => compare.resetZoom().then(() => compare.info()),
    png: (i = 0) => compare._allPanels()[i].toCanvas().toDataURL("image/png"),
  };
  window.__losswatchReady = compare.ready;
  compare.start().catch((err) => console.error("losswatch compare:", err));
  return compare;
}
