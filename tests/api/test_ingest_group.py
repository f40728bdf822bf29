"""Ingest under concurrency: on SQLite, batches that arrive together share one transaction (the
group-commit writer, ``Database.group_writer``), each in its own savepoint. Every batch is still all
or nothing, a failing batch takes none of the others with it, and concurrent clients with retries
store every point exactly once (both backends)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, func, select

from losswatch.client import wire
from losswatch.server.api.schemas import RunCreate
from losswatch.server.errors import LosswatchError
from losswatch.server.services import ingest, runs
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database, upgrade
from losswatch.server.storage.models import Series
from tests.conftest import make_client


def body(keys: list[str], steps: range, scale: float = 1.0) -> bytes:
    s = list(steps)
    return wire.batch_to_columnar(wire.batch([
        wire.series_entry(k, "loss", s, [scale * (i + 1) / (1 + x) for x in s], [1.7e9 + x for x in s])
        for i, k in enumerate(keys)]))


def counts(db: Database, run_id: str) -> dict[str, int]:
    with db.read() as s:
        return dict(s.execute(select(Series.key, Series.count).where(Series.run_id == run_id)).all())


def test_a_group_commits_once_and_a_failing_batch_fails_alone(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    db = Database(Settings(database_url=sqlite_url, background_workers=False))
    try:
        with db.write() as s:
            a, _ = runs.create_run(s, "p", RunCreate(), create_project=True)
            b, _ = runs.create_run(s, "p", RunCreate(), create_project=True)
        commits: list[int] = []
        event.listen(db.engine, "commit", lambda _conn: commits.append(1))
        started, gate = threading.Event(), threading.Event()

        def first() -> tuple[bytes, bool]:  # holds the writer until the next batches are queued
            started.set()
            assert gate.wait(10)
            return body(["x"], range(0, 10)), True

        f0 = ingest.submit(db, a.id, first)
        assert started.wait(10)
        group = [ingest.submit(db, a.id, lambda: (body(["x", "y"], range(10, 510)), True)),
                 ingest.submit(db, "no-such-run", lambda: (body(["x"], range(5)), True)),
                 ingest.submit(db, b.id, lambda: (b"\x00 not a frame", True)),
                 ingest.submit(db, b.id, lambda: (body(["z"], range(0, 300)), True))]
        assert f0 is not None and all(f is not None for f in group)
        gate.set()
        assert f0.result(10)["accepted"] == 10
        assert group[0].result(10)["accepted"] == 1000  # type: ignore[union-attr]
        with pytest.raises(LosswatchError) as missing:
            group[1].result(10)  # type: ignore[union-attr]
        assert missing.value.status == 404
        with pytest.raises(LosswatchError) as broken:
            group[2].result(10)  # type: ignore[union-attr]
        assert broken.value.status == 422
        assert group[3].result(10)["accepted"] == 300  # type: ignore[union-attr]
        assert len(commits) == 2  # the first batch alone, then the three others' writes together
        assert counts(db, a.id) == {"x": 510, "y": 500}
        assert counts(db, b.id) == {"z": 300}
    finally:
        db.dispose()


def test_a_batch_that_fails_inside_the_group_is_rolled_back_alone(sqlite_url: str) -> None:
    """A batch that fails after some of its rows were written (a non-finite wall time here comes
    too late to be caught by the parser: the failure is raised by the write itself) leaves nothing."""
    upgrade(sqlite_url)
    db = Database(Settings(database_url=sqlite_url, background_workers=False))
    try:
        with db.write() as s:
            a, _ = runs.create_run(s, "p", RunCreate(), create_project=True)
        writer = db.group_writer
        assert writer is not None
        started, gate = threading.Event(), threading.Event()

        def fail_after_writing(session: Any, _: None) -> None:
            ingest._record(session, db, a.id, ingest.parse(db, body(["lost"], range(0, 100)), columnar=True))
            raise RuntimeError("after the rows")

        blocker = writer.submit(lambda: started.set() or gate.wait(10), lambda _s, _p: None)
        assert started.wait(10)
        failing = writer.submit(lambda: None, fail_after_writing)
        kept = ingest.submit(db, a.id, lambda: (body(["kept"], range(0, 100)), True))
        assert kept is not None
        gate.set()
        blocker.result(10)
        with pytest.raises(RuntimeError):
            failing.result(10)
        assert kept.result(10)["accepted"] == 100
        assert counts(db, a.id) == {"kept": 100}
    finally:
        db.dispose()


def test_concurrent_clients_with_retries_store_every_point_once(db_url: str) -> None:
    """8 threads post to 4 runs at once (two per run, on disjoint steps), each batch twice (a retry
    whose answer was lost): every series holds each point once, the last value of each step."""
    with make_client(db_url) as client:
        run_ids = [client.post("/api/v1/projects/p/runs", json={}).json()["id"] for _ in range(4)]

        def client_thread(t: int) -> list[int]:
            rid, base = run_ids[t % 4], (t // 4) * 100_000
            statuses = []
            for i in range(6):
                payload = body(["train/loss", "lr"], range(base + 700 * i, base + 700 * (i + 1)), scale=t + 1)
                for _ in range(2):
                    r = client.post(f"/api/v1/runs/{rid}/points", content=payload,
                                    headers={"content-type": wire.COLUMNAR_TYPE})
                    statuses.append(r.status_code)
            return statuses

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client_thread, range(8)))
        assert all(code == 200 for codes in results for code in codes), results
        db = client.app.state.db
        for t, rid in enumerate(run_ids):
            assert counts(db, rid) == {"train/loss": 8400, "lr": 8400}
            r = client.get(f"/api/v1/runs/{rid}/points", params={"key": "train/loss", "limit": 100_000})
            got = r.json()
            steps = np.array(got["steps"])
            assert steps.tolist() == sorted(set(steps.tolist())) and len(steps) == 8400
            first = steps < 100_000
            assert np.allclose(np.array(got["values"])[first], (t + 1) / (1 + steps[first]))
        with db.read() as s:
            assert s.scalar(select(func.count()).select_from(Series)) == 8
