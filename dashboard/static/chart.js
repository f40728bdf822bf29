// One chart panel on top of uPlot (global `uPlot`, served from /static/vendor).
//
// A panel shows one series key for several runs. Each run brings its downsampled buckets
// (x, last, min, max, nonfinite); the panel draws
//   - the bucket's last value as the run's line (raw line faint behind when smoothing),
//   - the min..max band of each bucket (so a one-step spike stays visible at any zoom),
//   - a red tick at the top for every bucket holding NaN/Inf,
//   - dashed alert markers at their onset, with the message on hover,
// and a readout of every run's value under the cursor. Zoom (drag) and reset (double-click) are
// reported to the owner, which fetches finer buckets from the server.

import { el, clear, fmtNum, fmtAxis, fmtDuration } from "./lib.js";

/** TensorBoard's debiased exponential moving average (scalars plugin), NaN/Inf passed through. */
export function smoothEMA(values, weight) {
  const out = new Array(values.length);
  if (!(weight > 0)) {
    for (let i = 0; i < values.length; i++) out[i] = values[i];
    return out;
  }
  let first = null, constant = true;
  for (const v of values) {
    if (v === null) continue;
    if (first === null) first = v; else if (v !== first) { constant = false; break; }
  }
  let last = 0, numAccum = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null) { out[i] = null; continue; }
    if (constant || !Number.isFinite(v)) { out[i] = v; continue; }
    last = last * weight + (1 - weight) * v;
    numAccum++;
    const debias = weight === 1 ? 1 : 1 - Math.pow(weight, numAccum);
    out[i] = last / debias;
  }
  return out;
}

function lowerBound(xs, x) {
  let lo = 0, hi = xs.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
  return lo;
}

/** Index of the point of xs nearest to x (xs sorted), or -1. */
export function nearestIndex(xs, x) {
  if (!xs.length) return -1;
  const i = lowerBound(xs, x);
  if (i <= 0) return 0;
  if (i >= xs.length) return xs.length - 1;
  return x - xs[i - 1] <= xs[i] - x ? i - 1 : i;
}

const fin = (v) => v !== null && Number.isFinite(v);

let panelCounter = 0;

export class Panel {
  /**
   * opts: {key, kind, title, syncKey, onZoom(xmin, xmax), onReset(), xMode, pngName}
   */
  constructor(container, opts) {
    this.opts = opts;
    this.id = ++panelCounter;
    this.key = opts.key;
    this.runs = []; // [{id, label, color, xs, last, min, max, nonfinite, steps, lastSteps}]
    this.alerts = []; // [{x, message, severity, color}]
    this.view = { smoothing: 0, log: false, bands: true, xMode: "step", xRange: null };
    this.u = null;
    this.signature = "";
    this.drawnOnce = false;

    this.root = el("section", { class: "panel", dataset: { key: opts.key, kind: opts.kind || "" } });
    const title = el("h3", { class: "panel-title", title: opts.key, text: opts.title || opts.key });
    this.toolbar = el("div", { class: "panel-tools" });
    this.pngButton = el("button", { type: "button", class: "small", title: "download this panel as PNG",
      text: "PNG", onclick: () => this.downloadPNG() });
    this.toolbar.append(this.pngButton);
    this.header = el("div", { class: "panel-head" }, title, el("span", { class: "kind", text: opts.kind || "" }),
      el("span", { class: "spacer" }), this.toolbar);
    this.plotBox = el("div", { class: "plot" });
    this.readout = el("div", { class: "readout" });
    this.tooltip = el("div", { class: "marker-tip", hidden: true, role: "tooltip" });
    this.empty = el("p", { class: "muted empty", text: "no data yet", hidden: true });
    this.root.append(this.header, this.plotBox, this.empty, this.readout);
    container.append(this.root);
  }

  /** Pixels available for the plot: what the owner asks the server for, in buckets. */
  width() {
    return Math.max(200, Math.floor(this.plotBox.clientWidth || this.root.clientWidth || 600));
  }

  setView(view) {
    this.view = { ...this.view, ...view };
  }

