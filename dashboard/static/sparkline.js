// A run's loss in 64×22 px for the runs table: one /api/v1/query call for the whole page,
// a polyline of the buckets' last values, a red tick over each bucket holding a NaN or Inf.

import { api, num, fmtNum } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
export const SPARK_BUCKETS = 48;
const W = 64, H = 22, PAD = 2;

/** The series a run's sparkline shows: train/loss, else its first loss series, else nothing. */
export function sparkKey(run) {
  const entries = Object.entries((run && run.summary) || {});
  if (entries.some(([k]) => k === "train/loss")) return "train/loss";
  const losses = entries.filter(([, s]) => s && s.kind === "loss").map(([k]) => k).sort();
  return losses[0] || null;
}

/** {runId: {key, values: [number|NaN|±Inf], steps}} for the runs, in one query (up to 100 runs). */
export async function fetchSparks(runs) {
  const wanted = new Map();
  for (const r of runs) { const k = sparkKey(r); if (k) wanted.set(r.id, k); }
  const out = new Map();
  if (!wanted.size) return out;
  const ids = [...wanted.keys()].slice(0, 100);
  const keys = [...new Set(ids.map((id) => wanted.get(id)))];
  const answer = await api("/query", { run: ids, key: keys, buckets: SPARK_BUCKETS });
  for (const s of answer.series || []) {
    if (wanted.get(s.run) !== s.key) continue;
    out.set(s.run, { key: s.key, steps: s.step || [], values: (s.last || []).map(num),
      nonfinite: s.nonfinite || [] });
  }
  return out;
}

function node(tag, attrs) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  return n;
}

/** The SVG of one sparkline; data-points holds how many finite points it drew (for tests). */
export function sparkline(spark) {
  const svg = node("svg", { class: "spark", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const values = spark ? spark.values : [];
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  svg.dataset.points = String(finite.length);
  if (!spark || !values.length) return svg;
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const n = values.length;
  const x = (i) => PAD + (n === 1 ? (W - 2 * PAD) / 2 : (i * (W - 2 * PAD)) / (n - 1));
  const y = (v) => (hi === lo ? H / 2 : PAD + ((hi - v) * (H - 2 * PAD)) / (hi - lo));
  // Break the line where a bucket has no finite value; mark buckets that held a NaN/Inf.
  let run = [];
  const flush = () => {
    if (run.length === 1) svg.append(node("circle", { cx: run[0][0], cy: run[0][1], r: 1.2, class: "spark-dot" }));
    else if (run.length) svg.append(node("polyline", { points: run.map((p) => p.join(",")).join(" "), class: "spark-line" }));
    run = [];
  };
  values.forEach((v, i) => {
    if (v !== null && Number.isFinite(v)) run.push([x(i).toFixed(1), y(v).toFixed(1)]);
    else flush();
    if (spark.nonfinite[i] || (v !== null && !Number.isFinite(v))) {
      svg.append(node("line", { x1: x(i), x2: x(i), y1: 0, y2: 5, class: "spark-bad" }));
    }
  });
  flush();
  const bad = spark.nonfinite.reduce((a, b) => a + (b || 0), 0);
  const title = node("title", {});
  title.textContent = `${spark.key}: ${fmtNum(finite[0])} → ${fmtNum(finite[finite.length - 1])}` +
    (bad ? ` · ${bad} non-finite` : "");
  svg.prepend(title);
  svg.setAttribute("aria-label", title.textContent);
  return svg;
}
