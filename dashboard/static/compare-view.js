// The compare view's page furniture, built from plain data and callbacks: run chips, the series
// and "add runs" pickers, the export menu, the alert list, and the sweep section (config diff and a
// parameter-vs-metric scatter). The charts are chart.js; the state and data flow are compare.js.

import { el, clear, apiUrl, fmtNum, runLabel, runUrl, projectUrl, bestOf } from "./lib.js";
import { fetchProjectRuns, configDiff, fieldValue, valueLabel } from "./compare-data.js";

const statusClass = (s) => "badge status-" + String(s).replace(/[^a-z]/g, "");

/**
 * One chip per run: colour picker, name (click: hide/show; hover: highlight), link, status, remove.
 * Collapsed, the chips keep to one line and a "+N more" button shows the rest.
 */
export function renderChips(box, { runs, colors, hidden, removable, collapsed, onToggle, onRemove, onColor,
  onHighlight, onExpand, extra = [] }) {
  clear(box);
  box.classList.toggle("collapsed", collapsed);
  const list = el("div", { class: "chip-list" });
  for (const [id, run] of runs) {
    const color = colors.get(id) || "#888888";
    const pick = el("input", { type: "color", class: "swatch-pick", value: color, title: "colour of this run",
      "aria-label": `colour of ${runLabel(run)}` });
    pick.addEventListener("change", () => onColor(id, pick.value));
    const toggle = el("button", { type: "button", class: "chip-toggle", title: hidden.has(id) ? "show this run" : "hide this run",
      "aria-pressed": hidden.has(id) ? "false" : "true", onclick: () => onToggle(id) },
    el("span", { class: "run-name", text: runLabel(run) }));
    const chip = el("span", { class: "chip" + (hidden.has(id) ? " off" : ""), dataset: { run: id } }, pick, toggle,
      // The run page keeps the run's colour of this view.
      el("a", { href: `${runUrl(id)}?colors=${encodeURIComponent(`${id}:${color.slice(1)}`)}`, class: "chip-link",
        title: `open run ${id}`, text: "↗" }),
      el("span", { class: statusClass(run.status), text: run.status || "" }));
    chip.addEventListener("mouseenter", () => onHighlight(id));
    chip.addEventListener("mouseleave", () => onHighlight(null));
    if (removable) {
      chip.append(el("button", { type: "button", class: "link remove", title: "remove from the comparison", text: "×",
        onclick: () => onRemove(id) }));
    }
    list.append(chip);
  }
  const more = el("button", { type: "button", class: "link more", id: "chips-more", hidden: true, onclick: onExpand });
  box.append(list, more, ...extra);
  if (collapsed) {
    // After layout: count the chips that wrapped below the first line and offer them.
    requestAnimationFrame(() => {
      const chips = [...list.children];
      if (!chips.length) return;
      const top = chips[0].offsetTop;
      const below = chips.filter((c) => c.offsetTop > top + 2).length;
      more.hidden = below === 0;
      more.textContent = `+${below} more`;
      more.dataset.count = String(below);
    });
  } else if (runs.size > 1) {
    more.hidden = false;
    more.textContent = "fewer";
    more.dataset.count = "0";
  }
}

export function renderKeysPicker(box, all, shown, onApply) {
  clear(box);
  box.append(el("summary", { text: `series (${shown.size} of ${all.length})` }));
  const list = el("div", { class: "picker-list" });
  for (const [k, kind] of all) {
    const check = el("input", { type: "checkbox", value: k });
    check.checked = shown.has(k);
    list.append(el("label", { class: "picker-item" }, check, " ", el("span", { class: "mono", text: k }), " ",
      el("span", { class: "kind", text: kind })));
  }
  const apply = el("button", { type: "button", text: "show", onclick: () => {
    const chosen = [...list.querySelectorAll("input:checked")].map((b) => b.value);
    onApply(chosen.length === all.length ? [] : chosen);
  } });
  const allButton = el("button", { type: "button", class: "link", text: "all",
    onclick: () => list.querySelectorAll("input").forEach((b) => { b.checked = true; }) });
  const noneButton = el("button", { type: "button", class: "link", text: "none",
    onclick: () => list.querySelectorAll("input").forEach((b) => { b.checked = false; }) });
  box.append(list, el("div", {}, apply, " ", allButton, " ", noneButton));
}

export function renderExport(box, runs, keys) {
  clear(box);
  box.append(el("summary", { text: "export" }));
  const list = el("div", { class: "picker-list" });
  for (const [id, run] of runs) {
    const href = apiUrl(`/runs/${encodeURIComponent(id)}/export.csv`, { key: keys });
    list.append(el("a", { class: "csv-link", href, download: `${id}.csv`, dataset: { run: id } },
      "CSV of ", el("span", { text: runLabel(run) })));
  }
  list.append(el("p", { class: "muted small", text: "PNG: the button on each panel." }));
  box.append(list);
}

