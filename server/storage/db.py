"""Engine, sessions and migrations. Built by ``create_app``; nothing here runs at import time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from losswatch.server.settings import Settings

log = logging.getLogger("losswatch.server")


def make_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
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
        self.outbox_event = threading.Event()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits at the end, or rolls back on error."""
        if self._write_lock is not None:
            with self._write_lock, self.sessions() as session, session.begin():
                yield session
        else:
            with self.sessions() as session, session.begin():
                yield session

    def wake_delivery(self) -> None:
        """New outbox rows were committed: let the delivery worker look now, not at its next tick."""
        self.outbox_event.set()

    def dispose(self) -> None:
        self.engine.dispose()


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
_PG_COPY = f"COPY chunks ({_QUOTED}) FROM STDIN (FORMAT BINARY)"
_PG_TYPES = ["int4", "int8", "int4", "int4", "float8", "float8", "bytea", "bytea", "bytea", "bytea"]
# False: the portable SQLAlchemy statements on every backend (the benchmark's "before" figure).
FAST_CHUNK_WRITES = True


def write_chunks(session: Session, inserts: list[dict[str, Any]], updates: list[dict[str, Any]],
                 insert_stmt: Any, update_stmt: Any) -> None:
    """Write new chunk rows and rewrite changed ones in the session's transaction.

    Chunk rows are few and large (one per 1,024 steps of a series), so the cost per batch is in the
    round trips and the per-statement overhead, not in the data. On PostgreSQL new rows go in one
    binary ``COPY``; changed rows stay with ``update_stmt``, which psycopg sends as one pipeline (one
    ``UPDATE ... FROM unnest(...)`` of binary arrays was slower in a side-by-side trial). The
    ``ingest`` bench section's ``store_*`` figures compare this path with the portable one. On SQLite both are one ``executemany`` of plain tuples on the driver's
    connection, skipping SQLAlchemy's per-row parameter processing. ``insert_stmt`` /
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
    if inserts:
        with driver.cursor() as cur, cur.copy(_PG_COPY) as copy:
            copy.set_types(_PG_TYPES)
            for r in inserts:
                copy.write_row(tuple(r[k] for k in _CHUNK_KEYS))
    if updates:
        session.execute(update_stmt, updates)
