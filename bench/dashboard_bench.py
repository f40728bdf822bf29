"""Dashboard benchmark: the compare view in headless Chromium, two sizes (two sections of bench/run.py).

    .venv/bin/python bench/dashboard_bench.py [--points N] [--runs R]     # big runs: prints one JSON object
    .venv/bin/python bench/dashboard_bench.py --sweep [--steps N]          # the sweep

``dashboard`` (``measure()``): 10 runs x 4 series x 1,000,000 points. It
1. starts a real server (uvicorn, fresh SQLite file under bench/work/),
2. seeds ``runs`` runs x 4 series of ``points`` points each (the loss, its two weighted components,
   the gradient norm) through the real ingest API in batches of 10,000 points (4 x 2,500 steps),
   with a one-step spike and one NaN in every loss series,
3. opens ``/p/bench/compare?runs=...`` in Debian's Chromium and times navigation -> every panel drawn
   (``performance.now()`` when the page sets ``window.__losswatchReady`` / ``body[data-ready]``),
   once cold and then ``repeats`` more times (median), and
4. times zooms (what a drag calls, ``compare.zoomSteps(start, end)``: query + redraw of the panels in view;
   ``zoom_all_panels_*``: until the panels far off screen have their data too),
5. and measures the same with the page scripts of BEFORE_COMMIT (before issue 11) as the peer of the run.

The size is a parameter (``--points`` / ``LOSSWATCH_BENCH_POINTS``) for slow machines; the result says
which size was used.

``dashboard_sweep`` (``measure_dashboard_sweep()``): 20 runs x 11 series x 20,000 steps (a loss, four weighted
components, the lr, the gradient norm, four evaluation metrics every 500 steps), the sweep of issue 11, at
1280x800. It times navigation -> every panel drawn (cold, then median of repeats), and, from the input
event to the end of the task that redrew every panel (the page's own requestAnimationFrame included):
a smoothing change (0 -> 0.6 rebuilds the lines' structure; later changes only recompute the smoothed
lines), a log-scale toggle, and zooms (query + redraw of the panels in view; ``zoom_all_panels_*``: until
every panel has its data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
KEYS = [("train/loss", "loss"), ("train/loss/box_weighted", "loss_component"),
        ("train/loss/cls_weighted", "loss_component"), ("grad_norm", "grad_norm")]
BATCH_POINTS = 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(db_path: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    env = {**os.environ, "LOSSWATCH_DATABASE_URL": f"sqlite:///{db_path}", "LOSSWATCH_AUTH": "off",
           "LOSSWATCH_LOG_LEVEL": "warning"}
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its life
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "losswatch.server.app:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def _batches(run_index: int, points: int) -> Any:
    """Yield ingest bodies of about BATCH_POINTS points covering every series of one run."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(run_index)
    per_batch = BATCH_POINTS // len(KEYS)
    t0 = time.time() - points / 1000.0
    spike, nan_step = points // 3 + run_index, (2 * points) // 3 + run_index
    for start in range(0, points, per_batch):
        steps = np.arange(start, min(points, start + per_batch))
        decay = np.exp(-steps / (points / 4))
        box = 7.5 * (0.2 + decay) * (1 + 0.05 * rng.standard_normal(steps.size))
        cls = 0.5 * (0.1 + decay) * (1 + 0.05 * rng.standard_normal(steps.size))
        loss: list[Any] = (box + cls).tolist()
        if start <= spike < start + steps.size:
            loss[spike - start] = 100.0
        if start <= nan_step < start + steps.size:
            loss[nan_step - start] = "NaN"
        wall = (t0 + steps / 1000.0).tolist()
        st = steps.tolist()
        series = [
            {"key": "train/loss", "kind": "loss", "steps": st, "values": loss, "wall_times": wall},
            {"key": "train/loss/box_weighted", "kind": "loss_component", "steps": st, "values": box.tolist(),
             "wall_times": wall},
            {"key": "train/loss/cls_weighted", "kind": "loss_component", "steps": st, "values": cls.tolist(),
             "wall_times": wall},
            {"key": "grad_norm", "kind": "grad_norm", "steps": st, "wall_times": wall,
             "values": (2.0 * decay + 0.3 * rng.random(steps.size)).tolist()},
        ]
        yield orjson.dumps({"series": series})


