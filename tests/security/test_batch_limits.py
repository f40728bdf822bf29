"""One request must not stall the others (issue 12, item 5): series and points per batch are bounded
(413 naming the limit, before the batch is parsed or the write lock taken; the client splits and
delivers everything), and listing runs summarises only the page's runs, sorting by a series summary
in the database."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

import losswatch
from losswatch.server.services import runs as runs_service
from tests.conftest import make_client


def _batch(n_series: int, n_points: int) -> dict[str, Any]:
    per = n_points // n_series
    return {"series": [{"key": f"s{i}", "steps": list(range(per)), "values": [0.5] * per} for i in range(n_series)]}


@pytest.fixture
def small(db_url: str) -> Any:
    with make_client(db_url, max_series_per_batch=10, max_points_per_batch=100, background_workers=False) as c:
        run_id = c.post("/api/v1/projects/p/runs", json={"name": "r"}).json()["id"]
        yield c, run_id


def test_too_many_series_or_points_get_413_naming_the_limit_and_store_nothing(small: Any) -> None:
    c, run_id = small
    r = c.post(f"/api/v1/runs/{run_id}/points", json=_batch(11, 11))
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "batch_too_large" and "LOSSWATCH_MAX_SERIES_PER_BATCH" in err["message"]
    assert "11 series" in err["message"] and "at most 10" in err["message"]
    assert err["details"][0]["limit"] == "max_series_per_batch" and err["details"][0]["max"] == 10
    r = c.post(f"/api/v1/runs/{run_id}/points", json=_batch(2, 102))
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert "LOSSWATCH_MAX_POINTS_PER_BATCH" in err["message"] and err["details"][0]["max"] == 100
    assert c.get(f"/api/v1/runs/{run_id}").json()["summary"] == {}
    r = c.post(f"/api/v1/runs/{run_id}/points", json=_batch(10, 100))  # exactly at both limits
    assert r.status_code == 200 and r.json()["accepted"] == 100, r.text


def test_the_limits_are_settings_with_descriptions() -> None:
    from losswatch.server.settings import Settings

    fields = Settings.model_fields
    for name in ("max_series_per_batch", "max_points_per_batch", "max_header_bytes", "auth_cache_seconds"):
        assert fields[name].description, name
    assert Settings().max_series_per_batch >= 1000 and Settings().max_points_per_batch >= 5000  # the client's batch


def test_the_client_splits_a_batch_the_server_refuses_and_delivers_every_point(server_factory: Any,
                                                                                  sqlite_url: str) -> None:
    sp = server_factory(sqlite_url, env={"LOSSWATCH_MAX_SERIES_PER_BATCH": "7",
                                         "LOSSWATCH_MAX_POINTS_PER_BATCH": "50"}).start()
    run = losswatch.init(project="limits", name="wide", url=sp.url, flush_every=5000, flush_interval=0.2,
                         heartbeat_interval=3600.0, spool_dir=None, strict=True)
    for step in range(5):
        run.log({f"layer{i}/grad_norm": float(i + step) for i in range(40)}, step=step)  # 40 series, 200 points
    with pytest.warns(losswatch.LosswatchWarning, match="LOSSWATCH_MAX_SERIES_PER_BATCH.*split it"):
        run.finish()  # the warning says once what happened; no point is lost
    series = httpx.get(f"{sp.url}/api/v1/runs/{run.id}").json()["summary"]
    assert len(series) == 40
    assert all(s["count"] == 5 for s in series.values()), series
    assert series["layer39/grad_norm"]["last"] == 43.0


# --- listing ---------------------------------------------------------------------------------


@pytest.fixture
def many(db_url: str) -> Any:
    """120 runs: most with a val/x series (random maxima, some ties, a NaN last value), some without."""
    rng = random.Random(12)
    with make_client(db_url, background_workers=False) as c:
        expect: dict[str, float | None] = {}
        for i in range(120):
            tags = ["even"] if i % 2 == 0 else []
            rid = c.post("/api/v1/projects/p/runs", json={"name": f"run-{i:03d}", "tags": tags,
                                                          "config": {"lr": rng.choice([0.1, 0.01])}}).json()["id"]
            if i % 7 == 3:
                expect[rid] = None  # no such series
                c.post(f"/api/v1/runs/{rid}/points", json={"series": [{"key": "train/loss", "steps": [0],
                                                                       "values": [1.0]}]})
                continue
            top = float(rng.choice(range(40)))
            values: list[Any] = [top - 3, top, top - 1]
            if i % 11 == 5:
                values[-1] = "NaN"
            c.post(f"/api/v1/runs/{rid}/points", json={"series": [{"key": "val/x", "steps": [0, 1, 2],
                                                                   "values": values}]})
            expect[rid] = top
        yield c, expect


def _ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [run["id"] for run in r.json()["runs"]]


def test_sorting_by_a_series_summary_pages_correctly_and_summarises_only_the_page(
        many: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    c, expect = many
    created = _ids(c.get("/api/v1/projects/p/runs", params={"sort": "created_at", "limit": 1000}))
    order = {rid: i for i, rid in enumerate(created)}
    have = [rid for rid in created if expect[rid] is not None]
    missing = [rid for rid in created if expect[rid] is None]
    want_desc = sorted(have, key=lambda rid: (-expect[rid], order[rid])) + missing  # type: ignore[operator]
    want_asc = sorted(have, key=lambda rid: (expect[rid], order[rid])) + missing
    seen: list[list[str]] = []
    real = runs_service._page_rows
    monkeypatch.setattr(runs_service, "_page_rows", lambda s, p, ids: seen.append(list(ids)) or real(s, p, ids))
    got: list[str] = []
    for offset in range(0, 120, 25):
        r = c.get("/api/v1/projects/p/runs", params={"sort": "-max:val/x", "limit": 25, "offset": offset})
        assert r.json()["total"] == 120
        got += _ids(r)
        page = r.json()["runs"]
        for run in page:
            if expect[run["id"]] is not None:
                assert run["summary"]["val/x"]["max"] == expect[run["id"]]
    assert got == want_desc
    assert seen and all(len(ids) <= 25 for ids in seen), "the list summarised runs outside the page"
    assert _ids(c.get("/api/v1/projects/p/runs", params={"sort": "max:val/x", "limit": 1000})) == want_asc
    # last: a NaN last value counts as no value (after every number), as before
    last = _ids(c.get("/api/v1/projects/p/runs", params={"sort": "-last:val/x", "limit": 1000}))
    nan_runs = {rid for i, rid in enumerate(created) if i % 11 == 5 and expect[rid] is not None}
    assert set(last[-(len(missing) + len(nan_runs)):]) == set(missing) | nan_runs


def test_tag_and_config_filters_with_a_summary_sort(many: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    c, expect = many
    seen: list[list[str]] = []
    real = runs_service._page_rows
    monkeypatch.setattr(runs_service, "_page_rows", lambda s, p, ids: seen.append(list(ids)) or real(s, p, ids))
    r = c.get("/api/v1/projects/p/runs", params={"sort": "-max:val/x", "tag": "even", "config.lr": "0.1",
                                                 "limit": 10})
    runs = r.json()["runs"]
    assert r.status_code == 200 and len(runs) == 10 and r.json()["total"] > 10
    assert all("even" in run["tags"] and run["config"]["lr"] == 0.1 for run in runs)
    tops = [run["summary"]["val/x"]["max"] for run in runs if "val/x" in run["summary"]]
    assert tops == sorted(tops, reverse=True)
    assert seen and all(len(ids) <= 10 for ids in seen)
    by_name = _ids(c.get("/api/v1/projects/p/runs", params={"sort": "-name", "limit": 3}))
    names = [c.get(f"/api/v1/runs/{rid}").json()["name"] for rid in by_name]
    assert names == ["run-119", "run-118", "run-117"]
