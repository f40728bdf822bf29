"""Engine, sessions and migrations. Built by ``create_app``; nothing here runs at import time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from losswatch.server.settings import Settings


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