def seed(url: str, runs: int, points: int) -> tuple[list[str], float, int]:
    """Create the runs and ingest every point through the API; returns (run ids, seconds, points)."""
    import httpx

    ids = [f"bench-{i:02d}" for i in range(runs)]
    sent = 0
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120, headers={"content-type": "application/json"}) as c:
        for i, rid in enumerate(ids):
            r = c.post("/api/v1/projects/bench/runs", json={"id": rid, "name": f"lr-{(i + 1) * 1e-4:.0e}",
                                                           "config": {"lr": (i + 1) * 1e-4}, "tags": ["bench"]})
            r.raise_for_status()
            for body in _batches(i, points):
                r = c.post(f"/api/v1/runs/{rid}/points", content=body)
                r.raise_for_status()
                sent += r.json().get("accepted", 0)
            c.post(f"/api/v1/runs/{rid}/finish", json={"status": "finished"}).raise_for_status()
    return ids, time.perf_counter() - t0, sent


def _serve_assets(context: Any, assets: dict[str, bytes] | None) -> None:
    """Serve these page scripts and CSS (by file name) in place of the server's, for a peer measurement."""
    def serve(route: Any) -> None:
        name = route.request.url.split("?")[0].rsplit("/", 1)[-1]
        if assets is not None and name in assets:
            kind = "text/css" if name.endswith(".css") else "text/javascript"
            route.fulfill(status=200, body=assets[name], content_type=kind)
        else:
            route.continue_()

    if assets is not None:
        context.route("**/static/*", serve)


