"""The runs table, the run page, the alerts page and the empty project, in real Chromium at 1280 px.

Issue 11 (pages): the table is built around metrics (name pinned, a column manager, metric columns
before config, a loss sparkline, live refresh, relative times, groups), sort headers work from the
keyboard, badges meet WCAG AA, the run page shows its charts first (search, sections by key prefix),
the alerts page shows run names and can acknowledge and silence, an empty project teaches.
Every test fails on a page error (the ``page`` fixture) and on a console error (``ux`` below).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import Page, add_points, make_run

pytestmark = pytest.mark.browser

DEMO_WEIGHTS = {"box": 7.5, "cls": 0.5, "l1": 5.0}
DEMO_KINDS = {
    "train/loss": "loss", "train/loss/box": "loss_component", "train/loss/box_weighted": "loss_component",
    "train/loss/cls": "loss_component", "train/loss/cls_weighted": "loss_component", "train/loss/l1": "loss_component",
    "train/loss/l1_weighted": "loss_component", "train/loss/l2": "loss_component", "lr": "lr", "grad_norm": "grad_norm",
    "val/loss": "loss", "val/accuracy": "metric", "val/precision": "metric", "val/mIoU": "metric",
}


@pytest.fixture
def ux(page: Page) -> Any:
    """The page, failing the test on any console error as well."""
    console: list[str] = []
    page.page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    yield page
    assert not console, f"console errors on the page: {console}"


def _query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.page.url).query)


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def demo_like_run(api: httpx.Client, project: str, name: str, optimizer: str, group: str, *, steps: int = 300,
                  running: bool = False, nan_at_end: bool = False) -> str:
    """A run shaped like one of `losswatch demo`'s: its 14 series, its config, group and tags."""
    run_id = uuid.uuid4().hex
    config = {"optimizer": optimizer, "schedule": name, "weights": DEMO_WEIGHTS, "hidden": 64, "batch": 64, "steps": steps}
    r = api.post(f"/api/v1/projects/{project}/runs", json={"id": run_id, "name": name, "group": group,
                                                            "tags": ["demo", name], "config": config})
    assert r.status_code == 201, r.text
    train = list(range(steps))
    evals = list(range(49, steps, 50))
    series = []
    for key, kind in DEMO_KINDS.items():
        xs = evals if key.startswith("val/") else train
        values: list[float | str] = [round(1.0 + math.exp(-s / 80) + 0.01 * (hash(key) % 7), 6) for s in xs]
        if nan_at_end and key == "train/loss":
            values[-1] = "NaN"  # a firing non_finite alert, as the demo's diverging run gets
        series.append({"key": key, "kind": kind, "steps": xs, "values": values})
    r = api.post(f"/api/v1/runs/{run_id}/points", json={"series": series})
    assert r.status_code == 200, r.text
    if not running:
        assert api.post(f"/api/v1/runs/{run_id}/finish", json={"status": "finished"}).status_code == 200
    return run_id


def firing_run(api: httpx.Client, project: str, name: str, tail: list[float | str]) -> str:
    """A running run whose loss falls smoothly for 1,000 steps and then ends with ``tail``."""
    run_id = uuid.uuid4().hex
    assert api.post(f"/api/v1/projects/{project}/runs", json={"id": run_id, "name": name}).status_code == 201
    values: list[float | str] = [2.0 + math.exp(-s / 300) for s in range(1000)] + tail
    r = api.post(f"/api/v1/runs/{run_id}/points", json={"series": [
        {"key": "train/loss", "kind": "loss", "steps": list(range(len(values))), "values": values}]})
    assert r.status_code == 200, r.text
    return run_id


def _headers(page: Page) -> list[str]:
    return page.page.locator("#runs thead th").evaluate_all("ths => ths.map(th => th.dataset.col)")  # type: ignore[no-any-return]


def _open_table(page: Page, path: str) -> None:
    page.goto(path)
    page.page.wait_for_selector("body[data-ready='1']", state="attached")


# ---------------------------------------------------------------------------------------------
# Runs table


