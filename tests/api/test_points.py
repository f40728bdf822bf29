"""Ingest, overwrite, exact round-trip and downsampling, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import math
import random
import struct
from typing import Any

import numpy as np
import pytest

from losswatch.client import wire


def new_run(client: Any, project: str = "p", **body: Any) -> str:
    r = client.post(f"/api/v1/projects/{project}/runs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def ingest(client: Any, run_id: str, series: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post(f"/api/v1/runs/{run_id}/points", json={"series": series})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def raw(client: Any, run_id: str, key: str, **params: Any) -> dict[str, Any]:
    r = client.get(f"/api/v1/runs/{run_id}/points", params={"key": key, **params})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


SPECIAL = [0.0, -0.0, 1e-310, 5e-324, 1.7976931348623157e308, -2.5, 0.1, 1 / 3, math.pi, 123456789.123456789]


def test_values_round_trip_bit_for_bit(client: Any) -> None:
    rid = new_run(client)
    values = SPECIAL + [math.nan, math.inf, -math.inf]
    ingest(client, rid, [wire.series_entry("train/loss", "loss", list(range(len(values))), values)])
    got = raw(client, rid, "train/loss")
    assert got["steps"] == list(range(len(values)))
    back = [wire.decode_value(v) for v in got["values"]]
    assert [bits(v) for v in back[:-3]] == [bits(v) for v in values[:-3]]
    assert got["values"][-3:] == ["NaN", "Infinity", "-Infinity"]
    summary = client.get(f"/api/v1/runs/{rid}").json()["summary"]["train/loss"]
    assert summary["nonfinite"] == 3 and summary["count"] == len(values)
    assert summary["last"] == "-Infinity" and summary["last_step"] == len(values) - 1
    assert summary["max"] == 1.7976931348623157e308 and summary["min"] == -2.5


def test_python_json_nan_tokens_are_accepted(client: Any) -> None:
    rid = new_run(client)
    body = b'{"series": [{"key": "l", "steps": [1, 2, 3], "values": [NaN, Infinity, -Infinity]}]}'
    r = client.post(f"/api/v1/runs/{rid}/points", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert raw(client, rid, "l")["values"] == ["NaN", "Infinity", "-Infinity"]


def test_rewriting_a_step_overwrites_and_never_duplicates(client: Any) -> None:
    rid = new_run(client)
    steps = list(range(0, 3000))
    ingest(client, rid, [wire.series_entry("loss", "loss", steps, [float(s) for s in steps])])
    ingest(client, rid, [wire.series_entry("loss", "loss", steps, [float(s) for s in steps])])  # a retry
    ingest(client, rid, [wire.series_entry("loss", "loss", [5, 2999, 1500], [-1.0, math.nan, 1e9])])
    got = raw(client, rid, "loss", limit=100_000)
    assert got["steps"] == steps
    assert got["values"][5] == -1.0 and got["values"][2999] == "NaN" and got["values"][1500] == 1e9
    s = client.get(f"/api/v1/runs/{rid}/series").json()["series"][0]
    assert (s["count"], s["nonfinite"], s["min"], s["max"]) == (3000, 1, -1.0, 1e9)


def test_same_step_twice_in_one_batch_keeps_the_last(client: Any) -> None:
    rid = new_run(client)
    ingest(client, rid, [wire.series_entry("x", "other", [3, 1, 3], [1.0, 2.0, 3.0])])
    got = raw(client, rid, "x")
    assert got["steps"] == [1, 3] and got["values"] == [2.0, 3.0]


def test_raw_paging_walks_every_point_once(client: Any) -> None:
    rid = new_run(client)
    steps = sorted(random.Random(1).sample(range(0, 50_000), 7000))
    ingest(client, rid, [wire.series_entry("m", "metric", steps, [s / 7 for s in steps])])
    seen: list[int] = []
    start = 0
    while True:
        page = raw(client, rid, "m", start=start, limit=999)
        seen += page["steps"]
        if page["next_start"] is None:
            break
        start = page["next_start"]
    assert seen == steps


def brute_buckets(steps: np.ndarray, values: np.ndarray, width: int) -> dict[str, list[Any]]:
    b = steps // width
    out: dict[str, list[Any]] = {k: [] for k in ("step", "last_step", "min", "max", "last", "count", "nonfinite")}
    for bid in np.unique(b):
        m = b == bid
        v, s = values[m], steps[m]
        fin = v[np.isfinite(v)]
        out["step"].append(int(s[0]))
        out["last_step"].append(int(s[-1]))
        out["min"].append(float(fin.min()) if fin.size else None)
        out["max"].append(float(fin.max()) if fin.size else None)
        out["last"].append(wire.encode_value(float(v[-1])))
        out["count"].append(int(m.sum()))
        out["nonfinite"].append(int((~np.isfinite(v)).sum()))
    return out


@pytest.mark.parametrize("buckets,start,end", [(100, 0, 10**9), (7, 0, 10**9), (500, 1000, 9000), (5000, 0, 10**9),
                                                (50, 2000, 2300), (3, 17, 19)])
def test_downsampling_matches_brute_force(client: Any, buckets: int, start: int, end: int) -> None:
    rng = np.random.default_rng(7)
    steps = np.unique(rng.integers(0, 20_000, 12_000))
    values = rng.standard_normal(steps.shape[0])
    values[rng.integers(0, steps.shape[0], 20)] = np.nan
    values[rng.integers(0, steps.shape[0], 5)] = np.inf
    values[100] = 1e6  # a one-step spike
    rid = new_run(client)
    ingest(client, rid, [wire.series_entry("train/loss", "loss", steps.tolist(), values.tolist())])
    r = client.get("/api/v1/query", params={"run": rid, "key": "train/loss", "buckets": buckets, "start": start, "end": end})
    assert r.status_code == 200, r.text
    (got,) = r.json()["series"]
    width = got["width"]
    assert len(got["step"]) <= buckets
    lo, hi = max(start, int(steps[0])), min(end, int(steps[-1]))
    lo_a, hi_a = lo // width * width, hi // width * width + width - 1
    m = (steps >= lo_a) & (steps <= hi_a)
    want = brute_buckets(steps[m], values[m], width)
    for field in want:
        assert got[field] == want[field], field
    if start == 0 and end == 10**9:
        assert max(x for x in got["max"] if x is not None) == 1e6  # the spike survives any zoom
        assert sum(got["nonfinite"]) == int((~np.isfinite(values)).sum())


def test_query_many_runs_and_keys_in_one_call(client: Any) -> None:
    runs = [new_run(client, name=f"r{i}") for i in range(3)]
    for i, rid in enumerate(runs):
        ingest(client, rid, [wire.series_entry(k, wire.guess_kind(k), list(range(100)), [float(i)] * 100)
                             for k in ("train/loss", "val/mAP50-95")])
    r = client.get("/api/v1/query", params={"run": runs, "key": ["val/mAP50-95", "train/loss"], "buckets": 10})
    got = [(s["run"], s["key"], s["kind"]) for s in r.json()["series"]]
    assert got == [(rid, k, kind) for rid in runs for k, kind in (("val/mAP50-95", "metric"), ("train/loss", "loss"))]
    assert all(len(s["step"]) <= 10 and sum(s["count"]) == 100 for s in r.json()["series"])


def test_csv_export_streams_every_point_exactly(client: Any) -> None:
    rid = new_run(client)
    values = [0.1, math.nan, -math.inf, 2.5e-8]
    ingest(client, rid, [{"key": "a,b", "steps": [0, 1, 2, 3], "values": wire.encode_values(values),
                          "wall_times": [1.5, 2.5, 3.5, 4.5]}])
    r = client.get(f"/api/v1/runs/{rid}/export.csv", params={"key": "a,b"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["key", "step", "value", "wall_time"]
    assert [(k, int(s), w) for k, s, _, w in rows[1:]] == [("a,b", i, f"{i + 1.5}") for i in range(4)]
    assert [v for _, _, v, _ in rows[1:3]] == ["0.1", "NaN"] and rows[3][2] == "-Infinity"
    assert [bits(float(v)) for _, _, v, _ in rows[1:]] == [bits(float(x)) for x in values]  # exact


def test_steps_up_to_2_pow_63_minus_1(client: Any) -> None:
    rid = new_run(client)
    big = wire.MAX_STEP
    ingest(client, rid, [wire.series_entry("s", "other", [0, big - 1, big], [1.0, 2.0, 3.0])])
    assert raw(client, rid, "s")["steps"] == [0, big - 1, big]
    r = client.get("/api/v1/query", params={"run": rid, "key": "s", "buckets": 10})
    assert sum(r.json()["series"][0]["count"]) == 3
