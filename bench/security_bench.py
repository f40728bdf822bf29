"""Hardening benchmarks (issue 12): the server's memory under junk bearer tokens, listing runs of a
project with 10,000 runs, and small-batch ingest latency while maximal batches are being stored.

Every server is a real `losswatch serve` process on 127.0.0.1 (auth on where tokens matter).
Called by bench/run.py (sections ``junk_tokens``, ``list_runs``, ``ingest_stall``);
``python bench/security_bench.py`` runs them all.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("LOSSWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `losswatch serve` process with extra LOSSWATCH_* settings."""

    def __init__(self, db_url: str, work: Path, **settings: str) -> None:
        import httpx

        self.port = _free_port()
        self.log_path = work / f"server-{self.port}.log"
        env = {**os.environ, "LOSSWATCH_LOG_LEVEL": "error", "LOSSWATCH_AUTH": "off",
               **{f"LOSSWATCH_{k.upper()}": v for k, v in settings.items()}}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(BIN / "losswatch"), "serve", "--db", db_url, "--host", "127.0.0.1",
                                          "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-2000:]}")

    def rss_mib(self, field: str = "VmRSS") -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _pg_database() -> str | None:
    try:
        import psycopg

        name = f"lw_bench_sec_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/" + name
    except Exception:  # noqa: BLE001 - no PostgreSQL here: the SQLite figures only
        return None


