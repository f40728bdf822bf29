"""``run.update()`` (through the sender: spooled, retried, replayed by sync), ``wall_time=`` and
``run.step``. Server semantics are checked against the real app in process; delivery faults against
the small local HTTP server."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from _server import FakeServer, free_port

import losswatch
from losswatch.client import spool
from losswatch.client.errors import LosswatchWarning, ServerError
from losswatch.client.sync import sync_dir
from tests.client.test_alerts import AppTransport, app  # noqa: F401 - the real app fixture

WALL = 1_760_000_000.25  # exact in microseconds, as the server stores wall times


def start(app: Any, spool_dir: Path, fast: dict, **kw: Any) -> losswatch.Run:  # noqa: F811
    return losswatch.init(project="p", transport=AppTransport(app), spool_dir=spool_dir, **{**fast, **kw})


def test_update_merges_the_config_and_replaces_tags_name_notes(app, spool_dir, fast) -> None:  # noqa: F811
    run = start(app, spool_dir, fast, name="first", config={"lr": 0.1, "data": {"set": "a"}}, tags=["x"])
    run.log({"train/loss": 1.0})
    run.update(config={"lr": 0.2, "epochs": 3})
    run.update(config={"momentum": 0.9}, tags=["y", "z"], name="second", notes="tuned")
    assert run.name == "second"
    run.log({"train/loss": 0.5})
    assert run.flush(timeout=10)
    stored = app.get(f"/api/v1/runs/{run.id}").json()
    assert stored["config"] == {"lr": 0.2, "data": {"set": "a"}, "epochs": 3, "momentum": 0.9}
    assert stored["tags"] == ["y", "z"] and stored["name"] == "second" and stored["notes"] == "tuned"
    run.update()  # nothing given: nothing sent
    run.finish()
    assert [c for c in run._sender._transport.calls if c[0] == "PATCH"] == [("PATCH", f"/api/v1/runs/{run.id}")] * 2
    assert app.get(f"/api/v1/runs/{run.id}").json()["status"] == "finished"
    other = start(app, spool_dir, fast)
    with pytest.raises(ValueError, match="mapping"):
        other.update(config=[1, 2])
    other.finish()


def test_update_takes_config_objects_and_non_finite_values(app, spool_dir, fast) -> None:  # noqa: F811
    import argparse

    run = start(app, spool_dir, fast)
    run.update(config=argparse.Namespace(lr=3e-4, clip=math.inf, name="yolo"))
    run.finish()
    assert app.get(f"/api/v1/runs/{run.id}").json()["config"] == {"lr": 3e-4, "clip": "Infinity", "name": "yolo"}


def test_an_update_the_server_refuses_warns_and_the_rest_arrives(server_factory, sqlite_url, spool_dir, fast) -> None:
    # A real server process, not the app in a thread of this process: FastAPI enters
    # warnings.catch_warnings() in its own code, which is not thread-safe; on a slow runner its restore
    # undid pytest.warns and the client's warning met pytest's "error" filter instead.
    import httpx

    sp = server_factory(sqlite_url).start()
    kw = {"project": "p", "url": sp.url, "spool_dir": spool_dir, **fast}
    run = losswatch.init(**kw)
    # The refusal is told by whichever call of the run comes after the sender got the 422 (the next
    # update() may already be the one): every call after the refused update is inside the block.
    with pytest.warns(LosswatchWarning, match="refused to update run"):
        run.update(name="")  # the server wants 1 to 500 characters: 422
        run.update(notes="kept")
        for step in range(20):
            run.log({"train/loss": float(step)}, step=step)
        run.flush(timeout=10)
        run.finish()
    stored = httpx.get(f"{sp.url}/api/v1/runs/{run.id}").json()
    assert stored["notes"] == "kept" and stored["status"] == "finished"
    assert stored["summary"]["train/loss"]["count"] == 20
    strict = losswatch.init(strict=True, **kw)
    with pytest.raises(ServerError, match="422"):
        strict.update(name="")
        strict.flush(timeout=10)
    strict.finish()


def test_an_update_while_the_server_is_down_is_spooled_then_delivered_in_order(spool_dir, fast) -> None:
    server = FakeServer(start=False)
    try:
        with pytest.warns(LosswatchWarning, match="could not reach the server"):
            run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, config={"a": 1}, **fast)
            run.log({"train/loss": 1.0})
            run.update(config={"b": 2}, tags=["late"])
            assert not run.flush(timeout=5)
        records = [r for r, _ in spool.read_records(spool_dir / f"{run.id}.jsonl") if r is not None]
        assert [r["t"] for r in records] == ["run", "points", "update"]
        assert records[2]["body"] == {"config": {"a": 1, "b": 2}, "tags": ["late"]}
        server.start()
        assert server.wait_for(lambda: run.flush(timeout=1), timeout=15)
        run.finish()
    finally:
        server.stop()
    assert server.runs[run.id]["config"] == {"a": 1, "b": 2} and server.runs[run.id]["tags"] == ["late"]
    patches = [p for m, p, _, _ in server.requests if m == "PATCH"]
    assert patches == [f"/api/v1/runs/{run.id}"]  # once


def test_sync_replays_the_updates_of_a_dead_run(app, spool_dir, fast) -> None:  # noqa: F811
    with pytest.warns(LosswatchWarning, match="could not reach"):
        run = losswatch.init(project="p", url=f"http://127.0.0.1:{free_port()}", spool_dir=spool_dir,
                             config={"lr": 0.1}, **fast)
        run.log({"train/loss": 2.0})
        run.update(config={"batch": 16}, notes="from the spool")
        run.finish("failed")
    report = sync_dir(spool_dir, transport=AppTransport(app))
    assert report["failed"] == {} and report["runs"] == [run.id] and report["points"] == 1
    stored = app.get(f"/api/v1/runs/{run.id}").json()
    assert stored["config"] == {"lr": 0.1, "batch": 16} and stored["notes"] == "from the spool"
    assert stored["status"] == "failed"


def test_update_after_finish_warns_and_on_other_ranks_does_nothing(server, spool_dir, fast, monkeypatch) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.finish()
    with pytest.warns(LosswatchWarning, match="is finished"):
        run.update(notes="late")
    assert not [r for r in server.requests if r[0] == "PATCH"]
    monkeypatch.setenv("RANK", "1")
    other = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    other.update(config={"x": 1})
    other.finish()


def test_wall_time_is_the_one_given(app, spool_dir, fast) -> None:  # noqa: F811
    run = start(app, spool_dir, fast)
    run.log({"train/loss": 1.0}, step=0, wall_time=WALL)
    run.log({"train/loss": 0.5}, step=1)
    run.log_eval({"val/acc": 0.9}, wall_time=WALL + 1)
    for bad in (math.nan, math.inf, -1.0, "soon"):
        with pytest.raises(ValueError):
            run.log({"train/loss": 0.1}, wall_time=bad)
    run.finish()
    loss = app.get(f"/api/v1/runs/{run.id}/points", params={"key": "train/loss"}).json()
    assert loss["steps"] == [0, 1] and loss["wall_times"][0] == WALL
    assert abs(loss["wall_times"][1] - __import__("time").time()) < 60  # the time of the call
    acc = app.get(f"/api/v1/runs/{run.id}/points", params={"key": "val/acc"}).json()
    assert acc["steps"] == [1] and acc["wall_times"] == [WALL + 1]


def test_step_is_the_last_logged_step(server, spool_dir, fast) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    assert run.step is None
    run.log({"a": 1.0})
    assert run.step == 0
    run.log({"a": 1.0}, step=41)
    run.log_eval({"val/acc": 0.5})  # does not move the step
    assert run.step == 41
    run.log({"a": 1.0})
    assert run.step == 42
    run.finish()
    assert server.series(run.id, "val/acc") == {41: 0.5}
