"""The batch's last writes held back and sent together (``points.save_batch``; on PostgreSQL one psycopg
pipeline of the chunk rows, the series summaries and the run's monitor state): the stored rows, the
answers and the alerts are those of the writes made one at a time (``points.HOLD_WRITES = False``), for
new chunks, appends, an overwrite (its range read back from the written chunks), a retried batch
(exactly once: nothing rewritten) and a NaN loss that fires an alert; on PostgreSQL the batch takes
fewer statements through SQLAlchemy."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, select

from losswatch.client import wire
from losswatch.server.api.schemas import RunCreate
from losswatch.server.services import ingest, points, runs
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database, upgrade
from losswatch.server.storage.models import Alert, Chunk, Run, Series


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    upgrade(db_url)
    db = Database(Settings(database_url=db_url, background_workers=False))
    yield db
    db.dispose()
    points.HOLD_WRITES = True


def body(series: dict[str, tuple[range | list[int], list[float]]], wall0: float = 1.7e9) -> bytes:
    entries = [wire.series_entry(k, "loss", list(steps), values, [wall0 + s * 0.05 for s in steps])
               for k, (steps, values) in series.items()]
    return wire.batch_to_columnar(wire.batch(entries))


def bodies() -> list[bytes]:
    rng = np.random.default_rng(3)
    loss = (1 + 0.1 * rng.standard_normal(3000)).tolist()
    nan_tail = loss[2000:2500]
    nan_tail[100] = math.nan
    first = body({"train/loss": (range(0, 1000), loss[:1000]), "val/loss": ([0, 500, 999], [2.0, 1.5, 1.2])})
    return [
        first,
        body({"train/loss": (range(1000, 2000), loss[1000:2000])}),  # appends, a second chunk
        first,  # a retry of the first batch: nothing new
        body({"train/loss": (range(100, 200), [0.5] * 100)}, wall0=1.8e9),  # an overwrite: the range recomputed
        body({"train/loss": (range(2000, 2500), nan_tail)}),  # a NaN loss: an alert fires
    ]


def run_all(db: Database, hold: bool) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    points.HOLD_WRITES = hold
    with db.write() as s:
        run, _ = runs.create_run(s, "writes", RunCreate(name=f"hold-{hold}"), create_project=True)
    answers = [ingest.ingest(db, run.id, b, columnar=True) for b in bodies()]
    with db.read() as s:
        rows = s.execute(
            select(Series.key, Chunk.chunk_no, Chunk.count, Chunk.nonfinite, Chunk.min_value, Chunk.max_value,
                   Chunk.rollup, Chunk.steps, Chunk.walls, Chunk.values)
            .join(Series, Series.id == Chunk.series_id).where(Series.run_id == run.id)
            .order_by(Series.key, Chunk.chunk_no)).all()
        summaries = s.execute(
            select(Series.key, Series.kind, Series.count, Series.nonfinite, Series.first_step, Series.last_step,
                   Series.last_value, Series.last_special, Series.last_wall_us, Series.min_value, Series.max_value,
                   Series.detector_state)
            .where(Series.run_id == run.id).order_by(Series.key)).all()
        alerts = s.execute(select(Alert.rule, Alert.series_key, Alert.status, Alert.step)
                           .where(Alert.run_id == run.id).order_by(Alert.id)).all()
        state = s.scalar(select(Run.monitor_state).where(Run.id == run.id))
    stored = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]
    stored += [tuple(r) for r in summaries] + [tuple(a) for a in alerts]
    stored.append(tuple((state or {}).get(k) for k in ("step", "n", "active", "since")))  # not its clock readings
    return answers, stored


def _plain(answers: list[dict[str, Any]]) -> list[tuple[int, list[tuple[Any, ...]]]]:
    return [(a["accepted"], [(x["rule"], x["series"], x["status"], x["step"]) for x in a["alerts"]])
            for a in answers]


def test_held_writes_store_the_same_rows_and_answers(database: Database) -> None:
    before_answers, before = run_all(database, hold=False)
    after_answers, after = run_all(database, hold=True)
    assert _plain(after_answers) == _plain(before_answers)
    assert any(a["alerts"] for a in after_answers), "the NaN loss fires an alert"
    assert after == before


@pytest.mark.postgres
def test_postgres_batch_end_is_one_pipeline(pg_database: str) -> None:
    """The batch's reads of its series and their stored chunks go in one pipeline, and its series
    summaries and monitor state in the chunk rows' pipeline: four statements fewer through SQLAlchemy
    per batch (two round trips where there were four), none of them one of those."""
    upgrade(pg_database)
    db = Database(Settings(database_url=pg_database, background_workers=False))
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    counts = {}
    try:
        for hold in (False, True):
            points.HOLD_WRITES = hold
            with db.write() as s:
                run, _ = runs.create_run(s, "writes", RunCreate(name=f"hold-{hold}"), create_project=True)
            ingest.ingest(db, run.id, bodies()[0], columnar=True)
            seen.clear()
            assert ingest.ingest(db, run.id, bodies()[1], columnar=True)["accepted"] == 1000
            counts[hold] = len(seen)
        assert counts[True] == counts[False] - 4, counts
        assert not any(s.lstrip().startswith(("UPDATE series", "UPDATE runs SET monitor_state", "SELECT series",
                                              "SELECT chunks")) for s in seen), seen
    finally:
        points.HOLD_WRITES = True
        db.dispose()


def test_a_wrong_series_id_guess_reads_the_chunks_again(database: Database) -> None:
    """The series ids guessed from a run's last batch are checked: a wrong guess (here: another
    series' id) is not used, and the batch stores what it stores without the guess."""
    points.HOLD_WRITES = True
    with database.write() as s:
        run, _ = runs.create_run(s, "writes", RunCreate(name="guess"), create_project=True)
    all_bodies = bodies()
    ingest.ingest(database, run.id, all_bodies[0], columnar=True)
    if run.id in points._SERIES_IDS:
        ids = points._SERIES_IDS[run.id]
        ids["train/loss"], ids["val/loss"] = ids["val/loss"], ids["train/loss"]
    for b in all_bodies[1:]:
        ingest.ingest(database, run.id, b, columnar=True)
    _, expected = run_all(database, hold=False)
    with database.read() as s:
        got = points.read_points(s, run.id, "train/loss", 0, 10_000, 10_000)
    with database.read() as s:
        want = points.read_points(s, s.scalar(select(Run.id).where(Run.name == "hold-False")), "train/loss", 0, 10_000,
                                  10_000)
    assert got["steps"] == want["steps"] and got["values"] == want["values"]
    assert expected  # the reference run stored its rows
