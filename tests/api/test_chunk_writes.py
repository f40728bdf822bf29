"""The chunk-row write paths (``losswatch.server.storage.db.write_chunks``) on SQLite and PostgreSQL: the fast
ones (plain-tuple executemany; one psycopg pipeline of INSERTs and UPDATEs with binary arrays) store exactly the rows the
portable SQLAlchemy statements store, and a retried batch is neither rewritten nor shown again to
the detectors (``record_points(..., fresh)``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from losswatch.server.api.schemas import RunCreate
from losswatch.server.services import points, runs
from losswatch.server.settings import Settings
from losswatch.server.storage import chunks
from losswatch.server.storage import db as dbmod
from losswatch.server.storage.db import Database, upgrade
from losswatch.server.storage.models import Chunk, Series


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    upgrade(db_url)
    db = Database(Settings(database_url=db_url, background_workers=False))
    yield db
    db.dispose()
    dbmod.FAST_CHUNK_WRITES = True


def series_batch(key: str, steps: Any, values: Any, wall0: int = 1_700_000_000_000_000) -> points.SeriesBatch:
    steps = np.asarray(steps, np.int64)
    return points.SeriesBatch(key, "loss", True, chunks.Points(
        steps, np.asarray(values, np.float64), wall0 + steps * 1000))


def batches() -> list[list[points.SeriesBatch]]:
    """New chunks, appends, an all-NaN chunk (no min/max: NULLs), ±Inf and -0.0, an overwrite with
    other values, a sparse series, a second chunk of an existing series."""
    rng = np.random.default_rng(7)
    nan_chunk = np.full(300, math.nan)
    special = rng.standard_normal(500)
    special[[3, 4, 5]] = [math.inf, -math.inf, -0.0]
    return [
        [series_batch("a", range(0, 700), rng.standard_normal(700)), series_batch("nan", range(0, 300), nan_chunk),
         series_batch("sparse", [5, 900, 5000], [1.0, 2.0, 3.0])],
        [series_batch("a", range(700, 1200), special), series_batch("nan", range(300, 400), nan_chunk[:100])],
        [series_batch("a", range(100, 200), rng.standard_normal(100), wall0=1_800_000_000_000_000),
         series_batch("sparse", [6, 901, 7000], [4.0, 5.0, 6.0])],
    ]


def store(db: Database, run_id: str, batch: list[points.SeriesBatch]) -> list[points.SeriesBatch]:
    fresh: list[points.SeriesBatch] = []
    with db.write() as s:
        runs.touch_run(s, run_id)
        series = points.load_series(s, run_id, batch)
        points.record_points(s, batch, series, fresh)
        points.save_series(s, series)
    return fresh


def chunk_rows(db: Database, run_id: str) -> list[tuple[Any, ...]]:
    with db.read() as s:
        rows = s.execute(
            select(Series.key, Chunk.chunk_no, Chunk.count, Chunk.nonfinite, Chunk.min_value, Chunk.max_value,
                   Chunk.rollup, Chunk.steps, Chunk.walls, Chunk.values)
            .join(Series, Series.id == Chunk.series_id).where(Series.run_id == run_id)
            .order_by(Series.key, Chunk.chunk_no)).all()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]


def new_run(db: Database, name: str) -> str:
    with db.write() as s:
        run, _ = runs.create_run(s, "writes", RunCreate(name=name), create_project=True)
    return run.id


def test_fast_writes_store_the_rows_the_portable_statements_store(database: Database) -> None:
    stored = {}
    for fast in (False, True):
        dbmod.FAST_CHUNK_WRITES = fast
        rid = new_run(database, f"fast-{fast}")
        for batch in batches():
            store(database, rid, batch)
        stored[fast] = chunk_rows(database, rid)
    assert stored[True] == stored[False]
    nan_rows = [r for r in stored[True] if r[0] == "nan"]
    assert nan_rows and all(r[4] is None and r[5] is None and r[3] == r[2] for r in nan_rows)
    assert [(r[0], r[1]) for r in stored[True]] == [("a", 0), ("a", 1), ("nan", 0), ("sparse", 0), ("sparse", 4),
                                                    ("sparse", 6)]
    with database.read() as s:
        got = points.read_points(s, rid, "a", 0, 2000, 5000)
    values = [v if isinstance(v, str) else float(v) for v in got["values"]]
    assert got["steps"] == list(range(1200))
    assert values[703:706] == ["Infinity", "-Infinity", -0.0] and math.copysign(1, values[705]) < 0


@pytest.mark.parametrize("fast", [True, False])
def test_a_retried_batch_is_not_rewritten_nor_shown_to_the_detectors(database: Database, fast: bool) -> None:
    dbmod.FAST_CHUNK_WRITES = fast
    rid = new_run(database, "retry")
    first, second = batches()[:2]
    assert [sb.key for sb in store(database, rid, first)] == ["a", "nan", "sparse"]
    store(database, rid, second)
    before = chunk_rows(database, rid)
    assert store(database, rid, first) == []  # a late copy of the first batch: nothing new
    assert chunk_rows(database, rid) == before
    # a job resumed from a checkpoint logs the same steps again at a later time: the detectors see it
    resumed = [series_batch("a", range(0, 700), first[0].points.values, wall0=1_900_000_000_000_000)]
    (fresh,) = store(database, rid, resumed)
    assert len(fresh.points) == 700
    # a batch half old (the same), half new: only the new half is fresh
    half = series_batch("nan", range(350, 450), np.full(100, math.nan))
    (fresh,) = store(database, rid, [half])
    assert fresh.points.steps.tolist() == list(range(400, 450))


def test_the_stored_chunks_of_a_batch_are_found_by_the_primary_key(database: Database,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The read of a batch's stored chunks searches the primary key once per range of chunks, on
    a run with many chunks too (a row-value ``IN`` of pairs made SQLite scan the whole table, a cost
    that grew with the database), and finds exactly the wanted chunks."""
    rid = new_run(database, "plan")
    steps = np.arange(0, 40 * chunks.CHUNK_STEPS, 7)
    store(database, rid, [series_batch("a", steps, np.ones(steps.shape[0])),
                          series_batch("b", steps, np.ones(steps.shape[0]))])
    with database.read() as s:
        ids = dict(s.execute(select(Series.key, Series.id).where(Series.run_id == rid)).all())
        ranges = [(ids["a"], 3, 5), (ids["b"], 0, 0), (ids["b"], 39, 45)]
        found = points._read_old(s, ranges)
        assert sorted(found) == sorted([(ids["a"], 3), (ids["a"], 4), (ids["a"], 5), (ids["b"], 0), (ids["b"], 39)])
        monkeypatch.setattr(points, "_RANGES_PER_SELECT", 2)  # more ranges than one statement takes
        assert points._read_old(s, ranges).keys() == found.keys()
        if database.engine.dialect.name == "sqlite":
            stmt = points._select_old(len(ranges))
            sql = str(stmt.compile(dialect=database.engine.dialect))
            params = [v for r in ranges for v in r]
            plan = s.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(params)).all()
            details = [row[-1] for row in plan]
            assert not any(d.startswith("SCAN chunks") for d in details), details
            assert any("SEARCH chunks" in d for d in details), details
