"""Load: N simulated training processes, each through the real client, against real servers.

Each process is ``python bench/load.py --worker URL RUN_ID ...``: ``losswatch.init`` (stdlib client
only, no torch), ``run.log`` of 10 series at a steady 100 steps/s for the duration, ``run.finish``.
Its transport is the client's own ``HTTPTransport`` wrapped to time every ingest request, so the
latencies are what a training process sees (server time + loopback + queueing). Two setups:

- one ``losswatch serve`` process on SQLite;
- two ``losswatch serve`` processes on one PostgreSQL database, on two ports, the clients split
  between them (separate processes, not ``uvicorn --workers``: see uvicorn issue 3149).

Afterwards every run is counted through the API: per series the summary count and the raw points,
each step checked once with its logged value: ``lost`` (steps missing or with another value) and
``duplicated`` (stored points beyond the steps logged) must both be 0.

Full mode: 64 processes for 60 s each setup; quick mode: 4 processes for 8 s.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SERIES = 10
RATE = 100.0


def value(series: int, step: int) -> float:
    return math.cos(step * 0.01 + series) * (series + 1)


# --- the worker (one simulated training process) ------------------------------------------------


def worker(url: str, run_id: str, project: str, seconds: float, rate: float, spool_dir: str) -> None:
    import losswatch
    from losswatch.client.transport import HTTPTransport

    latencies: list[float] = []

    class Timed(HTTPTransport):
        def request(self, method: str, path: str, body: bytes | None = None) -> Any:
            t = time.perf_counter()
            try:
                return super().request(method, path, body)
            finally:
                if path.endswith("/points"):
                    latencies.append((time.perf_counter() - t) * 1000)

    # The client's defaults (a batch every 2 s or 5,000 points), as a training script gets them.
    run = losswatch.init(project=project, url=url, id=run_id, transport=Timed(url), spool_dir=spool_dir,
                         finish_timeout=120)
    keys = ["train/loss"] + [f"train/loss/c{i}" for i in range(1, SERIES)]
    steps = int(seconds * rate)
    t0 = time.perf_counter()
    behind = 0.0
    for step in range(steps):
        run.log({k: value(i, step) for i, k in enumerate(keys)}, step=step)
        delay = t0 + (step + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
    logged_s = time.perf_counter() - t0
    run.finish()
    drain_s = time.perf_counter() - t0 - logged_s
    print(json.dumps({"run": run_id, "steps": steps, "logged_s": logged_s, "drain_s": drain_s,
                      "max_behind_s": behind, "latencies_ms": latencies, "stats": run.stats}), flush=True)


# --- the bench ----------------------------------------------------------------------------------


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def _count(url: str, runs: dict[str, int]) -> tuple[int, int, int]:
    """(points expected, lost, duplicated), counted through the API."""
    import httpx

    expected = lost = duplicated = 0
    keys = ["train/loss"] + [f"train/loss/c{i}" for i in range(1, SERIES)]
    with httpx.Client(base_url=url, timeout=60) as c:
        for run_id, steps in runs.items():
            summary = c.get(f"/api/v1/runs/{run_id}").json().get("summary", {})
            for i, key in enumerate(keys):
                expected += steps
                stored = summary.get(key, {}).get("count", 0)
                duplicated += max(0, stored - steps)
                got: dict[int, Any] = {}
                start = 0
                while True:
                    page = c.get(f"/api/v1/runs/{run_id}/points",
                                 params={"key": key, "start": start, "limit": 100_000})
                    if page.status_code == 404:
                        break
                    body = page.json()
                    got.update(zip(body["steps"], body["values"], strict=True))
                    if body["next_start"] is None:
                        break
                    start = body["next_start"]
                lost += sum(1 for s in range(steps) if got.get(s) != value(i, s))
    return expected, lost, duplicated


def _stored(url: str, runs: dict[str, int]) -> int:
    """Points in the database now, from the runs' summaries (cheap)."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        return sum(s["count"] for rid in runs for s in c.get(f"/api/v1/runs/{rid}").json().get("summary", {}).values())


