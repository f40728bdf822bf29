"""The MLflow tracking server and client as a peer, measured on this machine in the same bench run.

Server side (plain HTTP from our virtualenv, no MLflow client in the way):
  - ingest: ``POST /api/2.0/mlflow/runs/log-batch`` at MLflow's maximum batch (1,000 metrics per
    request), 1 client and 4 concurrent clients;
  - ``GET /api/2.0/mlflow/metrics/get-history`` of a 100,000-point and a 1,000,000-point metric;
  - ``GET /ajax-api/2.0/mlflow/metrics/get-history-bulk-interval`` with ``max_results=2000`` (the
    sampled query its UI uses) on the big metric, and whether it kept a one-step spike.
  on a SQLite backend and, when PostgreSQL answers at 127.0.0.1:5432, on a PostgreSQL backend.
Client side (in MLflow's virtualenv, for issue 3): ``mlflow.log_metrics`` with 3 metrics per call,
synchronous and ``synchronous=False``, and the flush that the asynchronous mode needs at the end.

MLflow lives in its own virtualenv, ``bench/.venv-mlflow`` (created once, reused, git-ignored).
Everything is bounded by ``max_seconds``: a measurement that does not fit is reported with the size
that was measured (or as not finished within its time), never extrapolated.

The metric the queries read is grown to its size by writing straight into MLflow's own ``metrics``
table (executemany on SQLite, COPY on PostgreSQL; a subprocess in MLflow's virtualenv), because
loading a million points over HTTP at MLflow's rate would take minutes; the ingest rate is measured
over HTTP separately. The last 1,000 points of each size go through ``log-batch`` so MLflow's
``latest_metrics`` is right.

Run as a script with MLflow's interpreter, this file does the in-virtualenv parts (``client`` and
``fill`` commands); its top level therefore imports only the standard library.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # the server-process helper the tests use too
    sys.path.insert(0, str(HERE.parent))
from tests._server_process import ServerProcess  # noqa: E402

VENV = HERE / ".venv-mlflow"
BATCH = 1000  # MLflow's MAX_METRICS_PER_BATCH
SPIKE_STEP = 77_777  # a one-step spike planted in the big metric: does a sampled query keep it?
SPIKE_VALUE = 100.0
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
PG_DB = "mlflow_bench"


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _value(step: int) -> float:
    """A loss-like curve with a little deterministic noise, and the planted spike."""
    if step == SPIKE_STEP:
        return SPIKE_VALUE
    return 1.0 / (1.0 + step * 1e-4) + 0.01 * ((step * 7919) % 100) / 100.0


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sub(self, seconds: float) -> _Budget:
        return _Budget(max(0.0, min(seconds, self.left())))


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def ensure_venv(log_path: Path, timeout_s: float = 1200.0) -> tuple[bool, str]:
    """Create bench/.venv-mlflow with MLflow once; later runs reuse it."""
    py = _venv_python()
    check = [str(py), "-c", "import mlflow, sys; sys.stdout.write(mlflow.__version__)"]
    if py.exists():
        proc = subprocess.run(check, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return True, proc.stdout.strip()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        steps = [
            [sys.executable if not shutil.which("python3") else "python3", "-m", "venv", str(VENV)],
            [str(py), "-m", "pip", "install", "-q", "mlflow"],
        ]
        for cmd in steps:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                return False, f"`{' '.join(cmd[-3:])}` did not finish within {timeout_s:.0f} s"
            if rc != 0:
                return False, f"`{' '.join(cmd[-3:])}` failed (exit {rc}): {_tail(log_path, 600)}"
    proc = subprocess.run(check, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return False, f"mlflow does not import after install: {proc.stderr[-600:]}"
    return True, proc.stdout.strip()


def _ensure_psycopg(log_path: Path) -> str | None:
    """MLflow's PostgreSQL backend needs a driver in its virtualenv (SQLAlchemy 2.1's default for
    postgresql:// is psycopg 3); None when it is there."""
    py = str(_venv_python())
    if subprocess.run([py, "-c", "import psycopg"], capture_output=True).returncode == 0:
        return None
    with log_path.open("a") as log:
        rc = subprocess.run(
            [py, "-m", "pip", "install", "-q", "psycopg[binary]"], stdout=log, stderr=subprocess.STDOUT, timeout=600
        ).returncode
    return None if rc == 0 else f"pip install psycopg[binary] failed (exit {rc}): {_tail(log_path, 400)}"


