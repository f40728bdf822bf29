"""The binary columnar ingest body beside JSON: the same storage from both encodings (a property
test on the real app), bit-exact values, content-type negotiation, and 4xx for every broken frame."""

from __future__ import annotations

import math
import struct
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from losswatch.client import wire
from losswatch.server.services import points as points_service
from losswatch.server.storage import chunks
from tests.conftest import make_client

COLUMNAR = {"content-type": wire.COLUMNAR_TYPE}


def new_run(client: Any) -> str:
    r = client.post("/api/v1/projects/p/runs", json={})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def post(client: Any, run_id: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post(f"/api/v1/runs/{run_id}/points", content=body,
                       headers=headers if headers is not None else {"content-type": wire.content_type(body)})


def stored(client: Any, run_id: str) -> dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Every series of the run as the database holds it: kind, steps, value bits, wall times (µs)."""
    db = client.app.state.db
    out = {}
    with db.read() as s:
        keys = [k for k in client.get(f"/api/v1/runs/{run_id}").json()["summary"]]
        for key in keys:
            series = points_service.get_series(s, run_id, key)
            pts = chunks.concat(list(points_service.iter_chunks(s, series.id, 0, wire.MAX_STEP)))
            out[key] = (series.kind, pts.steps, pts.values.view(np.uint64), pts.walls)
    return out


def same_storage(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        (ka, *cols_a), (kb, *cols_b) = a[key], b[key]
        if ka != kb or any(not np.array_equal(x, y) for x, y in zip(cols_a, cols_b, strict=True)):
            return False
    return True


@pytest.fixture
def app(sqlite_url: str) -> Any:
    with make_client(sqlite_url) as c:
        yield c


# NaN here is the canonical one: JSON spells every NaN "NaN", so only the binary body keeps payloads.
values_st = st.floats(allow_nan=True, allow_infinity=True, width=64).map(lambda v: math.nan if v != v else v)
series_st = st.tuples(
    st.sampled_from(["train/loss", "train/loss/box", "lr", "val/mAP50-95", "sys/gpu", "é/ü", "x"]),
    st.one_of(st.none(), st.sampled_from(wire.SERIES_KINDS)),
    st.lists(st.tuples(st.one_of(st.integers(0, 5000), st.integers(0, wire.MAX_STEP)), values_st,
                       st.floats(0, 1e11, allow_nan=False)), min_size=0, max_size=40),
    st.booleans(),
)


def entry(key: str, kind: str | None, steps: list[int], values: list[float], walls: list[float] | None) -> dict:
    e: dict[str, Any] = {"key": key}
    if kind is not None:
        e["kind"] = kind
    e["steps"], e["values"] = steps, wire.encode_values(values)
    if walls is not None:
        e["wall_times"] = walls
    return e


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(series_st, min_size=1, max_size=5))
def test_both_encodings_store_the_same_points(app: Any, batch: list[Any]) -> None:
    """A random batch (repeated keys, repeated and unsorted steps, NaN, ±Inf, -0.0, huge steps, with
    and without wall times and kinds) sent as JSON to one run and as columnar to another leaves the
    same rows: steps, value bits, wall times and kinds."""
    series = []
    for key, kind, pts, with_walls in batch:
        steps = [p[0] for p in pts]
        values = [p[1] for p in pts]
        walls = [p[2] for p in pts] if with_walls else None
        series.append((key, kind, steps, values, walls))
    doc = wire.batch(entry(*s) for s in series)
    body_json = wire.dumps(doc)
    body_bin = wire.encode_columnar(series)
    assert wire.columnar_to_batch(body_bin) == doc  # the stdlib decoder gives the JSON document back
    a, b = new_run(app), new_run(app)
    ra, rb = post(app, a, body_json), post(app, b, body_bin)
    assert (ra.status_code, rb.status_code) == (200, 200), (ra.text, rb.text)
    assert ra.json()["accepted"] == rb.json()["accepted"]
    if not any(w is None and s for _, _, s, _, w in series):  # wall times of arrival differ between two posts
        assert same_storage(stored(app, a), stored(app, b))
    else:
        sa, sb = stored(app, a), stored(app, b)
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key][0] == sb[key][0]
            assert np.array_equal(sa[key][1], sb[key][1]) and np.array_equal(sa[key][2], sb[key][2])


def test_binary_values_arrive_bit_for_bit(app: Any) -> None:
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_BEEF))[0]
    negative_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8_0000_0000_0001))[0]
    values = [payload_nan, negative_nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.1]
    rid = new_run(app)
    r = post(app, rid, wire.encode_columnar([("train/loss", "loss", range(len(values)), values, None)]))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(values)
    kind, steps, value_bits, _ = stored(app, rid)["train/loss"]
    assert kind == "loss" and steps.tolist() == list(range(len(values)))
    assert [struct.pack("<Q", int(b)) for b in value_bits] == [struct.pack("<d", v) for v in values]
    got = app.get(f"/api/v1/runs/{rid}/points", params={"key": "train/loss"}).json()["values"]
    assert got[:4] == ["NaN", "NaN", "Infinity", "-Infinity"]
    summary = app.get(f"/api/v1/runs/{rid}").json()["summary"]["train/loss"]
    assert summary["nonfinite"] == 4 and summary["count"] == len(values)


def test_content_type_negotiation(app: Any) -> None:
    rid = new_run(app)
    doc = wire.batch([wire.series_entry("a", "other", [1], [2.0])])
    assert post(app, rid, wire.dumps(doc), {"content-type": "application/json; charset=utf-8"}).status_code == 200
    assert post(app, rid, wire.dumps(doc), {}).status_code == 200  # no Content-Type: JSON, as before
    body = wire.batch_to_columnar(doc)
    assert post(app, rid, body, {"content-type": wire.COLUMNAR_TYPE + "; v=1"}).status_code == 200
    r = post(app, rid, body, {"content-type": "application/octet-stream"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = post(app, rid, body, {"content-type": "application/json"})  # binary sent as JSON: a clear 422
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
    r = post(app, rid, wire.dumps(doc), COLUMNAR)  # JSON sent as columnar
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_points"


def test_openapi_declares_both_encodings(app: Any) -> None:
    with warnings.catch_warnings():  # this test is about the ingest route, not other routers' warnings
        warnings.simplefilter("ignore")
        op = app.app.openapi()["paths"]["/api/v1/runs/{run_id}/points"]["post"]
    content = op["requestBody"]["content"]
    assert content[wire.JSON_TYPE]["schema"] == {"$ref": "#/components/schemas/IngestBatch"}
    assert content[wire.COLUMNAR_TYPE]["schema"]["format"] == "binary"
    assert "415" in op["responses"]


def _frame(*descs: tuple[int, int, int, bytes], pad: bytes | None = None) -> bytes:
    head = struct.pack("<4sI", b"LWC1", len(descs)) + b"".join(
        struct.pack("<IBBH", n, kind, flags, len(key)) + key for n, kind, flags, key in descs)
    return head + (pad if pad is not None else bytes(-len(head) % 8))


GOOD = wire.encode_columnar([("a", "loss", [1, 2], [1.0, 2.0], [1.7e9, 1.7e9 + 1])])


@pytest.mark.parametrize(
    ("body", "where", "msg"),
    [
        (b"LWC", ["body"], "starts with"),
        (b"LWC2" + GOOD[4:], ["body"], "starts with"),
        (GOOD[:-1], ["body", "series", 0], "ends inside the columns"),
        (GOOD + b"\0" * 8, ["body"], "bytes after the last column"),
        (struct.pack("<4sI", b"LWC1", 3), ["body", "series", 0], "ends inside the series descriptors"),
        (struct.pack("<4sI", b"LWC1", 10**9), ["body", "series"], "at most"),
        (_frame((0, 9, 0, b"a")), ["body", "series", 0, "kind"], "kind byte"),
        (_frame((0, 0, 6, b"a")), ["body", "series", 0, "flags"], "flag bits"),
        (_frame((0, 0, 0, b"\xff\xfe")), ["body", "series", 0, "key"], "UTF-8"),
        (_frame((0, 0, 0, b"")), ["body", "series", 0, "key"], "non-empty"),
        (_frame((0, 0, 0, b"a\nb")), ["body", "series", 0, "key"], "control"),
        (_frame((0, 0, 0, b"a"), pad=b"\1\0\0\0\0\0\0\0"[: -len(_frame((0, 0, 0, b"a"), pad=b"")) % 8]),
         ["body"], "padding"),
        (_frame((1, 0, 0, b"a")) + struct.pack("<qd", -5, 1.0), ["body", "series", 0, "steps", 0], ">= 0"),
        (_frame((1, 0, 1, b"a")) + struct.pack("<qdd", 5, 1.0, math.nan), ["body", "series", 0, "wall_times", 0],
         "wall time"),
        (_frame((1, 0, 1, b"a")) + struct.pack("<qdd", 5, 1.0, 1.7e12), ["body", "series", 0, "wall_times", 0],
         "wall time"),
    ],
)
def test_broken_frames_are_422_naming_the_place(app: Any, body: bytes, where: list[object], msg: str) -> None:
    rid = new_run(app)
    r = post(app, rid, body, COLUMNAR)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_points" and msg in err["message"]
    assert err["details"][0]["loc"] == where


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(max_size=200), count=st.integers(0, 2**32 - 1))
def test_random_frames_never_500(app: Any, tail: bytes, count: int) -> None:
    body = struct.pack("<4sI", b"LWC1", count) + tail
    r = app.post("/api/v1/runs/nosuchrun/points", content=body, headers=COLUMNAR)
    assert r.status_code in (404, 413, 422), r.text  # a missing run is 404 before the body is read
    if not hasattr(app, "fuzz_run"):
        app.fuzz_run = new_run(app)
    r = post(app, app.fuzz_run, body, COLUMNAR)
    assert r.status_code in (200, 413, 422), r.text


def test_batch_limits_apply_to_columnar_bodies(sqlite_url: str) -> None:
    with make_client(sqlite_url, max_points_per_batch=10, max_series_per_batch=2) as c:
        rid = new_run(c)
        r = post(c, rid, wire.encode_columnar([("a", None, range(11), [0.0] * 11, None)]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
        r = post(c, rid, wire.encode_columnar([(k, None, [1], [0.0], None) for k in "abc"]))
        assert r.status_code == 413 and "series" in r.json()["error"]["message"]
        assert post(c, rid, wire.encode_columnar([("a", None, range(10), [0.0] * 10, None)])).status_code == 200