def test_runs_table_fits_1280_with_metrics_before_config_and_a_sparkline_per_row(ux: Page, api: httpx.Client,
                                                                              project: str) -> None:
    page = ux
    page.page.set_viewport_size({"width": 1280, "height": 800})
    ids = [demo_like_run(api, project, name, opt, "demo-20261202-0300", running=name == "plateau",
                         nan_at_end=name == "diverging")
           for name, opt in (("healthy", "adam"), ("diverging", "sgd"), ("plateau", "sgd"))]
    _open_table(page, f"/p/{project}")
    page.page.wait_for_selector("body[data-sparks='1']", state="attached")
    page.shot("runs-table-demo-1280")
    cols = _headers(page)
    assert cols[0] == "name"
    # Metric columns before config; losses' last and best, metrics' best; constant config hidden.
    series = [i for i, c in enumerate(cols) if c.startswith(("last:", "min:", "max:"))]
    config = [i for i, c in enumerate(cols) if c.startswith("config.")]
    assert series and config and max(series) < min(config)
    assert {"last:train/loss", "min:train/loss", "min:val/loss", "max:val/accuracy", "max:val/mIoU"} <= set(cols)
    assert "last:val/loss" not in cols
    assert {c for c in cols if c.startswith("config.")} == {"config.optimizer", "config.schedule"}
    assert "group" not in cols  # the same group for all three
    assert not any(c.startswith("last:train/loss/") for c in cols)  # components only on request
    # It fits: no horizontal scroll at 1280 px.
    fit = page.page.evaluate("() => { const w = document.getElementById('runs-wrap'); return [w.scrollWidth, w.clientWidth,"
                             " document.documentElement.scrollWidth]; }")
    assert page.page.locator(f"tr[data-run='{ids[1]}'] .alert-badge").text_content() == "1 firing"
    assert fit[0] <= fit[1] and fit[2] <= 1280, fit
    natural = page.page.locator("#runs").evaluate("t => { t.style.width = 'max-content'; const w = t.scrollWidth;"
                                                  " t.style.width = ''; return w; }")
    print(f"runs table of 3 demo-like runs at 1280 px: needs {natural} px of {fit[1]} px")
    # One sparkline per row, drawn from the run's train/loss.
    for rid in ids:
        spark = page.page.locator(f"tr[data-run='{rid}'] td[data-col='spark'] svg.spark")
        assert int(spark.get_attribute("data-points") or 0) >= 40
        assert "train/loss" in (spark.get_attribute("aria-label") or "")
    # Relative times, the full date on hover.
    created = page.page.locator(f"tr[data-run='{ids[0]}'] td[data-col='created_at'] time")
    assert created.text_content() in ("just now", "1 min ago")
    assert re.search(r"\d{4}", created.get_attribute("title") or "")


