"""The compare view in real Chromium (issue 11): log scale, colours, hide/highlight, groups, y range,
sparse series, long names, another project's runs, config diff and the sweep scatter.

Charts are checked through what they hold (``window.__losswatch.info()``), not through pixels. The
``page`` fixture fails a test on any page error or console error.
"""

from __future__ import annotations

import itertools
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import Page, make_run

PALETTE_JS = Path(__file__).resolve().parents[2] / "dashboard" / "static" / "palette.js"


# ------------------------------------------------------------------------------------------------
# Colours: CIEDE2000 (Sharma, Wu & Dalal 2005) on the palette read from its one source, palette.js.


def _palette() -> list[str]:
    text = PALETTE_JS.read_text()
    block = re.search(r"export const PALETTE = \[(.*?)\];", text, re.S)
    assert block, "palette.js must define export const PALETTE = [...]"
    return re.findall(r'"(#[0-9a-fA-F]{6})"', block.group(1))


def _lab(hex_colour: str) -> tuple[float, float, float]:
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(int(hex_colour[i:i + 2], 16) / 255) for i in (1, 3, 5))
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def ciede2000(lab1: tuple[float, float, float], lab2: tuple[float, float, float]) -> float:
    l1, a1, b1 = lab1
    l2, a2, b2 = lab2
    cbar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(cbar**7 / (cbar**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dlp, dcp = l2 - l1, c2p - c1p
    dhp = 0.0
    if c1p * c2p:
        dhp = h2p - h1p
        dhp = dhp - 360 if dhp > 180 else dhp + 360 if dhp < -180 else dhp
    dhh = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dhp / 2))
    lbar, cbarp = (l1 + l2) / 2, (c1p + c2p) / 2
    if not c1p * c2p:
        hbar = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hbar = (h1p + h2p) / 2
    else:
        hbar = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(hbar - 30)) + 0.24 * math.cos(math.radians(2 * hbar))
         + 0.32 * math.cos(math.radians(3 * hbar + 6)) - 0.20 * math.cos(math.radians(4 * hbar - 63)))
    dtheta = 30 * math.exp(-(((hbar - 275) / 25) ** 2))
    rc = 2 * math.sqrt(cbarp**7 / (cbarp**7 + 25**7))
    sl = 1 + 0.015 * (lbar - 50) ** 2 / math.sqrt(20 + (lbar - 50) ** 2)
    sc, sh = 1 + 0.045 * cbarp, 1 + 0.015 * cbarp * t
    rt = -math.sin(math.radians(2 * dtheta)) * rc
    return math.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhh / sh) ** 2 + rt * (dcp / sc) * (dhh / sh))


def _min_difference(colours: list[str]) -> float:
    return min(ciede2000(_lab(a), _lab(b)) for a, b in itertools.combinations(colours, 2))


def test_ciede2000_matches_the_published_test_data() -> None:
    # Pairs 1, 7 and 17 of Sharma, Wu & Dalal's table.
    assert ciede2000((50, 2.6772, -79.7751), (50, 0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)
    assert ciede2000((50, 0, 0), (50, -1, 2)) == pytest.approx(2.3669, abs=1e-4)
    assert ciede2000((50, 2.5, 0), (73, 25, -18)) == pytest.approx(27.1492, abs=1e-4)


def test_palette_keeps_the_first_runs_apart() -> None:
    palette = _palette()
    assert len(palette) >= 20 and len(set(p.lower() for p in palette)) == len(palette)
    first10, first20 = _min_difference(palette[:10]), _min_difference(palette[:20])
    print(f"min CIEDE2000: first 10 {first10:.1f}, first 20 {first20:.1f}")
    assert first10 >= 18
    assert first20 >= 12
    # Readable on white: none lighter than L* 85 (Tableau's yellow is 81).
    assert all(_lab(c)[0] <= 85 for c in palette[:20])


# ------------------------------------------------------------------------------------------------
# Helpers


def _query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.page.url).query)