/** "add runs…": the project's other runs, filtered by name; picking one adds it to this comparison. */
export function renderAddRuns(box, project, present, onAdd) {
  clear(box);
  box.append(el("summary", { text: "add runs…" }));
  const filter = el("input", { type: "search", placeholder: "name contains", "aria-label": "filter runs by name", class: "small" });
  const list = el("div", { class: "add-list" });
  const body = el("div", { class: "picker-list" }, filter, list,
    el("a", { class: "small", href: projectUrl(project), text: "runs table" }));
  box.append(body);
  let timer = null;
  const load = async () => {
    clear(list);
    list.append(el("span", { class: "muted small", text: "loading…" }));
    let runs = [];
    try { runs = await fetchProjectRuns(project, filter.value.trim()); } catch (err) {
      clear(list);
      list.append(el("span", { class: "error small", text: "could not list runs: " + err.message }));
      return;
    }
    clear(list);
    const others = runs.filter((r) => !present().has(r.id));
    if (!others.length) list.append(el("span", { class: "muted small", text: "no other runs" }));
    for (const r of others) {
      list.append(el("button", { type: "button", class: "link add-run", dataset: { run: r.id }, title: r.id,
        text: runLabel(r), onclick: () => { onAdd(r.id); box.open = false; } }));
    }
  };
  box.ontoggle = () => { if (box.open) load(); }; // a property: re-rendering replaces it, never adds one
  filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(load, 200); });
}

/** The alerts above the panels: three, then "+N more". Click one to zoom to its onset. */
export function renderAlerts(list, alerts, runs, { expanded, onZoom, onExpand }) {
  clear(list);
  const limit = expanded ? 20 : 3;
  for (const a of alerts.slice(0, limit)) {
    // One line each (cut with an ellipsis; the whole alert on hover), so that alerts with long run names
    // do not push the first chart down.
    const title = `${a.status} · ${runLabel(runs.get(a.run))} · ${a.series} · ${a.rule} at step ${fmtNum(a.onset_step)}: ${a.message}`;
    const item = el("li", { class: "alert sev-" + String(a.severity).replace(/[^a-z]/g, "") + " st-" + String(a.status).replace(/[^a-z]/g, ""),
      title },
      el("span", { class: "badge", text: a.status }), " ",
      el("span", { class: "mono", text: runLabel(runs.get(a.run)) }), " · ",
      el("span", { class: "mono", text: a.series }), " · ", el("b", { text: a.rule }),
      ` at step ${fmtNum(a.onset_step)}: `, el("span", { text: a.message }));
    item.addEventListener("click", () => onZoom(a));
    list.append(item);
  }
  if (alerts.length > limit) {
    const rest = alerts.length - limit;
    if (!expanded) {
      list.append(el("li", { class: "more" }, el("button", { type: "button", class: "link", id: "alerts-more",
        text: `+${rest} more alert${rest === 1 ? "" : "s"}`, onclick: onExpand })));
    } else list.append(el("li", { class: "muted", text: `… ${rest} more on the alerts page` }));
  }
}

/**
 * The sweep section: the config keys whose values differ between the runs (one column per run), and a
 * scatter of a config value against a series statistic (last, min or max of the run's summary).
 * Closed (`full` false), only its summary line is built.
 */
