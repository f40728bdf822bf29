// What the compare view hands its panels: a line per run (or per group of runs) in the current x mode,
// its colours, and the x range they share. Pure functions of the fetched data and the view state.

import { PALETTE, assignColors, withAlpha, tint } from "./palette.js";
import { fieldValue, valueLabel, compareValues, aggregate } from "./compare-data.js";

/** Palette slot of each value of a field over the runs (values in sorted order). */
export function valueSlots(runs, field) {
  const values = [...runs.values()].map((run) => fieldValue(run, field));
  const distinct = [...new Map(values.map((v) => [valueLabel(v), v])).values()].sort(compareValues);
  return new Map(distinct.map((v, i) => [valueLabel(v), i]));
}

/**
 * Colour of every run (Map id -> "#rrggbb"): picked (state.colors), else by a field's value (palette
 * order of sorted values; a grouped view colours by its group field, so a run's chip has its group's
 * colour; without the value: grey), else the order in which the runs joined the view.
 */
export function runColors(runs, state) {
  const ids = [...runs.keys()];
  const field = state.groupby || state.colorby;
  if (!field) return assignColors(ids, state.colors).colors;
  const slots = valueSlots(runs, field);
  const out = new Map();
  for (const id of ids) {
    const c = state.colors[id];
    const v = fieldValue(runs.get(id), field);
    out.set(id, c && /^[0-9a-f]{6}$/.test(c) ? "#" + c
      : v === undefined && !state.groupby ? "#8a8a8a" : PALETTE[slots.get(valueLabel(v)) % PALETTE.length]);
  }
  return out;
}

function styled(color, bandAlpha = 0.16) {
  return { color, colorFaint: withAlpha(color, 0.28), colorBand: withAlpha(color, bandAlpha), colorFill: tint(color) };
}

/**
 * One run's decoded series as a panel line: x from the step, the wall time, or the wall time since
 * `origin` (xMode "relative"), sorted by x.
 */
export function panelLine(s, { id, label, color, xMode, origin = 0 }) {
  const n = s.step.length;
  const xs = xMode === "step" ? s.step : s.wall.map((w) => w - (xMode === "relative" ? origin : 0));
  let idx = null;
  for (let i = 1; i < n; i++) if (!(xs[i] > xs[i - 1])) { idx = [...xs.keys()].sort((a, b) => xs[a] - xs[b]); break; }
  const pick = (arr) => (idx ? idx.map((i) => arr[i]) : arr);
  return {
    id, label, ...styled(color), width: s.width,
    xs: idx ? idx.map((i) => xs[i]) : xs, last: pick(s.last), min: pick(s.min), max: pick(s.max),
    nonfinite: pick(s.nonfinite), steps: pick(s.step), lastSteps: pick(s.lastStep),
  };
}

/** A group's line: the mean or median of its members' lines, the band their min..max, aligned by x. */
export function groupLine(group, members, agg, color) {
  const a = aggregate(members, agg);
  return { id: group.id, label: group.label, ...styled(color, 0.2), width: Math.max(1, members.length),
    xs: a.xs, last: a.last, min: a.min, max: a.max, nonfinite: a.xs.map(() => 0), steps: a.xs, lastSteps: a.xs,
    members: group.members };
}

/** The x of a step in a run's series (its nearest bucket at or before it), in the x mode. */
export function stepToX(s, step, xMode, origin = 0) {
  if (xMode === "step") return step;
  if (!s || !s.step.length) return null;
  let best = 0;
  for (let i = 0; i < s.step.length; i++) if (s.step[i] <= step) best = i; else break;
  return s.wall[best] - (xMode === "relative" ? origin : 0);
}

/** A sensible x range around a single x: a point at step 5 gets 4..6, at step 3000 2000..4000. */
export function singleXRange(x, mode) {
  const span = mode === "step" ? Math.max(1, Math.pow(10, Math.floor(Math.log10(Math.max(1, Math.abs(x)))))) : 60;
  let a = x - span;
  const b = x + span;
  if (x >= 0 && a < 0) a = -0.05 * b;
  return [a, b];
}
