// The runs table's columns: what they are, which show by default, the user's choice (hide, reorder)
// kept in localStorage per project, and the column manager that edits it.
//
// Default order: name (pinned), status, alerts, the loss sparkline, the series columns (last / best
// of each series), then created, duration, group, tags, and the config columns last. Shown by
// default: the main loss's last and best value, every other loss's and metric's best value, and the
// config values that differ between the page's runs (a group shared by all is hidden too); the
// rest (loss components, lr, grad_norm, other series, constant config) is a click away.

import { el, clear, flatten, fmtValue, bestOf, KIND_ORDER } from "./lib.js";

const STORE = "losswatch:runs-columns:";

function configValue(run, key) {
  const found = flatten(run.config || {}).find(([k]) => k === key);
  return found ? found[1] : undefined;
}

/** Every column the page's runs could show, in the default order, each with .byDefault. */
export function columnCatalog(runs) {
  const configKeys = new Set();
  const seriesKinds = new Map();
  for (const r of runs) {
    for (const [k] of flatten(r.config || {})) configKeys.add(k);
    for (const [k, s] of Object.entries(r.summary || {})) if (!seriesKinds.has(k)) seriesKinds.set(k, (s && s.kind) || "other");
  }
  const many = runs.length > 1;
  const same = (f) => many && new Set(runs.map((r) => JSON.stringify(f(r) ?? null))).size === 1;
  const cols = [
    { id: "status", label: "status", sort: "status", section: "run", byDefault: true },
    { id: "alerts", label: "alerts", local: true, section: "run", byDefault: true },
    { id: "spark", label: "loss", sub: "trend", section: "run", byDefault: true },
  ];
  const rank = (kind) => { const i = KIND_ORDER.indexOf(kind); return i < 0 ? KIND_ORDER.length : i; };
  const keys = [...seriesKinds.entries()].sort((a, b) => rank(a[1]) - rank(b[1]) || (a[0] < b[0] ? -1 : 1));
  // The main loss (the one the sparkline draws) shows its last value too; other series their best.
  const losses = keys.filter(([, kind]) => kind === "loss").map(([k]) => k);
  const main = losses.includes("train/loss") ? "train/loss" : losses.sort()[0];
  for (const [k, kind] of keys) {
    const best = bestOf(kind);
    cols.push({ id: "last:" + k, key: k, label: k, sub: "last", kind, sort: "last:" + k, cls: "num",
      section: "series", byDefault: k === main });
    if (best) cols.push({ id: best + ":" + k, key: k, label: k, sub: best === "max" ? "best (max)" : "best (min)", kind,
      stat: best, sort: best + ":" + k, cls: "num", section: "series", byDefault: kind === "loss" || kind === "metric" });
  }
  cols.push(
    { id: "created_at", label: "created", sort: "created_at", section: "run", byDefault: true },
    { id: "duration", label: "duration", local: true, section: "run", byDefault: true },
    { id: "group", label: "group", sort: "group", section: "run", byDefault: !same((r) => r.group) },
    { id: "tags", label: "tags", local: true, section: "run", byDefault: true },
  );
  for (const k of [...configKeys].sort()) {
    const constant = same((r) => configValue(r, k));
    cols.push({ id: "config." + k, key: k, label: k, sub: "config", sort: "config." + k, cls: "num", section: "config",
      constant, byDefault: !constant });
  }
  return cols;
}

export { configValue };

/** The user's choice for a project: {order: [ids], show: [ids], hide: [ids]}. */
export function loadChoice(project) {
  try {
    const got = JSON.parse(localStorage.getItem(STORE + project) || "{}");
    return { order: Array.isArray(got.order) ? got.order : [], show: Array.isArray(got.show) ? got.show : [],
      hide: Array.isArray(got.hide) ? got.hide : [] };
  } catch {
    return { order: [], show: [], hide: [] };
  }
}

export function saveChoice(project, choice) {
  try {
    if (!choice.order.length && !choice.show.length && !choice.hide.length) localStorage.removeItem(STORE + project);
    else localStorage.setItem(STORE + project, JSON.stringify(choice));
  } catch { /* storage full or disabled: the choice lasts for this page only */ }
}

