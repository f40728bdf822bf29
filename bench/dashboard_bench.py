"""Dashboard benchmark: the compare view of 10 runs x 4 series x 1,000,000 points in headless Chromium.

    .venv/bin/python bench/dashboard_bench.py [--points N] [--runs R]     # prints one JSON object

``measure()`` is what ``bench/run.py`` calls. It
1. starts a real server (uvicorn, fresh SQLite file under bench/work/),
2. seeds ``runs`` runs x 4 series of ``points`` points each (the loss, its two weighted components,
   the gradient norm) through the real ingest API in batches of 10,000 points (4 x 2,500 steps),
   with a one-step spike and one NaN in every loss series,
3. opens ``/p/bench/compare?runs=...`` in Debian's Chromium and times navigation -> every panel drawn
   (``performance.now()`` when the page sets ``window.__losswatchReady`` / ``body[data-ready]``),
   once cold and then ``repeats`` more times (median), and
4. times zooms (drag-equivalent ``window.__losswatch.zoom(start, end)``: query + redraw of all panels).

The size is a parameter (``--points`` / ``LOSSWATCH_BENCH_POINTS``) for slow machines; the result says
which size was used.
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


def _browse(url: str, ids: list[str], points: int, repeats: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    keys = "&".join("key=" + k.replace("/", "%2F") for k, _ in KEYS)
    path = f"/p/bench/compare?runs={','.join(ids)}&{keys}"
    loads: list[float] = []
    zooms: list[float] = []
    queries: list[float] = []
    last: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(1 + repeats):
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
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
                        ms = page.evaluate("""async ([lo, hi]) => {
                            const t = performance.now();
                            await window.__losswatch.zoom(lo, hi);
                            await new Promise(r => requestAnimationFrame(() => r()));
                            return performance.now() - t;
                        }""", [lo, hi])
                        zooms.append(float(ms))
                    zoomed = page.evaluate("window.__losswatch.info()")
                    last["zoomed_nonfinite"] = [p["nonfinite"] for p in zoomed["panels"] if p["key"] == "train/loss"]
                context.close()
        finally:
            browser.close()
    panels = last.get("panels", [])
    loss = next((p for p in panels if p["key"] == "train/loss"), {})
    return {
        "first_draw_ms_cold": round(loads[0], 1),
        "first_draw_ms_median": round(statistics.median(loads[1:] or loads), 1),
        "first_draw_ms_all": [round(x, 1) for x in loads],
        "initial_query_ms_median": round(statistics.median(queries), 1),
        "zoom_ms_median": round(statistics.median(zooms), 1) if zooms else None,
        "zoom_ms_all": [round(x, 1) for x in zooms],
        "phases_ms_last": {k: round(v, 1) for k, v in (last.get("marks") or {}).items()},
        "panels": len(panels),
        "buckets_per_series": max(loss.get("points", [0]) or [0]),
        "nan_marked_every_run": bool(loss) and all(n >= 1 for n in loss.get("nonfinite", [])),
        "nan_marked_when_zoomed": all(n >= 1 for n in (last.get("zoomed_nonfinite") or [[0]])[0]),
    }


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
            "goal_first_draw_ms": 1500, "goal_zoom_ms": 300,
        }
        result.update(_browse(url, ids, points, repeats))
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
    args = parser.parse_args()
    print(json.dumps(measure(args.points, args.runs, args.repeats, args.keep), indent=2))


if __name__ == "__main__":
    main()
