"""Fixtures of the end-to-end tests: real `losswatch serve` processes (tests/conftest.py's
server_factory) and a spool directory per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e._support import Api


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def api() -> Iterator[Callable[..., Api]]:
    """``api(url, token=None)``: the query API of a server process, closed after the test."""
    made: list[Api] = []

    def factory(url: str, token: str | None = None) -> Api:
        made.append(Api(url, token))
        return made[-1]

    yield factory
    for a in made:
        a.close()
