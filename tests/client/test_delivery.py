"""Delivery faults against a real local HTTP server: down, restarted, 5xx, 429, 413, 401, 422."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _server import FakeServer, free_port

import losswatch
from losswatch.client import spool, wire
from losswatch.client.errors import LosswatchWarning, ServerError, TransportError


def spool_records(path: Path) -> list[dict]:
    return [r for r, _ in spool.read_records(path) if r is not None]


def test_server_down_at_init_then_up_everything_arrives_once(spool_dir, fast) -> None:
    server = FakeServer(start=False)
    try:
        with pytest.warns(LosswatchWarning, match="could not reach the server") as record:
            run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
            for step in range(50):
                run.log({"train/loss": 1.0 / (step + 1), "lr": 0.01})
            assert not run.flush(timeout=5)  # offline: flush says so instead of waiting
        assert len(record) == 1
        path = spool_dir / f"{run.id}.jsonl"
        assert path.exists()
        header = spool_records(path)[0]
        assert header["t"] == "run" and header["run_id"] == run.id and header["project"] == "p"
        assert header["create"]["id"] == run.id
        server.start()
        for step in range(50, 80):
            run.log({"train/loss": 1.0 / (step + 1), "lr": 0.01})
        assert server.wait_for(lambda: run.flush(timeout=1), timeout=15)
        run.finish()
    finally:
        server.stop()
    assert server.runs[run.id]["status"] == "finished"
    assert server.series(run.id, "train/loss") == {s: 1.0 / (s + 1) for s in range(80)}
    keys = [(k, s) for _, k, s, _ in server.arrivals]
    assert len(keys) == len(set(keys)) == 160  # each point exactly once
    assert not path.exists()  # replayed, then deleted


def test_server_restarted_mid_run_nothing_lost(server: FakeServer, spool_dir, fast) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    for step in range(30):
        run.log({"train/loss": float(step)})
    assert run.flush()
    server.stop()
    with pytest.warns(LosswatchWarning, match="could not reach"):
        for step in range(30, 60):
            run.log({"train/loss": float(step)})
        run.flush(timeout=2)
    server.start()
    for step in range(60, 90):
        run.log({"train/loss": float(step)})
    run.finish()
    assert server.series(run.id, "train/loss") == {s: float(s) for s in range(90)}
    assert server.runs[run.id]["status"] == "finished"


def test_memory_stays_bounded_and_spool_replays_in_order(spool_dir, fast) -> None:
    server = FakeServer(start=False)
    try:
        with pytest.warns(LosswatchWarning, match="could not reach"):
            run = losswatch.init(
                project="p",
                url=server.url,
                spool_dir=spool_dir,
                flush_every=50,
                max_buffer_bytes=4096,
                **fast,
            )
            peak = 0
            for step in range(3000):
                run.log({"train/loss": step * 0.5, "lr": 1e-3})
                if step % 100 == 0:
                    peak = max(peak, run._sender._outbox_bytes)
            run.log({"train/loss": -1.0}, step=10)  # a later write of an earlier step: must win after replay
            assert not run.flush(timeout=5)
        assert peak <= 4096 + 4096  # outbox bound (one batch may straddle it before moving to disk)
        assert run._sender._outbox_bytes == 0  # offline: everything is on disk
        path = spool_dir / f"{run.id}.jsonl"
        seqs = [r["seq"] for r in spool_records(path) if r["t"] == "points"]
        assert seqs == sorted(seqs) and len(seqs) >= 3000 * 2 // 52
        server.start()
        run.finish()
    finally:
        server.stop()
    got = server.series(run.id, "train/loss")
    assert len(got) == 3000
    assert got[10] == -1.0 and got[11] == 5.5
    steps = [s for _, k, s, _ in server.arrivals if k == "train/loss"]
    assert steps[:3000] == list(range(3000))  # replayed in the order logged
    assert not path.exists()


def test_finish_with_server_down_leaves_a_spool_with_a_finish_marker(spool_dir, fast) -> None:
    port = free_port()
    with pytest.warns(LosswatchWarning, match="could not reach") as record:
        run = losswatch.init(project="p", url=f"http://127.0.0.1:{port}", spool_dir=spool_dir,
                             finish_timeout=600, **fast)
        run.log({"a": 1.0})
        t0 = time.monotonic()
        run.finish()
        assert time.monotonic() - t0 < 60  # a dead server does not hold finish() for finish_timeout (600 s)
    assert len(record) == 1  # one warning, which already says to run `losswatch sync`
    assert "losswatch sync" in str(record[0].message)
    records = spool_records(spool_dir / f"{run.id}.jsonl")
    assert [r["t"] for r in records] == ["run", "points", "finish"]
    assert records[2]["status"] == "finished"


def test_5xx_and_429_are_retried_honouring_retry_after(server: FakeServer, spool_dir, fast) -> None:
    answers = [
        (503, {}, {"error": {"code": "unavailable", "message": "busy"}}),
        (429, {"Retry-After": "0.3"}, {}),
    ]
    times = []

    def responder(method: str, path: str, body: bytes):
        if path.endswith("/points"):
            times.append(time.monotonic())
            if answers:
                return answers.pop(0)
        return None

    server.responder = responder
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    with pytest.warns(LosswatchWarning, match="answered HTTP 503 unavailable: busy"):
        run.log({"a": 1.0})
        assert server.wait_for(lambda: run.flush(timeout=1), timeout=10)
    run.finish()
    assert server.series(run.id, "a") == {0: 1.0}
    assert len(times) >= 3 and times[2] - times[1] >= 0.25  # waited for Retry-After


def test_413_splits_the_batch_and_everything_arrives(server: FakeServer, spool_dir, fast) -> None:
    limit = 400

    def responder(method: str, path: str, body: bytes):
        if path.endswith("/points") and len(body) > limit:
            return 413, {}, {"error": {"code": "body_too_large", "message": f"over {limit} bytes"}}
        return None

    server.responder = responder
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    for step in range(100):
        run.log({"train/loss": step / 3, "train/loss/box": step / 7}, step=step)
    with pytest.warns(LosswatchWarning, match="too large") as record:
        assert run.flush()
    for step in range(100, 150):
        run.log({"train/loss": step / 3, "train/loss/box": step / 7}, step=step)
    run.finish()
    assert len(record) == 1
    assert server.series(run.id, "train/loss") == {s: s / 3 for s in range(150)}
    assert server.series(run.id, "train/loss/box") == {s: s / 7 for s in range(150)}
    assert len(server.arrivals) == 300


def test_401_warns_once_training_continues_and_spools(server: FakeServer, spool_dir, fast) -> None:
    server.responder = lambda m, p, b: (401, {}, {"error": {"code": "unauthorized", "message": "bad token"}})
    run = losswatch.init(project="p", url=server.url, token="wrong", spool_dir=spool_dir, **fast)
    with pytest.warns(LosswatchWarning) as record:
        for step in range(200):
            run.log({"train/loss": float(step)})
            if step == 50:
                run.flush(timeout=2)
        run.finish()
    assert len(record) == 1
    text = str(record[0].message)
    assert "401 unauthorized: bad token" in text and "LOSSWATCH_TOKEN" in text and "losswatch sync" in text
    assert len(server.requests) == 1  # refused once, then nothing more is sent
    records = spool_records(spool_dir / f"{run.id}.jsonl")
    points = sum(wire.count_points(spool.points_body(r)) for r in records if r["t"] == "points")
    assert points == 200 and records[-1]["t"] == "finish"


def test_422_drops_that_batch_only_with_the_servers_message(server: FakeServer, spool_dir, fast) -> None:
    def responder(method: str, path: str, body: bytes):
        if path.endswith("/points") and b"poison" in body:  # the key, in JSON or columnar bodies
            return 422, {}, {"error": {"code": "invalid_request", "message": "step out of range"}}
        return None

    server.responder = responder
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"a": 1.0})
    assert run.flush()
    run.log({"a": 2.0, "poison": 1.0})
    with pytest.warns(LosswatchWarning, match="422 invalid_request: step out of range.*dropped") as record:
        run.flush()
    run.log({"a": 3.0, "poison": 2.0})
    run.flush()  # refused again: logged, not warned a second time
    run.log({"a": 4.0})
    run.finish()
    assert len(record) == 1
    assert server.series(run.id, "a") == {0: 1.0, 3: 4.0}
    assert server.runs[run.id]["status"] == "finished"


def test_strict_raises_on_the_training_thread(server: FakeServer, spool_dir, fast) -> None:
    with pytest.raises(TransportError):
        losswatch.init(
            project="p", url=f"http://127.0.0.1:{free_port()}", strict=True, spool_dir=spool_dir, **fast
        )
    server.responder = lambda m, p, b: (
        (401, {}, {"error": {"code": "unauthorized", "message": "no"}}) if p.endswith("/runs") else None
    )
    with pytest.raises(ServerError) as info:
        losswatch.init(project="p", url=server.url, strict=True, spool_dir=spool_dir, **fast)
    assert info.value.status == 401 and info.value.code == "unauthorized"
    server.responder = None
    run = losswatch.init(project="p", url=server.url, strict=True, spool_dir=spool_dir, **fast)
    run.log({"a": 1.0})
    assert run.flush()
    server.responder = lambda m, p, b: (500, {}, {"error": {"code": "internal", "message": "db down"}})
    run.log({"a": 2.0})
    with pytest.raises(ServerError, match="db down"):
        run.flush(timeout=5)
        run.log({"a": 3.0})
    server.responder = None
    run.finish()
    assert server.series(run.id, "a") == {0: 1.0, 1: 2.0}  # the spooled batch went out at finish


def test_unwritable_spool_dir_warns_and_keeps_training(tmp_path, fast) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(LosswatchWarning) as record:
        run = losswatch.init(
            project="p",
            url=f"http://127.0.0.1:{free_port()}",
            spool_dir=blocker / "spool",
            max_buffer_bytes=2000,
            **fast,
        )
        for step in range(2000):
            run.log({"a": float(step)})
        run.flush(timeout=2)
        run.finish()
    kinds = sorted(str(w.message).split(" ")[1] for w in record)
    assert any("cannot write the spool file" in str(w.message) for w in record)
    assert any("dropped" in str(w.message) for w in record)
    assert len(record) == len(set(kinds))  # each problem once
    assert run._sender._outbox_bytes <= 2000 + 1000


def test_custom_transport_is_used(spool_dir, fast) -> None:
    calls = []

    class Recording:
        def request(self, method: str, path: str, body: bytes | None = None):
            calls.append((method, path, json.loads(body) if body else None))
            return 200, {}, b'{"accepted": 1, "alerts": []}'

        def close(self) -> None:
            calls.append(("close", "", None))

    run = losswatch.init(project="p", transport=Recording(), spool_dir=spool_dir, **fast)
    run.log({"a": 1.5})
    run.finish()
    assert [c[0] + " " + c[1].split("/")[-1] for c in calls] == [
        "POST runs",
        "POST points",
        "POST finish",
        "close ",
    ]
    assert calls[1][2] == {
        "series": [
            {
                "key": "a",
                "kind": "other",
                "steps": [0],
                "values": [1.5],
                "wall_times": calls[1][2]["series"][0]["wall_times"],
            }
        ]
    }