def _panel(info: dict[str, Any], key: str) -> dict[str, Any]:
    return next(p for p in info["panels"] if p["key"] == key)


def _run(api: httpx.Client, project: str, name: str, series: list[dict[str, Any]], **fields: Any) -> str:
    run_id = uuid.uuid4().hex
    r = api.post(f"/api/v1/projects/{project}/runs", json={"id": run_id, "name": name, **fields})
    assert r.status_code in (200, 201), r.text
    r = api.post(f"/api/v1/runs/{run_id}/points", json={"series": series})
    assert r.status_code == 200, r.text
    assert api.post(f"/api/v1/runs/{run_id}/finish", json={"status": "finished"}).status_code == 200
    return run_id


def _control(page: Page, control_id: str, value: Any) -> dict[str, Any]:
    return page.page.evaluate("([id, v]) => window.__losswatch.control(id, v)", [control_id, value])  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_log_scale_leaves_out_zeros_and_negatives_and_never_throws(page: Page, api: httpx.Client, project: str) -> None:
    steps = list(range(0, 400))
    grad = [0.0 if s % 50 == 0 else 0.08 + 0.9 * math.exp(-s / 90) for s in steps]  # zeros, range not on a decade
    other = [math.sin(s / 30) for s in steps]  # about half negative
    lr = [3e-4 * (1 - s / 400) for s in steps]  # ends at 7.5e-7, starts off a power of ten
    runs = [_run(api, project, f"log-{i}", [
        {"key": "grad_norm", "kind": "grad_norm", "steps": steps, "values": [g * (1 + i) for g in grad]},
        {"key": "wave", "kind": "other", "steps": steps, "values": other},
        {"key": "lr", "kind": "lr", "steps": steps, "values": lr},
        {"key": "negative", "kind": "other", "steps": steps, "values": [-1.0 - s for s in steps]},
    ]) for i in range(3)]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}&log=1")
    info = page.wait_ready()
    page.shot("compare-log-zeros")
    grad_panel = _panel(info, "grad_norm")
    assert grad_panel["drawn"] and grad_panel["log"]
    assert grad_panel["logDropped"] == 3 * 8  # the zero of every 50th step, per run
    assert "left out" in grad_panel["note"]
    assert 0 < grad_panel["yScale"][0] < grad_panel["yScale"][1]
    wave = _panel(info, "wave")
    assert wave["logDropped"] > 0 and wave["yScale"][0] > 0
    negative = _panel(info, "negative")
    assert negative["logDropped"] == 3 * 400 and "left out" in negative["note"]
    lr_panel = _panel(info, "lr")
    assert lr_panel["logDropped"] == 0 and lr_panel["yScale"][0] < 1e-6 and 3e-4 < lr_panel["yScale"][1]
    # The tick labels exist (the log axis has splits) and the page is still responsive.
    assert page.page.locator(".panel[data-key='lr'] .u-axis").count() == 2
    # Toggle off and on again: nothing throws, the notes go and come back.
    info = _control(page, "log-scale", False)
    assert not _panel(info, "grad_norm")["log"] and _panel(info, "grad_norm")["note"] == ""
    assert _panel(info, "negative")["yScale"][0] < -400 < -1 < _panel(info, "negative")["yScale"][1]
    info = _control(page, "log-scale", True)
    assert _panel(info, "grad_norm")["logDropped"] == 24
    # Hiding a run takes its left-out points out of the count.
    page.page.locator(f".chip[data-run='{runs[0]}'] .chip-toggle").click()
    info = page.wait_info(lambda i: _panel(i, "grad_norm")["logDropped"] == 16)
    assert _query(page)["log"] == ["1"]


