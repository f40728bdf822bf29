// What a panel draws on its canvases besides uPlot's lines: the min/max bands and the faint raw lines on
// a layer under the chart (redrawn only when what they show changed), NaN marks and alert markers.
// Functions of the panel (chart.js) and its uPlot instance.

import { fin } from "./chart-math.js";

// Buckets at most this many device pixels apart have their band drawn as one vertical line per bucket.
const HAIRLINE_BAND_PX = 1.25;
// Up to this many: as pixel columns (see drawBands); sparser buckets as polygons.
const COLUMN_BAND_PX = 4;

function clip(u, ctx) {
  ctx.save();
  ctx.beginPath();
  ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
  ctx.clip();
}

/**
 * The min/max bands live on their own canvas under uPlot's, redrawn only when what they show changed
 * (scales, size, data, hidden lines, log): a smoothing change or a highlight redraws the lines alone.
 * Translucent polygons are the costliest thing to rasterise on a panel of 20 runs.
 */
export function drawBandLayer(p, u) {
  if (!p.bandCanvas) return;
  const sig = [u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max, u.bbox.width, u.bbox.height,
    p.dataVersion, p.view.bands, p.view.log, p.view.smoothing > 0, [...p.view.hidden].join(",")].join("|");
  if (sig === p.bandSig) return;
  p.bandSig = sig;
  const canvas = p.bandCanvas;
  const dpr = devicePixelRatio || 1;
  const w = Math.round(u.bbox.width), h = Math.round(u.bbox.height);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
    canvas.style.width = w / dpr + "px";
    canvas.style.height = h / dpr + "px";
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  if (p.opts.stacked) return;
  ctx.save();
  ctx.translate(-u.bbox.left, -u.bbox.top);
  if (p.view.bands) drawBands(p, u, ctx);
  if (p.view.smoothing > 0) drawRawLines(p, u, ctx);
  ctx.restore();
}

/** The faint raw lines behind the smoothed ones (NaN, Inf and, on a log axis, values ≤ 0 spanned). */
function drawRawLines(p, u, ctx) {
  ctx.lineWidth = devicePixelRatio || 1;
  ctx.lineJoin = "round";
  for (const r of p.runs) {
    if (p._isHidden(r)) continue;
    ctx.strokeStyle = r.colorFaint;
    ctx.beginPath();
    let started = false;
    for (let i = 0; i < r.xs.length; i++) {
      const y = yPos(p, u, r.last[i]);
      if (y === null) continue;
      const x = u.valToPos(r.xs[i], "x", true);
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    }
    ctx.stroke();
  }
}

function drawBands(p, u, ctx) {
  const log = p.view.log;
  const ok = (r, i) => fin(r.min[i]) && fin(r.max[i]) && (!log || r.min[i] > 0) && r.max[i] > r.min[i];
  for (const r of p.runs) {
    if (p._isHidden(r)) continue;
    ctx.fillStyle = r.colorBand;
    ctx.strokeStyle = r.colorBand;
    const n = r.xs.length;
    // Buckets at most about a pixel apart (what the panel asks the server for): one vertical hairline per
    // bucket, min to max, all in one path. A software canvas rasterises that many times faster than the
    // translucent polygon, and at this density it covers the same pixels.
    const spacing = n > 1 ? Math.abs(u.valToPos(r.xs[n - 1], "x", true) - u.valToPos(r.xs[0], "x", true)) / (n - 1) : Infinity;
    if (spacing <= HAIRLINE_BAND_PX) {
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 0; i < n; i++) {
        if (!ok(r, i)) continue;
        const x = u.valToPos(r.xs[i], "x", true);
        ctx.moveTo(x, yPos(p, u, r.max[i]));
        ctx.lineTo(x, yPos(p, u, r.min[i]));
      }
      ctx.stroke();
      continue;
    }
    if (spacing <= COLUMN_BAND_PX) {
      // A few pixels apart: each bucket fills the whole pixel columns nearest to it (a step band, which
      // at this spacing covers what the polygon does), as rectangles on pixel edges: no anti-aliasing.
      const x = (i) => u.valToPos(r.xs[i], "x", true);
      let prev = x(0), here = prev;
      for (let i = 0; i < n; i++) {
        const next = i + 1 < n ? x(i + 1) : here + spacing;
        if (ok(r, i)) {
          const left = Math.round(i ? (prev + here) / 2 : here - spacing / 2), right = Math.round((here + next) / 2);
          const top = Math.floor(yPos(p, u, r.max[i])), bottom = Math.ceil(yPos(p, u, r.min[i]));
          ctx.fillRect(left, top, Math.max(1, right - left), Math.max(1, bottom - top));
        }
        prev = here;
        here = next;
      }
      continue;
    }
    ctx.lineWidth = 1;
    // Sparser buckets: one polygon per run of consecutive buckets with finite min/max; isolated buckets as ticks.
    let start = -1;
    const flush = (a, b) => {
      if (a < 0) return;
      if (b === a) {
        const x = u.valToPos(r.xs[a], "x", true);
        const y0 = yPos(p, u, r.min[a]), y1 = yPos(p, u, r.max[a]);
        if (y0 !== null && y1 !== null) { ctx.beginPath(); ctx.moveTo(x, y0); ctx.lineTo(x, y1); ctx.stroke(); }
        return;
      }
      ctx.beginPath();
      for (let i = a; i <= b; i++) ctx.lineTo(u.valToPos(r.xs[i], "x", true), yPos(p, u, r.max[i]));
      for (let i = b; i >= a; i--) ctx.lineTo(u.valToPos(r.xs[i], "x", true), yPos(p, u, r.min[i]));
      ctx.closePath();
      ctx.fill(); // no outline: stroking 20 polygons per panel costs as much again; one-bucket spikes are ticks
    };
    for (let i = 0; i < n; i++) {
      const good = ok(r, i);
      if (good && start < 0) start = i;
      if (!good && start >= 0) { flush(start, i - 1); start = -1; }
    }
    if (start >= 0) flush(start, n - 1);
  }
}

export function yPos(p, u, v) {
  if (!fin(v)) return null;
  if (p.view.log) return v > 0 ? u.valToPos(Math.log10(v), "y", true) : null;
  return u.valToPos(v, "y", true);
}

export function drawMarkers(p, u) {
  const ctx = u.ctx;
  const dpr = devicePixelRatio || 1;
  clip(u, ctx);
  const top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
  // Non-finite values: a red triangle at the top of the plot at the bucket's x.
  ctx.fillStyle = "#d40000";
  for (const r of p.runs) {
    if (p._isHidden(r)) continue;
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
  for (const a of p.alerts) {
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
