// The run page's charts: the compare view's panels regrouped into one collapsible section per key
// prefix (train/, val/, sys/, …) and filtered by a search (substring, or /regex/ between slashes).
//
// The compare view owns its panels and rebuilds them at times (x axis, stacking, new series); this
// module only moves the panel elements it finds into its <details> sections, again after each rebuild.
// Which prefixes are collapsed is kept in localStorage (the same on every run page).

import { el, clear } from "./lib.js";

const FOLDED = "losswatch:run-folded";

function prefixOf(key) {
  const i = key.indexOf("/");
  return i > 0 ? key.slice(0, i + 1) : "";
}

function loadFolded() {
  try {
    const got = JSON.parse(localStorage.getItem(FOLDED) || "[]");
    return new Set(Array.isArray(got) ? got.filter((x) => typeof x === "string") : []);
  } catch {
    return new Set();
  }
}

function saveFolded(folded) {
  try { localStorage.setItem(FOLDED, JSON.stringify([...folded])); } catch { /* private mode */ }
}

/** A matcher for the search text: /re/flags is a regular expression, anything else a substring (any case). */
export function matcher(text) {
  const t = text.trim();
  if (!t) return { test: () => true, error: null };
  const m = /^\/(.+)\/([a-z]*)$/.exec(t);
  if (m) {
    try {
      const re = new RegExp(m[1], m[2] || "i"); // case-insensitive unless flags are given
      return { test: (k) => re.test(k), error: null };
    } catch (err) {
      return { test: () => true, error: "not a regular expression: " + err.message };
    }
  }
  const low = t.toLowerCase();
  return { test: (k) => k.toLowerCase().includes(low), error: null };
}

export function mountRunPanels(compareRoot, { search, count, expandAll, collapseAll }) {
  const folded = loadFolded();
  let observer = null;
  let box = null;

  const resizeCharts = () => window.dispatchEvent(new Event("resize"));

  function sections() {
    return box ? [...box.querySelectorAll(":scope > details.prefix-section")] : [];
  }

  function applySearch() {
    const m = matcher(search.value);
    let shown = 0, total = 0;
    for (const sec of sections()) {
      let visible = 0;
      const panels = sec.querySelectorAll(".panel[data-key]");
      for (const p of panels) {
        const ok = m.test(p.dataset.key) || (p.dataset.key.startsWith("stacked:") && m.test(p.querySelector(".panel-title")?.textContent || ""));
        p.hidden = !ok;
        if (ok) visible++;
      }
      total += panels.length;
      shown += visible;
      sec.hidden = visible === 0;
      sec.querySelector("summary .count").textContent = visible === panels.length
        ? ` ${panels.length} chart${panels.length === 1 ? "" : "s"}` : ` ${visible} of ${panels.length} charts`;
    }
    search.setCustomValidity(m.error || "");
    search.classList.toggle("invalid", !!m.error);
    count.textContent = m.error ? m.error : search.value.trim() ? `${shown} of ${total} charts` : `${total} charts`;
    count.classList.toggle("error", !!m.error);
    resizeCharts();
  }

  function regroup() {
    const panels = [...box.querySelectorAll(".panel[data-key]")];
    if (!panels.length || panels.every((p) => p.parentElement?.parentElement?.classList.contains("prefix-section"))) return;
    observer.disconnect();
    const firstLoss = panels.find((p) => p.dataset.kind === "loss");
    const stackPrefix = firstLoss ? prefixOf(firstLoss.dataset.key) : "";
    const groups = new Map();
    for (const p of panels) {
      const prefix = p.dataset.key.startsWith("stacked:") ? stackPrefix : prefixOf(p.dataset.key);
      if (!groups.has(prefix)) groups.set(prefix, []);
      groups.get(prefix).push(p);
    }
    const made = [];
    for (const [prefix, members] of groups) {
      const grid = el("div", { class: "panel-grid" });
      grid.append(...members); // moves the panel elements; the compare view keeps its references
      const sec = el("details", { class: "prefix-section", dataset: { prefix } },
        el("summary", {}, el("span", { class: "mono", text: prefix || "(no prefix)" }), el("span", { class: "muted count" })), grid);
      sec.open = !folded.has(prefix);
      sec.addEventListener("toggle", () => {
        if (sec.open) folded.delete(prefix); else folded.add(prefix);
        saveFolded(folded);
        if (sec.open) resizeCharts();
      });
      made.push(sec);
    }
    clear(box).append(...made);
    applySearch();
    observer.observe(box, { childList: true });
  }

  function attach() {
    box = compareRoot.querySelector(".panels");
    if (!box) return false;
    observer = new MutationObserver(() => regroup());
    observer.observe(box, { childList: true });
    regroup();
    return true;
  }

  search.addEventListener("input", applySearch);
  expandAll.addEventListener("click", () => { for (const s of sections()) s.open = true; });
  collapseAll.addEventListener("click", () => { for (const s of sections()) s.open = false; });
  if (!attach()) {
    // The compare view builds its skeleton synchronously; if a later version builds it later, wait for it.
    const wait = new MutationObserver(() => { if (attach()) wait.disconnect(); });
    wait.observe(compareRoot, { childList: true, subtree: true });
  }
  return { applySearch };
}
