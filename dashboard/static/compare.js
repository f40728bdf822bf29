// The compare view: one panel per series key, one line per run (or per group of runs), all from one
// /api/v1/query call.
//
// Split by concern: compare-state.js (the view state and its URL), compare-data.js (API calls and pure
// transformations), chart.js (one uPlot panel), compare-view.js (chips, pickers, alerts, sweep section);
// this module owns the flow between them. The panels ask for about as many buckets as they are wide in
// pixels, never for raw points; a zoom asks the server for the visible step range again (finer buckets);
// running runs are polled every second. A view change (smoothing, log scale, hidden runs, y range)
// never refetches and never rebuilds the x-aligned data; only a data, x-mode or colour change does.

import { el, clear, api, apiUrl, fetchAlerts, setStatus, runLabel, projectUrl, KIND_ORDER, KIND_TITLES } from "./lib.js";
import { Panel } from "./chart.js";
import { PALETTE, assignColors } from "./palette.js";
import { readState, stateQuery, X_MODES, AGGREGATES } from "./compare-state.js";
import { fetchRuns, startQuery, takePrefetched, fetchQuery, stackPlan, fieldValue, valueLabel, compareValues, groupFields } from "./compare-data.js";
import { valueSlots, runColors, panelLine, groupLine, stepToX, singleXRange } from "./compare-lines.js";
import { renderChips, renderKeysPicker, renderExport, renderAddRuns, renderAlerts, renderSweep, renderYLimit } from "./compare-view.js";

export { readState, stateQuery } from "./compare-state.js";
export { stackPlan } from "./compare-data.js";
export { singleXRange } from "./compare-lines.js";

const LIVE_INTERVAL_MS = 1000;
// A zoom's finer data slower than this: the panels in view narrow first with the data they hold.
const NARROW_AFTER_MS = 150;

function kindRank(kind) {
  const i = KIND_ORDER.indexOf(kind);
  return i < 0 ? KIND_ORDER.length : i;
}

export class Compare {
  constructor(root, { project = null, fixedRuns = null, urlState = true } = {}) {
    this.root = root;
    this.project = project;
    this.fixedRuns = fixedRuns;
    this.urlState = urlState;
    this.state = readState(urlState ? location.search : "", fixedRuns);
    this.runs = new Map(); // id -> run JSON
    this.foreign = []; // runs of another project named in the URL: [{id, project}]
    this.series = new Map(); // run + "\u0000" + key -> decoded series
    this.origins = new Map(); // run -> origin of relative time (seconds)
    this.panels = [];
    this.stackPanel = null;
    this.alerts = [];
    this.alertsAvailable = true;
    this.alertsExpanded = false;
    this.chipsExpanded = false;
    this.sweepChoice = {};
    this.queries = [];
    this.timings = [];
    this.inflight = null;
    this.tick = 0;
    this.highlighted = null;
    let resolveReady;
    this.ready = new Promise((r) => { resolveReady = r; });
    this._resolveReady = resolveReady;
    this._build();
  }

