"""Server benchmarks: ingest over HTTP (SQLite and PostgreSQL, 1 and 8 clients) beside the limits
measured in the same run (a no-database endpoint parsing the same payload, plain executemany of one
row per point), downsampled queries of million-point series, full export, bytes on disk per point.

Every server is a real `losswatch serve` process on 127.0.0.1; clients are separate processes.
Called by bench/run.py (sections ``ingest``, ``query``); ``python bench/server_bench.py`` runs both.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("LOSSWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
if str(ROOT) not in sys.path:  # the server-process helper the tests use too
    sys.path.insert(0, str(ROOT))
from tests._server_process import ServerProcess, uvicorn_factory  # noqa: E402

# A realistic batch: one training step logs these ten series (kinds decide which detectors run).
MIX = [("train/loss", "loss"), ("train/loss/box", "loss_component"), ("train/loss/cls", "loss_component"),
       ("train/loss/dfl", "loss_component"), ("lr", "lr"), ("grad_norm", "grad_norm"),
       ("sys/gpu_mem", "other"), ("time/step", "other"), ("data/throughput", "other"), ("train/acc", "other")]
STEPS_PER_BATCH = 1000  # x 10 series = 10,000 points per request


def columnar_bodies(bodies: list[bytes]) -> list[bytes]:
    """The same batches in the binary columnar encoding (what the losswatch client sends)."""
    from losswatch.client import wire

    return [wire.batch_to_columnar(orjson.loads(b)) for b in bodies]


def make_bodies(n_batches: int, seed: int = 0) -> list[bytes]:
    """Ingest bodies in the client's wire format: 10 series x 1,000 steps, per-point wall times."""
    from losswatch.client import wire

    rng = np.random.default_rng(seed)
    bodies = []
    for b in range(n_batches):
        steps = np.arange(b * STEPS_PER_BATCH, (b + 1) * STEPS_PER_BATCH)
        walls = (1.7e9 + steps * 0.05).tolist()
        base = np.exp(-steps / 3e4)
        noisy = [(base * (1 + 0.1 * rng.standard_normal(STEPS_PER_BATCH))).tolist() for _ in MIX]
        lr = (1e-3 * 0.5 * (1 + np.cos(np.pi * steps / (n_batches * STEPS_PER_BATCH)))).tolist()  # cosine
        series = [wire.series_entry(k, kind, steps.tolist(), lr if kind == "lr" else noisy[i], walls)
                  for i, (k, kind) in enumerate(MIX)]
        bodies.append(orjson.dumps(wire.batch(series)))
    return bodies


class Server(ServerProcess):
    """A `losswatch serve` process (or any uvicorn app given as ``app``), auth off."""

    def __init__(self, db_url: str, work: Path, app: str | None = None) -> None:
        env = {"LOSSWATCH_AUTH": "off"}
        if app:
            env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
        super().__init__(db_url, env=env, argv=uvicorn_factory(app) if app else None)
        self.log_path = work / f"server-{self.port}.log"
        self.start(timeout=60)

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)


def _client(args: tuple[str, str, list[bytes], Any]) -> tuple[int, list[float]]:
    """One sending process, on http.client with one kept-alive connection: the transport the
    losswatch client itself uses (httpx, pure Python, costs about 10 % more per 366 kB request)."""
    import http.client
    from urllib.parse import urlsplit

    from losswatch.client import wire

    url, run_id, bodies, barrier = args
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    headers = {"content-type": wire.content_type(bodies[0])}
    path = f"/api/v1/runs/{run_id}/points"
    latencies = []
    conn.request("POST", path, body=bodies[0], headers=headers)
    conn.getresponse().read()
    barrier.wait()
    for body in bodies[1:]:
        t = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        latencies.append(time.perf_counter() - t)
        if resp.status != 200:
            raise RuntimeError(text[:500])
    conn.close()
    return (len(bodies) - 1) * len(MIX) * STEPS_PER_BATCH, latencies