def _setup(name: str, servers: list[Any], clients: int, seconds: float, project: str, spool: Path) -> dict[str, Any]:
    import shutil

    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(parents=True)
    procs = []
    run_ids = [uuid.uuid4().hex for _ in range(clients)]
    peak = [0.0] * len(servers)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            for i, s in enumerate(servers):
                peak[i] = max(peak[i], s.rss_mib())

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    for i, rid in enumerate(run_ids):
        url = servers[i % len(servers)].url
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", url, rid, project, str(seconds), str(RATE),
                                       str(spool)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 300)
        if p.returncode != 0:
            raise RuntimeError(f"a load worker failed: {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    stop.set()
    for i, s in enumerate(servers):
        peak[i] = max(peak[i], s.rss_mib())
    lat = [x for r in reports for x in r["latencies_ms"]]
    runs = {r["run"]: r["steps"] for r in reports}
    at_finish = _stored(servers[0].url, runs)
    sync_s = 0.0
    if any(spool.glob("*")):  # what finish() could not deliver in time waits in the spools: send it now
        t = time.perf_counter()
        subprocess.run([str(BIN / "losswatch"), "sync", str(spool), "--url", servers[0].url], check=False,
                       capture_output=True, timeout=1800)
        sync_s = time.perf_counter() - t
    expected, lost, duplicated = _count(servers[0].url, runs)
    logged = max(r["logged_s"] for r in reports)
    return {
        "setup": name, "clients": clients, "seconds": round(seconds, 1),
        "target_points_per_s": round(clients * SERIES * RATE),
        "held_points_per_s": round(expected / logged) if logged else 0,
        "delivered_points_per_s": round(expected / (logged + max(r["drain_s"] for r in reports))),
        "p50_ingest_ms": round(_percentile(lat, 0.50), 1), "p99_ingest_ms": round(_percentile(lat, 0.99), 1),
        "requests": len(lat), "max_drain_s": round(max(r["drain_s"] for r in reports), 2),
        "max_client_behind_s": round(max(r["max_behind_s"] for r in reports), 3),
        "server_peak_rss_mib": round(max(peak), 1), "points": expected,
        "undelivered_at_finish": expected - at_finish, "sync_s": round(sync_s, 1), "lost": lost, "duplicated": duplicated,
        "wall_s": round(wall, 1),
    }


def measure(max_seconds: float = 240, quick: bool = False, work_dir: Path | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    import server_bench

    work = work_dir or (BENCH / "work" / "load")
    work.mkdir(parents=True, exist_ok=True)
    clients = 4 if quick else 64
    # each setup logs for `seconds`, then drains and is counted: about a third of the budget each
    seconds = 8.0 if quick else max(10.0, min(60.0, max_seconds / 2 - 60))
    rows: list[dict[str, Any]] = []
    notes = [f"{clients} processes x {SERIES} series x {RATE:.0f} steps/s, each through the real client "
             "(losswatch.init ... run.log ... finish); latency = one ingest request as the client's "
             "transport times it; lost/duplicated counted through the API afterwards.",
             "held = points logged / logging time; delivered = points / (logging + drain) time; "
             "undelivered_at_finish = points not yet stored when finish() gave up (finish_timeout 120 s) and "
             "left in the client's spool; `losswatch sync` then sends them (sync_s); lost and duplicated are "
             "counted after that, every step of every series checked against its logged value."]
    db = work / "load.db"
    for p in work.glob("load.db*"):
        p.unlink()
    server = server_bench.Server(f"sqlite:///{db}", work)
    try:
        rows.append(_setup("SQLite, 1 server process", [server], clients, seconds, "load", work / "spool"))
    finally:
        server.stop()
    try:
        pg = server_bench._pg_database("lw_bench_load")
    except Exception as exc:  # noqa: BLE001 - report, do not fail the other setup
        notes.append(f"PostgreSQL setup skipped: {exc}")
    else:
        servers = []
        try:
            servers = [server_bench.Server(pg, work), server_bench.Server(pg, work)]
            rows.append(_setup("PostgreSQL, 2 server processes", servers, clients, seconds, "load", work / "spool"))
        finally:
            for s in servers:
                s.stop()
            server_bench._drop_pg("lw_bench_load")
    goals = all(r["lost"] == 0 and r["duplicated"] == 0 for r in rows)
    notes.append("goal (issue 7): 64 clients, lost 0, duplicated 0, p99 <= 100 ms, server RSS <= 512 MiB; "
                 f"lost/duplicated here: {'all 0' if goals else 'NOT 0'}")
    return {"title": "Load: concurrent training processes", "notes": notes, "setups": rows}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, url, run_id, project, seconds, rate, spool_dir = sys.argv
        worker(url, run_id, project, float(seconds), float(rate), spool_dir)
    else:
        quick = "--quick" in sys.argv
        print(json.dumps(measure(quick=quick), indent=1))