def test_a_sweep_of_20_runs_in_the_table_and_on_the_alerts_page(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    page.page.set_viewport_size({"width": 1280, "height": 800})
    ids = []
    for i in range(20):
        rid = uuid.uuid4().hex
        config = {"lr": [1e-4, 3e-4, 1e-3, 3e-3][i % 4], "batch": [32, 64][i % 2], "seed": i, "optimizer": "adamw",
                  "weights": DEMO_WEIGHTS, "epochs": 10}
        r = api.post(f"/api/v1/projects/{project}/runs", json={"id": rid, "name": f"sweep-lr{config['lr']}-b{config['batch']}-s{i}",
                                                                "group": f"sweep-{i % 2}", "config": config, "tags": ["sweep"]})
        assert r.status_code == 201, r.text
        tail: list[float | str] = ["NaN"] if i % 7 == 3 else []
        values: list[float | str] = [2.0 + math.exp(-s / (50 + 10 * i)) for s in range(400)] + tail
        r = api.post(f"/api/v1/runs/{rid}/points", json={"series": [
            {"key": "train/loss", "kind": "loss", "steps": list(range(len(values))), "values": values},
            {"key": "val/mAP50-95", "kind": "metric", "steps": [99, 199, 299, 399], "values": [0.1, 0.2, 0.25, 0.3 + i / 100]}]})
        assert r.status_code == 200, r.text
        ids.append(rid)
    _open_table(page, f"/p/{project}")
    page.page.wait_for_selector("body[data-sparks='1']", state="attached")
    page.shot("runs-table-20-runs")
    assert page.page.locator("#runs tbody tr[data-run]").count() == 20
    points = page.page.locator("#runs tbody svg.spark").evaluate_all("ss => ss.map(s => Number(s.dataset.points))")
    assert len(points) == 20 and min(points) >= 40, points
    # The NaN at the end of three runs is marked on their sparklines.
    nan_runs = {ids[i] for i in range(20) if i % 7 == 3}
    marked = page.page.locator("#runs tbody tr[data-run]:has(svg.spark .spark-bad)").evaluate_all("rs => rs.map(r => r.dataset.run)")
    assert set(marked) == nan_runs
    cols = _headers(page)
    assert {c for c in cols if c.startswith("config.")} == {"config.lr", "config.batch", "config.seed"}
    assert "group" in cols  # two groups: shown
    assert page.page.locator("#runs .alert-badge").count() == 3  # the NaN runs' firing alerts
    # Sorted by the metric's best value, best first.
    page.page.locator("th[data-col='max:val/mAP50-95']").click()
    page.page.locator("th[data-col='max:val/mAP50-95'][aria-sort='ascending']").click()
    page.page.locator("th[data-col='max:val/mAP50-95'][aria-sort='descending']").wait_for()
    _rows(page, ids[::-1])
    page.goto(f"/p/{project}/alerts")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    page.shot("alerts-page-20-runs")
    assert page.page.locator("#alerts tbody tr").count() == 3
    assert page.page.evaluate("() => document.documentElement.scrollWidth") <= 1280


def test_name_stays_pinned_while_the_table_scrolls_sideways(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    page.page.set_viewport_size({"width": 1280, "height": 800})
    wide = {f"param_{i:02d}_with_a_long_name": i for i in range(24)}
    a = make_run(api, project, "wide-a", steps=50, config={**wide, "seed": 1})
    make_run(api, project, "wide-b", steps=50, config={k: v + 1 for k, v in wide.items()} | {"seed": 2})
    _open_table(page, f"/p/{project}")
    page.page.locator("#runs-wrap").evaluate("w => { w.scrollLeft = w.scrollWidth; }")
    assert page.page.locator("#runs-wrap").evaluate("w => w.scrollLeft") > 300
    page.shot("runs-table-scrolled")
    # The name cell is still where it was, on top of whatever scrolled under it.
    hit = page.page.evaluate("""(id) => {
        const cell = document.querySelector(`tr[data-run="${id}"] td.pin`);
        const wrap = document.getElementById('runs-wrap').getBoundingClientRect();
        const box = cell.getBoundingClientRect();
        const link = cell.querySelector('a.run-name').getBoundingClientRect();
        const top = document.elementFromPoint(link.x + 4, link.y + link.height / 2);
        return {left: box.left - wrap.left, onTop: cell.contains(top)};
    }""", a)
    assert abs(hit["left"]) <= 1 and hit["onTop"], hit


def test_column_manager_hides_reorders_and_remembers(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    make_run(api, project, "a", steps=100, config={"lr": 0.1, "batch": 32})
    make_run(api, project, "b", steps=100, config={"lr": 0.2, "batch": 32})
    _open_table(page, f"/p/{project}")
    before = _headers(page)
    assert "config.lr" in before and "config.batch" not in before  # batch is the same in every run
    manager = page.page.locator("#columns-picker")
    manager.locator("summary").click()
    # Hide a column, show the constant one, move the loss's best value before its last value.
    manager.locator("input[data-col='status']").uncheck()
    manager.locator("input[data-col='config.batch']").check()
    manager.locator(".column-item[data-col='min:train/loss'] [data-move='up']").click()
    after = _headers(page)
    assert "status" not in after and "config.batch" in after
    assert after.index("min:train/loss") < after.index("last:train/loss")
    page.shot("runs-table-columns")
    # The choice survives a reload (localStorage, per project).
    page.page.reload()
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    assert _headers(page) == after
    manager.locator("summary").click()
    page.page.locator("#columns-reset").click()
    assert _headers(page) == before


def test_sort_headers_work_from_the_keyboard(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    small = make_run(api, project, "small", steps=100, config={"lr": 0.001})
    big = make_run(api, project, "big", steps=100, config={"lr": 0.01})
    _open_table(page, f"/p/{project}")
    th = page.page.locator("th[data-col='config.lr']")
    assert th.get_attribute("tabindex") == "0" and th.get_attribute("aria-sort") == "none"
    assert page.page.locator("th[data-col='created_at']").get_attribute("aria-sort") == "descending"
    th.focus()
    page.page.keyboard.press("Enter")
    page.page.wait_for_url("**sort=config.lr**")
    th = page.page.locator("th[data-col='config.lr'][aria-sort='ascending']")
    th.wait_for()
    assert page.page.evaluate("() => document.activeElement.dataset.col") == "config.lr"  # focus kept
    _rows(page, [small, big])
    page.page.keyboard.press(" ")
    page.page.wait_for_url("**sort=-config.lr**")
    page.page.locator("th[data-col='config.lr'][aria-sort='descending']").wait_for()
    _rows(page, [big, small])
    # Tab walks the sortable headers in order.
    page.page.locator("th[data-col='status']").focus()
    page.page.keyboard.press("Tab")
    assert page.page.evaluate("() => [document.activeElement.tagName, document.activeElement.dataset.col]") == ["TH", "alerts"]


def _rows(page: Page, expected: list[str]) -> None:
    _wait(lambda: page.page.locator("#runs tbody tr[data-run]").evaluate_all("rs => rs.map(r => r.dataset.run)") == expected,
          f"rows in order {expected}", 10)


CONTRAST_JS = """(sel) => [...document.querySelectorAll(sel)].map(e => {
    const s = getComputedStyle(e);
    return {cls: e.className, text: e.textContent, fg: s.color, bg: s.backgroundColor};
})"""


def _lum(rgb: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"[\d.]+", rgb)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(fg: str, bg: str) -> float:
    a, b = sorted((_lum(fg), _lum(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def _assert_aa(badges: list[dict[str, str]]) -> None:
    assert badges
    for b in badges:
        assert not b["bg"].startswith("rgba(0, 0, 0, 0)"), b  # a badge paints its own background
        ratio = _contrast(b["fg"], b["bg"])
        assert ratio >= 4.5, f"{b['cls']} {b['text']!r}: {b['fg']} on {b['bg']} is {ratio:.2f}:1"


def test_status_warning_and_severity_badges_meet_wcag_aa(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    for status in ("finished", "failed", "crashed", "stopped"):
        rid = make_run(api, project, status, steps=50, running=True)
        assert api.post(f"/api/v1/runs/{rid}/finish", json={"status": status}).status_code == 200
    make_run(api, project, "running", steps=50, running=True)
    firing_run(api, project, "nan", ["NaN"])           # critical: non_finite, still firing
    firing_run(api, project, "spiky", [60.0] * 6)      # warning: spike, still firing
    firing = api.get(f"/api/v1/projects/{project}/alerts", params={"status": "firing"}).json()["alerts"]
    assert {a["severity"] for a in firing} == {"critical", "warning"}, firing
    _open_table(page, f"/p/{project}")
    statuses = page.page.evaluate(CONTRAST_JS, "#runs .badge[class*='status-']")
    assert {b["text"] for b in statuses} == {"finished", "failed", "crashed", "stopped", "running"}
    _assert_aa(statuses)
    _assert_aa(page.page.evaluate(CONTRAST_JS, "#runs .alert-badge"))
    page.goto(f"/p/{project}/alerts")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    sev = page.page.evaluate(CONTRAST_JS, "#alerts .badge")
    _assert_aa(sev)
    colours = {b["text"]: b["bg"] for b in sev if "sev" in b["cls"]}
    assert len(set(colours.values())) == len(colours), colours  # each severity its own colour


def test_running_runs_tick_and_the_table_follows_them(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    live = make_run(api, project, "live", steps=100, running=True)
    make_run(api, project, "done", steps=100)
    _open_table(page, f"/p/{project}")
    assert page.page.locator("#runs-live").is_visible()
    cell = page.page.locator(f"tr[data-run='{live}'] td[data-col='duration']")
    first = cell.text_content()
    _wait(lambda: cell.text_content() != first, "the running run's duration moves", 10)
    # New points and the end of the run reach the table without a reload.
    add_points(api, live, 100, 400)
    assert api.post(f"/api/v1/runs/{live}/finish", json={"status": "finished"}).status_code == 200
    page.page.locator(f"tr[data-run='{live}'] .status-finished").wait_for(timeout=15_000)
    assert page.page.locator(f"tr[data-run='{live}'] td[data-col='last:train/loss']").text_content() != "—"
    page.page.locator("#runs-live").wait_for(state="hidden")


def test_runs_group_by_config_and_collapse(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    for name, opt, lr in (("a1", "adam", 0.1), ("a2", "adam", 0.2), ("s1", "sgd", 0.3)):
        make_run(api, project, name, steps=100, config={"optimizer": opt, "lr": lr})
    _open_table(page, f"/p/{project}")
    page.page.locator("#group-by").select_option("config.optimizer")
    groups = page.page.locator("#runs tbody tr.group-row")
    groups.first.wait_for()
    assert groups.evaluate_all("rs => rs.map(r => r.dataset.group)") == ["sgd", "adam"]  # newest run first
    assert _query(page)["groupby"] == ["config.optimizer"]
    adam = page.page.locator("tr.group-row[data-group='adam']")
    assert "2 runs" in adam.text_content()
    assert "μ" in adam.locator("td").nth(1 + _headers(page)[1:].index("min:train/loss")).text_content()
    page.shot("runs-table-grouped")
    adam.locator(".group-toggle").click()
    _wait(lambda: page.page.locator("#runs tbody tr[data-run]").count() == 1, "adam's runs folded", 10)
    assert page.page.locator("tr.group-row[data-group='adam'] .group-toggle").get_attribute("aria-expanded") == "false"
    # Selecting a group selects its runs.
    page.page.locator("tr.group-row[data-group='adam'] input[type=checkbox]").check()
    assert page.page.locator("#selection-count").text_content() == "2 selected"


def test_empty_project_shows_how_to_log_a_first_run(ux: Page, api: httpx.Client, project: str, server: Any) -> None:
    page = ux
    rid = make_run(api, project, "gone", steps=10)
    assert api.delete(f"/api/v1/runs/{rid}", params={"confirm": rid}).status_code == 200
    _open_table(page, f"/p/{project}")
    first = page.page.locator("#first-run")
    first.wait_for()
    code = first.text_content()
    assert "import losswatch" in code
    assert f'losswatch.init(project="{project}", url="{server.url}")' in code
    assert "run.log(" in code
    assert page.page.locator("#runs-wrap").is_hidden()
    assert page.page.locator("#status").is_hidden() and page.page.locator("#runs-toolbar").is_hidden()
    page.shot("runs-empty-project")
    # With filters that match nothing, the page says so (no empty header row, no lesson).
    make_run(api, project, "here", steps=10)
    _open_table(page, f"/p/{project}?name=nothing-like-this")
    assert page.page.locator("#status").text_content() == "No runs match these filters."
    assert page.page.locator("#runs-wrap").is_hidden() and page.page.locator("#empty").is_hidden()


# ---------------------------------------------------------------------------------------------
# Run page


def test_run_page_charts_first_with_search_and_sections(ux: Page, api: httpx.Client, project: str) -> None:
    page = ux
    rid = make_run(api, project, "sections", steps=400, running=True)
    extra = {"series": [
        {"key": "sys/gpu_mem", "kind": "other", "steps": [0, 100, 200], "values": [1.0, 2.0, 3.0]},
        {"key": "sys/cpu", "kind": "other", "steps": [0, 100, 200], "values": [5.0, 6.0, 7.0]},
        {"key": "lr", "kind": "lr", "steps": [0, 100, 200], "values": [0.1, 0.1, 0.01]},
    ]}
    assert api.post(f"/api/v1/runs/{rid}/points", json=extra).status_code == 200
    api.post(f"/api/v1/runs/{rid}/finish", json={"status": "finished"})
    page.goto(f"/runs/{rid}")
    page.wait_ready()
    page.shot("run-page")
    head = page.page.locator("#run-head").text_content()
    assert "finished" in head and "created" in head and "null" not in head
    # Charts come before the series table.
    charts_y = page.page.locator("#compare").bounding_box()["y"]
    assert charts_y < page.page.locator("#series").bounding_box()["y"]
    sections = page.page.locator("details.prefix-section")
    # In the compare view's kind order: losses and components, metrics, lr, other.
    assert sections.evaluate_all("ds => ds.map(d => d.dataset.prefix)") == ["train/", "val/", "", "sys/"]
    sys_keys = page.page.locator("details.prefix-section[data-prefix='sys/'] .panel").evaluate_all(
        "ps => ps.map(p => p.dataset.key).sort()")
    assert sys_keys == ["sys/cpu", "sys/gpu_mem"]
    total = page.page.locator(".panel[data-key]").count()

    def visible() -> list[str]:
        return page.page.locator(".panel[data-key]").evaluate_all(  # type: ignore[no-any-return]
            "ps => ps.filter(p => p.checkVisibility()).map(p => p.dataset.key).sort()")

    search = page.page.locator("#panel-search")
    search.fill("BOX")
    assert visible() == ["train/loss/box_weighted"]
    assert page.page.locator("#panel-count").text_content() == f"1 of {total} charts"
    search.fill(r"/^(val|sys)\//")
    assert visible() == ["sys/cpu", "sys/gpu_mem", "val/mAP50-95"]
    assert page.page.locator("details.prefix-section[data-prefix='train/']").is_hidden()
    search.fill("/([/")
    assert "not a regular expression" in page.page.locator("#panel-count").text_content()
    assert len(visible()) == total
    search.fill("")
    # Collapse a section; it stays collapsed on the next visit; reopening draws at full width.
    page.page.locator("details.prefix-section[data-prefix='sys/'] > summary").click()
    assert "sys/cpu" not in visible()
    page.page.reload()
    page.wait_ready()
    page.page.locator("details.prefix-section[data-prefix='sys/']").wait_for(state="attached")
    assert page.page.locator("details.prefix-section[data-prefix='sys/']").get_attribute("open") is None
    page.page.locator("#expand-all").click()
    assert "sys/cpu" in visible()
    page.page.locator(".panel[data-key='sys/cpu']").scroll_into_view_if_needed()  # panels draw near the viewport
    width = page.page.locator(".panel[data-key='sys/cpu'] canvas").first.bounding_box()["width"]
    assert width > 300


# ---------------------------------------------------------------------------------------------
# Alerts page


def test_alerts_page_names_filters_acknowledge_silence_and_zoomed_link(ux: Page, api: httpx.Client,
                                                                       project: str) -> None:
    page = ux
    page.page.set_viewport_size({"width": 1280, "height": 800})
    long_name = "diverging-" + "x" * 40
    nan = make_run(api, project, long_name, steps=1000, nan_at=700)
    spike = firing_run(api, project, "spiky", [60.0] * 6)
    alerts = api.get(f"/api/v1/projects/{project}/alerts").json()["alerts"]
    assert {a["run"] for a in alerts} == {nan, spike}
    nan_alert = next(a for a in alerts if a["rule"] == "non_finite")
    page.goto(f"/p/{project}/alerts")
    page.page.wait_for_selector("body[data-ready='1']", state="attached")
    page.shot("alerts-page")
    rows = page.page.locator("#alerts tbody tr")
    assert rows.count() == len(alerts)
    row = page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}']")
    assert row.locator("a.run-name").text_content() == long_name  # the name, not the 32-character id
    assert row.locator("a.run-name").get_attribute("href") == f"/runs/{nan}"
    assert row.locator("time").text_content() in ("just now", "1 min ago")
    assert row.locator(".badge.sev-critical").count() == 1
    # Nothing is cut off at 1280 px: no sideways scroll, the message wraps in full.
    fit = page.page.evaluate("""() => {
        const t = document.getElementById('alerts'), w = t.parentElement;
        const m = [...t.querySelectorAll('td.message')];
        return {table: t.scrollWidth, wrap: w.clientWidth, page: document.documentElement.scrollWidth,
                clipped: m.filter(c => c.scrollWidth > c.clientWidth + 1).length};
    }""")
    assert fit["table"] <= fit["wrap"] and fit["page"] <= 1280 and fit["clipped"] == 0, fit

    # Filters: severity and rule by the server, series and run name on the page; all in the URL.
    form = page.page.locator("#filters")
    form.locator("select[name=severity]").select_option("critical")
    _wait(lambda: "severity=critical" in page.page.url, "severity in the URL", 10)
    _wait(lambda: rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == [nan], "only the NaN alert", 10)
    form.locator("select[name=severity]").select_option("")
    form.locator("input[name=run]").fill("SPIK")
    form.locator("input[name=run]").press("Enter")
    _wait(lambda: set(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == {spike}, "only spiky's alerts", 10)
    assert _query(page)["run"] == ["SPIK"]
    form.locator("input[name=run]").fill("")
    form.locator("input[name=series]").fill("train/")
    form.locator("select[name=rule]").select_option("non_finite")
    _wait(lambda: rows.evaluate_all("rs => rs.map(r => r.dataset.id)") == [str(nan_alert["id"])], "the rule filter", 10)
    form.locator("input[name=series]").fill("no-such-series")
    form.locator("input[name=series]").press("Enter")
    page.page.locator("#status", has_text="No alerts match these filters.").wait_for()
    page.page.locator("#clear-filters").click()
    _wait(lambda: rows.count() == len(alerts), "every alert again", 10)

    # Acknowledge: stored with the alert (the API shows it), and taken back.
    row.locator(".ack-button").click()
    page.page.locator(f"#alerts tbody tr.acked[data-id='{nan_alert['id']}'] .badge.ack").wait_for()
    got = api.get(f"/api/v1/projects/{project}/alerts", params={"run": nan}).json()["alerts"][0]
    assert got["details"]["acknowledged_at"] and got["details"]["acknowledged_by"] == "local user"
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}'] .ack-button").click()
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}']:not(.acked)").wait_for()
    got = api.get(f"/api/v1/projects/{project}/alerts", params={"run": nan}).json()["alerts"][0]
    assert "acknowledged_at" not in got["details"]

    # Silence the rule for the run: the run's rule configuration says so, and the next NaN stays quiet.
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}'] .silence-button").click()
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}'] .badge.silenced").wait_for()
    assert api.get(f"/api/v1/runs/{nan}/alert-config").json()["silenced"] == ["non_finite"]
    r = api.post(f"/api/v1/runs/{nan}/points", json={"series": [
        {"key": "train/loss", "kind": "loss", "steps": [1000, 1001], "values": ["NaN", 1.0]}]})
    assert r.status_code == 200, r.text
    assert [a["onset_step"] for a in api.get(f"/api/v1/runs/{nan}/alerts").json()["alerts"]] == [700]  # quiet
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}'] .silence-button").click()
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}'] .silence-button", has_text="silence").wait_for()
    _wait(lambda: "silenced" not in api.get(f"/api/v1/runs/{nan}/alert-config").json(), "unsilenced", 10)

    # The chart link opens the compare view zoomed on the alert's step.
    page.page.locator(f"#alerts tbody tr[data-id='{nan_alert['id']}'] a.chart-link").click()
    page.page.wait_for_url("**/compare?**")
    info = page.wait_ready()
    assert info["state"]["runs"] == [nan] and info["state"]["keys"] == ["train/loss"]
    assert info["state"]["start"] < 700 < info["state"]["end"] <= 1000


def test_acknowledge_route_answers_4xx_for_bad_ids(api: httpx.Client, project: str) -> None:
    make_run(api, project, "nan", steps=300, nan_at=100)
    other = "p-" + uuid.uuid4().hex[:10]
    make_run(api, other, "other", steps=300, nan_at=100)
    theirs = api.get(f"/api/v1/projects/{other}/alerts").json()["alerts"][0]["id"]
    r = api.post(f"/api/v1/projects/{project}/alerts/{theirs}/ack")
    assert r.status_code == 404 and r.json()["error"]["code"] == "alert_not_found"
    for bad in ("0", "-1", "abc", str(2**40)):
        r = api.post(f"/api/v1/projects/{project}/alerts/{bad}/ack")
        assert r.status_code == 422, (bad, r.text)
    assert api.post(f"/api/v1/projects/no-such-{other}/alerts/1/ack").status_code == 404