@pytest.mark.browser
def test_runs_get_palette_colours_in_join_order_and_picked_colours_stay_in_the_url(
        page: Page, api: httpx.Client, project: str) -> None:
    palette = _palette()
    runs = [make_run(api, project, f"c{i}", steps=120) for i in range(4)]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}&key=train/loss")
    info = page.wait_ready()
    assert [info["colors"][r] for r in runs] == palette[:4]
    assert _panel(info, "train/loss")["colors"] == palette[:4]
    # A picked colour lands in the URL and survives a reload.
    page.page.locator(f".chip[data-run='{runs[1]}'] input[type=color]").fill("#123456")
    info = page.wait_info(lambda i: i["colors"][runs[1]] == "#123456")
    assert _query(page)["colors"] == [f"{runs[1]}:123456"]
    assert _panel(info, "train/loss")["colors"][1] == "#123456"
    # Removing a run keeps the colours of the others (their palette slots are pinned in the URL).
    page.page.locator(f".chip[data-run='{runs[0]}'] .remove").click()
    info = page.wait_info(lambda i: runs[0] not in i["runs"])
    assert [info["colors"][r] for r in runs[1:]] == ["#123456", palette[2], palette[3]]
    page.page.reload()
    info = page.wait_ready()
    assert [info["colors"][r] for r in runs[1:]] == ["#123456", palette[2], palette[3]]


@pytest.mark.browser
def test_colour_by_a_config_value(page: Page, api: httpx.Client, project: str) -> None:
    palette = _palette()
    runs = [make_run(api, project, f"opt{i}", steps=100, config={"optim": {"name": name}})
            for i, name in enumerate(["sgd", "adam", "sgd"])]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}&key=train/loss&colorby=config.optim.name")
    info = page.wait_ready()
    # Sorted values: adam -> first colour, sgd -> second; equal values share a colour.
    assert [info["colors"][r] for r in runs] == [palette[1], palette[0], palette[1]]
    assert page.page.locator("#color-by").input_value() == "config.optim.name"


@pytest.mark.browser
def test_hide_highlight_and_a_readout_sorted_by_value(page: Page, api: httpx.Client, project: str) -> None:
    # Three runs whose losses are ordered: scale 1, 3, 2.
    def losses(scale: float) -> list[dict[str, Any]]:
        steps = list(range(200))
        return [{"key": "train/loss", "kind": "loss", "steps": steps, "values": [scale * (1 + math.exp(-s / 50)) for s in steps]},
                {"key": "val/acc", "kind": "metric", "steps": steps[::40], "values": [0.1 * scale] * 5}]

    runs = [_run(api, project, f"r{scale}", losses(scale)) for scale in (1.0, 3.0, 2.0)]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}")
    info = page.wait_ready()
    loss = _panel(info, "train/loss")
    assert loss["readout"] == [runs[1], runs[2], runs[0]]  # highest value first
    # Click a chip: hidden in every panel, in the URL; click its readout row: shown again.
    page.page.locator(f".chip[data-run='{runs[2]}'] .chip-toggle").click()
    info = page.wait_info(lambda i: _panel(i, "train/loss")["shown"] == [True, True, False])
    assert _panel(info, "val/acc")["shown"] == [True, True, False]
    assert _query(page)["hide"] == [runs[2]]
    assert _panel(info, "train/loss")["readout"][-1] == runs[2]  # hidden rows go last
    page.page.locator(f".panel[data-key='train/loss'] .readout-row[data-id='{runs[2]}']").click()
    info = page.wait_info(lambda i: _panel(i, "train/loss")["shown"] == [True, True, True])
    assert "hide" not in _query(page)
    # A readout row under another row hides through a click too.
    page.page.locator(f".panel[data-key='val/acc'] .readout-row[data-id='{runs[0]}']").click()
    page.wait_info(lambda i: _panel(i, "train/loss")["shown"] == [False, True, True])
    page.page.locator(f".chip[data-run='{runs[0]}'] .chip-toggle").click()
    # Hover a readout row: that run is highlighted in every chart.
    page.page.locator(f".panel[data-key='train/loss'] .readout-row[data-id='{runs[1]}']").hover()
    info = page.wait_info(lambda i: all(p["highlighted"] == runs[1] for p in i["panels"] if not p["stacked"]))
    # Hover near a line in a chart: the same, from the chart.
    box = page.page.locator(".panel[data-key='train/loss'] .u-over").bounding_box()
    xy = page.page.evaluate("""(id) => {
        const p = window.__losswatch.compare.panels.find(p => p.key === 'train/loss');
        const r = p.runs.find(r => r.id === id);
        return [p.u.valToPos(r.xs[100], 'x'), p.u.valToPos(r.last[100], 'y')];
    }""", runs[0])
    page.page.mouse.move(box["x"] + xy[0], box["y"] + xy[1])
    page.wait_info(lambda i: all(p["highlighted"] == runs[0] for p in i["panels"] if not p["stacked"]))
    page.page.mouse.move(box["x"] + xy[0], box["y"] + xy[1] + 2)
    # At the cursor, the readout is sorted by the values there.
    info = page.info()
    assert _panel(info, "train/loss")["readout"] == [runs[1], runs[2], runs[0]]
    page.shot("compare-highlight")