export function renderSweep(box, runs, colors, choice, onChoice, full = true) {
  clear(box);
  const list = [...runs.values()];
  const diff = configDiff(list);
  box.append(el("summary", { text: `config diff (${diff.length} key${diff.length === 1 ? "" : "s"} differ) · parameter vs metric` }));
  if (!full) return; // built when opened
  if (!diff.length) {
    box.append(el("p", { class: "muted small", text: "The compared runs have the same config." }));
  } else {
    const head = el("tr", {}, el("th", { text: "config key" }),
      ...list.map((r) => el("th", { class: "run-col", title: r.id },
        el("span", { class: "swatch", style: `background:${colors.get(r.id) || "#888"}` }), " ",
        el("span", { class: "run-name", text: runLabel(r) }))));
    const rows = diff.map(([k, vals]) => el("tr", { dataset: { key: k } }, el("td", { class: "mono", text: k }),
      ...vals.map((v) => el("td", { class: typeof v === "number" ? "num" : "", text: v === undefined ? "—" : valueLabel(v) }))));
    box.append(el("div", { class: "table-wrap" }, el("table", { class: "grid compact config-diff", id: "config-diff-table" },
      el("thead", {}, head), el("tbody", {}, ...rows))));
  }
  // Parameter vs metric.
  const numericKeys = diff.filter(([, vals]) => vals.filter((v) => typeof v === "number").length >= 2).map(([k]) => k);
  const seriesKeys = new Map();
  for (const r of list) for (const [k, s] of Object.entries(r.summary || {})) if (!seriesKeys.has(k)) seriesKeys.set(k, s.kind);
  if (!numericKeys.length || !seriesKeys.size) {
    box.append(el("p", { class: "muted small", text: "Parameter vs metric: needs a numeric config key that differs between runs." }));
    return;
  }
  const param = numericKeys.includes(choice.param) ? choice.param : numericKeys[0];
  const metricKeys = [...seriesKeys.keys()];
  const preferred = metricKeys.find((k) => seriesKeys.get(k) === "metric") || metricKeys[0];
  const series = seriesKeys.has(choice.series) ? choice.series : preferred;
  const stat = ["last", "min", "max"].includes(choice.stat) ? choice.stat : (bestOf(seriesKeys.get(series)) || "last");
  const sel = (id, values, value, label) => {
    const s = el("select", { id, "aria-label": label }, ...values.map((v) => el("option", { value: v, text: v })));
    s.value = value;
    s.addEventListener("change", () => onChoice({ param: paramSel.value, series: seriesSel.value, stat: statSel.value }));
    return s;
  };
  const paramSel = sel("scatter-param", numericKeys, param, "config key");
  const seriesSel = sel("scatter-series", metricKeys, series, "series");
  const statSel = sel("scatter-stat", ["last", "min", "max"], stat, "statistic");
  box.append(el("div", { class: "controls scatter-controls" }, "x: config ", paramSel, " y: ", statSel, " of ", seriesSel));
  const points = [];
  for (const r of list) {
    const x = fieldValue(r, "config." + param);
    const s = (r.summary || {})[series];
    const y = s ? (stat === "last" ? (typeof s.last === "number" ? s.last : null) : s[stat]) : null;
    if (typeof x === "number" && Number.isFinite(x) && typeof y === "number" && Number.isFinite(y)) {
      points.push({ id: r.id, label: runLabel(r), x, y, color: colors.get(r.id) || "#888" });
    }
  }
  const canvas = drawScatter(points, `config.${param}`, `${stat} of ${series}`);
  canvas.dataset.points = String(points.length);
  box.append(canvas);
}

function drawScatter(points, xLabel, yLabel) {
  const w = 480, h = 300, dpr = devicePixelRatio || 1;
  const canvas = el("canvas", { id: "scatter", class: "scatter", width: String(w * dpr), height: String(h * dpr),
    style: `width:${w}px;height:${h}px`, role: "img", "aria-label": `${yLabel} against ${xLabel}` });
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  const left = 64, right = 12, top = 12, bottom = 40;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(left, top, w - left - right, h - top - bottom);
  ctx.fillStyle = "#555";
  ctx.font = "12px sans-serif";
  ctx.fillText(xLabel, left, h - 6);
  ctx.save();
  ctx.translate(12, top + (h - top - bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText(yLabel, 0, 0);
  ctx.restore();
  if (!points.length) { ctx.fillText("no run has both values", left + 10, top + 20); return canvas; }
  const ext = (vals) => {
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    const pad = (hi - lo) * 0.08;
    return [lo - pad, hi + pad];
  };
  const [x0, x1] = ext(points.map((p) => p.x)), [y0, y1] = ext(points.map((p) => p.y));
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (w - left - right);
  const py = (y) => h - bottom - ((y - y0) / (y1 - y0)) * (h - top - bottom);
  ctx.fillStyle = "#555";
  ctx.fillText(fmtNum(Number(x0.toPrecision(3))), left, h - bottom + 14);
  ctx.textAlign = "right";
  ctx.fillText(fmtNum(Number(x1.toPrecision(3))), w - right, h - bottom + 14);
  ctx.fillText(fmtNum(Number(y1.toPrecision(3))), left - 4, top + 10);
  ctx.fillText(fmtNum(Number(y0.toPrecision(3))), left - 4, h - bottom);
  for (const p of points) {
    ctx.fillStyle = p.color;
    ctx.beginPath();
    ctx.arc(px(p.x), py(p.y), 5, 0, 2 * Math.PI);
    ctx.fill();
  }
  return canvas;
}

/** A panel's "y" button: manual min and/or max; onSet([min, max]) or onSet(null) for automatic. */
export function renderYLimit(toolbar, [lo, hi], onSet) {
  const box = el("details", { class: "ylim" }, el("summary", { class: "small", text: "y", title: "y range of this panel" }));
  const min = el("input", { type: "number", step: "any", class: "small ylim-min", placeholder: "min", "aria-label": "y min", value: lo ?? "" });
  const max = el("input", { type: "number", step: "any", class: "small ylim-max", placeholder: "max", "aria-label": "y max", value: hi ?? "" });
  const apply = () => {
    const a = min.value === "" ? null : Number(min.value), b = max.value === "" ? null : Number(max.value);
    onSet((a === null && b === null) || (a !== null && b !== null && b <= a) ? null : [a, b]);
  };
  box.append(el("div", { class: "ylim-form" }, min, " – ", max,
    el("button", { type: "button", class: "small ylim-apply", text: "set", onclick: apply }),
    el("button", { type: "button", class: "small link ylim-auto", text: "auto", onclick: () => { min.value = ""; max.value = ""; apply(); } })));
  toolbar.prepend(box);
}
