"""Shared fixtures: a fresh database per test on SQLite and on the real PostgreSQL, the app in
process, and real `losswatch serve` processes.

PostgreSQL lives at LOSSWATCH_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test). Outside CI
a missing server skips the PostgreSQL variants loudly; with CI=true it fails them.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._server_process import ServerProcess, free_port  # noqa: F401 - the tests import them from here

PG_URL = os.environ.get("LOSSWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The client samples system metrics (sys/* series) every 10 s by default: off in tests unless a test
# asks (tests/client/test_system.py), so that a run's series are what the test logged however slow the machine.
os.environ.setdefault("LOSSWATCH_SYSTEM_METRICS", "0")
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)


def _pg_reason() -> str | None:
    try:
        with _pg_admin():
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"PostgreSQL at {PG_URL} is not reachable: {exc}"


def need_or_skip(reason: str | None, allow_module_level: bool = False) -> None:
    """Skip loudly outside CI; fail in CI, where every dependency must be present. The one skip policy
    of the suite: every skip for something missing goes through here (or through :func:`need_module`)."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing dependency is a failure, not a skip)", pytrace=False)
    pytest.skip(f"SKIPPED, NOT TESTED: {reason}", allow_module_level=allow_module_level)


def need_module(name: str) -> Any:
    """``pytest.importorskip`` under the policy above: the module, or a loud skip (a failure in CI).
    Works at module level (``torch = need_module("torch")``) and inside a test."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        need_or_skip(f"{name} is not installed ({exc})", allow_module_level=True)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped afterwards."""
    need_or_skip(_pg_reason())
    name = f"lw_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'losswatch.db'}"
    return request.getfixturevalue("pg_database")  # type: ignore[no-any-return]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'losswatch.db'}"


def make_client(url: str, **settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from losswatch.server.app import create_app
    from losswatch.server.settings import Settings

    settings.setdefault("auth", "off")
    return TestClient(create_app(Settings(database_url=url, **settings)), raise_server_exceptions=False)


@pytest.fixture
def client(db_url: str) -> Iterator[Any]:
    """The real app in process, auth off, on a fresh database migrated by Alembic."""
    with make_client(db_url) as c:
        yield c


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(db_url: str, **kwargs: Any) -> ServerProcess:
        sp = ServerProcess(db_url, **kwargs)
        started.append(sp)
        return sp

    yield factory
    for sp in started:
        sp.stop()