@pytest.mark.browser
def test_twenty_runs_keep_their_chips_on_one_line_and_add_runs_keeps_the_comparison(
        page: Page, api: httpx.Client, project: str) -> None:
    runs = [make_run(api, project, f"sweep-run-with-a-longish-name-{i:02d}", steps=60) for i in range(21)]
    page.page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/p/{project}/compare?runs={','.join(runs[:20])}&key=train/loss")
    info = page.wait_ready()
    bar = page.page.locator("#run-chips").bounding_box()
    assert bar["height"] <= 40
    more = page.page.locator("#chips-more")
    assert more.is_visible() and re.fullmatch(r"\+\d+ more", more.text_content())
    assert info["chipsHidden"] > 0
    # The first panel starts within the first screen.
    assert page.page.locator(".panel").first.bounding_box()["y"] < 300
    page.shot("compare-20-runs")
    more.click()
    page.page.locator("#chips-more:text-is('fewer')").wait_for()
    assert page.page.locator("#run-chips").bounding_box()["height"] > 40
    # "add runs…" lists the project's other runs and adds one to this comparison.
    page.page.locator("#add-runs summary").click()
    page.page.locator(f"#add-runs .add-run[data-run='{runs[20]}']").click()
    info = page.wait_info(lambda i: runs[20] in i["runs"] and len(_panel(i, "train/loss")["runs"]) == 21)
    assert info["runs"] == runs
    assert _query(page)["runs"] == [",".join(runs)]


@pytest.mark.browser
def test_groups_draw_their_mean_with_a_min_max_band(page: Page, api: httpx.Client, project: str) -> None:
    steps = list(range(0, 100, 10))

    def series(level: float) -> list[dict[str, Any]]:
        return [{"key": "train/loss", "kind": "loss", "steps": steps, "values": [level] * len(steps)}]

    a1 = _run(api, project, "a1", series(1.0), group="A", config={"seed": 1})
    a2 = _run(api, project, "a2", series(3.0), group="A", config={"seed": 2})
    b1 = _run(api, project, "b1", series(10.0), group="B", config={"seed": 1})
    page.goto(f"/p/{project}/compare?runs={a1},{a2},{b1}&groupby=group")
    info = page.wait_ready()
    assert [g["members"] for g in info["groups"]] == [[a1, a2], [b1]]
    loss = _panel(info, "train/loss")
    assert loss["labels"] == ["group=A (2)", "group=B (1)"]
    palette = _palette()
    assert loss["colors"] == palette[:2]
    assert [info["colors"][r] for r in (a1, a2, b1)] == [palette[0], palette[0], palette[1]]  # chips: their group's
    values = page.page.evaluate("""() => window.__losswatch.compare.panels[0].runs.map(
        r => [r.last[r.last.length - 1], r.min[0], r.max[0]])""")
    assert values == [[2.0, 1.0, 3.0], [10.0, 10.0, 10.0]]
    page.shot("compare-groups")
    # Median, and grouping by a config key; both in the URL.
    _control(page, "group-agg", "median")
    info = _control(page, "group-by", "config.seed")
    assert [g["members"] for g in info["groups"]] == [[a1, b1], [a2]]
    q = _query(page)
    assert q["groupby"] == ["config.seed"] and q["agg"] == ["median"]
    values = page.page.evaluate("() => window.__losswatch.compare.panels[0].runs.map(r => r.last[0])")
    assert values == [5.5, 3.0]


