// The chart's arithmetic, apart from the page: smoothing, nearest point, quantiles and axis ticks.

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

export const fin = (v) => v !== null && v !== undefined && Number.isFinite(v);
/** A value on a log axis: log10(v); ≤ 0 is left out (null, a gap); undefined (no point there) stays. */
export const toLog = (v) => (v === undefined ? undefined : v !== null && v > 0 ? Math.log10(v) : null);

/** The q-quantile (0..1) of sorted numbers, linearly interpolated. */
export function quantile(sorted, q) {
  if (!sorted.length) return null;
  const pos = (sorted.length - 1) * q, i = Math.floor(pos), f = pos - i;
  return i + 1 < sorted.length ? sorted[i] + (sorted[i + 1] - sorted[i]) * f : sorted[i];
}

// A log axis is drawn as log10(v) on a linear scale with its own ticks (uPlot's log ticks loop without
// end on a range that does not start on a power of ten: a RangeError after seconds). Values stay inside
// what a float tick label can say.
export const LOG_MIN = 1e-300, LOG_MAX = 1e300;

/** Ticks of a log10 axis over [min, max]: decades, with 2x and 5x when the range spans few decades. */
export function logSplits(min, max) {
  if (!(min > 0) || !(max > min)) return min > 0 ? [min] : [];
  const e0 = Math.floor(Math.log10(min)), e1 = Math.ceil(Math.log10(max));
  const span = e1 - e0;
  const stride = Math.max(1, Math.ceil(span / 8));
  const mults = span <= 1 ? [1, 2, 3, 5] : span <= 3 ? [1, 2, 5] : [1];
  const out = [];
  for (let e = e0; e <= e1 && out.length < 64; e += stride) {
    for (const m of mults) {
      const v = Number((m * Math.pow(10, e)).toPrecision(12));
      if (v >= min * (1 - 1e-12) && v <= max * (1 + 1e-12)) out.push(v);
    }
  }
  if (out.length < 2) return [min, max];
  return out;
}

/** uPlot's linear ticks: multiples of the increment it found for the space, inside [min, max]. */
export function linearSplits(min, max, incr) {
  if (!(incr > 0) || !Number.isFinite(min) || !Number.isFinite(max)) return [];
  const out = [], end = max + incr * 1e-9;
  for (let v = Math.ceil(min / incr) * incr; v <= end && out.length < 200; v += incr) {
    const t = Number(v.toPrecision(12));
    out.push(Object.is(t, -0) ? 0 : t);
  }
  return out;
}
