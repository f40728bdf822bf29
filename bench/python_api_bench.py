"""``losswatch.Api`` reading back, and how fast an alert reaches ``run.should_stop`` (issues 14 and 12).

    flock /tmp/bench.lock .venv/bin/python bench/run.py python_api
    .venv/bin/python bench/python_api_bench.py --quick          # printed as JSON

A real ``losswatch serve`` on a temporary SQLite file, filled beforehand with the server's own
services in this process (the code the ingest route calls; 10,000 HTTP round trips would take minutes
on a busy machine), then read through HTTP as a user's notebook does:

- **runs**: 10,000 runs (1,000 with ``--quick``), each with a config and one ``val/mAP50-95`` point;
  ``api.runs(project, sort="-max:val/mAP50-95")`` fetches all of them (10,000 a request) into a
  ``RunList``, and ``.to_pandas()`` makes the table. Goal: ≤ 1 s.
- **history**: one series of 1,000,000 raw points (100,000 with ``--quick``), NaN and ±Inf among
  them; ``run.history(["train/loss"])`` pages through ``GET /runs/{id}/points`` into numpy arrays.
  Goal: ≤ 1.5 s. The arrays are checked bit for bit against what was sent.
- **search_runs**: 1,000 more runs (project ``mlsearch``) with params, tags and metrics;
  ``mlflow.search_runs`` with a metric filter and ``order_by`` through the real MLflow client. Goal: ≤ 1 s,
  and the same runs in the same order as losswatch's REST list.
- **should_stop**: a run with ``stop_on={"non_finite"}`` and the default ``flush_interval`` (2 s)
  logs a NaN; the time until ``run.should_stop`` is measured, five times. The alert is made while
  the server stores the batch and comes back in that request's answer, so the bound is the collector's
  next cut (at most ``flush_interval`` × 1.2) plus one request; ``run.flush()`` right after the NaN
  makes it one request.

Each figure is the median of three calls (five for should_stop), after a warm-up call.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "LOSSWATCH_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([str(BIN / "losswatch"), "serve", "--db", f"sqlite:///{work / 'bench.db'}",
                             "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=open(work / "serve.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def _median(fn: Any, n: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _long_values(n: int) -> list[float]:
    values = [1.0 / (s + 1) for s in range(n)]
    values[10], values[11], values[12] = math.nan, math.inf, -math.inf
    return values


def _fill(path: Path, n_runs: int, n_points: int) -> float:
    """The runs and the long series, written with the server's own services (create_run, ingest: the
    code the HTTP routes call) in this process, which is much quicker than n_runs round trips."""
    from losswatch.client import wire
    from losswatch.server.api.schemas import RunCreate
    from losswatch.server.services import ingest, runs
    from losswatch.server.settings import Settings
    from losswatch.server.storage.db import Database, upgrade

    t0 = time.perf_counter()
    url = f"sqlite:///{path}"
    upgrade(url)
    db = Database(Settings(database_url=url))
    with db.write() as s:
        for i in range(n_runs):
            runs.create_run(s, "bench", RunCreate(id=f"r{i:06d}", name=f"lr-{i}",
                                                  config={"lr": 1e-3 * (i % 97), "seed": i}), create_project=True)
        runs.create_run(s, "bench", RunCreate(id="long", name="long"), create_project=True)
    for i in range(n_runs):
        ingest.ingest(db, f"r{i:06d}", wire.dumps(wire.batch(
            [wire.series_entry("val/mAP50-95", "metric", [0], [(i * 7919 % 1000) / 1000])])))
    _fill_search(db, SEARCH_RUNS)
    values = _long_values(n_points)
    for i in range(0, n_points, 100_000):
        ingest.ingest(db, "long", wire.dumps(wire.batch(
            [wire.series_entry("train/loss", "loss", list(range(i, min(i + 100_000, n_points))),
                               values[i:i + 100_000])])))
    db.engine.dispose()
    return time.perf_counter() - t0


SEARCH_RUNS = 1000  # issue 14's goal: mlflow.search_runs over 1,000 runs in at most 1 s
SEARCH_FILTER = "metrics.`val/acc` > 0.5"
SEARCH_ORDER = "metrics.`val/acc` DESC"


def _fill_search(db: Any, n_runs: int) -> None:
    """Project ``mlsearch``: ``n_runs`` runs with params (config), tags and, as metrics, ``val/acc`` (a
    different last value per run, so that the order is one) and 20 steps of ``train/loss``."""
    from losswatch.client import wire
    from losswatch.server.api.schemas import RunCreate
    from losswatch.server.services import ingest, runs

    with db.write() as s:
        for i in range(n_runs):
            runs.create_run(s, "mlsearch", RunCreate(id=f"m{i:05d}", name=f"trial-{i}", tags=[f"fold={i % 5}"],
                                                     config={"lr": 1e-4 * (1 + i % 13), "batch": 32 << (i % 3)}),
                            create_project=True)
    for i in range(n_runs):
        acc = ((i * 7919) % n_runs) / n_runs
        ingest.ingest(db, f"m{i:05d}", wire.dumps(wire.batch([
            wire.series_entry("val/acc", "metric", [5, 10], [acc / 2, acc]),
            wire.series_entry("train/loss", "loss", list(range(20)), [1.0 / (s + 1 + i) for s in range(20)]),
        ])))


def _search_runs(url: str) -> dict[str, Any]:
    """``mlflow.search_runs`` with a metric filter and order_by over SEARCH_RUNS runs (the real MLflow
    client against the running server), beside losswatch's REST list with the same sort, filtered
    the same way; median of 3 after a warm-up."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(url)
    exp = MlflowClient().get_experiment_by_name("mlsearch")
    assert exp is not None
    got: dict[str, Any] = {}

    def search() -> None:
        got["df"] = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=SEARCH_FILTER,
                                       order_by=[SEARCH_ORDER])

    search_s = _median(search)
    df = got["df"]
    rest: list[dict[str, Any]] = []
    offset = 0
    while True:  # the REST list, all pages, sorted by the same metric (its last value)
        with urllib.request.urlopen(f"{url}/api/v1/projects/mlsearch/runs?sort=-last:val/acc&limit=1000"  # noqa: S310
                                    f"&offset={offset}", timeout=60) as r:
            page = json.loads(r.read())
        rest += page["runs"]
        if len(page["runs"]) < 1000:
            break
        offset += 1000
    expected = [r["id"] for r in rest if isinstance(r["summary"].get("val/acc", {}).get("last"), float)
                and r["summary"]["val/acc"]["last"] > 0.5]
    return {
        "search_runs_runs": SEARCH_RUNS,
        "search_runs_rows": len(df),
        "search_runs_s": round(search_s, 3),
        "goal_search_runs_s": 1.0,
        "search_runs_rows_identical": list(df["run_id"]) == expected and len(expected) > 0,
    }