  _build() {
    clear(this.root);
    this.runBar = el("div", { class: "run-chips", id: "run-chips" });
    this.notice = el("p", { class: "notice", id: "compare-notice", role: "note", hidden: true });
    this.smoothInput = el("input", { type: "range", min: "0", max: "0.99", step: "0.01", id: "smoothing",
      value: String(this.state.smooth), "aria-label": "smoothing" });
    this.smoothText = el("output", { class: "mono", id: "smoothing-value", text: this.state.smooth.toFixed(2) });
    this.logInput = el("input", { type: "checkbox", id: "log-scale" });
    this.logInput.checked = this.state.log;
    this.bandsInput = el("input", { type: "checkbox", id: "bands" });
    this.bandsInput.checked = this.state.bands;
    this.stackInput = el("input", { type: "checkbox", id: "stacked" });
    this.stackInput.checked = this.state.stack;
    this.outliersInput = el("input", { type: "checkbox", id: "ignore-outliers" });
    this.outliersInput.checked = this.state.outliers;
    this.xSelect = el("select", { id: "x-axis" }, ...X_MODES.map((m) => el("option", { value: m, text: m === "wall" ? "wall time" : m === "relative" ? "relative time" : "step" })));
    this.xSelect.value = this.state.x;
    this.groupSelect = el("select", { id: "group-by", "aria-label": "group runs by" });
    this.aggSelect = el("select", { id: "group-agg", "aria-label": "group line" }, ...AGGREGATES.map((a) => el("option", { value: a, text: a })));
    this.aggSelect.value = this.state.agg;
    this.colorSelect = el("select", { id: "color-by", "aria-label": "colour runs by" });
    this.resetButton = el("button", { type: "button", id: "reset-zoom", text: "reset zoom", onclick: () => this.resetZoom() });
    this.liveBadge = el("span", { class: "badge live", id: "live", text: "live", hidden: true, title: "running runs update every second" });
    this.keysBox = el("details", { class: "picker", id: "keys-picker" });
    this.exportBox = el("details", { class: "picker", id: "export" });
    this.addBox = el("details", { class: "picker", id: "add-runs" });
    this.sweepBox = el("details", { class: "sweep", id: "sweep" });
    this.statusLine = el("p", { class: "status", role: "status", text: "Loading…" });
    this.alertBar = el("ul", { class: "alerts compact", id: "alert-list" });
    this.panelBox = el("div", { class: "panels", id: "panels" });

    const label = (text, input) => el("label", { class: "control" }, text, " ", input);
    this.controls = el("div", { class: "controls" },
      el("label", { class: "control" }, "smoothing ", this.smoothInput, " ", this.smoothText),
      label("log scale", this.logInput), label("ignore outliers", this.outliersInput), label("x axis", this.xSelect),
      label("min/max bands", this.bandsInput), label("stacked contributions", this.stackInput),
      label("group by", this.groupSelect), this.aggSelect, label("colour by", this.colorSelect),
      this.resetButton, this.liveBadge, el("span", { class: "spacer" }), this.keysBox, this.exportBox);
    this.root.append(this.runBar, this.notice, this.controls, this.statusLine, this.alertBar, this.sweepBox, this.panelBox);

    this.smoothInput.addEventListener("input", () => {
      this.state.smooth = Number(this.smoothInput.value);
      this.smoothText.textContent = this.state.smooth.toFixed(2);
      this._scheduleView();
    });
    this.logInput.addEventListener("change", () => { this.state.log = this.logInput.checked; this._scheduleView(); });
    this.bandsInput.addEventListener("change", () => { this.state.bands = this.bandsInput.checked; this._scheduleView(); });
    this.outliersInput.addEventListener("change", () => { this.state.outliers = this.outliersInput.checked; this._scheduleView(); });
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
    this.groupSelect.addEventListener("change", () => { this.state.groupby = this.groupSelect.value || null; this._changed(); });
    this.aggSelect.addEventListener("change", () => { this.state.agg = this.aggSelect.value; this._changed(); });
    this.colorSelect.addEventListener("change", () => { this.state.colorby = this.colorSelect.value || null; this._changed(); });
    this.sweepBox.addEventListener("toggle", () => { if (this.sweepBox.open && !this.sweepBox.querySelector("#scatter, p")) this._renderSweep(); });
    window.addEventListener("resize", () => { for (const p of this._allPanels()) p.resize(); this._renderChips(); });
  }

  _allPanels() {
    return this.stackPanel ? [...this.panels, this.stackPanel] : this.panels;
  }

  _writeUrl() {
    if (!this.urlState) return;
    const q = stateQuery(this.state, !!this.fixedRuns);
    history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
  }

  /** A view-only change (smoothing, log, bands, outliers): redraw at the next frame, no refetch. */
  _scheduleView() {
    if (this._viewPending) return;
    this._viewPending = true;
    requestAnimationFrame(() => { this._viewPending = false; this._writeUrl(); this._applyView(); });
  }

