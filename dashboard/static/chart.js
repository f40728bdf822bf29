// One chart panel on top of uPlot (global `uPlot`, served from /static/vendor).
//
// A panel shows one series key for several runs (or groups of runs). Each line brings its downsampled
// buckets (x, last, min, max, nonfinite); the panel draws
//   - the bucket's last value as the line (raw line faint behind when smoothing),
//   - the min..max band of each bucket (so a one-step spike stays visible at any zoom),
//   - a red tick at the top for every bucket holding NaN/Inf,
//   - dashed alert markers at their onset, with the message on hover,
//   - points where a line is sparse (evaluations, a one-point series),
// and a readout of every line's value under the cursor, sorted by that value. Zoom (drag) and reset
// (double-click) are reported to the owner, which fetches finer buckets from the server; so are a click
// on a readout row (hide/show) and hovering a line or a row (highlight in every panel).
//
// Cost: the x-aligned raw columns are built once per setData(); a view change (smoothing, log scale,
// y range, hidden lines) only recomputes what it changes and calls uPlot's setData, never a rebuild.

import { el, clear, fmtNum, fmtAxis, fmtDuration } from "./lib.js";
import { smoothEMA, nearestIndex, quantile, logSplits, linearSplits, fin, toLog, LOG_MIN, LOG_MAX } from "./chart-math.js";
import { drawBandLayer, drawMarkers } from "./chart-layers.js";

export { smoothEMA, nearestIndex, quantile, logSplits, linearSplits } from "./chart-math.js";

let panelCounter = 0;
// A panel this close to the viewport (css px) counts as on screen: drawn, not deferred.
const NEAR_PX = 200;
// A readout row's height and the readout's maximum height (.readout-row and .readout in app.css).
const READOUT_ROW_PX = 17, READOUT_MAX_PX = 140;
// More lines than this in a panel: drawn 1 css px wide (see _create).
const DENSE_LINES = 8;

export class Panel {
  /**
   * opts: {key, kind, title, syncKey, stacked, height, pngName,
   *        onZoom(xmin, xmax), onReset(), onToggle(id), onHighlight(id | null)}
   */
  constructor(container, opts) {
    this.opts = opts;
    this.id = ++panelCounter;
    this.key = opts.key;
    this.runs = []; // [{id, label, color, colorFaint, colorBand, colorFill, xs, last, min, max, nonfinite, steps, lastSteps}]
    this.alerts = []; // [{x, text, severity, color}]
    this.view = { smoothing: 0, log: false, bands: true, xMode: "step", xRange: null, hidden: new Set(),
      outliers: false, ylim: null };
    this.u = null;
    this.signature = "";
    this.drawnOnce = false;
    this.cache = null;
    this.logDropped = 0;
    this.highlighted = null;
    this.lastX = null;

    this.root = el("section", { class: "panel", dataset: { key: opts.key, kind: opts.kind || "" } });
    const title = el("h3", { class: "panel-title", title: opts.key, text: opts.title || opts.key });
    this.toolbar = el("div", { class: "panel-tools" });
    this.pngButton = el("button", { type: "button", class: "small", title: "download this panel as PNG",
      text: "PNG", onclick: () => this.downloadPNG() });
    this.toolbar.append(this.pngButton);
    this.header = el("div", { class: "panel-head" }, title, el("span", { class: "kind", text: opts.kind || "" }),
      el("span", { class: "spacer" }), this.toolbar);
    this.plotBox = el("div", { class: "plot" });
    this.note = el("p", { class: "panel-note muted small", hidden: true });
    this.readout = el("div", { class: "readout" });
    this.tooltip = el("div", { class: "marker-tip", hidden: true, role: "tooltip" });
    this.empty = el("p", { class: "muted empty", text: "no data yet", hidden: true });
    // Until the lines arrive, the readout keeps the room their rows will take (capped as .readout's
    // max-height is), so that the layout read before the first draw already places the panels below.
    if (opts.lines) this.readout.style.minHeight = Math.min(READOUT_MAX_PX, opts.lines * READOUT_ROW_PX) + "px";
    this.root.append(this.header, this.plotBox, this.empty, this.note, this.readout);
    container.append(this.root);
    this.readout.addEventListener("click", (e) => {
      const row = e.target.closest(".readout-row");
      if (row && this.opts.onToggle) this.opts.onToggle(row.dataset.id);
    });
    this.readout.addEventListener("mouseover", (e) => {
      const row = e.target.closest(".readout-row");
      if (row && this.opts.onHighlight) this.opts.onHighlight(row.dataset.id);
    });
    this.readout.addEventListener("mouseleave", () => this.opts.onHighlight && this.opts.onHighlight(null));
    // A panel far outside the viewport is redrawn when it comes near it, not on every view change.
    this.onscreen = null;
    this.dirty = false;
    if (typeof IntersectionObserver === "function") {
      this.observer = new IntersectionObserver((entries) => {
        for (const e of entries) this.onscreen = e.isIntersecting;
        if (this.onscreen && this.dirty) this.flush();
      }, { rootMargin: `${NEAR_PX}px 0px` });
      this.observer.observe(this.root);
    }
  }