def measure(max_seconds: float = 300.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    from losswatch.client.api import Api
    from losswatch.client.run import init

    work = Path(work_dir or tempfile.mkdtemp(prefix="lw-api-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "bench.db").unlink(missing_ok=True)
    n_runs = 1000 if quick else 10_000
    n_points = 100_000 if quick else 1_000_000
    fill_s = _fill(work / "bench.db", n_runs, n_points)
    proc, url = _serve(work)
    out: dict[str, Any] = {"title": "Python read API and alert latency (losswatch.Api, run.should_stop)"}
    values = _long_values(n_points)
    try:
        api = Api(url)
        listed: list[Any] = []

        def list_runs() -> None:
            listed[:] = api.runs("bench", sort="-max:val/mAP50-95")

        runs_s = _median(list_runs)
        assert len(listed) == n_runs + 1
        table_s = _median(lambda: api.runs("bench", sort="-max:val/mAP50-95").to_pandas())
        long_run = api.run("long")
        got: dict[str, Any] = {}

        def history() -> None:
            got["h"] = long_run.history(["train/loss"])

        history_s = _median(history)
        arr = got["h"]["train/loss"]["value"]
        exact = len(arr) == n_points and all(
            (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(arr.tolist(), values, strict=True))
        api.close()
        search = _search_runs(url)

        latencies, flushed, from_server = [], [], []
        for trial in range(5):
            seen: list[tuple[float, dict[str, Any]]] = []
            run = init(project="bench", id=f"stop-{trial}", url=url, stop_on={"non_finite"},
                       spool_dir=work / "spool", system_metrics=None, heartbeat_interval=3600.0,
                       on_alert=lambda alert, seen=seen: seen.append((time.time(), alert)))
            run.log({"train/loss": 1.0}, step=0)
            run.flush()
            t = time.perf_counter()
            run.log({"train/loss": math.nan}, step=1)
            while not run.should_stop and time.perf_counter() - t < 10:
                time.sleep(0.001)
            latencies.append(time.perf_counter() - t)
            if seen:  # the alert's creation on the server (same machine, same clock) -> its arrival here
                created = dt.datetime.fromisoformat(str(seen[0][1]["created_at"]).replace("Z", "+00:00"))
                from_server.append(seen[0][0] - created.timestamp())
            run.finish()
            run = init(project="bench", id=f"stopf-{trial}", url=url, stop_on={"non_finite"},
                       spool_dir=work / "spool", system_metrics=None, heartbeat_interval=3600.0)
            run.log({"train/loss": 1.0}, step=0)
            run.flush()
            t = time.perf_counter()
            run.log({"train/loss": math.nan}, step=1)
            run.flush()
            flushed.append(time.perf_counter() - t)
            assert run.should_stop
            run.finish()
        out.update({
            "runs_listed": n_runs,
            "api_runs_s": round(runs_s, 3),
            "api_runs_to_pandas_s": round(table_s, 3),
            "goal_api_runs_s": 1.0,
            "history_points": n_points,
            "history_raw_s": round(history_s, 3),
            "goal_history_s": 1.5,
            "history_bit_exact": exact,
            "stop_after_log_median_s": round(statistics.median(latencies), 3),
            "stop_after_log_max_s": round(max(latencies), 3),
            "stop_after_log_and_flush_median_s": round(statistics.median(flushed), 4),
            "stop_from_alert_on_server_median_s": round(statistics.median(from_server), 4) if from_server else None,
            "stop_from_alert_on_server_max_s": round(max(from_server), 4) if from_server else None,
            **search,
            "fill_s": round(fill_s, 1),
        })
        out["notes"] = [
            f"api_runs_s: api.runs(project, sort='-max:val/mAP50-95') fetching all {n_runs:,} runs (10,000 a "
            "request); api_runs_to_pandas_s: the same call and .to_pandas(). history_raw_s: "
            f"run.history(['train/loss']) of {n_points:,} raw points into numpy (100,000 a request); "
            "history_bit_exact: every value (NaN, +-Inf included) equals what was sent. Medians of 3 after a warm-up.",
            f"search_runs_s: the real MLflow client's mlflow.search_runs(experiment_ids=[...], filter_string="
            f"\"{SEARCH_FILTER}\", order_by=[\"{SEARCH_ORDER}\"]) over the {SEARCH_RUNS:,} runs of a project "
            "(each with params, a tag, val/acc at 2 steps and 20 steps of train/loss), into its DataFrame; "
            "search_runs_rows_identical: its run ids, in order, equal losswatch's REST list sorted by "
            "-last:val/acc and filtered the same way (last value > 0.5). Median of 3 after a warm-up.",
            "stop_after_log: from run.log() of a NaN to run.should_stop with the defaults (flush_interval 2 s), "
            "five runs; stop_after_log_and_flush: the same with run.flush() after the log(); "
            "stop_from_alert_on_server: from the alert's created_at on the server (same machine) to its arrival "
            "in on_alert, where should_stop is set.",
            "The alert is created while the server stores the batch with the NaN and comes back in that "
            "request's answer: should_stop is set one request after the batch is cut; the collector cuts "
            "at most flush_interval x 1.2 after the log() call (default 2 s, so at most 2.4 s + one request).",
            "Machine shared with other work while measured: compare figures within this table.",
        ]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


if __name__ == "__main__":
    print(json.dumps(measure(quick="--quick" in sys.argv), indent=2))