# --------------------------------------------------------------------------------------------
# The server and its HTTP API (runs in our virtualenv: httpx)
# --------------------------------------------------------------------------------------------


class _Server(ServerProcess):
    """``mlflow server`` (in its own session: ``--workers`` forks, and stop() ends them all)."""

    def __init__(self, backend_uri: str, work: Path, workers: int | None) -> None:
        argv = [
            str(VENV / "bin" / "mlflow"), "server",
            "--backend-store-uri", backend_uri,
            "--default-artifact-root", (work / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", "{port}",
        ]  # fmt: skip
        if workers is not None:
            argv += ["--workers", str(workers)]
        super().__init__(argv=argv, env={"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"},
                         log_path=work / "server.log", health="/health", cwd=work, new_session=True)
        self.start(wait=False)

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)


def _post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/2.0/mlflow/" + path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    if r.status_code != 200:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
    return r.json() if r.content else {}


def _create_run(client: Any, experiment_id: str, name: str) -> str:
    body = {"experiment_id": experiment_id, "run_name": name, "start_time": int(time.time() * 1000)}
    return str(_post(client, "runs/create", body)["run"]["info"]["run_id"])


def _batch_body(run_id: str, key: str, start: int, stop: int) -> bytes:
    ts = int(time.time() * 1000)
    metrics = [{"key": key, "value": _value(s), "timestamp": ts, "step": s} for s in range(start, stop)]
    return json.dumps({"run_id": run_id, "metrics": metrics}).encode()


