"""Engine, sessions and migrations. Built by ``create_app``; nothing here runs at import time."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, inspect, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from losswatch.server.settings import Settings

log = logging.getLogger("losswatch.server")
T = TypeVar("T")
P = TypeVar("P")


def sqlite_file(settings: Settings) -> str | None:
    """The file of a SQLite database (None for PostgreSQL, or an in-memory SQLite)."""
    if not settings.is_sqlite:
        return None
    path = make_url(settings.database_url).database
    return path if path and path != ":memory:" and not path.startswith("file:") else None


def make_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        # A file database is checkpointed by the process's Checkpointer, off the commit path.
        autocheckpoint = 0 if sqlite_file(settings) else 1000
        engine = create_engine(
            settings.database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # One writer at a time anyway; each connection keeps its own page cache (cache_size).
            pool_size=min(settings.db_pool_size, 4),
            max_overflow=4,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a crash loses at most the last commits, never corrupts the file.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-16384")  # 16 MiB per connection
            cur.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
            cur.close()

        return engine
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=8,
        pool_pre_ping=True,  # a restarted PostgreSQL: stale connections are replaced, not raised
        pool_recycle=1800,
    )


class Database:
    """The engine, the session factory and the write lock of one server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; serialising writers in-process avoids busy waits.
        self._write_lock: threading.Lock | None = threading.Lock() if settings.is_sqlite else None
        self._group: GroupWriter | None = None
        self._group_lock = threading.Lock()
        self.outbox_event = threading.Event()
        path = sqlite_file(settings)
        self._checkpoints = Checkpointer(self.engine, path) if path else None

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits at the end, or rolls back on error."""
        if self._write_lock is not None:
            with self._write_lock:
                with self.sessions() as session, session.begin():
                    yield session
                if self._checkpoints is not None:
                    self._checkpoints.committed()
        else:
            with self.sessions() as session, session.begin():
                yield session

    @property
    def group_writer(self) -> GroupWriter | None:
        """SQLite: the group-commit writer (started on first use); None on other backends, whose
        writers run side by side."""
        if self._write_lock is None:
            return None
        with self._group_lock:
            if self._group is None:
                self._group = GroupWriter(self)
            return self._group

    def wake_delivery(self) -> None:
        """New outbox rows were committed: let the delivery worker look now, not at its next tick."""
        self.outbox_event.set()

    def dispose(self) -> None:
        if self._group is not None:
            self._group.stop()
        if self._checkpoints is not None:
            self._checkpoints.stop()
        self.engine.dispose()


class Checkpointer:
    """WAL checkpoints of a SQLite file on a thread of their own, not in the commit of a request.

    SQLite's automatic checkpoint runs inside the commit that passes 1,000 WAL pages: that commit
    copies the pages into the database and syncs it, 40-60 ms at the ``ingest`` bench's rate (one
    batch in ten), while its caller and every batch queued behind it wait. Here a commit only sets an
    event (the connections run with ``wal_autocheckpoint=0``) and this thread runs a ``PASSIVE``
    checkpoint at most every :data:`INTERVAL_S` on a connection of its own; it waits for no
    one, and the writer goes on while it runs (the copying and the sync release the GIL). Under
    writes that never pause, a checkpoint beside them never backfills the frames written meanwhile,
    and only a complete one lets the WAL start over: once it holds more than :data:`MAX_FRAMES`
    frames, the next commit finishes the checkpoint itself, under the write lock (the frames
    since the last one), as SQLite would have. Crash safety is SQLite's either way (WAL,
    ``synchronous=NORMAL``)."""

    INTERVAL_S = 0.2
    MAX_FRAMES = 4_096  # 16 MiB of 4 KiB pages

    def __init__(self, engine: Engine, path: str) -> None:
        self._engine, self._path = engine, path
        self._wake, self._stopping = threading.Event(), threading.Event()
        self.behind = False
        self._thread = threading.Thread(target=self._loop, name="losswatch-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """After a commit, on the writer's thread (holding the write lock). Never raises: the
        caller's transaction is committed already."""
        if self.behind:
            import sqlite3

            try:
                raw = self._engine.raw_connection()
                try:
                    raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]
                finally:
                    raw.close()
            except sqlite3.Error:  # busy with the thread's own checkpoint, say: the next commit tries again
                log.warning("a WAL checkpoint after a commit failed; the next commit retries", exc_info=True)
            else:
                self.behind = False
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(30)

    def _loop(self) -> None:
        import sqlite3

        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                try:
                    if conn is None:  # opened after the first commit: the file and its WAL exist
                        conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
                    _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    log.warning("a WAL checkpoint failed; the next one retries", exc_info=True)
                else:
                    self.behind = frames > self.MAX_FRAMES
                if self._stopping.wait(self.INTERVAL_S):
                    return
        finally:
            if conn is not None:
                conn.close()