  /** Replace the data; rebuild the chart only when its series structure changed. */
  setData(runs, alerts = []) {
    this.runs = runs;
    this.alerts = alerts;
    const withData = runs.filter((r) => r.xs.length);
    this.empty.hidden = withData.length > 0;
    const smoothing = this.view.smoothing > 0;
    const signature = JSON.stringify([runs.map((r) => r.id + "\u0000" + r.label), smoothing, this.view.log,
      this.view.xMode, this.opts.stacked || false]);
    const data = this._alignedData();
    if (!this.u || signature !== this.signature) {
      this.signature = signature;
      this._create(data);
    } else {
      this.u.setData(data, true);
    }
    this.drawnOnce = this.drawnOnce || withData.length > 0;
    this._updateReadout(null);
  }

  _yValue(v) {
    if (!fin(v)) return null;
    if (this.view.log && v <= 0) return null;
    return v;
  }

  /** [xs, run0 raw, (run0 smooth), run1 raw, ...] aligned with uPlot.join. */
  _alignedData() {
    if (this.opts.stacked) return this._stackedData();
    const smoothing = this.view.smoothing;
    const tables = [];
    for (const r of this.runs) {
      const raw = r.last.map((v) => this._yValue(v));
      const table = [r.xs, raw];
      if (smoothing > 0) table.push(smoothEMA(r.last.map((v) => (v === null ? null : v)), smoothing)
        .map((v) => this._yValue(v)));
      tables.push(table);
    }
    if (!tables.length) return [[]];
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
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
    return data;
  }

