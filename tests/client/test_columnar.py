"""The client's binary columnar batches: sent by default over HTTP, JSON again for a server that
refuses them (415, or an older server's 422 invalid_json), bit-exact, and the stdlib codec itself."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from _server import FakeServer

import losswatch
from losswatch.client import wire
from losswatch.client.batching import _columns, _flat
from losswatch.client.errors import LosswatchWarning


def content_types(server: FakeServer) -> list[str]:
    return [h.get("Content-Type", "") for m, p, h, _ in server.requests if p.endswith("/points")]


def test_batches_go_out_columnar_and_arrive_bit_exact(server: FakeServer, spool_dir, fast) -> None:
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_BEEF))[0]
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    values = [payload_nan, math.inf, -math.inf, -0.0, 5e-324, 0.1 + 0.2]
    for step, v in enumerate(values):
        run.log({"train/loss": v, "lr": 3e-4}, step=step)
    run.finish()
    assert set(content_types(server)) == {wire.COLUMNAR_TYPE}
    bodies = [b for _, p, _, b in server.requests if p.endswith("/points")]
    cols = [c for b in bodies for c in wire.columnar_columns(b)]
    sent = [v for s, _, vals, _ in cols if s.key == "train/loss" for v in vals]
    assert [struct.pack("<d", v) for v in sent] == [struct.pack("<d", v) for v in values]  # NaN payload too
    assert {s.key: s.kind for s, *_ in cols} == {"train/loss": "loss", "lr": "lr"}
    assert all(s.has_walls for s, *_ in cols)
    got = server.series(run.id, "train/loss")
    assert sorted(got) == list(range(len(values))) and math.copysign(1, got[3]) == -1


@pytest.mark.parametrize(
    "refusal",
    [(415, {"error": {"code": "unsupported_media_type", "message": "json only"}}),
     (422, {"error": {"code": "invalid_json", "message": "the body is not valid JSON"}})],  # an older server
)
def test_a_server_that_refuses_columnar_gets_json_and_nothing_is_lost(
    server: FakeServer, spool_dir, fast, refusal: tuple[int, dict[str, Any]]
) -> None:
    def responder(method: str, path: str, body: bytes):
        if path.endswith("/points") and wire.is_columnar(body):
            return refusal[0], {}, refusal[1]
        return None

    server.responder = responder
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=20, **fast)
    for step in range(100):
        run.log({"a": float(step), "b": -float(step)}, step=step)
    run.finish()
    assert server.series(run.id, "a") == {s: float(s) for s in range(100)}
    assert server.series(run.id, "b") == {s: -float(s) for s in range(100)}
    types = content_types(server)
    assert types[0] == wire.COLUMNAR_TYPE and types.count(wire.COLUMNAR_TYPE) == 1  # refused once, then JSON
    assert set(types[1:]) == {"application/json"}
    assert run.stats["sent_points"] == 200 and run.stats.get("dropped_points", 0) == 0


def test_413_splits_a_columnar_batch_into_columnar_halves(server: FakeServer, spool_dir, fast) -> None:
    limit = 2500

    def responder(method: str, path: str, body: bytes):
        if path.endswith("/points") and len(body) > limit:
            return 413, {}, {"error": {"code": "body_too_large", "message": f"over {limit} bytes"}}
        return None

    server.responder = responder
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=400, **fast)
    for step in range(400):
        run.log({"a": step * 0.5}, step=step)
    with pytest.warns(LosswatchWarning, match="too large"):
        run.finish()
    assert server.series(run.id, "a") == {s: s * 0.5 for s in range(400)}
    accepted = [b for _, p, _, b in server.requests if p.endswith("/points") and len(b) <= limit]
    assert accepted and all(wire.is_columnar(b) for b in accepted)


def test_mixed_and_odd_values_take_the_slow_way_without_loss(server: FakeServer, spool_dir, fast) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    with pytest.warns(LosswatchWarning, match="not numbers"):
        run.log({"a": 1.0, "b": np.float32(0.5)}, step=0)
        run.log({"b": 2, "a": "oops"}, step=1)  # other key order, a bad value
        run.log({"a": 3.0, "c": True}, step=2)
        run.log({"a": 10**400}, step=3)  # an int no float64 holds
        run.log({"a": 2**70}, step=4)
        run.finish()
    assert server.series(run.id, "a") == {0: 1.0, 2: 3.0, 4: float(2**70)}
    assert server.series(run.id, "b") == {0: 0.5, 1: 2.0}
    assert server.series(run.id, "c") == {2: 1.0}


def test_columns_transposes_runs_of_calls() -> None:
    entries = [(0, {"a": 1.0, "b": 2.0}, 10.0, False), (1, {"a": 3.0, "b": 4.0}, 11.0, False),
               (2, {"b": 5.0}, 12.0, False), (2, {"m": 0.5}, 12.5, True), (3, {"a": 6.0, "b": 7.0}, 13.0, False)]
    cols = {k: (_flat(s), _flat(v), _flat(w), e) for k, (s, v, w, e) in _columns(entries).items()}
    assert cols == {"a": ([0, 1, 3], [1.0, 3.0, 6.0], [10.0, 11.0, 13.0], False),
                    "b": ([0, 1, 2, 3], [2.0, 4.0, 5.0, 7.0], [10.0, 11.0, 12.0, 13.0], False),
                    "m": ([2], [0.5], [12.5], True)}


def test_codec_round_trip_and_errors() -> None:
    doc = wire.batch([wire.series_entry("train/loss", "loss", [0, 2**63 - 1], [math.nan, -0.0], [1.0, 2.0]),
                      {"key": "k/é", "steps": [], "values": []}])
    body = wire.batch_to_columnar(doc)
    assert wire.is_columnar(body) and wire.content_type(body) == wire.COLUMNAR_TYPE
    assert len(body) % 8 == 0
    back = wire.columnar_to_batch(body)
    assert back == doc and math.copysign(1, back["series"][0]["values"][1]) == -1
    assert wire.loads_batch(body) == wire.loads_batch(wire.dumps(doc)) == doc
    assert wire.to_json(body) == wire.dumps(doc) and wire.to_json(wire.dumps(doc)) == wire.dumps(doc)
    with pytest.raises(ValueError, match="differ in length"):
        wire.encode_columnar([("a", None, [1, 2], [1.0], None)])
    with pytest.raises(ValueError, match="unknown kind"):
        wire.encode_columnar([("a", "weird", [1], [1.0], None)])
    with pytest.raises(ValueError):
        wire.encode_columnar([("a", None, [2**63], [1.0], None)])
    with pytest.raises(wire.ColumnarError) as err:
        wire.columnar_layout(body[:-8])
    assert err.value.loc == ["body", "series", 0]


def test_the_spool_keeps_columnar_batches_and_sync_delivers_them_bit_exact(spool_dir, fast) -> None:
    from losswatch.client import spool
    from losswatch.client.sync import sync_dir

    server = FakeServer(start=False)  # down while the run logs: everything goes to the spool
    try:
        values = [math.nan, -0.0, math.inf, 0.1 + 0.2]
        with pytest.warns(LosswatchWarning, match="could not reach the server"):
            run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, finish_timeout=0.5, **fast)
            for step, v in enumerate(values * 25):
                run.log({"train/loss": v}, step=step)
            run.finish()
        records = [r for r, _ in spool.read_records(spool_dir / f"{run.id}.jsonl") if r is not None]
        batches = [r for r in records if r["t"] == "points"]
        assert batches and all("columnar" in r and "body" not in r for r in batches)  # kept as sent, no JSON
        assert sum(wire.count_points(spool.points_body(r)) for r in batches) == 100
        server.start()
        report = sync_dir(spool_dir, url=server.url)
        assert report["points"] == 100 and not report["failed"]
        got = server.series(run.id, "train/loss")
        assert [struct.pack("<d", got[s]) for s in range(1, 100, 4)] == [struct.pack("<d", -0.0)] * 25
        assert all(math.isnan(got[s]) for s in range(0, 100, 4)) and got[2] == math.inf
        assert set(content_types(server)) == {wire.COLUMNAR_TYPE}
    finally:
        server.stop()
