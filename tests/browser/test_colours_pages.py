"""One colour per run across pages (issue 11): the runs table, the compare view and the run page use the
palette of dashboard/static/palette.js; in the table a run's colour is its row's slot, and the links to the
compare view and to the run page carry it (``colors=<id>:<slot>``), so the run is drawn in the same colour.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Page, make_run

pytestmark = pytest.mark.browser

PALETTE = re.findall(r'"(#[0-9a-f]{6})"', (Path(__file__).parents[2] / "dashboard/static/palette.js").read_text()
                     .split("export const PALETTE = [", 1)[1].split("];", 1)[0])


def _rgb(hex_: str) -> str:
    n = int(hex_[1:], 16)
    return f"rgb({n >> 16 & 255}, {n >> 8 & 255}, {n & 255})"


def _table_colours(page: Page) -> list[tuple[str, str]]:
    """(run id, computed swatch colour) of each row, top to bottom."""
    return page.page.evaluate("""() => [...document.querySelectorAll('#runs tbody tr[data-run]')].map((tr) =>
        [tr.dataset.run, getComputedStyle(tr.querySelector('.swatch')).backgroundColor])""")


@pytest.fixture
def three(api: httpx.Client, project: str) -> list[str]:
    # Made oldest first; the table lists the newest first, so its rows are c, b, a.
    return [make_run(api, project, name, steps=300) for name in ("a", "b", "c")]


def test_palette_is_read() -> None:
    assert len(PALETTE) == 20 and len(set(PALETTE)) == 20


def test_runs_table_uses_the_palette_in_row_order(page: Page, project: str, three: list[str]) -> None:
    page.goto(f"/p/{project}")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    rows = _table_colours(page)
    assert [r[0] for r in rows] == three[::-1]
    assert [r[1] for r in rows] == [_rgb(c) for c in PALETTE[:3]]


def test_compare_link_keeps_the_table_colours(page: Page, project: str, three: list[str]) -> None:
    page.goto(f"/p/{project}")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    table = dict(_table_colours(page))
    # Tick the third row, then the first: the compare view's join order differs from the table's.
    c, _b, a = three[::-1]
    for rid in (a, c):
        page.page.check(f"input[data-run='{rid}']")
    page.page.click("#compare")
    page.page.wait_for_url(re.compile(r"/compare\?"))
    assert f"colors={a}:2,{c}:0" in page.page.url
    info = page.wait_ready()
    assert set(info["colors"]) == {a, c}
    for rid in (a, c):
        assert _rgb(info["colors"][rid]) == table[rid]
    chips = page.page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.chip')].map((c) =>
        [c.dataset.run, c.querySelector('.swatch-pick').value]))""")
    assert chips == {a: PALETTE[2], c: PALETTE[0]}


def test_run_page_keeps_the_table_colour(page: Page, project: str, three: list[str]) -> None:
    page.goto(f"/p/{project}")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    b = three[1]  # the second row: slot 1
    page.page.click(f"tr[data-run='{b}'] a.run-name")
    page.page.wait_for_url(re.compile(r"/runs/"))
    info: dict[str, Any] = page.wait_ready()
    assert info["colors"] == {b: PALETTE[1]}
    assert page.page.get_attribute("#run-swatch", "data-color") == PALETTE[1]
    drawn = [panel["colors"] for panel in info["panels"] if panel["runs"] == [b]]
    assert drawn and all(colors == [PALETTE[1]] for colors in drawn)


def test_run_page_alone_takes_the_first_colour(page: Page, project: str, three: list[str]) -> None:
    page.goto(f"/runs/{three[0]}")
    info = page.wait_ready()
    assert info["colors"] == {three[0]: PALETTE[0]}
    assert page.page.get_attribute("#run-swatch", "data-color") == PALETTE[0]


def test_compare_chip_link_carries_the_colour_to_the_run_page(page: Page, project: str, three: list[str]) -> None:
    a, b, _c = three
    page.goto(f"/p/{project}/compare?runs={a},{b}&colors={b}:7")
    page.wait_ready()
    href = page.page.get_attribute(f".chip[data-run='{b}'] a.chip-link", "href")
    assert href is not None and PALETTE[7][1:] in href
    page.goto(href)
    info = page.wait_ready()
    assert info["colors"] == {b: PALETTE[7]}


def test_alerts_page_breaks_run_names_between_words(page: Page, api: httpx.Client, project: str) -> None:
    # Screenshot defect (alerts page, 20 runs at 1280 px): "optimizer=adamw" was cut as "optimizer=ada" / "mw".
    names = [f"sweep lr={lr} seed={i} optimizer=adamw" for i, lr in enumerate(("6e-03", "9e-03", "1e-02"))]
    for name in names:
        make_run(api, project, name, steps=300, nan_at=150)
    page.page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/p/{project}/alerts")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    assert page.page.locator("#alerts tbody tr").count() == 3
    # Every word of every run name lies on one line (a word cut in two has two client rects).
    split = page.page.evaluate("""() => {
        const out = [];
        for (const a of document.querySelectorAll('#alerts td.run-cell a')) {
            const text = a.firstChild, s = text.textContent;
            let i = 0;
            for (const word of s.split(' ')) {
                const r = document.createRange();
                r.setStart(text, i); r.setEnd(text, i + word.length);
                if (r.getClientRects().length > 1) out.push(word);
                i += word.length + 1;
            }
        }
        return out;
    }""")
    assert split == []
    assert page.page.evaluate("() => document.documentElement.scrollWidth") <= 1280


def test_pages_preload_their_whole_module_graph(page: Page, project: str, three: list[str]) -> None:
    # The compare view's query waited for three levels of imports; every module is now named up front.
    page.goto(f"/p/{project}/compare?runs={','.join(three)}")
    page.wait_ready()
    preloaded = set(page.page.evaluate(
        "() => [...document.querySelectorAll('link[rel=modulepreload]')].map((l) => l.getAttribute('href'))"))
    loaded = {e.split("?")[0].removeprefix(page.base) for e in page.page.evaluate(
        "() => performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.endsWith('.js'))")}
    modules = {m for m in loaded if "/vendor/" not in m and not m.endswith("/compare-page.js")}
    assert modules and modules <= preloaded, modules - preloaded


def test_compare_alerts_keep_to_one_line_each(page: Page, api: httpx.Client, project: str) -> None:
    # Screenshot defect (compare view, 20 runs at 1280 px): three alerts of long-named runs took two lines each.
    ids = [make_run(api, project, f"sweep lr={lr} seed={i} optimizer=adamw warmup=1000 schedule=cosine", steps=300,
                    nan_at=150) for i, lr in enumerate(("6e-03", "9e-03", "1e-02"))]
    page.page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/p/{project}/compare?runs={','.join(ids)}")
    info = page.wait_ready()
    assert info["alerts"] == 3
    items = page.page.locator("#alert-list li.alert")
    assert items.count() == 3
    # One line: as tall as the same item holding one short word (the padding included), not two.
    heights = items.evaluate_all("ls => ls.map((l) => l.getBoundingClientRect().height)")
    one = page.page.evaluate("""() => { const li = document.querySelector('#alert-list li.alert');
        const probe = li.cloneNode(false); probe.textContent = 'x'; li.parentElement.append(probe);
        const h = probe.getBoundingClientRect().height; probe.remove(); return h; }""")
    assert max(heights) <= one + 1, (heights, one)
    # Nothing is lost: the whole alert is on hover.
    titles = items.evaluate_all("ls => ls.map((l) => l.title)")
    assert all("non_finite" in t and "optimizer=adamw warmup=1000 schedule=cosine" in t and "NaN" in t for t in titles), titles