def run_ingest(url: str, clients: int, bodies: list[bytes], create_runs: bool = True) -> dict[str, float]:
    import httpx

    run_ids = []
    for i in range(clients):
        if create_runs:
            r = httpx.post(f"{url}/api/v1/projects/bench/runs", json={"name": f"ingest-{clients}-{i}"}, timeout=30)
            run_ids.append(r.json()["id"])
        else:
            run_ids.append("none")
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(clients + 1)
        with ctx.Pool(clients) as pool:
            pending = pool.map_async(_client, [(url, rid, bodies, barrier) for rid in run_ids])
            barrier.wait()
            start = time.perf_counter()
            results = pending.get()
            elapsed = time.perf_counter() - start
    points = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    return {"points_per_s": points / elapsed, "points": points, "seconds": elapsed,
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def _pg_database(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


def _drop_pg(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_sqlite_executemany(work: Path, n: int) -> float:
    """The row-per-point limit: plain sqlite3 executemany of (series, step, value, wall) rows."""
    path = work / "raw.db"
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE points (series_id INTEGER, step INTEGER, value REAL, wall REAL, "
                 "PRIMARY KEY (series_id, step))")
    rows = [(i % 10, i // 10, 0.5, 1.7e9) for i in range(n)]
    t = time.perf_counter()
    for i in range(0, n, 10_000):
        conn.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?)", rows[i : i + 10_000])
        conn.commit()
    elapsed = time.perf_counter() - t
    conn.close()
    path.unlink(missing_ok=True)
    return n / elapsed


def raw_pg(n_executemany: int, n_copy: int) -> dict[str, float]:
    import psycopg

    name = f"lw_bench_raw_{uuid.uuid4().hex[:8]}"
    url = _pg_database(name).replace("postgresql+psycopg://", "postgresql://")
    out = {}
    try:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE points (series_id int, step bigint, value float8, wall float8, "
                         "PRIMARY KEY (series_id, step))")
            rows = [(i % 10, i // 10, 0.5, 1.7e9) for i in range(max(n_executemany, n_copy))]
            with conn.cursor() as cur:
                t = time.perf_counter()
                cur.executemany("INSERT INTO points VALUES (%s, %s, %s, %s)", rows[:n_executemany])
                conn.commit()
                out["executemany_rows_per_s"] = n_executemany / (time.perf_counter() - t)
                cur.execute("TRUNCATE points")
                conn.commit()
                t = time.perf_counter()
                with cur.copy("COPY points FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "int8", "float8", "float8"])
                    for r in rows[:n_copy]:
                        copy.write_row(r)
                conn.commit()
                out["copy_binary_rows_per_s"] = n_copy / (time.perf_counter() - t)
    finally:
        _drop_pg(name)
    return out


def in_process_storage(work: Path, bodies: list[bytes], detectors: bool) -> float:
    """parse + record (+ detectors) without HTTP, on SQLite: the storage layer's own limit."""
    from losswatch.client import wire
    from losswatch.server.api.schemas import RunCreate
    from losswatch.server.services import alerts, batches, ingest, points, runs
    from losswatch.server.settings import Settings
    from losswatch.server.storage.db import Database, upgrade

    columnar = wire.is_columnar(bodies[0])
    parse = batches.parse_columnar if columnar else batches.parse_batch
    path = work / f"inproc-{int(detectors)}.db"
    for p in work.glob(path.name + "*"):
        p.unlink()
    url = f"sqlite:///{path}"
    upgrade(url)
    db = Database(Settings(database_url=url, background_workers=False))
    with db.write() as s:
        run, _ = runs.create_run(s, "bench", RunCreate(), create_project=True)
    t = time.perf_counter()
    for body in bodies:
        if detectors:
            ingest.ingest(db, run.id, body, columnar=columnar)
        else:
            batch = parse(body)
            with db.write() as s:
                touched = runs.touch_run(s, run.id)
                series = points.load_series(s, run.id, batch)
                points.record_points(s, batch, series)
                points.save_series(s, series)
                alerts.run_context(s, touched)  # the same reads as with detectors, minus the rules
    elapsed = time.perf_counter() - t
    db.dispose()
    return len(bodies) * len(MIX) * STEPS_PER_BATCH / elapsed


def store_write_paths(work: Path, bodies: list[bytes], rounds: int = 3) -> dict[str, float]:
    """Before/after of the chunk-row writes (``losswatch.server.storage.db.write_chunks``) in this run: the
    store alone (parse, detectors and HTTP left out), the portable SQLAlchemy statements
    (``FAST_CHUNK_WRITES = False``) against binary COPY of new chunk rows on PostgreSQL and
    plain-tuple executemany on SQLite; each the median of ``rounds`` alternating rounds, each round a
    new run. The stored points are read back and checked bit for bit."""
    from losswatch.server.api.schemas import RunCreate
    from losswatch.server.services import batches, points, runs
    from losswatch.server.settings import Settings
    from losswatch.server.storage import db as dbmod
    from losswatch.server.storage.db import Database, upgrade

    parsed = [batches.parse_columnar(b) for b in bodies]
    expected = np.concatenate([b[0].points.values for b in parsed])
    pg_name = f"lw_bench_{uuid.uuid4().hex[:8]}"
    urls = {"sqlite": f"sqlite:///{work / 'writes.db'}", "postgresql": _pg_database(pg_name)}
    times: dict[tuple[str, bool], list[float]] = {}
    try:
        for url in urls.values():
            upgrade(url)
        for _ in range(rounds):
            for fast in (False, True):
                for backend, url in urls.items():
                    dbmod.FAST_CHUNK_WRITES = fast
                    db = Database(Settings(database_url=url, background_workers=False))
                    with db.write() as s:
                        run, _ = runs.create_run(s, "bench", RunCreate(), create_project=True)
                    t = time.perf_counter()
                    for batch in parsed:
                        with db.write() as s:
                            runs.touch_run(s, run.id)
                            series = points.load_series(s, run.id, batch)
                            points.record_points(s, batch, series)
                            points.save_series(s, series)
                    times.setdefault((backend, fast), []).append(time.perf_counter() - t)
                    with db.read() as s:
                        got = points.read_points(s, run.id, MIX[0][0], 0, 2**62, len(expected) + 1)
                    assert np.array_equal(np.array(got["values"], dtype=np.float64), expected), backend
                    db.dispose()
    finally:
        dbmod.FAST_CHUNK_WRITES = True
        _drop_pg(pg_name)
    n = len(parsed) * len(MIX) * STEPS_PER_BATCH
    out: dict[str, float] = {}
    for backend in urls:
        before = n / statistics.median(times[(backend, False)])
        after = n / statistics.median(times[(backend, True)])
        label = "pipeline" if backend == "postgresql" else "executemany_tuples"  # PG: one pipelined round trip
        out[f"store_{backend}_sqlalchemy_points_per_s"] = before
        out[f"store_{backend}_{label}_points_per_s"] = after
        out[f"store_{backend}_write_speedup"] = after / before
    return out


def measure_ingest(max_seconds: float = 180.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    work = Path(work_dir or tempfile.mkdtemp()) / "ingest"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = 31 if quick else 101  # the first batch of each client is a warm-up
    json_bodies = make_bodies(n)
    bodies = columnar_bodies(json_bodies)  # the client's default encoding
    out: dict[str, Any] = {"batch_points": len(MIX) * STEPS_PER_BATCH, "batch_bytes_json": len(json_bodies[0]),
                           "batch_bytes_columnar": len(bodies[0]),
                           "series_mix": ", ".join(f"{k} ({kind})" for k, kind in MIX),
                           "notes": [
                               "ingest_* figures: the binary columnar body (application/vnd.losswatch.columnar, "
                               "the client's default); *_json_*: the same batches in JSON.",
                               "no_db_orjson / no_db_columnar: a FastAPI endpoint that only reads the body "
                               "(orjson.loads, or the columnar frame) and counts the points, the HTTP limit of each "
                               "encoding; no_db_parse / no_db_columnar_parse: losswatch's parser and checks, no "
                               "storage. ratio_sqlite_to_no_db_columnar is the issue-13 goal (>= 0.5).",
                               "bench/profile_ingest.py profiles one server process over HTTP (bench/ingest_profile.txt).",
                           ]}
    # Peers in the same run: no database at all, for each encoding.
    for name, app, peer_bodies in (("no_db_orjson", "nodb_app:orjson_app", json_bodies),
                                   ("no_db_parse", "nodb_app:parse_app", json_bodies),
                                   ("no_db_columnar", "nodb_app:columnar_app", bodies),
                                   ("no_db_columnar_parse", "nodb_app:columnar_parse_app", bodies)):
        srv = Server("", work, app=app)
        try:
            out[f"{name}_1_client_points_per_s"] = run_ingest(srv.url, 1, peer_bodies, create_runs=False)["points_per_s"]
        finally:
            srv.stop()
    out["raw_sqlite_executemany_rows_per_s"] = raw_sqlite_executemany(work, 300_000 if quick else 1_000_000)
    out["in_process_sqlite_no_detectors_points_per_s"] = in_process_storage(work, bodies, detectors=False)
    out["in_process_sqlite_with_detectors_points_per_s"] = in_process_storage(work, bodies, detectors=True)
    out.update(store_write_paths(work, bodies[:31]))
    for backend in ("sqlite", "postgresql"):
        pg_name = f"lw_bench_{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{work / 'ingest.db'}" if backend == "sqlite" else _pg_database(pg_name)
        srv = Server(url, work)
        try:
            if backend == "sqlite":
                r = run_ingest(srv.url, 1, json_bodies)
                out["ingest_sqlite_json_1_client_points_per_s"] = r["points_per_s"]
                out["ingest_sqlite_json_1_client_p50_ms"] = r["p50_ms"]
            for clients in (1, 8):
                label = f"{clients}_client" + ("s" if clients > 1 else "")
                r = run_ingest(srv.url, clients, bodies if clients == 1 else bodies[: max(11, n // 4)])
                out[f"ingest_{backend}_{label}_points_per_s"] = r["points_per_s"]
                out[f"ingest_{backend}_{label}_p50_ms"] = r["p50_ms"]
                out[f"ingest_{backend}_{label}_p99_ms"] = r["p99_ms"]
            out[f"ingest_{backend}_server_peak_rss_mib"] = srv.rss_mib()
        finally:
            srv.stop()
            if backend == "postgresql":
                _drop_pg(pg_name)
    out.update({f"raw_postgresql_{k}": v for k, v in raw_pg(20_000 if quick else 50_000, 300_000 if quick else 1_000_000).items()})
    s1 = out["ingest_sqlite_1_client_points_per_s"]
    out["ratio_sqlite_to_no_db_columnar"] = s1 / out["no_db_columnar_1_client_points_per_s"]
    out["ratio_sqlite_to_no_db_columnar_parse"] = s1 / out["no_db_columnar_parse_1_client_points_per_s"]
    out["ratio_sqlite_json_to_no_db_orjson"] = (out["ingest_sqlite_json_1_client_points_per_s"]
                                                / out["no_db_orjson_1_client_points_per_s"])
    out["ratio_sqlite_8_to_1_client"] = out["ingest_sqlite_8_clients_points_per_s"] / s1
    out["ratio_postgresql_to_sqlite_1_client"] = out["ingest_postgresql_1_client_points_per_s"] / s1
    out["detector_cost_percent"] = 100 * (1 - out["in_process_sqlite_with_detectors_points_per_s"]
                                          / out["in_process_sqlite_no_detectors_points_per_s"])
    shutil.rmtree(work, ignore_errors=True)
    return out


def seed_sqlite(path: Path, runs_: int, keys: list[str], points_per_series: int) -> list[str]:
    """Seed through the storage layer in process (parse is skipped: the data is made here)."""
    from losswatch.server.api.schemas import RunCreate
    from losswatch.server.services import points, runs
    from losswatch.server.settings import Settings
    from losswatch.server.storage import chunks
    from losswatch.server.storage.db import Database, upgrade

    url = f"sqlite:///{path}"
    upgrade(url)
    db = Database(Settings(database_url=url, background_workers=False))
    rng = np.random.default_rng(1)
    ids = []
    for r in range(runs_):
        with db.write() as s:
            run, _ = runs.create_run(s, "bench", RunCreate(name=f"run-{r}"), create_project=True)
        ids.append(run.id)
        for start in range(0, points_per_series, 20_000):
            steps = np.arange(start, min(points_per_series, start + 20_000), dtype=np.int64)
            base = np.exp(-steps / (points_per_series / 3)) + 0.05 * rng.standard_normal(steps.shape[0])
            batch = [points.SeriesBatch(k, "loss", True, chunks.Points(
                steps, base * (i + 1), (1.7e15 + steps * 50_000).astype(np.int64))) for i, k in enumerate(keys)]
            if start == 0:
                batch[0].points.values[123] = 1e6  # a one-step spike
            with db.write() as s:
                rows = points.load_series(s, run.id, batch)
                points.record_points(s, batch, rows)
                points.save_series(s, rows)
    with db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return ids


def measure_query(max_seconds: float = 180.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    import httpx

    from losswatch.server.services import query
    from losswatch.server.settings import Settings
    from losswatch.server.storage.db import Database

    work = Path(work_dir or tempfile.mkdtemp()) / "query"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = 200_000 if quick else 1_000_000
    out: dict[str, Any] = {"points_per_series": n}
    one = work / "one.db"
    t = time.perf_counter()
    (run1,) = seed_sqlite(one, 1, ["train/loss"], n)
    out["seed_one_series_s"] = time.perf_counter() - t
    out["sqlite_bytes_per_point"] = one.stat().st_size / n
    small = work / "small.db"
    (run_small,) = seed_sqlite(small, 1, ["train/loss"], 100_000)
    db = Database(Settings(database_url=f"sqlite:///{one}", background_workers=False))
    times = []
    for _ in range(20):
        t = time.perf_counter()
        with db.read() as s:
            res = query.query(s, [run1], ["train/loss"], buckets=2000)
        times.append(time.perf_counter() - t)
    db.dispose()
    out["query_1m_2000_buckets_ms"] = 1000 * statistics.median(times)
    out["query_1m_2000_buckets_min_ms"] = 1000 * min(times)
    out["query_1m_buckets_returned"] = len(res["series"][0]["step"])
    out["query_1m_spike_kept"] = 1e6 in res["series"][0]["max"]
    srv = Server(f"sqlite:///{one}", work)
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            lat = []
            for _ in range(20):
                t = time.perf_counter()
                r = c.get("/api/v1/query", params={"run": run1, "key": "train/loss", "buckets": 2000})
                lat.append(time.perf_counter() - t)
            out["query_1m_2000_buckets_http_ms"] = 1000 * statistics.median(lat)
            for label, size in (("export_1m_s", n),):
                t = time.perf_counter()
                rows = 0
                with c.stream("GET", f"/api/v1/runs/{run1}/export.csv", params={"key": "train/loss"}) as resp:
                    for chunk in resp.iter_bytes():
                        rows += chunk.count(b"\n")
                out[label] = time.perf_counter() - t
                out[label.replace("_s", "_rows")] = rows - 1
                assert rows - 1 == size, (rows, size)
    finally:
        srv.stop()
    srv = Server(f"sqlite:///{small}", work)
    try:
        t = time.perf_counter()
        r = httpx.get(f"{srv.url}/api/v1/runs/{run_small}/export.csv", params={"key": "train/loss"}, timeout=60)
        out["export_100k_s"] = time.perf_counter() - t
        assert r.text.count("\n") == 100_001
    finally:
        srv.stop()
    # 10 runs x 4 series x n points in one call.
    many = work / "many.db"
    t = time.perf_counter()
    ids = seed_sqlite(many, 10, ["train/loss", "train/loss/box", "train/loss/cls", "val/mAP50-95"],
                      n if not quick else 100_000)
    out["seed_40_series_s"] = time.perf_counter() - t
    db = Database(Settings(database_url=f"sqlite:///{many}", background_workers=False))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        with db.read() as s:
            res = query.query(s, ids, [], buckets=2000)
        times.append(time.perf_counter() - t)
    db.dispose()
    out["query_40_series_2000_buckets_ms"] = 1000 * statistics.median(times)
    out["query_40_series_count"] = len(res["series"])
    srv = Server(f"sqlite:///{many}", work)
    try:
        lat = []
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            for _ in range(5):
                t = time.perf_counter()
                c.get("/api/v1/query", params={"run": ids, "buckets": 2000})
                lat.append(time.perf_counter() - t)
        out["query_40_series_2000_buckets_http_ms"] = 1000 * statistics.median(lat)
    finally:
        srv.stop()
    shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    result = {"ingest": measure_ingest(quick=quick), "query": measure_query(quick=quick)}
    print(json.dumps(result, indent=2, default=str))