  /** A change of colours, groups or hidden runs: new lines for the panels, no refetch. */
  _changed() {
    this._writeUrl();
    this._renderChips();
    this._renderSweep();
    this._distribute();
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
      const pre = this._takePrefetched();
      if (pre) this.marks.early = pre.sent;
      const early = pre ? pre.query : this._earlyQuery();
      let alertsPromise = this.project ? this._fetchAlerts() : null;
      const answers = await (pre ? pre.runs : fetchRuns(this.state.runs));
      this.marks.runs = performance.now();
      const missing = this._accept(answers);
      if (!this.runs.size) {
        setStatus(this.statusLine, missing.length ? `None of the runs could be loaded (${missing.join(", ")}).`
          : "None of the runs belong to this project.", "error");
        this._resolveReady(this.info());
        return;
      }
      if (!this.project) this.project = [...this.runs.values()][0].project;
      if (!alertsPromise && this.project) alertsPromise = this._fetchAlerts();
      this.missing = missing;
      this._renderSelectors();
      this._renderChips();
      this._renderKeysPicker();
      this._renderSweep();
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
      this.panelsDrawnAtReady = this._allPanels().filter((p) => p.u).length;
      // Not drawing the panels far off screen now: they draw when they come near the viewport.
      this._resolveReady(this.info({ flush: false }));
      this._startLive();
    } catch (err) {
      setStatus(this.statusLine, "Could not load the comparison: " + err.message, "error");
      this._resolveReady(this.info());
      throw err;
    }
  }

  /** Keep the runs of this project; a run of another project named in the URL is refused with a notice. */
  _accept(answers) {
    const missing = [];
    for (const a of answers) {
      if (a.__error) missing.push(a.id);
      else if (this.project && this.fixedRuns === null && a.project !== this.project) this.foreign.push({ id: a.id, project: a.project });
      else this.runs.set(a.id, a);
    }
    if (this.foreign.length) {
      const foreign = new Set(this.foreign.map((f) => f.id));
      this.state.runs = this.state.runs.filter((id) => !foreign.has(id));
      this._writeUrl();
    }
    this._renderNotice();
    return missing;
  }

  _renderNotice() {
    clear(this.notice);
    this.notice.hidden = !this.foreign.length;
    if (!this.foreign.length) return;
    this.notice.append(`Not shown: ${this.foreign.length === 1 ? "this run belongs" : "these runs belong"} to another project, not to ${this.project}: `);
    this.foreign.forEach((f, i) => {
      if (i) this.notice.append(", ");
      this.notice.append(el("span", { class: "mono", text: f.id }), " (project ",
        el("a", { href: projectUrl(f.project), text: f.project }), ")");
    });
  }

  _fetchAlerts() {
    return fetchAlerts(this.project).catch(() => ({ available: false, alerts: [] }));
  }

  /** The first query, sent before the panels exist: all keys (or the URL's), buckets from the layout. */
  _earlyQuery() {
    return startQuery(this.state, this.panelBox.clientWidth || this.root.clientWidth || 1000);
  }

  /** What compare-early.js sent for this URL while the page loaded ({sent, query, runs}), or null. */
  _takePrefetched() {
    const pre = takePrefetched();
    return pre && this.urlState && !this.fixedRuns ? pre : null;
  }

  // ------------------------------------------------------------------------------------------
  // Colours, hiding, highlighting, groups

  runColors() {
    return runColors(this.runs, this.state);
  }

  hidden() {
    return new Set(this.state.hide.filter((id) => this.runs.has(id)));
  }

  toggleRun(id) {
    if (id && id.startsWith("group:")) {
      this.hiddenGroups = this.hiddenGroups || new Set();
      if (this.hiddenGroups.has(id)) this.hiddenGroups.delete(id); else this.hiddenGroups.add(id);
      this._applyView();
      return;
    }
    if (!this.runs.has(id)) return;
    const hide = new Set(this.state.hide);
    if (hide.has(id)) hide.delete(id); else hide.add(id);
    this.state.hide = [...hide];
    this._writeUrl();
    this._renderChips();
    if (this.state.groupby) this._distribute(); else this._applyView();
  }

  highlight(id) {
    if (id === this.highlighted) return;
    this.highlighted = id;
    for (const p of this.panels) p.highlight(id);
    for (const chip of this.runBar.querySelectorAll(".chip")) chip.classList.toggle("hot", chip.dataset.run === id);
  }

  setColor(id, hex) {
    this.state.colors = { ...this.state.colors, [id]: hex.replace("#", "").toLowerCase() };
    this._changed();
  }

  /** Groups of the visible runs by the group field: [{id, label, members}], sorted by value. */
  groups() {
    if (!this.state.groupby) return null;
    const hidden = this.hidden();
    const by = new Map();
    for (const [id, run] of this.runs) {
      if (hidden.has(id)) continue;
      const v = fieldValue(run, this.state.groupby);
      const k = valueLabel(v);
      if (!by.has(k)) by.set(k, { value: v, members: [] });
      by.get(k).members.push(id);
    }
    return [...by.entries()].sort((a, b) => compareValues(a[1].value, b[1].value))
      .map(([k, g]) => ({ id: "group:" + k, value: k, label: `${this.state.groupby.replace(/^config\./, "")}=${k} (${g.members.length})`, members: g.members }));
  }

  // ------------------------------------------------------------------------------------------
  // Page furniture

  _renderSelectors() {
    const fields = groupFields([...this.runs.values()]);
    for (const [select, value, none] of [[this.groupSelect, this.state.groupby, "no grouping"], [this.colorSelect, this.state.colorby, "run"]]) {
      clear(select);
      select.append(el("option", { value: "", text: none }), ...fields.map((f) => el("option", { value: f, text: f.replace(/^config\./, "") })));
      select.value = value && fields.includes(value) ? value : "";
    }
    this.aggSelect.hidden = !this.state.groupby;
    // One run (the run page): nothing to group or tell apart.
    const few = this.runs.size < 2;
    this.groupSelect.parentElement.hidden = few;
    this.colorSelect.parentElement.hidden = few;
  }

  _renderChips() {
    if (!this.runs.size) return;
    const extra = [];
    if (this.missing && this.missing.length) extra.push(el("span", { class: "error", text: `not found: ${this.missing.join(", ")}` }));
    if (this.project && !this.fixedRuns) {
      renderAddRuns(this.addBox, this.project, () => new Set(this.runs.keys()), (id) => this.addRuns([id]));
      extra.push(this.addBox);
    }
    renderChips(this.runBar, {
      runs: this.runs, colors: this.runColors(), hidden: this.hidden(), removable: !this.fixedRuns && this.runs.size > 1,
      collapsed: !this.chipsExpanded, extra,
      onToggle: (id) => this.toggleRun(id), onRemove: (id) => this.removeRun(id), onColor: (id, c) => this.setColor(id, c),
      onHighlight: (id) => this.highlight(id),
      onExpand: () => { this.chipsExpanded = !this.chipsExpanded; this._renderChips(); },
    });
    this.aggSelect.hidden = !this.state.groupby;
  }

  _renderKeysPicker() {
    const all = this.allKeys();
    renderKeysPicker(this.keysBox, all, new Set(this.viewKeys().map(([k]) => k)), (chosen) => {
      this.state.keys = chosen;
      this._writeUrl();
      this._renderKeysPicker();
      this._rebuildPanels();
      this.refresh();
    });
  }

  _renderAlerts() {
    if (!this.alertsAvailable) { clear(this.alertBar); return; }
    renderAlerts(this.alertBar, this.alerts, this.runs, {
      expanded: this.alertsExpanded,
      onExpand: () => { this.alertsExpanded = true; this._renderAlerts(); },
      onZoom: (a) => {
        const s = Number(a.onset_step);
        const span = Math.max(50, Math.round((this._extentSteps() || 1000) * 0.05));
        this.zoomSteps(Math.max(0, s - span), s + span);
      },
    });
  }

  _renderSweep() {
    const open = this.sweepBox.open;
    if (this.runs.size < 2) { this.sweepBox.hidden = true; return; }
    this.sweepBox.hidden = false;
    renderSweep(this.sweepBox, this.runs, this.runColors(), this.sweepChoice, (choice) => {
      this.sweepChoice = choice;
      this._renderSweep();
    }, open);
    this.sweepBox.open = open;
  }

  async addRuns(ids) {
    const fresh = ids.filter((id) => !this.runs.has(id));
    if (!fresh.length) return;
    const answers = await fetchRuns(fresh);
    const before = this.runs.size;
    for (const a of answers) {
      if (a.__error || (this.project && a.project !== this.project)) continue;
      this.runs.set(a.id, a);
      if (!this.state.runs.includes(a.id)) this.state.runs.push(a.id);
    }
    if (this.runs.size === before) return;
    this._writeUrl();
    this._renderSelectors();
    this._renderChips();
    this._renderKeysPicker();
    this._renderSweep();
    this._rebuildPanels();
    await this.refresh();
  }

  removeRun(id) {
    // The runs after it keep their colours: pin their palette slots in the URL.
    const { slots } = assignColors([...this.runs.keys()], this.state.colors);
    const after = [...this.runs.keys()].slice([...this.runs.keys()].indexOf(id) + 1);
    const colors = { ...this.state.colors };
    delete colors[id];
    for (const other of after) if (colors[other] === undefined) colors[other] = String(slots.get(other));
    this.state.colors = colors;
    this.state.runs = this.state.runs.filter((r) => r !== id);
    this.state.hide = this.state.hide.filter((r) => r !== id);
    this.runs.delete(id);
    for (const k of [...this.series.keys()]) if (k.startsWith(id + "\u0000")) this.series.delete(k);
    if (this.state.stackrun === id) this.state.stackrun = null;
    this._writeUrl();
    this._renderSelectors();
    this._renderChips();
    this._renderSweep();
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

  _stackRun() {
    const ids = [...this.runs.keys()];
    if (this.state.stackrun && this.runs.has(this.state.stackrun)) return this.state.stackrun;
    return ids.find((id) => stackPlan(this.runs.get(id))) || null;
  }

  _ylimTool(panel) {
    renderYLimit(panel.toolbar, this.state.ylim[panel.key] || [null, null], (lim) => {
      const ylim = { ...this.state.ylim };
      if (lim) ylim[panel.key] = lim; else delete ylim[panel.key];
      this.state.ylim = ylim;
      this._writeUrl();
      this._applyView();
    });
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
      onToggle: (id) => this.toggleRun(id),
      onHighlight: (id) => this.highlight(id),
      lines: this.state.groupby ? 0 : this.runs.size,
    };
    const keys = this.viewKeys();
    keys.sort((a, b) => kindRank(a[1]) - kindRank(b[1]));
    for (const [key, kind] of keys) {
      const sectionKind = KIND_ORDER.includes(kind) ? kind : "other";
      const panel = new Panel(section(sectionKind), { ...common, key, kind, title: key });
      this._ylimTool(panel);
      this.panels.push(panel);
    }
    const stackRun = this.state.stack ? this._stackRun() : null;
    if (stackRun) {
      const plan = stackPlan(this.runs.get(stackRun));
      const grid = section("loss");
      this.stackPanel = new Panel(grid, { ...common, key: "stacked:" + stackRun, kind: "loss_component", stacked: true,
        title: `stacked contributions · ${runLabel(this.runs.get(stackRun))}`, pngName: "stacked-" + stackRun, plan, run: stackRun,
        lines: plan.comps.length + (plan.total ? 1 : 0) });
      const candidates = [...this.runs.keys()].filter((id) => stackPlan(this.runs.get(id)));
      if (candidates.length > 1) {
        const pick = el("select", { class: "small stack-run", title: runLabel(this.runs.get(stackRun)), "aria-label": "run whose contributions are stacked" },
          ...candidates.map((id) => el("option", { value: id, text: runLabel(this.runs.get(id)), title: runLabel(this.runs.get(id)) })));
        pick.value = stackRun;
        pick.addEventListener("change", () => { this.state.stackrun = pick.value; this._writeUrl(); this._rebuildPanels(); this.refresh(); });
        this.stackPanel.toolbar.prepend(pick);
      }
    }
    renderExport(this.exportBox, this.runs, this.viewKeys().map(([k]) => k));
    // Every panel's width and place from one layout now, not one forced layout per panel while they are
    // drawn; panels far below the viewport wait until they come near it (their observer then draws them).
    for (const p of this._allPanels()) p.width();
    if (typeof IntersectionObserver === "function") for (const p of this._allPanels()) p.measureOnscreen();
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

  /**
   * Fetch the panels' buckets, then redraw. The keys of panels in or near the viewport come first, in one
   * call, and are drawn as soon as they arrive; the keys of panels far outside it follow in a second call
   * (those panels draw when they come near the viewport anyway). `settled()` waits for both.
   */
  async refresh({ live = false, early = null } = {}) {
    const keys = this._queryKeys();
    if (!keys.length || !this.runs.size) { this._distribute(); return; }
    if (this.inflight) this.inflight.abort();
    const ctrl = new AbortController();
    this.inflight = ctrl;
    const { far, stackOnly } = early ? { far: new Set(), stackOnly: new Set() } : this._farKeys(keys);
    const near = keys.filter((k) => !far.has(k) && !stackOnly.has(k));
    const later = [...far, ...stackOnly];
    let rest = null;
    try {
      // In view first: the keys of the panels there for every run, and (in parallel) the components that
      // only the stacked panel there shows, for its one run.
      const first = [this._fetchKeys(near.length ? near : keys, ctrl, { live, early })];
      if (near.length && stackOnly.size) first.push(this._fetchKeys([...stackOnly], ctrl, { live, runs: [this.stackPanel.opts.run] }));
      if (!(await Promise.all(first)).every(Boolean)) return;
      this._distribute();
      if (near.length && later.length) {
        const farPanels = this._allPanels().filter((p) => p.onscreen === false);
        rest = this._fetchKeys(later, ctrl, { live }).then((ok) => { if (ok) this._distribute(farPanels); }).finally(() => { if (this.inflight === ctrl) this.inflight = null; });
        this.backfill = rest;
      }
    } finally {
      if (!rest && this.inflight === ctrl) this.inflight = null;
    }
  }

  /** Resolves once the data of every panel has arrived (the far panels' call included). */
  async settled() {
    while (this.backfill) {
      const b = this.backfill;
      await b;
      if (this.backfill === b) this.backfill = null;
    }
  }

  /**
   * Keys fetched after the others: {far: those only panels far outside the viewport show, stackOnly:
   * those that, in view, only the stacked panel shows (its components, needed there for one run)}.
   */
  _farKeys(keys) {
    const near = new Set(), stacked = new Set();
    for (const p of this._allPanels()) {
      if (p.onscreen === false) continue;
      if (p.opts.stacked) { for (const k of p.opts.plan.comps) stacked.add(k); if (p.opts.plan.total) stacked.add(p.opts.plan.total); }
      else near.add(p.key);
    }
    const stackOnly = new Set(keys.filter((k) => stacked.has(k) && !near.has(k)));
    return { far: new Set(keys.filter((k) => !near.has(k) && !stackOnly.has(k))), stackOnly };
  }

  /** One /query call for `keys` (of every run, or of `runs`); its series replace those keys' series of
   * those runs. False when aborted or failed. */
  async _fetchKeys(keys, ctrl, { live = false, early = null, runs = null } = {}) {
    let params = { run: runs || [...this.runs.keys()], key: keys, buckets: this.buckets() };
    if (this.zoomed()) { params.start = this.state.start; params.end = this.state.end; }
    // The early query covers what is needed unless it named keys and the stack panel needs more,
    // or it named a run that was refused (another project's).
    const covered = early && !runs && !this.foreign.length && (!early.params.key || keys.every((k) => early.params.key.includes(k)));
    let t0 = performance.now();
    let body, earlyMs = null;
    try {
      if (covered) {
        params = early.params;
        ({ body, ms: earlyMs } = await early.promise);
      } else {
        body = await fetchQuery(params, { signal: ctrl.signal });
      }
    } catch (err) {
      if (err.name === "AbortError") return false;
      if (!live) setStatus(this.statusLine, "Could not load the series: " + err.message, "error");
      return false;
    }
    if (ctrl.signal.aborted) return false;
    if (earlyMs !== null) t0 = performance.now() - earlyMs;
    const ms = performance.now() - t0;
    this.queries.push({ url: apiUrl("/query", params), ms, live, start: params.start ?? null, end: params.end ?? null,
      buckets: params.buckets, keys: params.key ? params.key.length : null, at: performance.now() });
    if (this.queries.length > 200) this.queries.splice(0, 100);
    if (covered && !early.params.key) this.series.clear();
    else {
      const fetched = new Set(keys), of = new Set(params.run);
      for (const [k, s] of this.series) if (fetched.has(s.key) && of.has(s.run)) this.series.delete(k);
    }
    for (const d of body.series || []) { // decoded by fetchQuery
      if (!this.runs.has(d.run)) continue;
      this.series.set(d.run + "\u0000" + d.key, d);
      if (!this.zoomed() && d.wall.length && Number.isFinite(d.wall[0])) {
        const known = this._runStart(d.run);
        if (known === null || d.wall[0] < known) this.origins.set(d.run, d.wall[0]);
      }
    }
    setStatus(this.statusLine, "");
    return true;
  }

  /** Origin of relative time: the run's start, or its first point when that is earlier (backfilled data). */
  _runStart(id) {
    if (this.origins.has(id)) return this.origins.get(id);
    const run = this.runs.get(id);
    const t = Date.parse(run.started_at || run.created_at);
    return Number.isNaN(t) ? null : t / 1000;
  }

  /** Per-run panel data for one key in the current x mode. */
  _panelRun(id, s, color) {
    const origin = this.state.x === "relative" ? (this._runStart(id) ?? (s.wall.length ? s.wall[0] : 0)) : 0;
    return panelLine(s, { id, label: runLabel(this.runs.get(id)), color, xMode: this.state.x, origin });
  }

  /** The x of a step for one run (nearest bucket), in the current x mode. */
  _stepToX(id, step, key) {
    const s = this.series.get(id + "\u0000" + key) || [...this.series.values()].find((v) => v.run === id);
    const origin = this.state.x === "relative" && s ? (this._runStart(id) ?? s.wall[0]) : 0;
    return stepToX(s, step, this.state.x, origin);
  }

  _alertMarkers(key) {
    return this.alerts.filter((a) => a.series === key && this.runs.has(a.run) && a.onset_step !== null && a.onset_step !== undefined)
      .map((a) => ({
        x: this._stepToX(a.run, a.onset_step, key), severity: a.severity,
        color: /crit|error|high/i.test(String(a.severity)) ? "#c40000" : "#e07b00",
        text: `${runLabel(this.runs.get(a.run))} · ${a.rule} (${a.severity}, ${a.status}) at step ${a.onset_step}: ${a.message}`,
      }));
  }

  _view() {
    const view = { smoothing: this.state.smooth, log: this.state.log, bands: this.state.bands, xMode: this.state.x,
      outliers: this.state.outliers, hidden: this.state.groupby ? (this.hiddenGroups || new Set()) : this.hidden() };
    return view;
  }

  /** Hand the fetched series to the panels (all, or `only` these) as lines (no network). */
  _distribute(only = null) {
    const t0 = performance.now();
    const colors = this.runColors();
    const groups = this.groups();
    const groupSlots = groups ? valueSlots(this.runs, this.state.groupby) : null;
    const perPanel = [];
    let lo = Infinity, hi = -Infinity;
    for (const p of this.panels) {
      let lines = [];
      for (const id of this.runs.keys()) {
        const s = this.series.get(id + "\u0000" + p.key);
        if (s) lines.push(this._panelRun(id, s, colors.get(id)));
      }
      if (groups) {
        const byId = new Map(lines.map((r) => [r.id, r]));
        lines = groups.map((g) => groupLine(g, g.members.map((id) => byId.get(id)).filter(Boolean), this.state.agg,
          PALETTE[groupSlots.get(g.value) % PALETTE.length])).filter((g) => g.xs.length);
      }
      for (const r of lines) if (r.xs.length) { lo = Math.min(lo, r.xs[0]); hi = Math.max(hi, r.xs[r.xs.length - 1]); }
      perPanel.push([p, lines]);
    }
    if (this.stackPanel) {
      const plan = this.stackPanel.opts.plan;
      const id = this.stackPanel.opts.run;
      const comps = [];
      plan.comps.forEach((k, i) => {
        const s = this.series.get(id + "\u0000" + k);
        if (s) comps.push({ ...this._panelRun(id, s, PALETTE[i % PALETTE.length]), id: k, label: k });
      });
      if (plan.total) {
        const s = this.series.get(id + "\u0000" + plan.total);
        if (s) comps.push({ ...this._panelRun(id, s, "#111111"), id: plan.total, label: plan.total + " (total)", isTotal: true });
      }
      perPanel.push([this.stackPanel, comps]);
    }
    // Every panel shares one x range, so evaluation metrics line up with the loss step for step.
    let xRange = lo <= hi ? [lo, hi] : null;
    if (this.zoomed() && this.state.x === "step") xRange = [this.state.start, this.state.end];
    else if (this._pendingXRange) xRange = this._pendingXRange;
    if (xRange && xRange[0] === xRange[1]) xRange = singleXRange(xRange[0], this.state.x);
    this.xRange = xRange;
    const view = this._view();
    for (const [p, lines] of perPanel) {
      if (only && !only.includes(p)) continue;
      p.setView({ ...view, xRange, ylim: this.state.ylim[p.key] || null });
      p.setData(lines, p.opts.stacked || groups ? [] : this._alertMarkers(p.key));
      if (this.highlighted) p.highlight(this.highlighted);
    }
    this._pendingXRange = null;
    this._updateLiveBadge();
    this._time("distribute", t0);
  }

  /** Apply a view-only change to every panel: no refetch, no new lines. */
  _applyView() {
    const t0 = performance.now();
    const view = this._view();
    for (const p of this._allPanels()) {
      p.setView({ ...view, ylim: this.state.ylim[p.key] || null });
      p.render();
    }
    this._time("view", t0);
  }

  _time(what, t0) {
    this.timings.push({ what, ms: performance.now() - t0 });
    if (this.timings.length > 100) this.timings.splice(0, 50);
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
    // Panels far from the viewport narrow when they come near it. Those in view narrow with the data they
    // hold only when the finer data is slow to come: an answer within NARROW_AFTER_MS draws them once, not
    // twice (a redraw of every line that is thrown away at once).
    let narrow = null;
    if (range) {
      for (const p of this._allPanels()) {
        if (!p.u) continue;
        p.view.xRange = range;
        if (p.onscreen === false) p.dirty = true;
      }
      narrow = setTimeout(() => {
        for (const p of this._allPanels()) {
          if (p.u && p.onscreen !== false && p.view.xRange === range) p.u.setScale("x", { min: range[0], max: range[1] });
        }
      }, NARROW_AFTER_MS);
    }
    this._pendingXRange = xRange;
    return this.refresh().finally(() => clearTimeout(narrow));
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
      if (changed) this._renderChips();
      const known = new Set(this.allKeys().map(([k]) => k));
      if (!this.state.keys.length && known.size !== this.panels.length) { this._renderKeysPicker(); this._rebuildPanels(); }
    }
    await this.refresh({ live: true });
  }

  /** The view's state for tests and the benchmark; `flush: false` leaves panels far off screen undrawn. */
  info({ flush = true } = {}) {
    const colors = this.runs.size ? Object.fromEntries(this.runColors()) : {};
    const more = this.runBar.querySelector("#chips-more");
    return {
      ready: document.body.dataset.ready === "1",
      readyAt: this.readyAt ?? null,
      panelsDrawnAtReady: this.panelsDrawnAtReady ?? null,
      state: { ...this.state },
      runs: [...this.runs.keys()],
      colors,
      foreign: this.foreign.slice(),
      groups: (this.groups() || []).map((g) => ({ id: g.id, label: g.label, members: g.members })),
      chipsHidden: more && !more.hidden ? Number(more.dataset.count || 0) : 0,
      panels: this._allPanels().map((p) => p.info({ flush })),
      queries: this.queries.slice(),
      timings: this.timings.slice(),
      alerts: this.alerts.length,
      alertsAvailable: this.alertsAvailable,
      marks: { ...(this.marks || {}) },
    };
  }
}

/** Mount a compare view and expose it to tests and the benchmark as window.__losswatch. */
export function mountCompare(root, options) {
  const compare = new Compare(root, options);
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  window.__losswatch = {
    compare,
    ready: compare.ready,
    info: () => compare.info(),
    /** Zoom; resolves once every panel has its data (the panels in view are redrawn before that). */
    zoom: (start, end) => compare.zoomSteps(start, end).then(() => compare.settled()).then(() => compare.info()),

    resetZoom: () => compare.resetZoom().then(() => compare.settled()).then(() => compare.info()),
    png: (i = 0) => compare._allPanels()[i].toCanvas().toDataURL("image/png"),
    /** Set a control as a user would (input/change event) and resolve after the next frame's redraw. */
    control: async (id, value) => {
      const input = document.getElementById(id);
      if (input.type === "checkbox") input.checked = !!value; else input.value = String(value);
      input.dispatchEvent(new Event(input.type === "range" ? "input" : "change"));
      await frame();
      await frame();
      return compare.info();
    },
  };
  window.__losswatchReady = compare.ready;
  compare.start().catch((err) => console.error("losswatch compare:", err));
  return compare;
}