  /**
   * Whether the panel is in or near the viewport (the observer's margin), read from the layout now. The
   * observer reports only after the next frame; without this, the first data would draw every panel,
   * far ones included. Call it after a layout has been forced (the owner reads every width first).
   */
  measureOnscreen() {
    const box = this.root.getBoundingClientRect();
    this.onscreen = box.bottom > -NEAR_PX && box.top < (window.innerHeight || 0) + NEAR_PX;
    return this.onscreen;
  }

  /** Draw what a deferred render() left; info() and the PNG call it, so they never see stale state. */
  flush() {
    if (!this.dirty) return;
    this.dirty = false;
    this.forced = true; // off screen too: info() and the PNG ask for the panel as it is now
    try {
      this.render();
      if (this.highlightWanted !== undefined) { const id = this.highlightWanted; this.highlightWanted = undefined; this.highlighted = undefined; this.highlight(id); }
    } finally {
      this.forced = false;
    }
  }

  /** Pixels available for the plot: what the owner asks the server for, in buckets. Read from the
   * layout once (and again on resize): reading it per line would force a layout per read. */
  width() {
    if (this._width) return this._width;
    const w = this.plotBox.clientWidth || this.root.clientWidth;
    if (w) this._width = Math.max(200, Math.floor(w)); // not while hidden (0): read again next time
    return this._width || 600;
  }

  setView(view) {
    this.view = { ...this.view, ...view };
  }

  /** Replace the data (new x-aligned columns), then draw. */
  setData(runs, alerts = []) {
    this.runs = runs;
    this.alerts = alerts;
    this.cache = null;
    this.dataVersion = (this.dataVersion || 0) + 1;
    this.render();
  }

  _isHidden(r) {
    return this.view.hidden.has(r.id);
  }

  _showPoints(r) {
    // Sparse lines (fewer than one point per 6 px, e.g. evaluations) and one-point lines get markers.
    return r.xs.length > 0 && r.xs.length * 6 <= this.width();
  }

  /** Draw with the current view: rebuild uPlot only when the series structure changed. */
  render() {
    if (this.onscreen === false && !this.forced) { this.dirty = true; return; }
    const withData = this.runs.filter((r) => r.xs.length);
    this.empty.hidden = withData.length > 0;
    const smoothing = this.view.smoothing > 0;
    const signature = JSON.stringify([this.runs.map((r) => [r.id, r.label, r.color, this._showPoints(r)]), smoothing,
      this.view.xMode, this.opts.stacked || false]);
    const data = this._data();
    if (!this.u || signature !== this.signature) {
      this.signature = signature;
      this._create(data);
    } else {
      this._applyHidden();
      this.u.setData(data, true);
    }
    this._updateNote();
    this.drawnOnce = this.drawnOnce || withData.length > 0;
    this._updateReadout(this.lastX);
  }

  /** x-aligned raw columns, kept until the data changes: {xs, cols, maps}. */
  _aligned() {
    if (this.cache) return this.cache;
    const tables = this.runs.map((r) => [r.xs, r.last.map((v) => (fin(v) ? v : null))]); // NaN/Inf: marked, not drawn
    let xs, cols;
    if (!tables.length) { xs = []; cols = []; } else if (tables.length === 1) { xs = tables[0][0]; cols = [tables[0][1]]; } else {
      const joined = uPlot.join(tables);
      xs = joined[0];
      cols = joined.slice(1);
    }
    // Where each run's points sit in xs, to place smoothed values without another join.
    const maps = this.runs.map((r) => {
      const m = new Int32Array(r.xs.length);
      let j = 0;
      for (let i = 0; i < r.xs.length; i++) { while (xs[j] < r.xs[i]) j++; m[i] = j; }
      return m;
    });
    this.cache = { xs, cols, maps, smooth: new Map() };
    return this.cache;
  }

