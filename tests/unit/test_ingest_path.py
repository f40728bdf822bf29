"""The path of one ingest request: WAL checkpoints off the commit path (SQLite), the checks and the
parsing before the group-commit writer (on the event loop when they need no database), and the
answer's alerts read only when one is firing or changed."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from losswatch.client import wire
from losswatch.server.api.schemas import RunCreate
from losswatch.server.services import ingest, runs
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Checkpointer, Database, upgrade
from losswatch.server.storage.models import Series
from tests.conftest import make_client


def body(keys: list[str], steps: range) -> bytes:
    s = list(steps)
    return wire.batch_to_columnar(wire.batch([
        wire.series_entry(k, "other", s, [(i + 1) / (1 + x) for x in s], [1.7e9 + x for x in s])
        for i, k in enumerate(keys)]))


def wal_frames(path: Path) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint of nothing new reports the log's length)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'lw.db'}"
    upgrade(url)
    db = Database(Settings(database_url=url, background_workers=False))
    yield db, tmp_path / "lw.db"
    db.dispose()


def test_connections_leave_checkpoints_to_the_checkpointer(sqlite_db: Any) -> None:
    db, _ = sqlite_db
    with db.read() as s:
        assert s.connection().exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    assert any(t.name == "losswatch-checkpoint" for t in threading.enumerate())


def test_the_checkpointer_backfills_the_wal_beside_the_writes(sqlite_db: Any) -> None:
    db, path = sqlite_db
    with db.write() as s:
        run, _ = runs.create_run(s, "p", RunCreate(), create_project=True)
    for i in range(5):
        ingest.ingest(db, run.id, body(["a", "b"], range(1000 * i, 1000 * (i + 1))), columnar=True)
    db._checkpoints.stop()  # type: ignore[union-attr]  # its last checkpoint is done
    conn = sqlite3.connect(path)
    try:
        _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    assert frames > 0 and done == frames
    with db.read() as s:
        assert dict(s.execute(select(Series.key, Series.count).where(Series.run_id == run.id)).all()) == {
            "a": 5000, "b": 5000}


def test_a_wal_past_its_bound_is_finished_by_the_next_commit(sqlite_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that never pause: the background checkpoint cannot let the WAL start over, so the next
    commit after it reports more than MAX_FRAMES checkpoints itself, and the WAL starts over."""
    db, path = sqlite_db
    cp = db._checkpoints
    assert cp is not None
    monkeypatch.setattr(Checkpointer, "MAX_FRAMES", 10)
    with db.write() as s:
        run, _ = runs.create_run(s, "p", RunCreate(), create_project=True)
    for i in range(4):
        ingest.ingest(db, run.id, body(["a", "b", "c"], range(1000 * i, 1000 * (i + 1))), columnar=True)
    before = wal_frames(path)
    cp.behind = True  # as the checkpoint thread leaves it when it reads more than MAX_FRAMES
    ingest.ingest(db, run.id, body(["a"], range(4000, 4010)), columnar=True)  # finishes the checkpoint
    ingest.ingest(db, run.id, body(["a"], range(4010, 4020)), columnar=True)  # starts the WAL over
    assert not cp.behind
    assert wal_frames(path) < before


def test_dispose_stops_the_checkpointer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    db = Database(Settings(database_url=url, background_workers=False))
    thread = db._checkpoints._thread  # type: ignore[union-attr]
    db.dispose()
    assert not thread.is_alive()


def test_a_firing_alert_is_in_every_answer_and_none_costs_no_query(db_url: str) -> None:
    """The answer lists the run's firing alerts even for a batch that changed none of them."""
    with make_client(db_url) as c:
        rid = c.post("/api/v1/projects/p/runs", json={}).json()["id"]
        nan = wire.batch_to_columnar(wire.batch([wire.series_entry("train/loss", "loss", [0, 1], [1.0, float("nan")])]))
        headers = {"content-type": wire.COLUMNAR_TYPE}
        first = c.post(f"/api/v1/runs/{rid}/points", content=nan, headers=headers).json()
        assert [a["rule"] for a in first["alerts"]] == ["non_finite"]
        quiet = wire.batch_to_columnar(wire.batch([wire.series_entry("other/x", "other", [0], [1.0])]))
        again = c.post(f"/api/v1/runs/{rid}/points", content=quiet, headers=headers).json()
        assert [(a["rule"], a["status"]) for a in again["alerts"]] == [("non_finite", "firing")]
        clean = c.post("/api/v1/projects/p/runs", json={}).json()["id"]
        assert c.post(f"/api/v1/runs/{clean}/points", content=quiet, headers=headers).json()["alerts"] == []


@pytest.mark.parametrize("cached", [False, True])
def test_checks_before_the_writer_keep_their_order(sqlite_url: str, cached: bool) -> None:
    """401, then 404, then 415, then the body's 422, whether the checks run on the event loop (the
    token and the run's project cached) or in a worker thread (read from the database)."""
    from losswatch.server.services.tokens import create_token

    with make_client(sqlite_url, auth="on") as c:
        db = c.app.state.db
        with db.write() as s:
            run, _ = runs.create_run(s, "p", RunCreate(), create_project=True)
            _, token = create_token(s, "p", "write", "t")
        auth = {"Authorization": f"Bearer {token}"}
        columnar = {"content-type": wire.COLUMNAR_TYPE, **auth}
        good = body(["x"], range(10))
        if cached:
            assert c.post(f"/api/v1/runs/{run.id}/points", content=good, headers=columnar).status_code == 200
        else:
            c.app.state.auth_cache = type(c.app.state.auth_cache)(ttl=0)
        assert c.post(f"/api/v1/runs/{run.id}/points", content=b"junk",
                      headers={"content-type": wire.COLUMNAR_TYPE}).status_code == 401
        assert c.post("/api/v1/runs/nope/points", content=b"junk", headers=columnar).status_code == 404
        assert c.post(f"/api/v1/runs/{run.id}/points", content=good,
                      headers={"content-type": "text/csv", **auth}).status_code == 415
        bad = c.post(f"/api/v1/runs/{run.id}/points", content=b"junk", headers=columnar)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_points"
        ok = c.post(f"/api/v1/runs/{run.id}/points", content=body(["x"], range(10, 20)), headers=columnar)
        assert ok.status_code == 200 and ok.json()["accepted"] == 10
