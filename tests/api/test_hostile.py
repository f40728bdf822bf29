"""Hostile input: each case is a clear 4xx in the error envelope, or an exact round trip.

(tests/api/test_errors.py pins the envelope and the bad ingest batches; these are the rest:
huge bodies on every kind of route, deep nesting, 100k-character names, Unicode and control
characters, NUL, extreme steps, every NaN/Inf spelling.) Both backends: PostgreSQL refuses NUL in
text and non-finite numbers in JSON, where SQLite takes them silently.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.api.test_errors import envelope
from tests.conftest import make_client

BIG = 100_000
UNICODE = ["loss/ünïcødé", "🔥/loss", "λ·ε", "עברית", "e\u0301", "\u200b zero-width", "tab\tin\tname", "bell\x07"]


def raw(client: Any, method: str, path: str, body: bytes) -> Any:
    return client.request(method, path, content=body, headers={"content-type": "application/json"})


@pytest.fixture
def run_id(client: Any) -> str:
    return str(client.post("/api/v1/projects/p/runs", json={}).json()["id"])


def points_of(client: Any, run_id: str, key: str) -> dict[str, Any]:
    r = client.get(f"/api/v1/runs/{run_id}/points", params={"key": key})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- huge bodies -------------------------------------------------------------------------------


def test_bodies_above_the_default_limit_are_413_on_every_kind_of_route(sqlite_url: str) -> None:
    with make_client(sqlite_url) as c:
        rid = c.post("/api/v1/projects/p/runs", json={}).json()["id"]
        huge = b'{"config": {"x": "' + b"a" * (16 * 1024 * 1024 + 10) + b'"}}'
        for method, path in [("POST", "/api/v1/projects/p/runs"), ("PATCH", f"/api/v1/runs/{rid}"),
                             ("POST", f"/api/v1/runs/{rid}/points"), ("PUT", "/api/v1/projects/p/alert-config"),
                             ("POST", "/api/2.0/mlflow/runs/log-batch"), ("POST", "/login")]:
            envelope(raw(c, method, path, huge), 413, "body_too_large")
        assert c.get(f"/api/v1/runs/{rid}").json()["config"] == {}


# --- deep nesting ------------------------------------------------------------------------------

JSON_ROUTES = [("POST", "/api/v1/projects/p/runs", "config"), ("PATCH", "/api/v1/runs/{rid}", "config"),
               ("PUT", "/api/v1/projects/p/alert-config", "x"), ("PUT", "/api/v1/runs/{rid}/alert-config", "x"),
               ("POST", "/api/v1/projects/p/channels", 'name": "c", "kind": "webhook", "config')]


@pytest.mark.parametrize("method,path,field", JSON_ROUTES)
def test_deep_nesting_is_a_clear_422(client: Any, run_id: str, method: str, path: str, field: str) -> None:
    path = path.format(rid=run_id)
    too_deep = b'{"' + field.encode() + b'": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = envelope(raw(client, method, path, too_deep), 422, "invalid_json")
    assert err["details"][0]["loc"] == ["body"]
    # valid JSON, but deeper than the server keeps (it could not write it back)
    deep = b'{"' + field.encode() + b'": ' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}"
    err = envelope(raw(client, method, path, deep), 422, "invalid_request")
    assert "nested deeper than 64" in err["message"]


def test_nesting_within_the_limit_round_trips(client: Any) -> None:
    config: Any = 1
    for i in range(40):  # 40 objects and 20 lists: 60 levels
        config = {f"k{i}": [config]} if i % 2 else {f"k{i}": config}
    r = client.post("/api/v1/projects/p/runs", json={"config": config})
    assert r.status_code == 201, r.text
    assert client.get(f"/api/v1/runs/{r.json()['id']}").json()["config"] == config


def test_deep_nesting_on_mlflow_routes_is_a_400_in_mlflow_shape(client: Any, run_id: str) -> None:
    r = raw(client, "POST", "/api/2.0/mlflow/runs/log-batch",
            b'{"run_id": "' + run_id.encode() + b'", "params": ' + b"[" * 300 + b"]" * 300 + b"}")
    assert r.status_code in (400, 422) and ("error_code" in r.json() or "error" in r.json()), r.text


# --- 100k-character names ----------------------------------------------------------------------


def test_100k_character_names_are_refused_where_names_are_bounded(client: Any, run_id: str) -> None:
    long = "n" * BIG
    for body, loc in [({"name": long}, ["body", "name"]), ({"tags": [long]}, ["body", "tags", 0]),
                      ({"group": long}, ["body", "group"]), ({"host": long}, ["body", "host"]),
                      ({"id": long}, ["body", "id"])]:
        err = envelope(client.post("/api/v1/projects/p/runs", json=body), 422, "invalid_request")
        assert err["details"][0]["loc"] == loc
    envelope(client.patch(f"/api/v1/runs/{run_id}", json={"name": long}), 422, "invalid_request")
    url_long = "n" * 8000  # httpx refuses URLs above 64 KiB; servers commonly stop at 8 KiB anyway
    envelope(client.post(f"/api/v1/projects/{url_long}/runs", json={}), 422, "invalid_project_name")
    envelope(client.get(f"/api/v1/projects/{url_long}"), 404, "project_not_found")
    envelope(client.get(f"/api/v1/runs/{url_long}"), 404, "run_not_found")
    err = envelope(client.post(f"/api/v1/runs/{run_id}/points",
                               json={"series": [{"key": long, "steps": [1], "values": [1.0]}]}), 422, "invalid_points")
    assert err["details"][0]["loc"] == ["body", "series", 0, "key"]
    envelope(client.get(f"/api/v1/runs/{run_id}/points", params={"key": url_long}), 422, "invalid_request")
    envelope(client.post("/api/v1/projects/p/tokens", json={"name": long}), 422, "invalid_request")
    envelope(client.post("/api/v1/projects/p/channels", json={"name": long, "kind": "email",
                                                              "config": {"to": ["a@b.c"]}}), 422, "invalid_request")
    envelope(client.get("/api/v1/projects/p/runs", params={"sort": url_long}), 422, "invalid_request")
    r = client.post("/api/2.0/mlflow/experiments/create", json={"name": long})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert client.get("/api/v1/projects/p/runs").json()["total"] == 1  # nothing was made


def test_100k_character_config_keys_and_values_round_trip(client: Any) -> None:
    config = {"k" * BIG: "v" * BIG, "nested": {"x" * BIG: [1, 2.5, None, True]}}
    r = client.post("/api/v1/projects/p/runs", json={"config": config, "notes": "z" * BIG})
    assert r.status_code == 201, r.text
    got = client.get(f"/api/v1/runs/{r.json()['id']}").json()
    assert got["config"] == config and got["notes"] == "z" * BIG


# --- Unicode, control characters, NUL ----------------------------------------------------------


def test_unicode_everywhere_round_trips_exactly(client: Any) -> None:
    config = {u: u for u in UNICODE}
    tags = [u for u in UNICODE if not any(ord(ch) < 32 for ch in u)]  # names refuse control characters (issue 12)
    r = client.post("/api/v1/projects/p/runs", json={"name": "🔥 run ü", "tags": tags, "config": config,
                                                     "group": "λ", "notes": "\u2028\u2029"})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    keys = [u for u in UNICODE if not any(ord(ch) < 32 for ch in u)]
    body = {"series": [{"key": k, "steps": [i], "values": [float(i)]} for i, k in enumerate(keys)]}
    assert client.post(f"/api/v1/runs/{rid}/points", json=body).status_code == 200
    run = client.get(f"/api/v1/runs/{rid}").json()
    assert run["name"] == "🔥 run ü" and run["tags"] == tags and run["config"] == config
    assert run["notes"] == "\u2028\u2029" and sorted(run["summary"]) == sorted(keys)
    for i, k in enumerate(keys):
        assert points_of(client, rid, k)["values"] == [float(i)]
    csv = client.get(f"/api/v1/runs/{rid}/export.csv", params={"key": keys}).content.decode()
    assert all(k in csv for k in keys)
    page = client.get("/api/v1/projects/p/runs", params={"tag": "🔥/loss", "name": "🔥"}).json()
    assert [x["id"] for x in page["runs"]] == [rid]


@pytest.mark.parametrize("bad", ["a\x00b", "\x00"])
def test_nul_is_refused_in_every_stored_string(client: Any, run_id: str, bad: str) -> None:
    for body, loc in [({"name": bad}, ["body", "name"]), ({"tags": [bad]}, ["body", "tags", 0]),
                      ({"config": {bad: 1}}, ["body", "config"]), ({"config": {"k": [bad]}}, ["body", "config"]),
                      ({"notes": bad}, ["body", "notes"]), ({"client": {"x": bad}}, ["body", "client"])]:
        err = envelope(client.post("/api/v1/projects/p/runs", json=body), 422, "invalid_request")
        assert err["details"][0]["loc"] == loc and "NUL" in err["message"]
        if "client" not in body:  # not a field of a run update
            envelope(client.patch(f"/api/v1/runs/{run_id}", json=body), 422, "invalid_request")
    envelope(client.put("/api/v1/projects/p/alert-config", json={"silenced": [bad]}), 422, "invalid_request")
    envelope(client.post("/api/v1/projects/p/tokens", json={"name": bad}), 422, "invalid_request")
    envelope(client.post(f"/api/v1/runs/{run_id}/points", json={"series": [{"key": bad, "steps": [1], "values": [1]}]}),
             422, "invalid_points")
    r = client.post("/api/2.0/mlflow/runs/log-parameter", json={"run_id": run_id, "key": bad, "value": "v"})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert client.get(f"/api/v1/runs/{run_id}").json()["config"] == {}


@pytest.mark.parametrize("path,params", [
    ("/api/v1/projects/p/runs", {"name": "a\x00"}), ("/api/v1/projects/p/runs", {"config.a\x00": "1"}),
    ("/api/v1/projects/p/runs", {"tag": "\x00"}), ("/api/v1/projects/p/alerts", {"run": "a\x00"}),
    ("/api/v1/query", {"run": "x", "key": "a\x00"}), ("/api/v1/projects/a%00b", {}), ("/api/v1/runs/a%00b", {}),
    ("/api/2.0/mlflow/runs/get", {"run_id": "a\x00"}),
])
def test_nul_in_the_url_is_a_422(client: Any, path: str, params: dict[str, str]) -> None:
    err = envelope(client.get(path, params=params), 422, "invalid_request")
    assert "NUL" in err["message"]


def test_lone_surrogates_are_refused(client: Any, run_id: str) -> None:
    for body in (b'{"name": "\\ud800"}', b'{"config": {"\\udfff": 1}}', b'{"tags": ["a\\ud83d"]}'):
        envelope(raw(client, "POST", "/api/v1/projects/p/runs", body), 422, "invalid_request")


def test_lone_surrogates_in_series_keys_are_refused(client: Any, run_id: str) -> None:
    r = raw(client, "POST", f"/api/v1/runs/{run_id}/points", b'{"series": [{"key": "\\ud800", "steps": [1], "values": [1]}]}')
    envelope(r, 422, "invalid_points")


def test_control_characters_in_series_keys_are_refused(client: Any, run_id: str) -> None:
    for key in ("a\nb", "a\rb", "\x1b[31mred", "a\x7f", "tab\there"):
        r = client.post(f"/api/v1/runs/{run_id}/points", json={"series": [{"key": key, "steps": [1], "values": [1]}]})
        envelope(r, 422, "invalid_points")


# --- steps -------------------------------------------------------------------------------------


def test_extreme_steps(client: Any, run_id: str) -> None:
    top = 2**63 - 1
    r = client.post(f"/api/v1/runs/{run_id}/points", json={"series": [{"key": "s", "steps": [0, top], "values": [1, 2]}]})
    assert r.status_code == 200, r.text
    got = points_of(client, run_id, "s")
    assert got["steps"] == [0, top] and got["values"] == [1.0, 2.0]
    q = client.get("/api/v1/query", params={"run": run_id, "key": "s", "start": 0, "end": top}).json()
    assert q["series"][0]["count"] and sum(q["series"][0]["count"]) == 2
    for params in ({"start": -1}, {"end": 2**63}, {"start": 2**63}, {"end": -5}, {"start": "1e3"}, {"start": 1.5}):
        err = envelope(client.get(f"/api/v1/runs/{run_id}/points", params={"key": "s", **params}), 422, "invalid_request")
        assert err["details"][0]["loc"][0] == "query"
        envelope(client.get("/api/v1/query", params={"run": run_id, **params}), 422, "invalid_request")
    for step in (-1, 2**63, 2**64, -(2**63) - 1):
        r = client.post("/api/2.0/mlflow/runs/log-metric",
                        json={"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 0, "step": step})
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text
    assert "m" not in client.get(f"/api/v1/runs/{run_id}").json()["summary"]


def test_mismatched_and_empty_arrays(client: Any, run_id: str) -> None:
    for series in ({"key": "a", "steps": [1, 2], "values": []}, {"key": "a", "steps": [], "values": [1.0]},
                   {"key": "a", "steps": [1], "values": [1.0], "wall_times": []}):
        envelope(client.post(f"/api/v1/runs/{run_id}/points", json={"series": [series]}), 422, "invalid_points")
    r = client.post(f"/api/v1/runs/{run_id}/points", json={"series": [{"key": "a", "steps": [], "values": []}]})
    assert r.status_code == 200 and r.json()["accepted"] == 0
    # the same step twice in one batch: the later one wins, as with a re-sent batch
    r = client.post(f"/api/v1/runs/{run_id}/points", json={"series": [{"key": "d", "steps": [3, 1, 3], "values": [1, 2, 9]}]})
    assert r.status_code == 200, r.text
    got = points_of(client, run_id, "d")
    assert got["steps"] == [1, 3] and got["values"] == [2.0, 9.0]


# --- NaN and Inf, every spelling ---------------------------------------------------------------

ROUND_TRIP = [  # (JSON text of the value, what it is)
    (b'"NaN"', math.nan), (b'"Infinity"', math.inf), (b'"-Infinity"', -math.inf),
    (b"NaN", math.nan), (b"Infinity", math.inf), (b"-Infinity", -math.inf),  # bare tokens (Python's json writes them)
    (b"1e999", math.inf), (b"-1e999", -math.inf), (b"-0.0", -0.0), (b"5e-324", 5e-324),
    (b"1.7976931348623157e308", 1.7976931348623157e308),
]
REFUSED = [b'"inf"', b'"-inf"', b'"Inf"', b'"+Infinity"', b'"infinity"', b'"NAN"', b'"1e999"', b'"1.5"',
           b'"-nan"', b"nan", b"inf", b"-inf", b"+Infinity", b"Infinity1", b"0x10", b"1e", b"--1"]


@pytest.mark.parametrize("text,value", ROUND_TRIP, ids=[t.decode() for t, _ in ROUND_TRIP])
def test_non_finite_spellings_that_round_trip_exactly(client: Any, run_id: str, text: bytes, value: float) -> None:
    body = b'{"series": [{"key": "v", "steps": [7], "values": [' + text + b"]}]}"
    r = raw(client, "POST", f"/api/v1/runs/{run_id}/points", body)
    assert r.status_code == 200, r.text
    got = points_of(client, run_id, "v")["values"][0]
    expected = {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, value)
    if isinstance(value, float) and math.isnan(value):
        assert got == "NaN"
    else:
        assert got == expected
        if value == 0:
            assert math.copysign(1, got) == math.copysign(1, value)  # -0.0 keeps its sign
    summary = client.get(f"/api/v1/runs/{run_id}").json()["summary"]["v"]
    assert summary["nonfinite"] == (0 if math.isfinite(value) else 1)
    csv = client.get(f"/api/v1/runs/{run_id}/export.csv", params={"key": "v"}).text.splitlines()[1]
    spelled = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}.get(got) if isinstance(got, str) else None
    assert csv.split(",")[2] == (spelled or repr(float(got)))


@pytest.mark.parametrize("text", REFUSED, ids=[t.decode() for t in REFUSED])
def test_non_finite_spellings_that_are_refused(client: Any, run_id: str, text: bytes) -> None:
    body = b'{"series": [{"key": "v", "steps": [7], "values": [' + text + b"]}]}"
    r = raw(client, "POST", f"/api/v1/runs/{run_id}/points", body)
    assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_points", "invalid_json"), r.text
    assert client.get(f"/api/v1/runs/{run_id}").json()["summary"] == {}


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_in_config_are_refused_not_changed(client: Any, run_id: str, text: bytes) -> None:
    """JSON columns cannot hold them (PostgreSQL refuses, SQLite would turn them into null): 422,
    naming the spelling to use instead."""
    err = envelope(raw(client, "POST", "/api/v1/projects/p/runs", b'{"config": {"lr": ' + text + b"}}"),
                   422, "invalid_request")
    assert "'NaN'" in err["message"]
    envelope(raw(client, "PATCH", f"/api/v1/runs/{run_id}", b'{"config": {"lr": ' + text + b"}}"), 422, "invalid_request")
    r = client.post("/api/v1/projects/p/runs", json={"config": {"lr": "NaN", "wd": "-Infinity"}})
    assert r.status_code == 201 and r.json()["config"] == {"lr": "NaN", "wd": "-Infinity"}


def test_mlflow_nan_metrics_still_arrive(client: Any, run_id: str) -> None:
    body = json.dumps({"run_id": run_id, "metrics": [
        {"key": "m", "value": float("nan"), "timestamp": 1, "step": 0},
        {"key": "m", "value": float("inf"), "timestamp": 1, "step": 1}]}).encode()  # bare NaN, as MLflow sends
    r = raw(client, "POST", "/api/2.0/mlflow/runs/log-batch", body)
    assert r.status_code == 200, r.text
    assert points_of(client, run_id, "m")["values"] == ["NaN", "Infinity"]