def _log_range(client: Any, run_id: str, key: str, start: int, stop: int) -> None:
    for lo in range(start, stop, BATCH):
        r = client.post(
            "/api/2.0/mlflow/runs/log-batch",
            content=_batch_body(run_id, key, lo, min(stop, lo + BATCH)),
            headers={"Content-Type": "application/json"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"log-batch: {r.status_code} {r.text[:300]}")


def _ingest(url: str, run_ids: list[str], key: str, max_points: int, seconds: float) -> dict[str, Any]:
    """Each client logs batches of 1,000 points into its own run until max_points or seconds."""
    import httpx

    done = [0] * len(run_ids)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + seconds

    def worker(i: int, run_id: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            step = 0
            while step < max_points and time.perf_counter() < deadline:
                body = _batch_body(run_id, key, step, min(max_points, step + BATCH))
                t0 = time.perf_counter()
                try:
                    r = client.post(
                        "/api/2.0/mlflow/runs/log-batch", content=body, headers={"Content-Type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    return
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                step = min(max_points, step + BATCH)
                done[i] = step

    threads = [threading.Thread(target=worker, args=(i, r)) for i, r in enumerate(run_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"log-batch failed: {errors[0]}")
    points = sum(done)
    return {
        "points": points,
        "seconds": round(elapsed, 3),
        "points_per_s": points / elapsed if elapsed > 0 else None,
        "request_median_ms": statistics.median(latencies) * 1000 if latencies else None,
        "per_client_points": done,
    }


def _fill(backend_uri: str, work: Path, url: str, run_id: str, key: str, start: int, stop: int,
          budget: _Budget) -> float:  # fmt: skip
    """Grow (run, key) to `stop` points: bulk INSERT up to stop-1000, then log-batch the rest."""
    import httpx

    t0 = time.perf_counter()
    sql_stop = max(start, stop - BATCH)
    if sql_stop > start:
        cmd = [str(_venv_python()), str(Path(__file__).resolve()), "fill", backend_uri, run_id, key,
               str(start), str(sql_stop)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, budget.left()), cwd=work)
        if proc.returncode != 0:
            raise RuntimeError(f"bulk fill failed: {proc.stderr[-800:]}")
    with httpx.Client(base_url=url, timeout=120) as client:
        _log_range(client, run_id, key, sql_stop, stop)
    return time.perf_counter() - t0


def _timed_get(url: str, path: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Time one GET until its whole body has arrived; parse it afterwards (not timed)."""
    import httpx

    with httpx.Client(base_url=url, timeout=httpx.Timeout(timeout_s, connect=10)) as client:
        t0 = time.perf_counter()
        try:
            r = client.get(path, params=params)
            body = r.content
        except httpx.TimeoutException:
            return {"seconds": None, "timed_out_after_s": round(time.perf_counter() - t0, 1)}
        elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")
    metrics = json.loads(body).get("metrics", [])
    values = [m.get("value") for m in metrics if isinstance(m.get("value"), (int, float))]
    return {
        "seconds": elapsed,
        "returned": len(metrics),
        "bytes": len(body),
        "max_value": max(values) if values else None,
    }


def _measure_server(backend: str, backend_uri: str, work: Path, budget: _Budget, sizes: dict[str, int],
                    workers: int | None, client_phase: Any = None) -> dict[str, Any]:  # fmt: skip
    """One backend: start the server, ingest, grow the metric, query. Returns its figures."""
    import httpx

    out: dict[str, Any] = {"backend": backend}
    server = _Server(backend_uri, work, workers)
    try:
        t0 = time.perf_counter()
        server.wait_ready(min(180.0, max(10.0, budget.left())))
        out["server_start_s"] = round(time.perf_counter() - t0, 1)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            exp = _post(client, "experiments/create", {"name": f"bench-{backend}-{int(time.time())}"})
            exp_id = str(exp["experiment_id"])
            big_run = _create_run(client, exp_id, "big")
            c_runs = [_create_run(client, exp_id, f"concurrent-{i}") for i in range(4)]

        # Ingest, 1 client: this also writes the first points of the big metric.
        history = sizes["history_points"]
        one = _ingest(server.url, [big_run], "big", history, min(sizes["ingest_seconds"], budget.left() * 0.3))
        out["ingest_1_client_points_per_s"] = one["points_per_s"]
        out["ingest_1_client_points"] = one["points"]
        out["ingest_1_client_request_median_ms"] = one["request_median_ms"]

        four = _ingest(server.url, c_runs, "m", history, min(sizes["concurrent_seconds"], budget.left() * 0.3))
        out["ingest_4_clients_points_per_s"] = four["points_per_s"]
        out["ingest_4_clients_points"] = four["points"]
        out["ingest_4_clients_request_median_ms"] = four["request_median_ms"]

        if client_phase is not None:
            out["_client"] = client_phase(server.url)

        # get-history at each size the budget allows, growing one metric.
        have = one["points"]
        sizes_done: list[int] = []
        fill_points, fill_seconds = 0, 0.0
        for size in (history, sizes["big_points"]):
            if budget.left() < 15:
                out[f"get_history_{size}_note"] = f"not measured: {budget.left():.0f} s of the budget left"
                break
            if sizes_done:
                # Only a go/no-go decision from the smaller size's figures; nothing is reported from it.
                prev = sizes_done[-1]
                fill_rate = fill_points / fill_seconds if fill_points >= 10_000 and fill_seconds > 0 else 20_000.0
                need = (size - have) / fill_rate + 1.5 * (size / prev) * out[f"get_history_{prev}_s"]
                if need > budget.left():
                    out[f"get_history_{size}_note"] = (
                        f"not attempted: {budget.left():.0f} s of the budget left, the {prev:,}-point figures "
                        f"suggest about {need:.0f} s are needed (raise max_seconds to measure it)"
                    )
                    break
            fill_seconds = _fill(backend_uri, work, server.url, big_run, "big", have, size, budget)
            fill_points = size - have
            out[f"fill_to_{size}_s"] = round(fill_seconds, 2)
            have = size
            got = _timed_get(
                server.url, "/api/2.0/mlflow/metrics/get-history", {"run_id": big_run, "metric_key": "big"},
                max(5.0, budget.left() - 5),
            )  # fmt: skip
            out[f"get_history_{size}_s"] = got["seconds"]
            if got["seconds"] is None:
                out[f"get_history_{size}_note"] = (
                    f"did not finish within the time left ({got['timed_out_after_s']} s): not extrapolated"
                )
                break
            if got["returned"] != size:
                out[f"get_history_{size}_note"] = f"returned {got['returned']} points, expected {size}"
            out[f"get_history_{size}_mb"] = round(got["bytes"] / 1e6, 1)
            sizes_done.append(size)

        # The sampled query on the metric as it now is (grown to `have` points).
        if have and budget.left() > 5:
            size = have
            got = _timed_get(
                server.url, "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                {"run_ids": big_run, "metric_key": "big", "max_results": 2000}, max(5.0, budget.left() - 2),
            )  # fmt: skip
            out[f"bulk_interval_{size}_s"] = got["seconds"]
            if got["seconds"] is not None:
                out[f"bulk_interval_{size}_returned"] = got["returned"]
                out[f"bulk_interval_{size}_keeps_spike"] = got["max_value"] == SPIKE_VALUE
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------------------------
# PostgreSQL database for the PostgreSQL backend (our venv: psycopg)
# --------------------------------------------------------------------------------------------


def _pg_recreate() -> str | None:
    """Drop and create database mlflow_bench; returns a reason when PostgreSQL is not usable."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed in our virtualenv ({exc})"
    try:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_DB}")
    except Exception as exc:  # noqa: BLE001 - any connection failure means: skip this backend
        return f"PostgreSQL at 127.0.0.1:5432 not usable: {exc}"
    return None


# --------------------------------------------------------------------------------------------
# Client overhead (runs MLflow's client in its virtualenv)
# --------------------------------------------------------------------------------------------


def _client_overhead(url: str, work: Path, sync_calls: int, async_calls: int, seconds: float) -> dict[str, Any]:
    cmd = [str(_venv_python()), str(Path(__file__).resolve()), "client", url, str(sync_calls), str(async_calls),
           str(max(1.0, seconds - 20))]  # fmt: skip
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, seconds + 30), cwd=work, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"MLflow client measurement did not finish within {seconds + 30:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-800:]}"}
    return dict(json.loads(lines[-1]))


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _client_main(url: str, sync_calls: int, async_calls: int, seconds: float) -> None:
    """In MLflow's venv: time mlflow.log_metrics with 3 metrics per call, sync then async."""
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(f"client-overhead-{int(time.time())}")
    out: dict[str, Any] = {"mlflow_version": mlflow.__version__}
    sync_deadline = time.perf_counter() + seconds * 0.6  # the rest is for async calls and the flush

    def metrics(i: int) -> dict[str, float]:
        return {"train/loss": _value(i), "train/loss/box": _value(i) * 0.5, "lr": 1e-3}

    with mlflow.start_run():
        mlflow.log_metrics(metrics(0), step=0)  # warm the connection and the run
        samples = []
        for i in range(1, sync_calls + 1):
            t0 = time.perf_counter()
            mlflow.log_metrics(metrics(i), step=i)
            samples.append(time.perf_counter() - t0)
            if time.perf_counter() > sync_deadline:
                break
        out["log_metrics_sync_calls"] = len(samples)
        out["log_metrics_sync_median_us"] = statistics.median(samples) * 1e6
        out["log_metrics_sync_p99_us"] = _pct(samples, 0.99) * 1e6
        out["log_metrics_sync_mean_us"] = statistics.fmean(samples) * 1e6

    with mlflow.start_run():
        samples = []
        for i in range(async_calls):
            t0 = time.perf_counter()
            mlflow.log_metrics(metrics(i), step=i, synchronous=False)
            samples.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mlflow.flush_async_logging()
        flush = time.perf_counter() - t0
        out["log_metrics_async_calls"] = len(samples)
        out["log_metrics_async_median_us"] = statistics.median(samples) * 1e6
        out["log_metrics_async_p99_us"] = _pct(samples, 0.99) * 1e6
        out["log_metrics_async_mean_us"] = statistics.fmean(samples) * 1e6
        out["async_flush_s"] = flush
    sys.stdout.write(json.dumps(out) + "\n")


def _fill_main(backend_uri: str, run_id: str, key: str, start: int, stop: int) -> None:
    """In MLflow's venv: write points [start, stop) of (run, key) straight into MLflow's `metrics`
    table (executemany on SQLite, COPY on PostgreSQL), in one transaction."""
    import sqlalchemy as sa

    engine = sa.create_engine(backend_uri)
    ts = int(time.time() * 1000)
    columns = "key, value, timestamp, step, is_nan, run_uuid"
    chunk = 100_000
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for lo in range(start, stop, chunk):
            rows = [(key, _value(s), ts, s, False, run_id) for s in range(lo, min(stop, lo + chunk))]
            if engine.dialect.name == "sqlite":
                cur.executemany(f"INSERT INTO metrics ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
            else:
                with cur.copy(f"COPY metrics ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Entry point for bench/run.py
# --------------------------------------------------------------------------------------------


def measure(
    max_seconds: float = 540.0,
    work_dir: Path | None = None,
    quick: bool = False,
    backends: tuple[str, ...] = ("sqlite", "postgresql"),
    workers: int | None = None,
) -> dict[str, Any]:
    """MLflow server and client figures; see the module docstring. Bounded by max_seconds
    (not counting the one-time install of the virtualenv)."""
    work = Path(work_dir) if work_dir else HERE / "work" / "mlflow"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    sizes = {
        "history_points": 10_000 if quick else 100_000,
        "big_points": 100_000 if quick else 1_000_000,
        "ingest_seconds": 10 if quick else 25,
        "concurrent_seconds": 8 if quick else 20,
        "sync_calls": 30 if quick else 300,
        "async_calls": 100 if quick else 1000,
    }
    result: dict[str, Any] = {"title": "MLflow tracking server and client (peer)"}
    notes = [
        "Server side over plain HTTP (httpx, keep-alive) from our virtualenv; log-batch carries 1,000 metrics "
        "of one key per request (MLflow's maximum); each concurrent client logs into its own run.",
        "The queried metric is grown by writing straight into MLflow's `metrics` table (executemany on SQLite, "
        "COPY on PostgreSQL), the last 1,000 points through log-batch (`fill_to_*_s`); the ingest rates are "
        "measured over HTTP, apart from that.",
        f"A one-step spike (value {SPIKE_VALUE} at step {SPIKE_STEP:,}) is planted in the big metric; "
        "`keeps_spike` tells whether the sampled query returned it.",
        f"Bounded by max_seconds={max_seconds:.0f}: sizes that did not fit are reported as not measured, "
        "never extrapolated.",
    ]
    result["notes"] = notes

    t0 = time.perf_counter()
    ok, info = ensure_venv(work / "install.log")
    result["venv_setup_s"] = round(time.perf_counter() - t0, 1)
    if not ok:
        result["error"] = f"MLflow could not be installed into {VENV}: {info}"
        return result
    result["mlflow_version"] = info
    result["workers"] = workers if workers is not None else "MLflow's default (4)"
    budget = _Budget(max_seconds)

    def client_phase(url: str) -> dict[str, Any]:
        return _client_overhead(url, work, sizes["sync_calls"], sizes["async_calls"], min(150.0, budget.left() * 0.3))

    for backend in backends:
        bwork = work / backend
        bwork.mkdir()
        if backend == "sqlite":
            uri = f"sqlite:///{bwork / 'mlflow.db'}"
        else:
            reason = _pg_recreate() or _ensure_psycopg(work / "install.log")
            if reason:
                result[backend] = {"skipped": reason}
                continue
            uri = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"
        share = budget.left() if backend == backends[-1] else budget.left() * 0.6
        if share < 30:
            result[backend] = {"skipped": f"only {budget.left():.0f} s of the budget left"}
            continue
        try:
            figures = _measure_server(
                backend, uri, bwork, budget.sub(share), sizes, workers,
                client_phase if backend == "sqlite" else None,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - report and go on with the next backend
            result[backend] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if "_client" in figures:
            result["client"] = figures.pop("_client")
        result[backend] = figures
    result["seconds_used"] = round(budget.seconds - budget.left(), 1)
    return result


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "client":
        _client_main(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "fill":
        _fill_main(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
