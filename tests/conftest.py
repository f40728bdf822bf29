"""Shared fixtures: a fresh database per test on SQLite and on the real PostgreSQL, the app in
process, and real `losswatch serve` processes.

PostgreSQL lives at LOSSWATCH_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test). Outside CI
a missing server skips the PostgreSQL variants loudly; with CI=true it fails them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("LOSSWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
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


def need_or_skip(reason: str | None) -> None:
    """Skip loudly outside CI; fail in CI, where every dependency must be present."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing dependency is a failure, not a skip)")
    pytest.skip(f"SKIPPED, NOT TESTED: {reason}")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A real `losswatch serve` process on 127.0.0.1."""

    def __init__(self, db_url: str, port: int | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None, log_path: Path | None = None) -> None:
        self.db_url, self.port = db_url, port or free_port()
        self.env = {**os.environ, "LOSSWATCH_LOG_LEVEL": "warning", **(env or {})}
        self.args = args or []
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        if self.log_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="losswatch-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "losswatch"), "serve", "--db", self.db_url, "--host", "127.0.0.1",
                 "--port", str(self.port), *self.args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