def _browse(url: str, ids: list[str], points: int, repeats: int, assets: dict[str, bytes] | None = None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    keys = "&".join("key=" + k.replace("/", "%2F") for k, _ in KEYS)
    path = f"/p/bench/compare?runs={','.join(ids)}&{keys}"
    loads: list[float] = []
    zooms: list[float] = []
    zooms_all: list[float] = []
    queries: list[float] = []
    last: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(1 + repeats):
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                _serve_assets(context, assets)
                page = context.new_page()
                page.goto(url + path)
                page.wait_for_selector("body[data-ready='1']", state="attached", timeout=120_000)
                last = page.evaluate("window.__losswatch.info()")
                loads.append(float(last["readyAt"]))
                queries.append(float(last["queries"][0]["ms"]))
                if i == repeats:
                    for lo, hi in [(points // 3 - points // 50, points // 3 + points // 50),
                                   (points // 2, points // 2 + points // 200),
                                   ((2 * points) // 3 - 500, (2 * points) // 3 + 500)]:
                        seen, done = page.evaluate(_ZOOM, [lo, hi])
                        zooms.append(float(seen))
                        zooms_all.append(float(done))
                    zoomed = page.evaluate("window.__losswatch.info()")
                    last["zoomed_nonfinite"] = [p["nonfinite"] for p in zoomed["panels"] if p["key"] == "train/loss"]
                context.close()
        finally:
            browser.close()
    panels = last.get("panels", [])
    loss = next((p for p in panels if p["key"] == "train/loss"), {})
    return {
        "panels_drawn_at_first_draw": last.get("panelsDrawnAtReady"),
        "first_draw_ms_cold": round(loads[0], 1),
        "first_draw_ms_median": round(statistics.median(loads[1:] or loads), 1),
        "first_draw_ms_all": [round(x, 1) for x in loads],
        "initial_query_ms_median": round(statistics.median(queries), 1),
        "zoom_ms_median": round(statistics.median(zooms), 1) if zooms else None,
        "zoom_ms_all": [round(x, 1) for x in zooms],
        "zoom_all_panels_ms_median": round(statistics.median(zooms_all), 1) if zooms_all else None,
        "phases_ms_last": {k: round(v, 1) for k, v in (last.get("marks") or {}).items()},
        "panels": len(panels),
        "buckets_per_series": max(loss.get("points", [0]) or [0]),
        "nan_marked_every_run": bool(loss) and all(n >= 1 for n in loss.get("nonfinite", [])),
        "nan_marked_when_zoomed": all(n >= 1 for n in (last.get("zoomed_nonfinite") or [[0]])[0]),
    }


def measure_dashboard(quick: bool = False) -> dict[str, Any]:
    """bench/run.py section ``dashboard``: the big runs."""
    return measure(points=20_000 if quick else None, repeats=1 if quick else 3)


def measure(points: int | None = None, runs: int = 10, repeats: int = 3, keep: bool = False) -> dict[str, Any]:
    """Seed the data, time the compare view; returns the figures and the size used."""
    points = int(points or os.environ.get("LOSSWATCH_BENCH_POINTS", 1_000_000))
    work = ROOT / "bench" / "work" / f"dashboard-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    proc, url = _start_server(work / "bench.db", work / "server.log")
    try:
        ids, seed_s, sent = seed(url, runs, points)
        result: dict[str, Any] = {
            "name": "dashboard_compare",
            "runs": runs, "series_per_run": len(KEYS), "points_per_series": points,
            "points_ingested": sent, "seed_seconds": round(seed_s, 1),
            "ingest_points_per_s": round(sent / seed_s) if seed_s else None,
            "goal_first_draw_ms": 1000, "goal_zoom_ms": 200,
            "notes": ["Headless Chromium at 1600x1000. first draw: navigation until the panels in or near the "
                      "viewport have drawn (panels_drawn_at_first_draw of panels); zoom: what a drag calls, until the "
                      "panels in view are redrawn (zoom_all_panels: until every panel has its data).",
                      "before_issue_11: the same measurements, same run, server and data, with the page scripts and "
                      "CSS of the commit named there; *_speedup_x = before / now (medians).",
                      "Goals (issue 11): first draw <= 1,000 ms, zoom <= 200 ms."],
        }
        result.update(_browse(url, ids, points, repeats))
        before = _before_assets()
        if before is not None:
            peer = _browse(url, ids, points, repeats, before)
            result["before_issue_11"] = {"commit": BEFORE_COMMIT[:12], **{k: v for k, v in peer.items() if not isinstance(v, (list, dict))}}
            for key in ("first_draw_ms_median", "zoom_ms_median"):
                if peer.get(key) and result.get(key):
                    result[f"{key.removesuffix('_median').removesuffix('_ms')}_speedup_x"] = round(peer[key] / result[key], 2)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The sweep: 20 runs x 11 series x 20,000 steps.

SWEEP_DENSE = [("train/loss", "loss"), ("train/loss/box_weighted", "loss_component"),
               ("train/loss/cls_weighted", "loss_component"), ("train/loss/dfl_weighted", "loss_component"),
               ("train/loss/l2", "loss_component"), ("lr", "lr"), ("grad_norm", "grad_norm")]
SWEEP_EVAL = [("val/mAP50", "metric"), ("val/mAP50-95", "metric"), ("val/precision", "metric"),
              ("val/recall", "metric")]
EVAL_EVERY = 500


def _sweep_batches(run_index: int, steps: int) -> Any:
    import numpy as np
    import orjson

    rng = np.random.default_rng(1000 + run_index)
    per_batch = BATCH_POINTS // len(SWEEP_DENSE)
    lr0 = 1e-4 * (1 + run_index)
    t0 = time.time() - steps / 50.0
    for start in range(0, steps, per_batch):
        st = np.arange(start, min(steps, start + per_batch))
        decay = np.exp(-st / (steps / (3 + run_index % 5)))
        noise = 1 + 0.05 * rng.standard_normal((3, st.size))
        comps = [7.5 * (0.2 + decay) * noise[0], 0.5 * (0.1 + decay) * noise[1],
                 1.5 * (0.3 + decay) * noise[2], np.full(st.size, 0.01 * (1 + run_index % 3))]
        wall = (t0 + st / 50.0).tolist()
        values = [sum(comps), *comps, lr0 * 0.5 * (1 + np.cos(np.pi * st / steps)), 2.0 * decay + 0.3 * rng.random(st.size)]
        series = [{"key": k, "kind": kind, "steps": st.tolist(), "values": v.tolist(), "wall_times": wall}
                  for (k, kind), v in zip(SWEEP_DENSE, values, strict=True)]
        ev = st[st % EVAL_EVERY == 0]
        if ev.size:
            quality = (1 - np.exp(-ev / (steps / 3))) * (0.5 + 0.02 * (run_index % 10))
            ev_wall = (t0 + ev / 50.0).tolist()
            for j, (k, kind) in enumerate(SWEEP_EVAL):
                series.append({"key": k, "kind": kind, "steps": ev.tolist(), "wall_times": ev_wall,
                               "values": (quality * (1.0 - 0.1 * j)).tolist()})
        yield orjson.dumps({"series": series})


def seed_sweep(url: str, runs: int, steps: int) -> tuple[list[str], float, int]:
    import httpx

    ids = [f"sweep-{i:02d}" for i in range(runs)]
    sent = 0
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120, headers={"content-type": "application/json"}) as c:
        for i, rid in enumerate(ids):
            r = c.post("/api/v1/projects/sweep/runs", json={
                "id": rid, "name": f"sweep lr={(1 + i) * 1e-4:.0e} seed={i % 3}", "group": f"seed-{i % 3}",
                "config": {"lr": (1 + i) * 1e-4, "seed": i % 3, "batch": 64}, "tags": ["sweep"]})
            r.raise_for_status()
            for body in _sweep_batches(i, steps):
                r = c.post(f"/api/v1/runs/{rid}/points", content=body)
                r.raise_for_status()
                sent += r.json().get("accepted", 0)
            c.post(f"/api/v1/runs/{rid}/finish", json={"status": "finished"}).raise_for_status()
    return ids, time.perf_counter() - t0, sent


# From the input event to the end of the task after the next frame: the page redraws in its own
# requestAnimationFrame callback (queued first), uPlot paints in the microtasks after it.
_INPUT_TO_DRAWN = """async ([id, value]) => {
    const input = document.getElementById(id);
    const t = performance.now();
    if (input.type === "checkbox") { input.checked = value; input.dispatchEvent(new Event("change")); }
    else { input.value = String(value); input.dispatchEvent(new Event("input")); }
    await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
    return performance.now() - t;
}"""


# A zoom as a drag makes it (the view's own zoomSteps, not the test hook, which also waits for the far
# panels): [ms until the panels in view are redrawn, ms until every panel has its data].
# The page fetches the keys of panels far outside the viewport in a second call after the others
# (compare.settled() waits for it); a page without that has nothing more to wait for.
_ZOOM = """async ([lo, hi]) => {
    const c = window.__losswatch.compare;
    const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
    const t = performance.now();
    await c.zoomSteps(lo, hi);
    await frame();
    const seen = performance.now() - t;
    if (c.settled) { await c.settled(); await frame(); }
    return [seen, performance.now() - t];
}"""


# The peer in the same run: the compare view as it was before issue 11 (its page scripts and CSS from this
# commit, served in place of today's through Playwright's routing; same server, same data, same browser).
BEFORE_COMMIT = "2f23a95b6ee552f63aee99c427dc807b343d1206"


def _before_assets() -> dict[str, bytes] | None:
    """dashboard/static/* at BEFORE_COMMIT, or None without git or that commit."""
    try:
        names = subprocess.run(["git", "ls-tree", "--name-only", BEFORE_COMMIT, "dashboard/static/"], cwd=ROOT,
                               capture_output=True, check=True, text=True).stdout.split()
        return {Path(n).name: subprocess.run(["git", "show", f"{BEFORE_COMMIT}:{n}"], cwd=ROOT, capture_output=True,
                                             check=True).stdout for n in names}
    except (OSError, subprocess.CalledProcessError):
        return None


def _browse_sweep(url: str, ids: list[str], steps: int, repeats: int,
                  assets: dict[str, bytes] | None = None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    path = f"/p/sweep/compare?runs={','.join(ids)}"
    loads: list[float] = []
    queries: list[float] = []
    out: dict[str, Any] = {}
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(1 + repeats):
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                _serve_assets(context, assets)
                page = context.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(url + path)
                page.wait_for_selector("body[data-ready='1']", state="attached", timeout=120_000)
                info = page.evaluate("window.__losswatch.info()")
                loads.append(float(info["readyAt"]))
                queries.append(float(info["queries"][0]["ms"]))
                if i == repeats:
                    out["panels"] = len(info["panels"])
                    out["panels_drawn_at_first_draw"] = info.get("panelsDrawnAtReady")
                    out["lines_per_panel"] = max(len(p["runs"]) for p in info["panels"])
                    out["buckets_per_series"] = max(max(p["points"] or [0]) for p in info["panels"])
                    first = page.evaluate(_INPUT_TO_DRAWN, ["smoothing", 0.6])
                    smooth = [page.evaluate(_INPUT_TO_DRAWN, ["smoothing", v]) for v in
                              (0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.6, 0.7, 0.8, 0.9)]
                    logs = [page.evaluate(_INPUT_TO_DRAWN, ["log-scale", on]) for on in (True, False) * 3]
                    zooms, zooms_all = [], []
                    for lo, hi in [(steps // 4, steps // 2), (steps // 3, steps // 3 + steps // 20),
                                   (steps // 2, steps // 2 + 500)]:
                        seen, done = page.evaluate(_ZOOM, [lo, hi])
                        zooms.append(seen)
                        zooms_all.append(done)
                    asked = page.evaluate("window.__losswatch.info()")["queries"]
                    zoom_queries = [q["ms"] for q in asked if not q["live"] and q["start"] is not None]
                    out.update({
                        "smoothing_first_ms": round(first, 1),
                        "smoothing_change_ms_median": round(statistics.median(smooth), 1),
                        "smoothing_change_ms_max": round(max(smooth), 1),
                        "log_toggle_ms_median": round(statistics.median(logs), 1),
                        "log_toggle_ms_max": round(max(logs), 1),
                        "zoom_ms_median": round(statistics.median(zooms), 1),
                        "zoom_ms_all": [round(z, 1) for z in zooms],
                        "zoom_all_panels_ms_median": round(statistics.median(zooms_all), 1),
                        "zoom_query_ms_all": [round(q, 1) for q in zoom_queries],
                    })
                context.close()
        finally:
            browser.close()
    out.update({
        "first_draw_ms_cold": round(loads[0], 1),
        "first_draw_ms_median": round(statistics.median(loads[1:] or loads), 1),
        "first_draw_ms_all": [round(x, 1) for x in loads],
        "initial_query_ms_median": round(statistics.median(queries), 1),
        "page_errors": len(errors),
    })
    return out


def measure_dashboard_sweep(quick: bool = False, steps: int | None = None, runs: int = 20, repeats: int = 2,
                  keep: bool = False) -> dict[str, Any]:
    """bench/run.py section ``dashboard_sweep``: 20 runs x 11 series x 20,000 steps in the compare view."""
    steps = int(steps or (2_000 if quick else 20_000))
    work = ROOT / "bench" / "work" / f"dashboard-sweep-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    proc, url = _start_server(work / "bench.db", work / "server.log")
    try:
        ids, seed_s, sent = seed_sweep(url, runs, steps)
        result: dict[str, Any] = {
            "title": "dashboard: the sweep (20 runs x 11 series x 20,000 steps)",
            "notes": ["Headless Chromium at 1280x800. Times from the input event to the end of the task after the "
                      "next frame (the redraw of every panel, uPlot's paint included); zoom: query + redraw.",
                      "before_issue_11: the same measurements, same run, same server and data, with the page scripts "
                      "and CSS of the commit named there; *_speedup_x = before / now (medians).",
                      "Panels more than 200 px outside the viewport draw and redraw when they come near it; the "
                      "figures are the drawing a person sees (panels_drawn_at_first_draw of the 12 at the first "
                      "draw, 4-6 on a change at 1280x800). The page reads the query's binary answer (format=binary).",
                      "Zoom: what a drag calls (the view's zoomSteps), until the panels in view are redrawn; the "
                      "keys that only panels far off screen show come in a last query after that "
                      "(zoom_all_panels_ms_median: until it has been answered and handed to them too). "
                      "zoom_query_ms_all: the queries of each zoom in the order they were answered (the panels in "
                      "view, alongside them the components only the stacked panel in view shows for its one run, "
                      "then the far panels).",
                      "Goals (issue 11): first draw <= 1,000 ms, smoothing change <= 50 ms, log toggle <= 100 ms, "
                      "zoom <= 150 ms."],
            "runs": runs, "series_per_run": len(SWEEP_DENSE) + len(SWEEP_EVAL), "steps": steps,
            "points_ingested": sent, "seed_seconds": round(seed_s, 1),
            "goal_first_draw_ms": 1000, "goal_smoothing_ms": 50, "goal_log_toggle_ms": 100, "goal_zoom_ms": 150,
        }
        result.update(_browse_sweep(url, ids, steps, 0 if quick else repeats))
        before = _before_assets()
        if before is not None:
            peer = _browse_sweep(url, ids, steps, 0 if quick else repeats, before)
            result["before_issue_11"] = {"commit": BEFORE_COMMIT[:12], **{k: v for k, v in peer.items() if not isinstance(v, list)}}
            for key in ("first_draw_ms_median", "smoothing_change_ms_median", "log_toggle_ms_median", "zoom_ms_median"):
                if peer.get(key) and result.get(key):
                    result[f"{key.removesuffix('_median').removesuffix('_ms')}_speedup_x"] = round(peer[key] / result[key], 2)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=None, help="points per series (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep bench/work/dashboard-*/ (database, server log)")
    parser.add_argument("--sweep", action="store_true", help="the sweep: 20 runs x 11 series x --steps steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per series of the sweep (default 20,000)")
    args = parser.parse_args()
    if args.sweep:
        print(json.dumps(measure_dashboard_sweep(steps=args.steps, keep=args.keep), indent=2))
    else:
        print(json.dumps(measure(args.points, args.runs, args.repeats, args.keep), indent=2))


if __name__ == "__main__":
    main()