class GroupWriter:
    """Group commit for SQLite, which has one writer at a time: one thread makes the writes of all
    submitted work. What was queued while a transaction ran is taken together into the next one,
    each piece in a SAVEPOINT of its own (a piece that raises is rolled back alone and its caller
    gets the error), with one commit for all; every caller's future is resolved after that commit.

    Measured reason (bench ``ingest``, 8 clients): with a thread per request, the request threads
    parse and queue on the write lock while the holder shares the GIL with them, so the critical
    section stretches and 8 clients were slower than 1. Here the threads that wait are the
    event loop's coroutines, the holder is alone, and 8 batches cost one commit instead of 8."""

    MAX_GROUP = 16

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Session, Any], Any], Future[Any]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="losswatch-writer", daemon=True)
        self._thread.start()

    def submit(self, prepare: Callable[[], P], write: Callable[[Session, P], T]) -> Future[T]:
        """``prepare()`` runs on the writer thread outside the transaction (checks and parsing:
        what needs no lock), then ``write(session, prepared)`` inside it. The future holds what
        ``write`` returned once it is committed, or the exception of either."""
        fut: Future[T] = Future()
        self._queue.put((prepare, write, fut))
        return fut

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            stop = False
            while len(group) < self.MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                self._run(group)
            except BaseException as exc:  # never leave a caller waiting
                log.exception("the group-commit writer failed")
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
            if stop:
                return

    def _run(self, group: list[tuple[Callable[[], Any], Callable[[Session, Any], Any], Future[Any]]]) -> None:
        ready: list[tuple[Callable[[Session, Any], Any], Future[Any], Any]] = []
        for prepare, write, fut in group:
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                ready.append((write, fut, prepare()))
            except BaseException as exc:
                fut.set_exception(exc)
        if not ready:
            return
        if len(ready) == 1:  # alone: its own transaction is its savepoint
            write, fut, prepared = ready[0]
            try:
                with self._db.write() as session:
                    result = write(session, prepared)
            except BaseException as exc:
                fut.set_exception(exc)
                return
            fut.set_result(result)
            return
        done: list[tuple[Future[Any], Any]] = []
        try:
            with self._db.write() as session:
                # pysqlite opens a transaction only before DML, so a first SAVEPOINT would open (and
                # its RELEASE commit) one of its own: open the group's transaction explicitly.
                conn = session.connection()
                if not conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                for write, fut, prepared in ready:
                    try:
                        with session.begin_nested():
                            done.append((fut, write(session, prepared)))
                    except Exception as exc:  # rolled back to its savepoint: the others stand
                        fut.set_exception(exc)
        except BaseException as exc:  # the commit failed: nothing of the group was written
            for fut, _ in done:
                fut.set_exception(exc)
            return
        for fut, result in done:
            fut.set_result(result)


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    import losswatch.migrations as migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def pending_migrations(engine: Engine) -> list[str]:
    """Revisions not yet applied to the database behind ``engine``."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(str(engine.url)))
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = script.get_revisions("heads")
    pending: list[str] = []
    for head in heads:
        for rev in script.iterate_revisions(head.revision, "base"):
            if rev.revision in current:
                break
            pending.append(rev.revision)
    return pending


def has_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("alembic_version")


def prepare_database(settings: Settings, db: Database) -> None:
    """Apply pending migrations, or refuse to start when told not to (``create_app`` and the CLI)."""
    pending = pending_migrations(db.engine) if has_schema(db.engine) else ["(all)"]
    if not pending:
        return
    if not settings.auto_migrate:
        raise RuntimeError(
            f"the database at {db.engine.url.render_as_string(hide_password=True)} needs migrations "
            f"({len(pending)} pending); run `losswatch db upgrade` or start without --no-migrate"
        )
    log.info("applying %d database migration(s)", len(pending))
    upgrade(settings.database_url)


# --- bulk writes of chunk rows: the one place where the write path branches on the dialect ---------

_CHUNK_COLUMNS = ("series_id", "chunk_no", "count", "nonfinite", "min_value", "max_value",
                  "rollup", "steps", "walls", "values")
_CHUNK_KEYS = ("sid", "no", "count", "nonfinite", "min_value", "max_value", "rollup", "steps", "walls", "values")
_QUOTED = ", ".join(f'"{c}"' for c in _CHUNK_COLUMNS)
_SQLITE_INSERT = f"INSERT INTO chunks ({_QUOTED}) VALUES ({', '.join('?' * len(_CHUNK_COLUMNS))})"
_SQLITE_UPDATE = ("UPDATE chunks SET " + ", ".join(f'"{c}" = ?' for c in _CHUNK_COLUMNS[2:])
                  + " WHERE series_id = ? AND chunk_no = ?")
# PostgreSQL: the arrays as binary parameters (%b), no text escaping of the bytes either way.
_PG_INSERT = f"INSERT INTO chunks ({_QUOTED}) VALUES (%s, %s, %s, %s, %s, %s, %b, %b, %b, %b)"
_PG_UPDATE = ("UPDATE chunks SET " + ", ".join(f'"{c}" = %{"b" if i >= 4 else "s"}'
                                              for i, c in enumerate(_CHUNK_COLUMNS[2:]))
              + " WHERE series_id = %s AND chunk_no = %s")
# False: the portable SQLAlchemy statements on every backend (the benchmark's "before" figure).
FAST_CHUNK_WRITES = True


def write_chunks(session: Session, inserts: list[dict[str, Any]], updates: list[dict[str, Any]],
                 insert_stmt: Any, update_stmt: Any) -> None:
    """Write new chunk rows and rewrite changed ones in the session's transaction.

    Chunk rows are few and large (one per 1,024 steps of a series), so the cost per batch is in the
    round trips and the per-statement overhead, not in the data. On PostgreSQL the new rows' INSERTs
    and the changed rows' UPDATEs go in one psycopg pipeline, the arrays as binary parameters: one
    round trip for both, where a binary ``COPY`` of the new rows took three or more of its own (its
    start, its data, its end) before the UPDATEs' pipeline (one ``UPDATE ... FROM unnest(...)`` of
    binary arrays was slower in a side-by-side trial). The ``ingest`` bench section's ``store_*``
    figures compare this path with the portable one. On SQLite both are one ``executemany`` of plain
    tuples on the driver's connection, skipping SQLAlchemy's per-row parameter processing. ``insert_stmt`` /
    ``update_stmt`` (SQLAlchemy, bound by the dicts' keys) are the portable path, used when
    :data:`FAST_CHUNK_WRITES` is off or the dialect is another."""
    if not inserts and not updates:
        return
    dialect = session.get_bind().dialect.name
    if not FAST_CHUNK_WRITES or dialect not in ("sqlite", "postgresql"):
        if inserts:
            session.execute(insert_stmt, inserts)
        if updates:
            session.execute(update_stmt, updates)
        return
    driver = session.connection().connection.driver_connection
    if dialect == "sqlite":
        cur = driver.cursor()
        try:
            if inserts:
                cur.executemany(_SQLITE_INSERT, [tuple(r[k] for k in _CHUNK_KEYS) for r in inserts])
            if updates:
                cur.executemany(_SQLITE_UPDATE, [tuple(r[k] for k in _CHUNK_KEYS[2:]) + (r["sid"], r["no"])
                                                 for r in updates])
        finally:
            cur.close()
        return
    with driver.pipeline(), driver.cursor() as cur:
        if inserts:
            cur.executemany(_PG_INSERT, [tuple(r[k] for k in _CHUNK_KEYS) for r in inserts])
        if updates:
            cur.executemany(_PG_UPDATE, [tuple(r[k] for k in _CHUNK_KEYS[2:]) + (r["sid"], r["no"]) for r in updates])


def pipelined(session: Session) -> bool:
    """Whether the session's batch writes go to the database together (:func:`write_pipelined`):
    PostgreSQL, with :data:`FAST_CHUNK_WRITES` on."""
    return FAST_CHUNK_WRITES and session.get_bind().dialect.name == "postgresql"


def _compiled(stmt: Any, dialect: Any) -> tuple[str, dict[str, Any], list[tuple[str, Callable[[Any], Any]]]]:
    """A SQLAlchemy statement as the driver's SQL, its parameters' values in the statement (literals;
    the caller's are None here) and their bind processors (JSON values wrapped for psycopg, as
    ``session.execute`` would), once per statement and dialect."""
    key = (stmt, dialect.name)
    hit = _COMPILED.get(key)
    if hit is None:
        compiled = stmt.compile(dialect=dialect)
        procs = []
        for name, bind in compiled.binds.items():
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                procs.append((name, proc))
        hit = _COMPILED[key] = (str(compiled), dict(compiled.params), procs)
    return hit


_COMPILED: dict[tuple[Any, str], tuple[str, dict[str, Any], list[tuple[str, Callable[[Any], Any]]]]] = {}


def _bound(stmt: Any, dialect: Any, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The driver's SQL of ``stmt`` and its parameters: the statement's own, then ``row``'s, processed."""
    sql, fixed, procs = _compiled(stmt, dialect)
    params = {**fixed, **row}
    for name, proc in procs:
        if name in params:
            params[name] = proc(params[name])
    return sql, params


def write_pipelined(session: Session, inserts: list[dict[str, Any]], updates: list[dict[str, Any]],
                    writes: list[tuple[Any, list[dict[str, Any]]]], last: tuple[Any, dict[str, Any]]) -> Any:
    """PostgreSQL: the chunk rows of :func:`write_chunks`, then each ``(statement, rows)`` of
    ``writes`` (SQLAlchemy statements bound by the dicts' keys), then ``last`` (one statement and its
    parameters), all in one psycopg pipeline: one round trip where each took one or more. Returns
    ``last``'s first row. The statements run in this order, in the session's transaction, with the
    parameters processed as ``session.execute`` would (JSON serialised the same way)."""
    dialect = session.get_bind().dialect
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cur, driver.cursor() as final:
        with driver.pipeline():
            if inserts:
                cur.executemany(_PG_INSERT, [tuple(r[k] for k in _CHUNK_KEYS) for r in inserts])
            if updates:
                cur.executemany(_PG_UPDATE, [tuple(r[k] for k in _CHUNK_KEYS[2:]) + (r["sid"], r["no"]) for r in updates])
            for stmt, rows in writes:
                if rows:
                    cur.executemany(_compiled(stmt, dialect)[0], [_bound(stmt, dialect, r)[1] for r in rows])
            final.execute(*_bound(last[0], dialect, last[1]))
        return final.fetchone()  # the results came with the pipeline's one sync, at the end of its block


def read_pipelined(session: Session, queries: list[tuple[Any, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
    """PostgreSQL: each ``(statement, parameters)`` of ``queries`` (SQLAlchemy statements), in one
    psycopg pipeline in the session's transaction, in this order: one round trip for all. Returns
    the rows of each, as plain tuples in the order of the statement's columns."""
    dialect = session.get_bind().dialect
    driver = session.connection().connection.driver_connection
    cursors = [driver.cursor() for _ in queries]
    try:
        with driver.pipeline():
            for cur, (stmt, row) in zip(cursors, queries, strict=True):
                cur.execute(*_bound(stmt, dialect, row))
        return [cur.fetchall() for cur in cursors]
    finally:
        for cur in cursors:
            cur.close()