def _drop_pg(url: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _token(db_url: str) -> str:
    from losswatch.server.app import prepare_database
    from losswatch.server.services.tokens import create_token
    from losswatch.server.settings import Settings
    from losswatch.server.storage.db import Database

    settings = Settings(database_url=db_url)
    db = Database(settings)
    prepare_database(settings, db)
    with db.write() as s:
        plaintext = create_token(s, "A", "admin", "bench")[1]
    db.dispose()
    return plaintext


# --- 1. memory under junk bearer tokens -------------------------------------------------------


def _raw_junk(port: int, n: int, token_bytes: int, answers: dict[int, int]) -> None:
    """``n`` requests, each on its own connection, with a junk bearer token of ``token_bytes``."""
    blob = secrets.token_urlsafe(token_bytes * 3 // 4)[:token_bytes].encode()
    for _ in range(n):
        junk = secrets.token_hex(8).encode() + blob[16:]  # a different token each time
        head = b"GET /api/v1/projects HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            try:
                sock.sendall(head + junk + b"\r\n\r\n")
            except OSError:
                pass  # the server answered and closed before reading it all
            data = b""
            try:
                while len(data) < 12:
                    part = sock.recv(4096)
                    if not part:
                        break
                    data += part
            except OSError:
                pass
        status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
        answers[status] = answers.get(status, 0) + 1


def measure_junk_tokens(max_seconds: float = 120.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    work = work_dir or Path("/tmp/lw-bench-security")
    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{work / 'junk.db'}"
    for p in work.glob("junk.db*"):
        p.unlink()
    good = _token(db_url)
    server = Server(db_url, work, auth="on")
    out: dict[str, Any] = {"title": "Server memory under junk bearer tokens (auth on, SQLite)"}
    try:
        import httpx

        with httpx.Client(headers={"Authorization": f"Bearer {good}"}) as c:
            for _ in range(50):
                assert c.get(server.url + "/api/v1/projects").status_code == 200
        plans = [("1mb", 1 << 20, 500 if quick else 10_000), ("32kb", 32 << 10, 500 if quick else 10_000)]
        budget = max_seconds / len(plans)
        for label, size, n in plans:
            before = server.rss_mib()
            answers: dict[int, int] = {}
            threads = 4
            t0 = time.perf_counter()
            done = 0
            while done < n and time.perf_counter() - t0 < budget:
                step = min(200, n - done)
                workers = [threading.Thread(target=_raw_junk, args=(server.port, step // threads, size, answers))
                           for _ in range(threads)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                done += (step // threads) * threads
            elapsed = time.perf_counter() - t0
            after = server.rss_mib()
            out[f"junk_{label}_requests"] = done
            out[f"junk_{label}_answers"] = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
            out[f"junk_{label}_rss_before_mib"] = round(before, 1)
            out[f"junk_{label}_rss_after_mib"] = round(after, 1)
            out[f"junk_{label}_rss_growth_mib"] = round(after - before, 1)
            out[f"junk_{label}_requests_per_s"] = round(done / elapsed)
        out["server_peak_rss_mib"] = round(server.rss_mib("VmHWM"), 1)
        with httpx.Client(headers={"Authorization": f"Bearer {good}"}) as c:
            out["valid_token_still_served"] = c.get(server.url + "/api/v1/projects").status_code == 200
    finally:
        server.stop()
    out["notes"] = [
        "Each junk request on its own connection, 4 client threads; RSS (VmRSS) of the server process before "
        "and after. Goal: <= 20 MiB growth for 10,000 requests with 1 MB tokens (issue 12: +957 MiB in 1,000).",
        "1 MB tokens pass LOSSWATCH_MAX_HEADER_BYTES (64 KiB): the answer is 431 before the rest is read. "
        "32 KiB tokens fit under it and reach the auth check (401): that row measures the auth cache, which "
        "keeps verified tokens only.",
    ]
    return out


# --- 2. listing runs of a project with 10,000 runs ----------------------------------------------


def _seed_runs(db_url: str, project: str, n: int) -> None:
    """``n`` runs with three summarised series each, written straight through the ORM (the list reads
    the same rows whether ingest or this wrote them)."""
    import random

    from sqlalchemy import text

    from losswatch.server.services.projects import get_or_create_project
    from losswatch.server.settings import Settings
    from losswatch.server.storage.db import Database
    from losswatch.server.storage.models import Run, Series

    rng = random.Random(1)
    db = Database(Settings(database_url=db_url))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with db.write() as s:
        pid = get_or_create_project(s, project).id
        runs, series = [], []
        for i in range(n):
            rid = uuid.uuid4().hex
            t = t0 + timedelta(seconds=i)
            runs.append({"id": rid, "project_id": pid, "name": f"run-{i:05d}", "group": None,
                         "tags": ["even"] if i % 2 == 0 else [], "config": {"lr": rng.choice([0.1, 0.01, 0.001]),
                                                                            "batch": 64},
                         "notes": None, "status": "finished", "created_at": t, "started_at": t, "ended_at": t,
                         "heartbeat_at": t, "host": "h", "client": {}})
            for key, kind in (("train/loss", "loss"), ("lr", "lr"), ("val/x", "metric")):
                v = rng.random()
                series.append({"run_id": rid, "key": key, "kind": kind, "count": 1000, "nonfinite": 0,
                               "first_step": 0, "last_step": 999, "last_value": v, "last_special": None,
                               "last_wall_us": 0, "min_value": v / 2, "max_value": v * 2})
        s.execute(Run.__table__.insert(), runs)
        s.execute(Series.__table__.insert(), series)
        if s.get_bind().dialect.name == "postgresql":  # the statistics autovacuum would have gathered by now
            s.execute(text("ANALYZE runs"))
            s.execute(text("ANALYZE series"))
    db.dispose()


def _time_get(url: str, params: dict[str, Any], repeats: int) -> float:
    import httpx

    with httpx.Client(timeout=120) as c:
        r = c.get(url, params=params)
        assert r.status_code == 200, r.text
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            c.get(url, params=params)
            times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 1)


def measure_list_runs(max_seconds: float = 120.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    work = work_dir or Path("/tmp/lw-bench-security")
    work.mkdir(parents=True, exist_ok=True)
    n = 1000 if quick else 10_000
    repeats = 5 if quick else 15
    out: dict[str, Any] = {"title": f"Listing runs: 50 of a project with {n:,} runs, beside 50 of 10"}
    backends = [("sqlite", f"sqlite:///{work / 'list.db'}")]
    pg = _pg_database()
    if pg:
        backends.append(("postgresql", pg))
    for p in work.glob("list.db*"):
        p.unlink()
    try:
        for label, url in backends:
            _token(url)  # migrates
            _seed_runs(url, "big", n)
            _seed_runs(url, "small", 10)
            server = Server(url, work)
            try:
                for query, params in (("default", {}), ("sort_max", {"sort": "-max:val/x"}),
                                      ("tag_filter", {"tag": "even", "sort": "-max:val/x"}),
                                      ("config_filter", {"config.lr": "0.1", "sort": "-max:val/x"}),
                                      ("page_1000", {"sort": "-max:val/x", "limit": 1000, "offset": 3000})):
                    big = _time_get(f"{server.url}/api/v1/projects/big/runs", {"limit": 50, **params}, repeats)
                    small = _time_get(f"{server.url}/api/v1/projects/small/runs", {"limit": 50, **params}, repeats)
                    out[f"{label}_{query}_{n}_runs_ms"] = big
                    out[f"{label}_{query}_10_runs_ms"] = small
                    out[f"{label}_{query}_ratio"] = round(big / small, 1) if small else None
            finally:
                server.stop()
    finally:
        if pg:
            _drop_pg(pg)
    out["notes"] = [
        "GET /api/v1/projects/{p}/runs?limit=50 over HTTP, keep-alive, median of the repeats; each run has 3 "
        "series. default: newest first; sort_max: sort=-max:val/x (in SQL); tag_filter: ?tag=even with "
        "sort=-max:val/x (the tag filter in SQL, half the runs match). On PostgreSQL the seeded tables are "
        "ANALYZEd first, as autovacuum would have done by then (without statistics the planner scans series). "
        "config_filter: ?config.lr=0.1 with sort=-max:val/x (config filters stay in Python, over the id and "
        "config columns; a third of the runs match); page_1000: limit=1000&offset=3000 with sort=-max:val/x, "
        "the page size losswatch.Api fetches (the 10-run project answers an empty page).",
        "Goal: <= 50 ms with 10,000 runs (issue 12: 8.4 s before). The ratio is against 10 runs, same run.",
    ]
    return out


# --- 3. small-batch latency while maximal batches are stored ------------------------------------


def _stall_once(base: str, big_run: str, small_run: str, rounds: int, n_series: int,
                per: int) -> tuple[list[float], list[float]]:
    """Maximal batches to ``big_run`` in one thread, 1-point batches to ``small_run`` in another."""
    import httpx

    big_durations: list[float] = []
    small: list[float] = []
    stop = threading.Event()

    def big_writer() -> None:
        try:
            with httpx.Client(timeout=600) as c:
                for r in range(rounds):
                    steps = list(range(r * per, (r + 1) * per))
                    body = orjson.dumps({"series": [{"key": f"layer{i}/grad_norm", "steps": steps,
                                                     "values": [0.5] * per} for i in range(n_series)]})
                    t = time.perf_counter()
                    resp = c.post(f"{base}/api/v1/runs/{big_run}/points", content=body,
                                  headers={"content-type": "application/json"})
                    assert resp.status_code == 200, resp.text[:300]
                    big_durations.append(time.perf_counter() - t)
        finally:
            stop.set()

    def small_writer() -> None:
        with httpx.Client(timeout=600) as c:
            step = 0
            while not stop.is_set():
                t = time.perf_counter()
                resp = c.post(f"{base}/api/v1/runs/{small_run}/points",
                              json={"series": [{"key": "loss", "steps": [step], "values": [1.0]}]})
                assert resp.status_code == 200
                small.append(time.perf_counter() - t)
                step += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=big_writer), threading.Thread(target=small_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return big_durations, small


def measure_ingest_stall(max_seconds: float = 120.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    import httpx

    from losswatch.server.settings import Settings

    work = work_dir or Path("/tmp/lw-bench-security")
    work.mkdir(parents=True, exist_ok=True)
    limits = Settings()
    n_series = limits.max_series_per_batch
    per = limits.max_points_per_batch // n_series
    out: dict[str, Any] = {"title": "Small-batch ingest latency while maximal batches are stored"}
    out["max_batch"] = f"{n_series:,} series x {per} points = {n_series * per:,} points"
    backends = [("sqlite", f"sqlite:///{work / 'stall.db'}")]
    pg = _pg_database()
    if pg:
        backends.append(("postgresql", pg))
    for p in work.glob("stall.db*"):
        p.unlink()
    rounds = 2 if quick else 5
    try:
        for label, url in backends:
            server = Server(url, work)
            try:
                with httpx.Client(timeout=600) as c:
                    big_run = c.post(server.url + "/api/v1/projects/A/runs", json={"name": "big"}).json()["id"]
                    small_run = c.post(server.url + "/api/v1/projects/B/runs", json={"name": "small"}).json()["id"]
                alone = []
                with httpx.Client(timeout=600) as c:  # the same small batches with nothing else going on
                    for step in range(30):
                        t = time.perf_counter()
                        c.post(f"{server.url}/api/v1/runs/{small_run}/points",
                               json={"series": [{"key": "warmup", "steps": [step], "values": [1.0]}]})
                        alone.append(time.perf_counter() - t)
                big_durations, small = _stall_once(server.url, big_run, small_run, rounds, n_series, per)
                out[f"{label}_small_alone_p50_ms"] = round(statistics.median(alone) * 1000, 1)
                small.sort()
                out[f"{label}_max_batch_median_s"] = round(statistics.median(big_durations), 2)
                out[f"{label}_small_batches"] = len(small)
                out[f"{label}_small_p50_ms"] = round(small[len(small) // 2] * 1000, 1)
                out[f"{label}_small_p99_ms"] = round(small[min(len(small) - 1, int(len(small) * 0.99))] * 1000, 1)
                out[f"{label}_small_max_ms"] = round(small[-1] * 1000, 1)
            finally:
                server.stop()
    finally:
        if pg:
            _drop_pg(pg)
    out["notes"] = [
        f"One client posts {rounds} maximal batches (LOSSWATCH_MAX_SERIES_PER_BATCH x the points that "
        "LOSSWATCH_MAX_POINTS_PER_BATCH leaves per series, default limits) to run A; another posts 1-point batches "
        "to run B every 20 ms meanwhile; latencies of the small batches. Goal: max <= 1 s (issue 12: 17 s behind "
        "a 100,000-series batch, which is now refused with 413).",
    ]
    return out


if __name__ == "__main__":
    for fn in (measure_junk_tokens, measure_list_runs, measure_ingest_stall):
        print(orjson.dumps(fn(quick="--quick" in sys.argv), option=orjson.OPT_INDENT_2).decode())
