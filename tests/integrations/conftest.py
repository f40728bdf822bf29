"""Fixtures of the integration tests: a real `losswatch serve` process and readers of what it stored.

Every test here trains or logs with the real framework package and then reads the server back
through the public HTTP API (the same one the dashboard uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from losswatch.client import wire


@pytest.fixture
def server(server_factory: Callable[..., Any], sqlite_url: str) -> Any:
    """A real `losswatch serve` on a fresh SQLite file (auth off: bound to 127.0.0.1)."""
    return server_factory(sqlite_url).start()


@pytest.fixture(autouse=True)
def _offline_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep the client's spool and the frameworks' caches inside the test's folder; no network."""
    monkeypatch.setenv("LOSSWATCH_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield


def get_json(url: str, path: str, **params: Any) -> Any:
    r = httpx.get(url + path, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def read_run(url: str, run_id: str) -> dict[str, Any]:
    return get_json(url, f"/api/v1/runs/{run_id}")  # type: ignore[no-any-return]


def list_runs(url: str, project: str) -> list[dict[str, Any]]:
    return get_json(url, f"/api/v1/projects/{project}/runs", limit=1000)["runs"]  # type: ignore[no-any-return]


def read_series(url: str, run_id: str, key: str) -> dict[int, float]:
    """Every stored point of one series, {step: value}, non-finite values decoded."""
    out: dict[int, float] = {}
    start = 0
    while True:
        page = get_json(url, f"/api/v1/runs/{run_id}/points", key=key, start=start, limit=100_000)
        for s, v in zip(page["steps"], page["values"], strict=True):
            out[s] = wire.decode_value(v)
        if page["next_start"] is None:
            return out
        start = page["next_start"]


def read_walls(url: str, run_id: str, key: str) -> dict[int, float]:
    page = get_json(url, f"/api/v1/runs/{run_id}/points", key=key, limit=100_000)
    return dict(zip(page["steps"], page["wall_times"], strict=True))
