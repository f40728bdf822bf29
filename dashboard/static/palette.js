// Run colours: a fixed categorical palette, handed out in the order runs join a view.
//
// The first ten are Tableau 10 (minimum pairwise CIEDE2000 difference 18.1); the next ten were picked
// greedily, each the sRGB colour (L* 25..78, readable on white) farthest from those before it, so the
// first twenty keep that minimum of 18.1 (Glasbey's 20 reach 12.9). tests/browser/test_compare.py reads
// this array and checks both figures. Past twenty runs the palette starts again.

export const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
  "#690087", "#004b2d", "#780f1e", "#5a3c00", "#b4b4ff", "#c300ff", "#5a4b5a", "#877800", "#0f4b5a", "#00b4ff",
];

export const HEX = /^[0-9a-fA-F]{6}$/;
const SLOT = /^\d{1,3}$/; // a palette slot; six digits are a colour

/**
 * Colour of every run of a view: a user-picked colour (`colors[id]` = "rrggbb") wins, then a pinned
 * palette slot (`colors[id]` = "3", kept when an earlier run leaves the view), then the lowest free slot,
 * in the order of `ids`. Returns Map id -> "#rrggbb" and Map id -> palette slot.
 */
export function assignColors(ids, colors = {}) {
  const out = new Map(), slots = new Map(), taken = new Set();
  for (const id of ids) {
    const c = colors[id];
    if (c !== undefined && SLOT.test(c)) taken.add(Number(c) % PALETTE.length);
  }
  let next = 0;
  for (const id of ids) {
    const c = colors[id];
    let slot;
    if (c !== undefined && SLOT.test(c)) slot = Number(c) % PALETTE.length;
    else {
      // A run with a picked colour still takes its slot, so picking a colour never moves the others.
      while (taken.has(next % PALETTE.length) && next < PALETTE.length) next++;
      slot = next % PALETTE.length;
      next++;
      taken.add(slot);
    }
    const picked = c !== undefined && HEX.test(c);
    out.set(id, picked ? "#" + c.toLowerCase() : PALETTE[slot]);
    slots.set(id, slot);
  }
  return { colors: out, slots };
}

/** "#rrggbb" with an alpha, as rgba(). */
export function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

/** A lighter tint of "#rrggbb" (mixed with white), for stacked areas. */
export function tint(hex, amount = 0.55) {
  const n = parseInt(hex.slice(1), 16);
  const mix = (v) => Math.round(v + (255 - v) * amount);
  return `rgb(${mix((n >> 16) & 255)}, ${mix((n >> 8) & 255)}, ${mix(n & 255)})`;
}