  _yRange(dataMin, dataMax) {
    if (this.opts.stacked) {
      const lo = Math.min(0, dataMin ?? 0), hi = Math.max(dataMax ?? 1, lo + 1e-12);
      return [lo, hi + (hi - lo) * 0.05];
    }
    // Include the bands (bucket min/max) so a spike is never clipped, and the NaN ticks' row.
    let lo = Infinity, hi = -Infinity;
    const xr = this.view.xRange;
    for (const r of this.runs) {
      for (let i = 0; i < r.xs.length; i++) {
        if (xr && (r.xs[i] < xr[0] || r.xs[i] > xr[1])) continue;
        for (const v of [r.min[i], r.max[i], r.last[i]]) {
          if (!fin(v) || (this.view.log && v <= 0)) continue;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
    }
    if (lo === Infinity) { lo = dataMin; hi = dataMax; }
    if (lo === null || hi === null || !Number.isFinite(lo) || !Number.isFinite(hi)) return this.view.log ? [0.1, 10] : [0, 1];
    if (this.view.log) {
      const l = Math.log10(lo), h = Math.log10(hi), pad = Math.max((h - l) * 0.05, 0.05);
      return [Math.pow(10, l - pad), Math.pow(10, h + pad)];
    }
    if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; return [lo - d, hi + d]; }
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  _create(data) {
    if (this.u) { this.u.destroy(); this.u = null; }
    clear(this.plotBox);
    const smoothing = this.view.smoothing > 0;
    const series = [{}];
    if (this.opts.stacked) {
      const comps = this.runs.filter((r) => !r.isTotal);
      for (const r of comps.slice().reverse()) {
        series.push({ label: r.label, stroke: r.color, fill: r.colorFill, width: 1, spanGaps: true, points: { show: false } });
      }
      const total = this.runs.find((r) => r.isTotal);
      if (total) series.push({ label: total.label, stroke: "#111", width: 1.5, dash: [6, 3], spanGaps: true, points: { show: false } });
    }
    for (const r of this.opts.stacked ? [] : this.runs) {
      series.push({ label: r.label, stroke: smoothing ? r.colorFaint : r.color, width: smoothing ? 1 : 1.5,
        spanGaps: true, points: { show: false } });
      if (smoothing) series.push({ label: r.label + " (smoothed)", stroke: r.color, width: 1.75, spanGaps: true,
        points: { show: false } });
    }
    const xMode = this.view.xMode;
    const axes = [
      { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" } },
      { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, size: 64,
        values: (u, splits) => splits.map((v) => fmtAxis(v)) },
    ];
    if (xMode === "relative") axes[0].values = (u, splits) => splits.map((v) => fmtDuration(v));
    else if (xMode === "step") axes[0].values = (u, splits) => splits.map((v) => fmtAxis(v));
    const self = this;
    const opts = {
      width: this.width(),
      height: this.opts.height || 240,
      series,
      legend: { show: false },
      scales: {
        x: { time: xMode === "wall", range: (u, min, max) => (self.view.xRange ? self.view.xRange.slice() : [min, max]) },
        y: { distr: this.view.log && !this.opts.stacked ? 3 : 1, log: 10, range: (u, min, max) => self._yRange(min, max) },
      },
      axes,
      cursor: {
        sync: { key: this.opts.syncKey || "losswatch", setSeries: false },
        drag: { x: true, y: false, setScale: false },
        points: { size: 6 },
      },
      hooks: {
        drawAxes: [(u) => self._drawBands(u)],
        draw: [(u) => self._drawMarkers(u)],
        setCursor: [(u) => self._onCursor(u)],
        setSelect: [(u) => self._onSelect(u)],
      },
    };
    this.u = new uPlot(opts, data, this.plotBox);
    this.u.over.append(this.tooltip);
    this.u.over.addEventListener("dblclick", () => this.opts.onReset && this.opts.onReset());
    this.u.over.addEventListener("mouseleave", () => { this.tooltip.hidden = true; this._updateReadout(null); });
  }

  resize() {
    if (this.u) this.u.setSize({ width: this.width(), height: this.opts.height || 240 });
  }

  _clip(u, ctx) {
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
  }

  _drawBands(u) {
    if (!this.view.bands || this.opts.stacked) return;
    const ctx = u.ctx;
    this._clip(u, ctx);
    for (const r of this.runs) {
      ctx.fillStyle = r.colorBand;
      ctx.strokeStyle = r.colorBand;
      ctx.lineWidth = 1;
      // One polygon per run of consecutive buckets with finite min/max; isolated buckets as ticks.
      let start = -1;
      const flush = (a, b) => {
        if (a < 0) return;
        if (b === a) {
          const x = u.valToPos(r.xs[a], "x", true);
          const y0 = this._pos(u, r.min[a]), y1 = this._pos(u, r.max[a]);
          if (y0 !== null && y1 !== null) { ctx.beginPath(); ctx.moveTo(x, y0); ctx.lineTo(x, y1); ctx.stroke(); }
          return;
        }
        ctx.beginPath();
        for (let i = a; i <= b; i++) ctx.lineTo(u.valToPos(r.xs[i], "x", true), this._pos(u, r.max[i]));
        for (let i = b; i >= a; i--) ctx.lineTo(u.valToPos(r.xs[i], "x", true), this._pos(u, r.min[i]));
        ctx.closePath();
        ctx.fill();
        ctx.stroke();
      };
      for (let i = 0; i < r.xs.length; i++) {
        const ok = fin(r.min[i]) && fin(r.max[i]) && (!this.view.log || r.min[i] > 0) && r.max[i] > r.min[i];
        if (ok && start < 0) start = i;
        if (!ok && start >= 0) { flush(start, i - 1); start = -1; }
      }
      if (start >= 0) flush(start, r.xs.length - 1);
    }
    ctx.restore();
  }

  _pos(u, v) {
    if (!fin(v)) return null;
    if (this.view.log && v <= 0) return null;
    return u.valToPos(v, "y", true);
  }

  _drawMarkers(u) {
    const ctx = u.ctx;
    const dpr = devicePixelRatio || 1;
    this._clip(u, ctx);
    const top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
    // Non-finite values: a red triangle at the top of the plot at the bucket's x.
    ctx.fillStyle = "#d40000";
    for (const r of this.runs) {
      for (let i = 0; i < r.xs.length; i++) {
        if (!r.nonfinite[i]) continue;
        const x = u.valToPos(r.xs[i], "x", true);
        ctx.beginPath();
        ctx.moveTo(x - 4 * dpr, top);
        ctx.lineTo(x + 4 * dpr, top);
        ctx.lineTo(x, top + 7 * dpr);
        ctx.closePath();
        ctx.fill();
      }
    }
    // Alerts: a dashed vertical line at the onset and a flag at the bottom.
    for (const a of this.alerts) {
      if (a.x === null || a.x === undefined) continue;
      const x = u.valToPos(a.x, "x", true);
      ctx.strokeStyle = a.color;
      ctx.lineWidth = 1.5 * dpr;
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, bottom);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = a.color;
      ctx.beginPath();
      ctx.moveTo(x, bottom);
      ctx.lineTo(x + 8 * dpr, bottom - 5 * dpr);
      ctx.lineTo(x, bottom - 10 * dpr);
      ctx.closePath();
      ctx.fill();
    }
    ctx.restore();
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
    if (left === null || left === undefined || left < 0) { this._updateReadout(null); this.tooltip.hidden = true; return; }
    const x = u.posToVal(left, "x");
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

  _updateReadout(x) {
    clear(this.readout);
    const smoothing = this.view.smoothing;
    for (const r of this.runs) {
      const row = el("div", { class: "readout-row" },
        el("span", { class: "swatch", style: `background:${r.color}` }),
        el("span", { class: "readout-label", text: r.label, title: r.id }));
      let i = -1;
      if (x === null) i = r.xs.length - 1; else i = nearestIndex(r.xs, x);
      if (i >= 0 && i < r.xs.length) {
        const v = r.last[i];
        let text = fmtNum(v);
        if (smoothing > 0) {
          r.smoothed = r.smoothed && r.smoothed.length === r.last.length && r.smoothedWeight === smoothing
            ? r.smoothed : smoothEMA(r.last, smoothing);
          r.smoothedWeight = smoothing;
          text = `${fmtNum(r.smoothed[i])} (raw ${fmtNum(v)})`;
        }
        const bits = [text];
        if (r.width > 1 && fin(r.min[i]) && fin(r.max[i])) bits.push(`min ${fmtNum(r.min[i])} max ${fmtNum(r.max[i])}`);
        if (r.nonfinite[i]) bits.push(`${r.nonfinite[i]} non-finite`);
        row.append(el("span", { class: "readout-value", text: bits.join(" · ") }),
          el("span", { class: "readout-x muted", text: this._fmtX(r.xs[i]) }));
      } else {
        row.append(el("span", { class: "readout-value muted", text: "—" }));
      }
      this.readout.append(row);
    }
  }

  /** Summary for tests and the benchmark: what the chart holds, not its pixels. */
  info() {
    return {
      key: this.key, kind: this.opts.kind, stacked: !!this.opts.stacked,
      runs: this.runs.map((r) => r.id),
      points: this.runs.map((r) => r.xs.length),
      widths: this.runs.map((r) => r.width),
      nonfinite: this.runs.map((r) => r.nonfinite.reduce((a, b) => a + (b ? 1 : 0), 0)),
      alerts: this.alerts.length,
      series: this.u ? this.u.series.length - 1 : 0,
      drawn: !!(this.u && this.drawnOnce),
      log: this.view.log, smoothing: this.view.smoothing, xMode: this.view.xMode,
      xScale: this.u ? [this.u.scales.x.min, this.u.scales.x.max] : null,
    };
  }

  /** The panel as a PNG: title, the chart canvas (bands, markers, axes included), the run labels. */
  toCanvas() {
    const src = this.u.ctx.canvas;
    const dpr = devicePixelRatio || 1;
    const head = Math.round(28 * dpr), rowH = Math.round(16 * dpr);
    const out = document.createElement("canvas");
    out.width = src.width;
    out.height = src.height + head + rowH * this.runs.length + Math.round(8 * dpr);
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = "#111";
    ctx.font = `${Math.round(14 * dpr)}px sans-serif`;
    ctx.fillText(this.opts.title || this.key, 8 * dpr, 19 * dpr);
    ctx.drawImage(src, 0, head);
    ctx.font = `${Math.round(12 * dpr)}px sans-serif`;
    this.runs.forEach((r, i) => {
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
    if (this.u) this.u.destroy();
    this.root.remove();
  }
}