  /**
   * [xs, run0 raw, (run0 smooth), run1 raw, ...] for uPlot. On a log scale the values go to uPlot as
   * log10(v), ≤ 0 left out, on a linear axis whose ticks are labelled 10^t: a toggle is new data, not a
   * new chart, and uPlot's own log axis (which loops on some ranges) is never used.
   */
  _data() {
    if (this.opts.stacked) return this._stackedData();
    const { xs, cols, maps, smooth } = this._aligned();
    const weight = this.view.smoothing, log = this.view.log;
    const data = [xs];
    let dropped = 0;
    this.runs.forEach((r, k) => {
      let raw = cols[k];
      if (log) {
        raw = raw.map(toLog);
        if (!this._isHidden(r)) for (const v of r.last) if (fin(v) && v <= 0) dropped++;
      }
      data.push(raw);
      if (weight > 0) {
        let s = smooth.get(r.id);
        if (!s || s.weight !== weight) {
          const ema = smoothEMA(r.last, weight);
          const col = new Array(xs.length).fill(undefined); // undefined: no point here (spanned); null: a gap
          const m = maps[k];
          for (let i = 0; i < ema.length; i++) col[m[i]] = fin(ema[i]) ? ema[i] : null;
          s = { weight, ema, col };
          smooth.set(r.id, s);
        }
        data.push(log ? s.col.map(toLog) : s.col);
      }
    });
    this.logDropped = dropped;
    return data;
  }

  /** Stacked contributions: [xs, cumulative top ... bottom, total]; gaps carry the last value. */
  _stackedData() {
    const smoothing = this.view.smoothing;
    const comps = this.runs.filter((r) => !r.isTotal);
    const total = this.runs.find((r) => r.isTotal);
    const prep = (r) => (smoothing > 0 ? smoothEMA(r.last, smoothing) : r.last);
    const tables = comps.map((r) => [r.xs, prep(r)]);
    if (total) tables.push([total.xs, prep(total)]);
    if (!tables.length) return [[]];
    const joined = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const xs = joined[0];
    const acc = new Array(xs.length).fill(0);
    const cumulative = [];
    comps.forEach((r, k) => {
      const col = joined[1 + k];
      let prev = null;
      for (let i = 0; i < xs.length; i++) {
        if (fin(col[i])) prev = col[i];
        acc[i] += prev === null ? 0 : prev;
      }
      cumulative.push(acc.slice());
    });
    const data = [xs, ...cumulative.reverse()];
    if (total) data.push(joined[1 + comps.length].map((v) => (fin(v) ? v : null)));
    this.logDropped = 0;
    return data;
  }

  _updateNote() {
    const bits = [];
    if (this.view.log && !this.opts.stacked) {
      if (this.logDropped) bits.push(`log scale: ${this.logDropped} point${this.logDropped === 1 ? "" : "s"} ≤ 0 left out`);
    }
    if (this.view.ylim) bits.push("y range set by hand");
    else if (this.view.outliers && !this.opts.stacked) bits.push("y range: 5th–95th percentile (outliers ignored)");
    this.note.textContent = bits.join(" · ");
    this.note.hidden = !bits.length;
  }