export function isVisible(col, choice) {
  if (choice.show.includes(col.id)) return true;
  if (choice.hide.includes(col.id)) return false;
  return col.byDefault;
}

/** The catalog in the user's order: listed ids first as listed; a new column goes after its default predecessor. */
export function ordered(catalog, choice) {
  if (!choice.order.length) return catalog.slice();
  const byId = new Map(catalog.map((c) => [c.id, c]));
  const out = choice.order.filter((id) => byId.has(id)).map((id) => byId.get(id));
  const placed = new Set(out.map((c) => c.id));
  catalog.forEach((c, i) => {
    if (placed.has(c.id)) return;
    let at = out.length;
    for (let j = i - 1; j >= 0; j--) {
      const k = out.findIndex((o) => o.id === catalog[j].id);
      if (k >= 0) { at = k + 1; break; }
    }
    if (i === 0) at = 0;
    out.splice(at, 0, c);
    placed.add(c.id);
  });
  return out;
}

function title(col) {
  return col.sub && col.sub !== "config" ? `${col.label} · ${col.sub}` : col.label;
}

/**
 * Fill the manager (a <details>) for the catalog: a checkbox per column, move up/down, reset.
 * onChange(choice) is called after every edit, with the choice already saved.
 */
export function renderManager(box, project, catalog, choice, onChange) {
  const list = ordered(catalog, choice);
  const shown = list.filter((c) => isVisible(c, choice)).length;
  const summary = box.querySelector("summary") || el("summary");
  summary.textContent = `columns (${shown} of ${list.length})`;
  clear(box).append(summary);
  const edit = (fn) => {
    // Keep the keyboard focus on the same control across the re-render.
    const a = document.activeElement;
    const item = a && a.closest ? a.closest(".column-item") : null;
    const again = item ? `.column-item[data-col="${CSS.escape(item.dataset.col)}"] ${a.dataset.move ? `[data-move="${a.dataset.move}"]` : "input"}` : null;
    fn();
    saveChoice(project, choice);
    onChange(choice);
    const target = again && box.querySelector(again);
    if (target && !target.disabled) target.focus();
  };
  const setVisible = (col, on) => {
    choice.show = choice.show.filter((id) => id !== col.id);
    choice.hide = choice.hide.filter((id) => id !== col.id);
    if (on !== col.byDefault) (on ? choice.show : choice.hide).push(col.id);
  };
  const move = (col, delta) => {
    const ids = ordered(catalog, choice).map((c) => c.id);
    const i = ids.indexOf(col.id), j = i + delta;
    if (i < 0 || j < 0 || j >= ids.length) return;
    [ids[i], ids[j]] = [ids[j], ids[i]];
    choice.order = ids;
  };
  const panel = el("div", { class: "picker-list column-list", role: "group", "aria-label": "columns" });
  panel.append(el("div", { class: "column-actions" },
    el("span", { class: "muted small", text: "name stays pinned on the left" }),
    el("button", { type: "button", class: "small", id: "columns-reset", text: "reset",
      onclick: () => edit(() => { choice.order = []; choice.show = []; choice.hide = []; }) })));
  list.forEach((col, i) => {
    const box2 = el("input", { type: "checkbox", dataset: { col: col.id } });
    box2.checked = isVisible(col, choice);
    box2.addEventListener("change", () => edit(() => setVisible(col, box2.checked)));
    panel.append(el("div", { class: "column-item", dataset: { col: col.id } },
      el("label", { class: "picker-item" }, box2, " ", el("span", { class: "mono", text: title(col) }),
        col.section === "config" ? el("span", { class: "kind", text: col.constant ? " config · same in every run" : " config" }) : null,
        col.kind ? el("span", { class: "kind", text: " " + col.kind }) : null),
      el("span", { class: "spacer" }),
      el("button", { type: "button", class: "small move", text: "↑", disabled: i === 0, "aria-label": `move ${title(col)} left`,
        dataset: { move: "up" }, onclick: () => edit(() => move(col, -1)) }),
      el("button", { type: "button", class: "small move", text: "↓", disabled: i === list.length - 1,
        "aria-label": `move ${title(col)} right`, dataset: { move: "down" }, onclick: () => edit(() => move(col, +1)) })));
  });
  box.append(panel);
}