@pytest.mark.browser
def test_ignore_outliers_and_manual_y_limits_live_in_the_url(page: Page, api: httpx.Client, project: str) -> None:
    calm = make_run(api, project, "calm", steps=1000)
    wild = make_run(api, project, "wild", steps=1000, spike_at=500)
    steps = list(range(0, 1000))
    diverge = _run(api, project, "diverging", [{"key": "train/loss", "kind": "loss", "steps": steps,
                                               "values": [1.0 if s < 900 else 1e6 for s in steps]}])
    page.goto(f"/p/{project}/compare?runs={calm},{wild},{diverge}&key=train/loss")
    info = page.wait_ready()
    assert _panel(info, "train/loss")["yScale"][1] >= 1e6  # one diverging run sets the range
    info = _control(page, "ignore-outliers", True)
    loss = _panel(info, "train/loss")
    assert loss["yScale"][1] < 20 and "percentile" in loss["note"]
    assert _query(page)["outliers"] == ["ignore"]
    # Manual limits through the panel's "y" form.
    panel = page.page.locator(".panel[data-key='train/loss']")
    panel.locator(".ylim summary").click()
    panel.locator(".ylim-min").fill("0.5")
    panel.locator(".ylim-max").fill("4")
    panel.locator(".ylim-apply").click()
    info = page.wait_info(lambda i: _panel(i, "train/loss")["yScale"] == [0.5, 4])
    assert _query(page)["ylim"] == ["train/loss:0.5:4"]
    page.page.reload()
    info = page.wait_ready()
    assert _panel(info, "train/loss")["yScale"] == [0.5, 4] and info["state"]["outliers"]
    assert page.page.locator("#ignore-outliers").is_checked()
    panel.locator(".ylim summary").click()
    panel.locator(".ylim-auto").click()
    page.wait_info(lambda i: "ylim" not in _query(page) and _panel(i, "train/loss")["yScale"][1] < 20)


@pytest.mark.browser
def test_one_point_and_sparse_series_draw_visible_points(page: Page, api: httpx.Client, project: str) -> None:
    one = _run(api, project, "one-point", [{"key": "val/mAP", "kind": "metric", "steps": [3000], "values": [0.42]}])
    page.goto(f"/p/{project}/compare?runs={one}")
    info = page.wait_ready()
    p = _panel(info, "val/mAP")
    assert p["drawn"] and p["points"] == [1] and p["markers"] == [True]
    lo, hi = p["xScale"]
    assert lo < 3000 < hi and hi - lo >= 100 and lo >= 0
    assert p["yScale"][0] < 0.42 < p["yScale"][1]
    # Sparse evaluations next to a dense loss: markers on the metric, none on the loss.
    run = make_run(api, project, "dense-and-sparse", steps=2000)
    page.goto(f"/p/{project}/compare?runs={run}")
    info = page.wait_ready()
    assert _panel(info, "val/mAP50-95")["markers"] == [True]
    assert _panel(info, "train/loss")["markers"] == [False]
    page.shot("compare-sparse")


@pytest.mark.browser
def test_a_long_run_name_does_not_stretch_the_page(page: Page, api: httpx.Client, project: str) -> None:
    long_name = "an-extremely-long-run-name-" + "x" * 180
    a = make_run(api, project, long_name, steps=200)
    b = make_run(api, project, "short", steps=200)
    page.page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/p/{project}/compare?runs={a},{b}")
    page.wait_ready()
    select = page.page.locator(".panel[data-key^='stacked:'] select.stack-run")
    assert select.bounding_box()["width"] <= 170
    assert select.locator("option").first.get_attribute("title") == long_name
    width = page.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280
    page.shot("compare-long-name")


