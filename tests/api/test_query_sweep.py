"""The query path of a sweep (issue 11): many runs x series read in batched SELECTs, a 32..63-step bucket
width answered at 64 from the roll-ups; every series' buckets still match a brute-force bucketing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from losswatch.client import wire
from losswatch.server.services import query as query_service
from losswatch.server.storage import chunks
from tests.api.test_points import brute_buckets, ingest, new_run


@pytest.mark.parametrize("lo,hi,buckets,width", [
    (0, 19_999, 595, 64),      # 34 steps would decode every point; 64 reads the roll-ups (313 buckets)
    (0, 19_999, 300, 128),     # already a roll-up width before
    (5_000, 10_000, 595, 9),   # a zoom: finer than the roll-ups, raw points
    (0, 999, 2000, 1),
])
def test_bucket_width(lo: int, hi: int, buckets: int, width: int) -> None:
    got = query_service.bucket_width(lo, hi, buckets)
    assert got == width
    assert (hi // got) - (lo // got) + 1 <= buckets
    if got >= chunks.ROLLUP_STEPS:
        assert got % chunks.ROLLUP_STEPS == 0
        assert (hi // got) - (lo // got) + 1 >= buckets // 2  # at least half the buckets asked for


def _sweep(client: Any, runs: int, steps: np.ndarray) -> tuple[list[str], dict[tuple[str, str], np.ndarray]]:
    ids, values = [], {}
    for i in range(runs):
        rid = new_run(client, name=f"sweep-{i}")
        ids.append(rid)
        entries = []
        for j, key in enumerate(("train/loss", "lr", "grad_norm")):
            # Different lengths per run, so series need different chunk ranges.
            n = steps.shape[0] - 1500 * i
            v = np.sin(steps[:n] / (50.0 + 7 * i + j)) + 10 * i + j
            v[(37 * (i + 1) + j) % n] = np.nan
            values[(rid, key)] = v
            entries.append(wire.series_entry(key, wire.guess_kind(key), steps[:n].tolist(), v.tolist()))
        ingest(client, rid, entries)
    return ids, values


@pytest.mark.parametrize("buckets,start,end", [(595, 0, 10**9), (300, 0, 10**9), (400, 2_000, 4_500), (50, 3_000, 3_040)])
def test_many_series_match_brute_force(client: Any, buckets: int, start: int, end: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A small fetch budget, so that the series are spread over several SELECTs.
    monkeypatch.setattr(query_service, "FETCH_CHUNKS", 9)
    steps = np.arange(0, 6_000, dtype=np.int64)
    ids, values = _sweep(client, 3, steps)
    r = client.get("/api/v1/query", params={"run": ids, "buckets": buckets, "start": start, "end": end})
    assert r.status_code == 200, r.text
    series = r.json()["series"]
    assert [(s["run"], s["key"]) for s in series] == [(rid, k) for rid in ids for k in ("grad_norm", "lr", "train/loss")]
    for s in series:
        v = values[(s["run"], s["key"])]
        st = steps[: v.shape[0]]
        width = s["width"]
        assert len(s["step"]) <= buckets
        lo, hi = max(start, int(st[0])), min(end, int(st[-1]))
        m = (st >= lo // width * width) & (st <= hi // width * width + width - 1)
        want = brute_buckets(st[m], v[m], width)
        for field in want:
            assert s[field] == want[field], (s["run"], s["key"], field)


def test_decode_many_matches_decoding_chunk_by_chunk() -> None:
    # Dense (bitmap) and sparse (offset) steps, 32-bit wall deltas and raw 64-bit walls, mixed in one call.
    rng = np.random.default_rng(7)
    encoded, want = [], []
    for no, (n, jump) in enumerate([(1000, False), (5, False), (700, True), (1, False), (63, False), (64, True)]):
        offsets = np.sort(rng.choice(chunks.CHUNK_STEPS, n, replace=False)).astype(np.int64)
        steps = (no << chunks.CHUNK_SHIFT) + offsets
        walls = 1_700_000_000_000_000 + np.cumsum(rng.integers(1, 50_000, n))
        if jump:  # a gap past 32 bits: stored as plain int64s
            walls[n // 2:] += 2**33
        values = rng.standard_normal(n)
        values[::7] = np.nan
        e = chunks.encode(chunks.Points(steps, values, walls))
        encoded.append((no, e))
        want.append(chunks.decode(no, e.steps, e.values, e.walls))
    dense = [x for x in encoded if len(x[1].steps) == chunks.CHUNK_STEPS // 8]
    for subset in (encoded, dense, encoded[:1], encoded[1:2]):  # mixed; bitmaps only; all fast paths; sparse
        got, counts = chunks.decode_many(np.array([no for no, _ in subset]), [e.steps for _, e in subset],
                                         [e.values for _, e in subset], [e.walls for _, e in subset])
        expected = chunks.concat([want[no] for no, _ in subset])
        assert counts.tolist() == [e.count for _, e in subset]
        assert np.array_equal(got.steps, expected.steps) and np.array_equal(got.walls, expected.walls)
        assert np.array_equal(got.values, expected.values, equal_nan=True)


def _read_binary(body: bytes) -> list[dict[str, Any]]:
    """The binary answer decoded as docs/api.md describes it, into the JSON answer's shape."""
    assert body[:4] == b"LWQ1"
    size = int.from_bytes(body[4:8], "little")
    header = json.loads(body[8:8 + size])
    total = sum(s["n"] for s in header["series"])
    at = -(-(8 + size) // 8) * 8
    cols = {}
    for c in header["columns"]:
        dtype = np.dtype("<u4" if c["type"] == "u4" else "<f8")
        assert at % dtype.itemsize == 0
        cols[c["name"]] = np.frombuffer(body, dtype, total, at)
        at += dtype.itemsize * total
    assert at == len(body)
    out, start = [], 0
    for s in header["series"]:
        out.append({**{k: s[k] for k in ("run", "key", "kind", "width")},
                    **{name: col[start:start + s["n"]] for name, col in cols.items()}})
        start += s["n"]
    return out


@pytest.mark.parametrize("buckets,start,end", [(595, 0, 10**9), (400, 2_000, 4_500)])
def test_binary_answer_holds_the_json_answer(client: Any, buckets: int, start: int, end: int) -> None:
    steps = np.arange(0, 6_000, dtype=np.int64)
    ids, _ = _sweep(client, 3, steps)
    rid = new_run(client, name="inf")
    ingest(client, rid, [wire.series_entry("train/loss", "loss", [0, 1, 2, 3], [1.0, "Infinity", "NaN", "-Infinity"])])
    params = {"run": [*ids, rid], "buckets": buckets, "start": start, "end": end}
    want = client.get("/api/v1/query", params=params).json()["series"]
    r = client.get("/api/v1/query", params={**params, "format": "binary"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.losswatch.query"
    got = _read_binary(r.content)
    assert len(r.content) < len(client.get("/api/v1/query", params=params).content)
    assert [(s["run"], s["key"], s["kind"], s["width"]) for s in got] == \
        [(s["run"], s["key"], s["kind"], s["width"]) for s in want]
    nonfinite_last = 0
    for g, w in zip(got, want, strict=True):
        for name in ("step", "last_step", "count", "nonfinite", "wall"):
            assert g[name].tolist() == w[name], name
        for name in ("min", "max"):  # null in JSON, NaN here
            assert [None if np.isnan(v) else v for v in g[name].tolist()] == w[name], name
        assert [wire.encode_value(v) if not np.isfinite(v) else v for v in g["last"].tolist()] == w["last"]
        nonfinite_last += int((~np.isfinite(g["last"])).sum())
    assert nonfinite_last >= (3 if start == 0 else 0)


def test_binary_format_is_asked_for_by_name(client: Any) -> None:
    rid = new_run(client, name="one")
    ingest(client, rid, [wire.series_entry("train/loss", "loss", [0, 1], [1.0, 0.5])])
    assert client.get("/api/v1/query", params={"run": rid}).headers["content-type"] == "application/json"
    r = client.get("/api/v1/query", params={"run": rid, "format": "csv"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/api/v1/query", params={"run": "nope", "format": "binary"})
    assert r.status_code == 404 and "error" in r.json()
