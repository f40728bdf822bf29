from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _server import FakeServer  # noqa: E402


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.stop()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def fast() -> dict[str, float]:
    """init() options for quick tests: short flush interval and backoff."""
    return {"flush_interval": 0.05, "retry_min": 0.05, "retry_max": 0.2, "heartbeat_interval": 3600.0}