@pytest.mark.browser
def test_a_run_of_another_project_is_not_shown(page: Page, api: httpx.Client, project: str) -> None:
    mine = make_run(api, project, "mine", steps=100)
    other_project = "q-" + uuid.uuid4().hex[:10]
    theirs = make_run(api, other_project, "theirs", steps=100)
    page.goto(f"/p/{project}/compare?runs={mine},{theirs}")
    info = page.wait_ready()
    assert info["runs"] == [mine]
    assert info["foreign"] == [{"id": theirs, "project": other_project}]
    notice = page.page.locator("#compare-notice")
    assert notice.is_visible() and theirs in notice.text_content() and other_project in notice.text_content()
    assert all(p["runs"] in ([mine], []) or p["stacked"] for p in info["panels"])
    assert _query(page)["runs"] == [mine]
    # Only foreign runs: nothing drawn, a clear message.
    page.goto(f"/p/{project}/compare?runs={theirs}")
    page.page.locator("#compare-notice").wait_for()
    assert "another project" in page.page.locator("#compare-notice").text_content()
    page.page.locator(".status.error").wait_for()


@pytest.mark.browser
def test_config_diff_and_parameter_vs_metric(page: Page, api: httpx.Client, project: str) -> None:
    runs = [make_run(api, project, f"lr{i}", steps=400, config={"lr": 10.0 ** -(i + 2), "batch": 32, "optim": {"name": "adam"}})
            for i in range(3)]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}&key=train/loss")
    page.wait_ready()
    page.page.locator("#sweep summary").click()
    table = page.page.locator("#config-diff-table")
    table.wait_for()  # built when the section opens
    assert table.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.key)") == ["lr"]  # batch, optim.name: same
    assert table.locator("tbody tr td").all_text_contents()[1:] == ["0.01", "0.001", "0.0001"]
    assert page.page.locator("#scatter").get_attribute("data-points") == "3"
    assert page.page.locator("#scatter-param").input_value() == "lr"
    assert page.page.locator("#scatter-series").input_value() == "val/mAP50-95"
    page.page.locator("#scatter-stat").select_option("last")
    assert page.page.locator("#scatter").get_attribute("data-points") == "3"
    page.shot("compare-sweep")


# ------------------------------------------------------------------------------------------------
# Speed (issue 11's goals): what the page sends first, and what a zoom waits for.


def _query_keys(url: str) -> list[str]:
    return parse_qs(urlsplit(url).query).get("key", [])


@pytest.mark.browser
def test_first_requests_leave_from_the_early_module_and_are_taken_over(page: Page, api: httpx.Client, project: str) -> None:
    runs = [make_run(api, project, f"early-{i}", steps=300) for i in range(3)]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}&smooth=0.5")
    info = page.wait_ready()
    # compare-early.js sent the series query and the run fetches; the view took them over, one query only.
    assert info["marks"]["early"] < info["marks"]["start"]
    sent = [q for q in info["queries"] if not q["live"]]
    assert len(sent) == 1 and _query_keys(sent[0]["url"]) == []
    requests = page.page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert sum("/api/v1/query?" in r for r in requests) == 1
    assert sum(f"/api/v1/runs/{runs[0]}" in r for r in requests) == 1
    assert all(p["drawn"] or not p["runs"] for p in info["panels"])
    assert info["state"]["smooth"] == 0.5


