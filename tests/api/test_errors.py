"""The error envelope, pinned: every failure under /api answers {"error": {code, message, details}}
with the exact status, and bad input never gets a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import make_client


def envelope(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def run_id(client: Any) -> str:
    return str(client.post("/api/v1/projects/p/runs", json={}).json()["id"])


def post_points(client: Any, run_id: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/api/v1/runs/{run_id}/points", content=data, headers={"content-type": "application/json"})


BAD_BATCHES = [
    (b"{not json", "invalid_json", "not valid JSON", None),
    ([], "invalid_points", "body must be an object", ["body", "series"]),
    ({"series": "x"}, "invalid_points", "body must be an object", ["body", "series"]),
    ({"series": [], "extra": 1}, "invalid_points", "unknown field", ["body", "extra"]),
    ({"series": [{"key": "a", "steps": [1], "values": [1], "colour": 1}]}, "invalid_points", "unknown field",
     ["body", "series", 0, "colour"]),
    ({"series": [{"steps": [1], "values": [1]}]}, "invalid_points", "non-empty string", ["body", "series", 0, "key"]),
    ({"series": [{"key": "", "steps": [1], "values": [1]}]}, "invalid_points", "non-empty", ["body", "series", 0, "key"]),
    ({"series": [{"key": "k" * 251, "steps": [1], "values": [1]}]}, "invalid_points", "at most 250",
     ["body", "series", 0, "key"]),
    ({"series": [{"key": "a\nb", "steps": [1], "values": [1]}]}, "invalid_points", "control characters",
     ["body", "series", 0, "key"]),
    ({"series": [{"key": "a", "kind": "lossy", "steps": [1], "values": [1]}]}, "invalid_points", "kind must be",
     ["body", "series", 0, "kind"]),
    ({"series": [{"key": "a", "values": [1]}]}, "invalid_points", "field required", ["body", "series", 0, "steps"]),
    ({"series": [{"key": "a", "steps": [1, 2.5], "values": [1, 2]}]}, "invalid_points", "integer",
     ["body", "series", 0, "steps", 1]),
    ({"series": [{"key": "a", "steps": [True], "values": [1]}]}, "invalid_points", "integer",
     ["body", "series", 0, "steps", 0]),
    ({"series": [{"key": "a", "steps": [-1], "values": [1]}]}, "invalid_points", ">= 0",
     ["body", "series", 0, "steps", 0]),
    ({"series": [{"key": "a", "steps": [2**63], "values": [1]}]}, "invalid_points", "2^63-1",
     ["body", "series", 0, "steps", 0]),
    ({"series": [{"key": "a", "steps": [1, 2], "values": [1]}]}, "invalid_points", "values has 1 items but steps has 2",
     ["body", "series", 0, "values"]),
    ({"series": [{"key": "a", "steps": [1], "values": ["nan"]}]}, "invalid_points", "'NaN', 'Infinity'",
     ["body", "series", 0, "values", 0]),
    ({"series": [{"key": "a", "steps": [1], "values": [None]}]}, "invalid_points", "a value must be a number",
     ["body", "series", 0, "values", 0]),
    ({"series": [{"key": "a", "steps": [1], "values": [False]}]}, "invalid_points", "a value must be a number",
     ["body", "series", 0, "values", 0]),
    ({"series": [{"key": "a", "steps": [1], "values": [[1]]}]}, "invalid_points", "a value must be a number",
     ["body", "series", 0, "values", 0]),
    ({"series": [{"key": "a", "steps": [1], "values": [10**400]}]}, "invalid_points", "float64",
     ["body", "series", 0, "values", 0]),
    ({"series": [{"key": "a", "steps": [1], "values": [1], "wall_times": [1, 2]}]}, "invalid_points",
     "wall_times has 2 items", ["body", "series", 0, "wall_times"]),
    ({"series": [{"key": "a", "steps": [1], "values": [1], "wall_times": [1.7e12]}]}, "invalid_points",
     "seconds since the epoch", ["body", "series", 0, "wall_times", 0]),
]


@pytest.mark.parametrize("body,code,message,loc", BAD_BATCHES)
def test_bad_batches_get_422_naming_the_field_and_store_nothing(client: Any, run_id: str, body: Any, code: str,
                                                                message: str, loc: list[Any] | None) -> None:
    err = envelope(post_points(client, run_id, body), 422, code)
    assert message in err["message"]
    if loc is not None:
        assert err["details"][0]["loc"] == loc
    assert client.get(f"/api/v1/runs/{run_id}").json()["summary"] == {}


def test_a_bad_series_rejects_the_whole_batch(client: Any, run_id: str) -> None:
    body = {"series": [{"key": "good", "steps": [1], "values": [1.0]}, {"key": "bad", "steps": [1], "values": ["x"]}]}
    envelope(post_points(client, run_id, body), 422, "invalid_points")
    assert client.get(f"/api/v1/runs/{run_id}/series").json()["series"] == []


def test_deeply_nested_json_is_a_clear_422(client: Any, run_id: str) -> None:
    deep = b'{"series": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    envelope(post_points(client, run_id, deep), 422, "invalid_json")


def test_unknown_run_and_series_are_404(client: Any, run_id: str) -> None:
    envelope(client.get("/api/v1/runs/nope"), 404, "run_not_found")
    envelope(post_points(client, "nope", {"series": []}), 404, "run_not_found")
    envelope(client.get("/api/v1/runs/nope/points", params={"key": "x"}), 404, "run_not_found")
    envelope(client.get(f"/api/v1/runs/{run_id}/points", params={"key": "x"}), 404, "series_not_found")
    envelope(client.get(f"/api/v1/runs/{run_id}/export.csv", params={"key": "x"}), 404, "series_not_found")
    envelope(client.get("/api/v1/query", params={"run": "nope"}), 404, "run_not_found")
    envelope(client.get("/api/v1/projects/nope"), 404, "project_not_found")
    envelope(client.get("/api/v1/projects/nope/runs"), 404, "project_not_found")
    envelope(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_validation_errors_use_the_envelope(client: Any, run_id: str) -> None:
    err = envelope(client.post("/api/v1/projects/p/runs", json={"tags": "x"}), 422, "invalid_request")
    assert err["details"][0]["loc"] == ["body", "tags"]
    err = envelope(client.post("/api/v1/projects/p/runs", json={"id": "has space"}), 422, "invalid_request")
    assert err["details"][0]["loc"] == ["body", "id"]
    err = envelope(client.get("/api/v1/query", params={"run": run_id, "buckets": 0}), 422, "invalid_request")
    assert err["details"][0]["loc"] == ["query", "buckets"]
    err = envelope(client.get("/api/v1/query", params={"run": run_id, "start": -1}), 422, "invalid_request")
    envelope(client.get("/api/v1/query", params={"run": run_id, "start": 5, "end": 1}), 422, "invalid_query")
    envelope(client.get("/api/v1/projects/p/runs", params={"sort": "bogus"}), 422, "invalid_sort")
    envelope(client.post(f"/api/v1/runs/{run_id}/finish", json={"status": "running"}), 422, "invalid_request")
    envelope(client.patch(f"/api/v1/runs/{run_id}", json={"nope": 1}), 422, "invalid_request")
    envelope(client.post("/api/v1/projects/bad name!/runs", json={}), 422, "invalid_project_name")
    envelope(client.delete("/api/v1/projects"), 405, "method_not_allowed")


def test_oversize_body_is_413_with_and_without_content_length(sqlite_url: str) -> None:
    with make_client(sqlite_url, max_body_bytes=4096) as c:
        rid = c.post("/api/v1/projects/p/runs", json={}).json()["id"]
        big = json.dumps({"series": [{"key": "a", "steps": list(range(2000)), "values": [1.0] * 2000}]}).encode()
        err = envelope(c.post(f"/api/v1/runs/{rid}/points", content=big,
                              headers={"content-type": "application/json"}), 413, "body_too_large")
        assert "4096" in err["message"]

        def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        envelope(c.post(f"/api/v1/runs/{rid}/points", content=chunks(),
                        headers={"content-type": "application/json"}), 413, "body_too_large")
        assert c.get(f"/api/v1/runs/{rid}/series").json()["series"] == []
