"""The dashboard in real Chromium against a real server holding real data (made through the API).

Charts are checked through what they hold (window.__losswatch.info(): runs, bucket counts and widths,
uPlot series), not through pixels. Few tests, each covering several behaviours, to stay quick.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from losswatch.dashboard.security import CONTENT_SECURITY_POLICY
from tests.browser.conftest import Page, add_points, make_run

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"


def _query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.page.url).query)


def test_compare_view_draws_every_run_and_keeps_its_state_in_the_url(page: Page, api: httpx.Client, project: str) -> None:
    a = make_run(api, project, "lr-1e-3", steps=3000, spike_at=1234, config={"lr": 0.001})
    b = make_run(api, project, "lr-3e-3", steps=3000, nan_at=2000, config={"lr": 0.003})
    response = page.goto(f"/p/{project}/compare?runs={a},{b}")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    info = page.wait_ready()
    page.shot("compare")
    panels = {p["key"]: p for p in info["panels"]}
    assert set(panels) == {"train/loss", "train/loss/box_weighted", "train/loss/cls_weighted", "val/mAP50-95",
                           f"stacked:{a}"}
    loss = panels["train/loss"]
    assert loss["drawn"] and loss["runs"] == [a, b] and loss["series"] == 2
    # Downsampled, never raw: about one bucket per pixel, far fewer than the 3000 points.
    assert all(0 < n < 3000 for n in loss["points"]) and all(w > 1 for w in loss["widths"])
    assert loss["nonfinite"] == [0, 1]  # the NaN of run b is marked
    assert panels[f"stacked:{a}"]["runs"] == ["train/loss/box_weighted", "train/loss/cls_weighted", "train/loss"]
    # Metrics share the loss's step axis.
    assert panels["val/mAP50-95"]["xScale"] == loss["xScale"]
    assert page.page.locator(".u-wrap > canvas").count() == len(panels)  # one chart canvas each (bands: a layer under it)

    # Smoothing adds a smoothed line per run over the faint raw one; log scale; both land in the URL.
    page.page.locator("#smoothing").fill("0.6")
    page.page.locator("#log-scale").check()
    info = page.wait_info(lambda i: i["panels"][0]["smoothing"] == 0.6 and i["panels"][0]["log"])
    assert {p["key"]: p["series"] for p in info["panels"]}["train/loss"] == 4
    page.page.locator("#x-axis").select_option("relative")
    page.wait_info(lambda i: i["state"]["x"] == "relative")
    q = _query(page)
    assert q["runs"] == [f"{a},{b}"] and q["smooth"] == ["0.6"] and q["log"] == ["1"] and q["x"] == ["relative"]
    page.shot("compare-smoothed-log")

    # Reloading the URL restores the view.
    page.page.reload()
    info = page.wait_ready()
    assert info["state"]["smooth"] == 0.6 and info["state"]["log"] and info["state"]["x"] == "relative"
    assert page.page.locator("#smoothing").input_value() == "0.6"
    assert page.page.locator("#log-scale").is_checked()


def test_user_strings_are_text_and_nothing_runs(page: Page, api: httpx.Client, project: str) -> None:
    run = make_run(api, project, XSS, steps=300, tags=[XSS], config={XSS: XSS}, group=XSS, notes=XSS)
    page.goto(f"/p/{project}")
    page.page.locator(f"tr[data-run='{run}'] a.run-name").wait_for()
    assert page.page.locator(f"tr[data-run='{run}'] a.run-name").text_content() == XSS
    assert page.page.locator(f"tr[data-run='{run}'] .tag").text_content() == XSS
    page.shot("runs-table-xss")
    page.goto(f"/runs/{run}")
    page.wait_ready()
    assert page.page.locator("#run-name").text_content() == XSS
    page.shot("run-page-xss")
    page.goto(f"/p/{project}/compare?runs={run}")
    page.wait_ready()
    assert page.page.locator(".chip .run-name").text_content() == XSS
    assert XSS in page.page.locator(".readout-label").first.text_content()
    assert page.page.locator("img[src='x']").count() == 0
    assert page.dialogs == []


def test_runs_table_filters_sorts_and_opens_the_comparison(page: Page, api: httpx.Client, project: str) -> None:
    slow = make_run(api, project, "slow", steps=200, tags=["sweep"], config={"lr": 0.001})
    fast = make_run(api, project, "fast", steps=200, tags=["sweep"], config={"lr": 0.01})
    make_run(api, project, "other", steps=200, tags=["baseline"], config={"lr": 0.1})
    page.goto(f"/p/{project}?tag=sweep")
    rows = page.page.locator("#runs tbody tr")
    rows.first.wait_for()
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == sorted([slow, fast])
    # Server-side sort by a config column, then by the loss's best value.
    page.page.locator("th[data-col='config.lr']").click()
    page.page.wait_for_url("**sort=config.lr**")
    _wait_order(page, [slow, fast])
    page.page.locator("th[data-col='config.lr']").click()
    page.page.wait_for_url("**sort=-config.lr**")
    _wait_order(page, [fast, slow])
    page.page.locator("th[data-col='min:train/loss']").click()
    page.page.wait_for_url("**sort=min%3Atrain%2Floss**")
    _wait_order(page, [slow, fast])
    page.shot("runs-table")
    for rid in (slow, fast):
        page.page.locator(f"input[data-run='{rid}']").check()
    page.page.locator("#compare").click()
    page.page.wait_for_url("**/compare?runs=**")
    info = page.wait_ready()
    assert set(info["state"]["runs"]) == {slow, fast}


def _wait_order(page: Page, expected: list[str], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = page.page.locator("#runs tbody tr").evaluate_all("rs => rs.map(r => r.dataset.run)")
        if got == expected:
            return
        assert time.monotonic() < deadline, f"rows {got}, expected {expected}"
        page.page.wait_for_timeout(50)


def test_zoom_asks_the_server_for_finer_buckets(page: Page, api: httpx.Client, project: str) -> None:
    run = make_run(api, project, "long", steps=20_000, spike_at=15_001)
    page.goto(f"/p/{project}/compare?runs={run}&key=train/loss")
    info = page.wait_ready()
    coarse = info["panels"][0]["widths"][0]
    assert coarse > 1
    box = page.page.locator(".panel[data-key='train/loss'] .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    t0 = time.monotonic()
    page.page.mouse.move(box["x"] + box["width"] * 0.70, y)
    page.page.mouse.down()
    page.page.mouse.move(box["x"] + box["width"] * 0.80, y, steps=5)
    page.page.mouse.up()
    info = page.wait_info(lambda i: i["state"]["start"] is not None and not i["queries"][-1]["live"]
                          and i["queries"][-1]["start"] is not None and i["panels"][0]["widths"][0] < coarse)
    elapsed = time.monotonic() - t0
    q = info["queries"][-1]
    assert 12_000 < q["start"] < q["end"] < 18_000
    assert info["panels"][0]["widths"][0] <= coarse / 5
    # The spike inside the zoomed range is still there (bucket max), and the range is in the URL.
    assert _query(page)["start"] == [str(q["start"])]
    print(f"zoom answered and redrawn in {elapsed * 1000:.0f} ms (query {q['ms']:.0f} ms)")
    page.shot("compare-zoomed")
    # Reset brings the coarse view back.
    page.page.locator("#reset-zoom").click()
    page.wait_info(lambda i: i["state"]["start"] is None and i["panels"][0]["widths"][0] == coarse)


def test_live_run_updates_within_two_seconds(page: Page, api: httpx.Client, project: str) -> None:
    run = make_run(api, project, "live", steps=500, running=True)
    page.goto(f"/p/{project}/compare?runs={run}&key=train/loss")
    page.wait_ready()
    assert page.page.locator("#live").is_visible()
    before = page.info()["panels"][0]["xScale"][1]
    assert before < 600
    add_points(api, run, 500, 500)
    t0 = time.monotonic()
    info = page.wait_info(lambda i: i["panels"][0]["xScale"][1] >= 990, timeout=2.0)
    print(f"live point drawn {1000 * (time.monotonic() - t0):.0f} ms after ingest")
    assert info["panels"][0]["drawn"]


def test_alert_markers_and_exports(page: Page, api: httpx.Client, project: str, tmp_path: Path) -> None:
    # A real NaN, found by the server's non_finite rule at ingest; the run's name carries markup.
    run = make_run(api, project, f"diverging {XSS}", steps=1000, nan_at=700)
    alerts = api.get(f"/api/v1/projects/{project}/alerts").json()["alerts"]
    assert [(a["rule"], a["onset_step"]) for a in alerts] == [("non_finite", 700)]
    page.goto(f"/p/{project}/compare?runs={run}")
    info = page.wait_ready()
    loss = next(p for p in info["panels"] if p["key"] == "train/loss")
    assert loss["alerts"] >= 1
    alert_item = page.page.locator("#alert-list li").first
    assert "NaN" in alert_item.text_content() and XSS in alert_item.text_content()
    # Hovering the marker shows the message as text.
    over = page.page.locator(".panel[data-key='train/loss'] .u-over")
    box = over.bounding_box()
    x = page.page.evaluate("""() => {
        const p = window.__losswatch.compare.panels.find(p => p.key === 'train/loss');
        return p.u.valToPos(700, 'x');
    }""")
    page.page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2)
    tip = page.page.locator(".panel[data-key='train/loss'] .marker-tip")
    tip.wait_for(state="visible")
    assert "non_finite" in tip.text_content() and XSS in tip.text_content()
    page.shot("compare-alert")
    assert page.dialogs == []

    # CSV of the series in view, from the public export route.
    page.page.locator("#export summary").click()
    with page.page.expect_download() as dl:
        page.page.locator(f"a.csv-link[data-run='{run}']").click()
    csv = tmp_path / "export.csv"
    dl.value.save_as(csv)
    lines = csv.read_text().splitlines()
    assert lines[0] == "key,step,value,wall_time"
    assert any(line.startswith("train/loss,700,NaN") for line in lines)
    # PNG of a panel.
    with page.page.expect_download() as dl:
        page.page.locator(".panel[data-key='train/loss'] button", has_text="PNG").click()
    png = tmp_path / "panel.png"
    dl.value.save_as(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert dl.value.suggested_filename == "train_loss.png"


def test_other_pages_render(page: Page, api: httpx.Client, project: str) -> None:
    make_run(api, project, "one", steps=100)
    page.goto("/")
    page.page.locator(f"a:text-is('{project}')").wait_for()
    page.shot("projects")
    page.goto(f"/p/{project}/alerts")
    page.page.locator("#status").wait_for(state="attached")
    page.page.wait_for_timeout(300)
    page.shot("alerts")
    response = page.goto("/runs/no-such-run")
    assert response.status == 404
    assert page.page.locator("#error-message").is_visible()