@pytest.mark.browser
def test_zoom_fetches_the_panels_in_view_first_and_the_far_ones_after(page: Page, api: httpx.Client,
                                                                        project: str) -> None:
    page.page.set_viewport_size({"width": 1280, "height": 420})
    runs = [make_run(api, project, f"zoom-{i}", steps=6000, nan_at=3003 + i) for i in range(2)]
    page.goto(f"/p/{project}/compare?runs={','.join(runs)}")
    info = page.wait_ready()
    coarse = {p["key"]: p["widths"][0] for p in info["panels"]}
    far_seen = "window.__losswatch.compare.panels.filter(p => p.onscreen === false).map(p => p.key)"
    deadline = time.monotonic() + 5
    while not page.page.evaluate(far_seen):
        assert time.monotonic() < deadline, "no panel is reported off screen"
        page.page.wait_for_timeout(50)
    far = set(page.page.evaluate(far_seen))
    assert "val/mAP50-95" in far and "train/loss" not in far
    # What a drag calls: it resolves once the panels in view are redrawn; settled() once every panel has data.
    page.page.evaluate("window.__losswatch.compare.zoomSteps(2900, 3100)")
    page.page.evaluate("window.__losswatch.compare.settled()")
    # info() draws the panels off screen too (uPlot commits its scales a microtask later: poll).
    info = page.wait_info(lambda i: all(p["xScale"] == [2900, 3100] for p in i["panels"] if p["runs"]))
    *first, far_q = [q for q in info["queries"] if q["start"] == 2900 and not q["live"]]
    near_q = next(q for q in first if len(parse_qs(urlsplit(q["url"]).query)["run"]) == 2)
    near_keys, far_keys = set(_query_keys(near_q["url"])), set(_query_keys(far_q["url"]))
    # The far call carries only keys no panel in view shows; the components that only the stacked panel in
    # view shows come first too, in a call of their own for its one run (not for every run).
    assert "val/mAP50-95" in far_keys <= far and not near_keys & far_keys
    assert len(first) == 2
    for q in first:
        if q is not near_q:
            assert parse_qs(urlsplit(q["url"]).query)["run"] == [runs[0]]
            assert set(_query_keys(q["url"])) <= far_keys - {"val/mAP50-95"}
    assert near_keys | far_keys == {"train/loss", "train/loss/box_weighted", "train/loss/cls_weighted", "val/mAP50-95"}
    for p in info["panels"]:
        if p["runs"] and not p["stacked"]:
            assert max(p["widths"]) == 1 < coarse[p["key"]], p["key"]
    assert _panel(info, "train/loss")["nonfinite"] == [1, 1]  # each run's NaN, at full resolution
    assert _panel(info, "val/mAP50-95")["points"] == [1, 1]  # the evaluation at step 3000


def test_first_draw_leaves_far_panels_until_they_come_near(page: Page, api: httpx.Client, project: str) -> None:
    # Speed (issue 11): the first data draws the panels in or near the viewport; one far below waits until
    # it is scrolled near, then draws with everything it shows (lines, NaN marks).
    ids = [make_run(api, project, f"run {i}", steps=300, nan_at=100 + i) for i in range(12)]
    page.page.set_viewport_size({"width": 1280, "height": 600})
    page.goto(f"/p/{project}/compare?runs={','.join(ids)}")
    page.page.wait_for_selector("body[data-ready='1']", state="attached", timeout=15_000)
    # The series come in the query's binary answer (typed columns, docs/api.md), not its JSON one.
    asked = page.page.evaluate("() => performance.getEntriesByType('resource').map((e) => e.name)")
    assert any("/api/v1/query?" in u and "format=binary" in u for u in asked), asked
    drawn = page.page.evaluate("() => window.__losswatch.compare._allPanels().map((p) => !!p.u)")
    assert drawn[0] and not all(drawn), drawn
    assert page.page.evaluate("() => window.__losswatch.compare.panelsDrawnAtReady") == sum(drawn)
    far = drawn.index(False)
    page.page.evaluate("(i) => window.__losswatch.compare._allPanels()[i].root.scrollIntoView()", far)
    deadline = time.monotonic() + 5
    while not page.page.evaluate("(i) => !!window.__losswatch.compare._allPanels()[i].u", far):
        assert time.monotonic() < deadline, "the far panel did not draw when scrolled into view"
        page.page.wait_for_timeout(50)
    panel = page.info()["panels"][far]
    assert panel["drawn"] and len(panel["runs"]) == 12 and all(n > 0 for n in panel["points"])
    if panel["key"] == "train/loss":
        assert all(n >= 1 for n in panel["nonfinite"])