  _yRange(dataMin, dataMax) {
    const log = this.view.log && !this.opts.stacked;
    const lim = this.view.ylim;
    if (this.opts.stacked && !lim) {
      const lo = Math.min(0, dataMin ?? 0), hi = Math.max(dataMax ?? 1, lo + 1e-12);
      return [lo, hi + (hi - lo) * 0.05];
    }
    let lo = Infinity, hi = -Infinity;
    const xr = this.view.xRange;
    const ok = (v) => fin(v) && (!log || (v > LOG_MIN && v < LOG_MAX));
    if (this.view.outliers && !this.opts.stacked) {
      // TensorBoard's and W&B's "ignore outliers": the 5th..95th percentile of the lines in view.
      const vals = [];
      for (const r of this.runs) {
        if (this._isHidden(r)) continue;
        for (let i = 0; i < r.xs.length; i++) {
          if (xr && (r.xs[i] < xr[0] || r.xs[i] > xr[1])) continue;
          if (ok(r.last[i])) vals.push(r.last[i]);
        }
      }
      vals.sort((a, b) => a - b);
      if (vals.length) { lo = quantile(vals, 0.05); hi = quantile(vals, 0.95); }
    } else {
      // Include the bands (bucket min/max) so a spike is never clipped.
      for (const r of this.runs) {
        if (this._isHidden(r) && !this.opts.stacked) continue;
        for (let i = 0; i < r.xs.length; i++) {
          if (xr && (r.xs[i] < xr[0] || r.xs[i] > xr[1])) continue;
          for (const v of [r.min[i], r.max[i], r.last[i]]) {
            if (!ok(v)) continue;
            if (v < lo) lo = v;
            if (v > hi) hi = v;
          }
        }
      }
    }
    if (lo === Infinity && fin(dataMin) && fin(dataMax)) [lo, hi] = log ? [10 ** dataMin, 10 ** dataMax] : [dataMin, dataMax];
    if (lim) {
      if (lim[0] !== null && (!log || lim[0] > 0)) lo = lim[0];
      if (lim[1] !== null && (!log || lim[1] > 0)) hi = lim[1];
      if (fin(lo) && fin(hi) && hi > lo && lim[0] !== null && lim[1] !== null) return log ? [Math.log10(lo), Math.log10(hi)] : [lo, hi];
    }
    if (!fin(lo) || !fin(hi)) return log ? [-1, 1] : [0, 1];
    if (hi < lo) [lo, hi] = [hi, lo];
    if (log) {
      const l = Math.log10(lo), h = Math.log10(hi), pad = Math.max((h - l) * 0.05, 0.05);
      const a = lim && lim[0] !== null ? lo : Math.max(LOG_MIN, Math.pow(10, l - pad));
      const b = lim && lim[1] !== null ? hi : Math.min(LOG_MAX, Math.pow(10, h + pad));
      return b > a ? [Math.log10(a), Math.log10(b)] : [Math.log10(a), Math.log10(a) + 1];
    }
    if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; return [lo - d, hi + d]; }
    const pad = (hi - lo) * 0.05;
    return [lim && lim[0] !== null ? lo : lo - pad, lim && lim[1] !== null ? hi : hi + pad];
  }

  _create(data) {
    if (this.u) { this.u.destroy(); this.u = null; }
    clear(this.plotBox);
    const smoothing = this.view.smoothing > 0;
    const series = [{}];
    this.seriesRuns = [null]; // uPlot series index -> line id
    this.rawSeries = new Set(); // indices of the raw lines (hidden in uPlot while smoothing)
    if (this.opts.stacked) {
      const comps = this.runs.filter((r) => !r.isTotal);
      for (const r of comps.slice().reverse()) {
        series.push({ label: r.label, stroke: r.color, fill: r.colorFill, width: 1, spanGaps: true, points: { show: false } });
        this.seriesRuns.push(r.id);
      }
      const total = this.runs.find((r) => r.isTotal);
      if (total) {
        series.push({ label: total.label, stroke: "#111", width: 1.5, dash: [6, 3], spanGaps: true, points: { show: false } });
        this.seriesRuns.push(total.id);
      }
    }
    // NaN/Inf are bridged; on a log axis the points left out (≤ 0) break the line.
    const gaps = (u, i, i0, i1, nullGaps) => (this.view.log ? nullGaps : []);
    // Many lines in a panel are drawn one pixel wide: a canvas strokes a one-pixel line as a hairline, a
    // wider one as a polygon, which costs several times as much to rasterise without a GPU (a zoom of a
    // 20-run sweep spent most of its time there); 20 thick lines hide each other anyway. Few lines keep
    // the wider strokes.
    const dense = this.runs.length > DENSE_LINES;
    for (const r of this.opts.stacked ? [] : this.runs) {
      const points = { show: this._showPoints(r), size: 6, width: 1, fill: r.color, stroke: r.color };
      const show = !this._isHidden(r);
      // With smoothing, the faint raw line is drawn on the band layer (it does not change with the
      // weight); its uPlot series stays, hidden, so that the series keep their places.
      series.push({ label: r.label, stroke: smoothing ? r.colorFaint : r.color, width: smoothing || dense ? 1 : 1.5,
        spanGaps: false, gaps, points: smoothing ? { show: false } : points, show: show && !smoothing });
      this.seriesRuns.push(r.id);
      this.rawSeries.add(series.length - 1);
      if (smoothing) {
        series.push({ label: r.label + " (smoothed)", stroke: r.color, width: dense ? 1 : 1.75, spanGaps: false, gaps, points, show });
        this.seriesRuns.push(r.id);
      }
    }
    const xMode = this.view.xMode;
    const self = this;
    const logView = () => self.view.log && !self.opts.stacked;
    const yAxis = { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, size: 64,
      splits: (u, i, min, max, incr) => (logView() ? logSplits(10 ** min, 10 ** max).map(Math.log10) : linearSplits(min, max, incr)),
      values: (u, splits) => splits.map((v) => fmtAxis(logView() ? Number((10 ** v).toPrecision(12)) : v)),
      filter: (u, splits) => splits };
    const axes = [{ stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" } }, yAxis];
    if (xMode === "relative") axes[0].values = (u, splits) => splits.map((v) => fmtDuration(v));
    else if (xMode === "step") axes[0].values = (u, splits) => splits.map((v) => fmtAxis(v));
    const opts = {
      width: this.width(),
      height: this.opts.height || 240,
      series,
      legend: { show: false },
      focus: { alpha: 0.25 },
      scales: {
        x: { time: xMode === "wall", range: (u, min, max) => self._xRange(min, max) },
        y: { range: (u, min, max) => self._yRange(min, max) },
      },
      axes,
      cursor: {
        sync: { key: this.opts.syncKey || "losswatch", setSeries: false },
        drag: { x: true, y: false, setScale: false },
        points: { size: 6 },
        focus: { prox: this.opts.stacked ? -1 : 12 },
      },
      hooks: {
        draw: [(u) => { drawMarkers(self, u); drawBandLayer(self, u); }],
        setCursor: [(u) => self._onCursor(u)],
        setSelect: [(u) => self._onSelect(u)],
        setSeries: [(u, i, o) => self._onSeries(i, o)],
      },
    };
    this.bandSig = null;
    this.bandCanvas = el("canvas", { class: "band-layer" });
    this.u = new uPlot(opts, data, this.plotBox);
    this.u.under.append(this.bandCanvas);
    drawBandLayer(this, this.u);
    this.u.over.append(this.tooltip);
    this.u.over.addEventListener("dblclick", () => this.opts.onReset && this.opts.onReset());
    this.u.over.addEventListener("mouseleave", () => {
      this.tooltip.hidden = true;
      this.lastX = null;
      this._updateReadout(null);
      if (this.opts.onHighlight) this.opts.onHighlight(null);
    });
    this.highlighted = null;
  }

  _xRange(min, max) {
    if (this.view.xRange) return this.view.xRange.slice();
    if (min === max && fin(min)) return [min - 1, max + 1];
    return [min, max];
  }

  _applyHidden() {
    if (!this.u || this.opts.stacked) return;
    const smoothing = this.view.smoothing > 0;
    for (let i = 1; i < this.u.series.length; i++) {
      const show = !this.view.hidden.has(this.seriesRuns[i]) && !(smoothing && this.rawSeries.has(i));
      if (this.u.series[i].show !== show) this.u.setSeries(i, { show }, false);
    }
  }

  /** Highlight one line (others dimmed), or none. Called by the owner for every panel. */
  highlight(id) {
    if (!this.u || this.opts.stacked || id === this.highlighted) return;
    if (this.onscreen === false && !this.forced) { this.highlightWanted = id; this.dirty = true; return; }
    this.highlighted = id;
    let idx = null;
    if (id !== null) {
      for (let i = this.seriesRuns.length - 1; i > 0; i--) if (this.seriesRuns[i] === id) { idx = i; break; }
      if (idx === null) id = null;
    }
    this._quiet = true;
    this.u.setSeries(idx, { focus: true }, false);
    this._quiet = false;
    for (const row of this.readout.children) row.classList.toggle("hot", id !== null && row.dataset.id === id);
  }

  _onSeries(i, o) {
    // uPlot's own focus (the cursor near a line): tell the owner, which highlights it everywhere.
    if (this._quiet || !o || o.focus === undefined || !this.opts.onHighlight) return;
    const id = i === null || i === undefined ? null : this.seriesRuns[i];
    this.highlighted = id;
    this.opts.onHighlight(id);
  }

  resize() {
    this._width = null;
    if (this.u) this.u.setSize({ width: this.width(), height: this.opts.height || 240 });
  }

  _onSelect(u) {
    const sel = u.select;
    if (sel.width >= 4 && this.opts.onZoom) {
      const xmin = u.posToVal(sel.left, "x");
      const xmax = u.posToVal(sel.left + sel.width, "x");
      this.opts.onZoom(xmin, xmax);
    }
    if (sel.width) u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
  }

  _onCursor(u) {
    const left = u.cursor.left;
    if (left === null || left === undefined || left < 0) { this.lastX = null; this._updateReadout(null); this.tooltip.hidden = true; return; }
    const x = u.posToVal(left, "x");
    this.lastX = x;
    this._updateReadout(x);
    // Alert under the cursor (within 6 css px): show its message.
    let hit = null;
    for (const a of this.alerts) {
      if (a.x === null || a.x === undefined) continue;
      if (Math.abs(u.valToPos(a.x, "x") - left) <= 6) { hit = a; break; }
    }
    if (hit) {
      this.tooltip.textContent = hit.text;
      this.tooltip.hidden = false;
      this.tooltip.style.left = Math.min(left + 10, Math.max(0, u.bbox.width / (devicePixelRatio || 1) - 220)) + "px";
      this.tooltip.style.top = "8px";
    } else {
      this.tooltip.hidden = true;
    }
  }

  _fmtX(x) {
    if (this.view.xMode === "wall") return new Date(x * 1000).toLocaleString();
    if (this.view.xMode === "relative") return fmtDuration(x);
    return "step " + fmtNum(Math.round(x));
  }

  /** Every line's value at x (its last point when x is null), sorted high to low; hidden lines last. */
  readoutRows(x) {
    const smoothing = this.view.smoothing;
    const smooth = this.cache ? this.cache.smooth : new Map();
    const rows = this.runs.map((r) => {
      const i = x === null || x === undefined ? r.xs.length - 1 : nearestIndex(r.xs, x);
      if (i < 0 || i >= r.xs.length) return { r, i: -1, sort: null };
      let value = r.last[i];
      let text = fmtNum(value);
      if (smoothing > 0 && !this.opts.stacked) {
        const s = smooth.get(r.id);
        const sv = s && s.weight === smoothing ? s.ema[i] : value;
        text = `${fmtNum(sv)} (raw ${fmtNum(value)})`;
        value = sv;
      }
      return { r, i, text, sort: fin(value) ? value : null };
    });
    const rank = (row) => (this._isHidden(row.r) ? 2 : row.sort === null ? 1 : 0);
    rows.sort((a, b) => rank(a) - rank(b) || (a.sort !== null && b.sort !== null ? b.sort - a.sort : 0));
    return rows;
  }

  _updateReadout(x) {
    // A row per line, kept and updated in place (only the texts that changed): a smoothing change or a
    // cursor move re-sorts and re-labels the rows, it does not rebuild them in every panel.
    const kept = this.readoutCache || (this.readoutCache = new Map());
    const order = [];
    const live = new Set();
    for (const { r, i, text } of this.readoutRows(x)) {
      let c = kept.get(r.id);
      if (!c || c.label !== r.label || c.color !== r.color) {
        const value = el("span", { class: "readout-value" }), at = el("span", { class: "readout-x muted" });
        const row = el("div", { class: "readout-row", dataset: { id: r.id } },
          el("span", { class: "swatch", style: `background:${r.color}` }),
          el("span", { class: "readout-label", text: r.label, title: r.label }), value, at);
        c = { row, value, at, label: r.label, color: r.color, cls: null, title: null, text: null, x: null };
        kept.set(r.id, c);
      }
      live.add(r.id);
      const hidden = this._isHidden(r);
      const cls = "readout-row" + (hidden ? " off" : "") + (r.id === this.highlighted ? " hot" : "");
      if (c.cls !== cls) c.row.className = c.cls = cls;
      const title = hidden ? "hidden: click to show" : "click to hide";
      if (c.title !== title) c.row.title = c.title = title;
      let value = "—", at = "";
      if (i >= 0) {
        const bits = [text];
        if (r.width > 1 && fin(r.min[i]) && fin(r.max[i])) bits.push(`min ${fmtNum(r.min[i])} max ${fmtNum(r.max[i])}`);
        if (r.nonfinite[i]) bits.push(`${r.nonfinite[i]} non-finite`);
        value = bits.join(" · ");
        at = this._fmtX(r.xs[i]);
      }
      if (c.text !== value) { c.value.textContent = c.text = value; c.value.classList.toggle("muted", i < 0); }
      if (c.x !== at) c.at.textContent = c.x = at;
      order.push(c.row);
    }
    for (const id of [...kept.keys()]) if (!live.has(id)) kept.delete(id);
    const now = this.readout.children;
    let same = now.length === order.length;
    for (let k = 0; same && k < order.length; k++) same = now[k] === order[k];
    if (!same) this.readout.replaceChildren(...order);
    if (order.length) this.readout.style.minHeight = "";
  }

  /** Summary for tests and the benchmark: what the chart holds, not its pixels; drawn first (a panel
   * left for later included) unless `flush` is false. */
  info({ flush = true } = {}) {
    if (flush) this.flush();
    const u = this.u;
    return {
      key: this.key, kind: this.opts.kind, stacked: !!this.opts.stacked,
      runs: this.runs.map((r) => r.id),
      labels: this.runs.map((r) => r.label),
      colors: this.runs.map((r) => r.color),
      points: this.runs.map((r) => r.xs.length),
      widths: this.runs.map((r) => r.width),
      nonfinite: this.runs.map((r) => r.nonfinite.reduce((a, b) => a + (b ? 1 : 0), 0)),
      alerts: this.alerts.length,
      series: u ? u.series.length - 1 : 0,
      shown: u ? u.series.slice(1).map((s) => s.show) : [],
      markers: this.opts.stacked ? [] : this.runs.map((r) => this._showPoints(r)),
      drawn: !!(u && this.drawnOnce),
      log: this.view.log, smoothing: this.view.smoothing, xMode: this.view.xMode,
      logDropped: this.logDropped, note: this.note.hidden ? "" : this.note.textContent,
      xScale: u ? [u.scales.x.min, u.scales.x.max] : null,
      yScale: u ? [u.scales.y.min, u.scales.y.max].map((v) => (this.view.log && !this.opts.stacked ? 10 ** v : v)) : null,
      highlighted: this.highlighted,
      readout: [...this.readout.children].map((row) => row.dataset.id),
    };
  }

  /** The panel as a PNG: title, the chart canvas (bands, markers, axes included), the run labels. */
  toCanvas() {
    this.flush();
    const src = this.u.ctx.canvas;
    const dpr = devicePixelRatio || 1;
    const head = Math.round(28 * dpr), rowH = Math.round(16 * dpr);
    const shown = this.runs.filter((r) => !this._isHidden(r));
    const out = document.createElement("canvas");
    out.width = src.width;
    out.height = src.height + head + rowH * shown.length + Math.round(8 * dpr);
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = "#111";
    ctx.font = `${Math.round(14 * dpr)}px sans-serif`;
    ctx.fillText(this.opts.title || this.key, 8 * dpr, 19 * dpr);
    if (this.bandCanvas && this.bandCanvas.width) ctx.drawImage(this.bandCanvas, this.u.bbox.left, head + this.u.bbox.top);
    ctx.drawImage(src, 0, head);
    ctx.font = `${Math.round(12 * dpr)}px sans-serif`;
    shown.forEach((r, i) => {
      const y = src.height + head + rowH * i + Math.round(4 * dpr);
      ctx.fillStyle = r.color;
      ctx.fillRect(8 * dpr, y, 10 * dpr, 10 * dpr);
      ctx.fillStyle = "#111";
      ctx.fillText(r.label, 24 * dpr, y + 10 * dpr);
    });
    return out;
  }

  downloadPNG() {
    if (!this.u) return;
    const name = (this.opts.pngName || this.key).replace(/[^A-Za-z0-9._-]+/g, "_") + ".png";
    this.toCanvas().toBlob((blob) => {
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    }, "image/png");
  }

  destroy() {
    if (this.observer) this.observer.disconnect();
    if (this.u) this.u.destroy();
    this.root.remove();
  }
}
