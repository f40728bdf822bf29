"""Runs: idempotent create, update, finish, and the list's filters, sorts and pages."""

from __future__ import annotations

from typing import Any

from losswatch.client import wire


def test_create_is_idempotent_on_the_clients_id(client: Any) -> None:
    body = {"id": "abc123", "name": "first", "tags": ["a", "a", "b"], "config": {"lr": 0.1}}
    r1 = client.post("/api/v1/projects/p/runs", json=body)
    r2 = client.post("/api/v1/projects/p/runs", json={**body, "name": "retry"})
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r2.json()["name"] == "first" and r1.json()["tags"] == ["a", "b"]
    r3 = client.post("/api/v1/projects/q/runs", json=body)
    assert r3.status_code == 422 and r3.json()["error"]["code"] == "run_id_taken"


def test_update_and_finish(client: Any) -> None:
    rid = client.post("/api/v1/projects/p/runs", json={"name": "n"}).json()["id"]
    r = client.patch(f"/api/v1/runs/{rid}", json={"tags": ["x"], "config": {"a": {"b": 1}}, "notes": "hi"})
    assert r.status_code == 200 and r.json()["tags"] == ["x"] and r.json()["notes"] == "hi"
    r = client.post(f"/api/v1/runs/{rid}/finish", json={"status": "failed"})
    assert r.json()["status"] == "failed" and r.json()["ended_at"] is not None
    assert client.post(f"/api/v1/runs/{rid}/heartbeat").json()["status"] == "failed"


def seed(client: Any) -> dict[str, str]:
    ids = {}
    for i, (lr, opt, tags, status) in enumerate([(0.1, "sgd", ["yolo"], "finished"), (0.01, "adam", ["yolo", "big"], "running"),
                                                  (0.001, "adam", ["big"], "failed"), (0.01, "sgd", [], "running")]):
        rid = client.post("/api/v1/projects/p/runs", json={"name": f"run-{i}", "tags": tags, "group": "g" if i < 2 else None,
                                                           "config": {"lr": lr, "optim": {"name": opt}}}).json()["id"]
        ids[f"run-{i}"] = rid
        if i != 3:  # run-3 has no metric
            maps = [0.2 + 0.1 * i, 0.5 - 0.1 * i, 0.3]
            client.post(f"/api/v1/runs/{rid}/points", json={"series": [
                wire.series_entry("val/mAP50-95", "metric", [10, 20, 30], maps)]})
        if status != "running":
            client.post(f"/api/v1/runs/{rid}/finish", json={"status": status})
    return ids


def names(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return [run["name"] for run in r.json()["runs"]]


def test_list_filters(client: Any) -> None:
    seed(client)
    get = lambda **p: names(client.get("/api/v1/projects/p/runs", params={"sort": "name", **p}))  # noqa: E731
    assert get(status="running") == ["run-1", "run-3"]
    assert get(tag="big") == ["run-1", "run-2"]
    assert get(tag=["big", "yolo"]) == ["run-1"]
    assert get(name="RUN-2") == ["run-2"]
    assert get(group="g") == ["run-0", "run-1"]
    assert get(**{"config.lr": "0.01"}) == ["run-1", "run-3"]
    assert get(**{"config.optim.name": "adam"}) == ["run-1", "run-2"]


def test_five_best_runs_by_validation_map_in_one_request(client: Any) -> None:
    seed(client)
    r = client.get("/api/v1/projects/p/runs", params={"sort": "-max:val/mAP50-95", "limit": 5})
    # max of [0.2,0.5,0.3]=0.5, [0.3,0.4,0.3]=0.4, [0.4,0.3,0.3]=0.4, run-3 has none: last
    assert names(r) == ["run-0", "run-1", "run-2", "run-3"]  # ties in creation order
    assert r.json()["runs"][0]["summary"]["val/mAP50-95"]["max"] == 0.5
    assert names(client.get("/api/v1/projects/p/runs", params={"sort": "last:val/mAP50-95"}))[-1] == "run-3"
    assert names(client.get("/api/v1/projects/p/runs", params={"sort": "-config.lr"})) == ["run-0", "run-1", "run-3", "run-2"]


def test_list_pages(client: Any) -> None:
    seed(client)
    r = client.get("/api/v1/projects/p/runs", params={"sort": "name", "limit": 3, "offset": 2})
    assert names(r) == ["run-2", "run-3"] and r.json()["total"] == 4 and r.json()["limit"] == 3


def test_tag_filter_matches_whole_tags_in_sql(client: Any) -> None:
    """The tag filter runs in SQL (JSONB containment on PostgreSQL, json_each on SQLite): whole tags
    only, never a substring, a LIKE pattern or a JSON fragment; several tags mean all of them."""
    tagsets = [["a"], ["ab"], ["a", "ab"], ["%"], ["_"], ['quo"te'], ["a b"], ["тег"], ['["a"]'], [], ["A"]]
    ids = [client.post("/api/v1/projects/p/runs", json={"name": f"run-{i:02d}", "tags": t}).json()["id"]
           for i, t in enumerate(tagsets)]
    get = lambda *tags: names(client.get("/api/v1/projects/p/runs", params={"sort": "name", "tag": list(tags)}))  # noqa: E731
    assert get("a") == ["run-00", "run-02"]
    assert get("ab") == ["run-01", "run-02"]
    assert get("a", "ab") == ["run-02"]
    assert get("ab", "a", "a") == ["run-02"]
    assert get("%") == ["run-03"] and get("_") == ["run-04"] and get('quo"te') == ["run-05"]
    assert get("a b") == ["run-06"] and get("тег") == ["run-07"] and get('["a"]') == ["run-08"]
    assert get("A") == ["run-10"] and get("b") == [] and get("") == []
    assert get("a", "missing") == []
    r = client.get("/api/v1/projects/p/runs", params={"tag": "a", "sort": "-max:val/x", "limit": 1})
    assert r.json()["total"] == 2 and [x["id"] for x in r.json()["runs"]] == [ids[0]]
    r = client.get("/api/v1/projects/p/runs", params={"tag": "a", "config.lr": "1", "limit": 5})
    assert r.status_code == 200 and r.json()["total"] == 0


def test_a_listed_run_is_exactly_the_run_read_alone(client: Any) -> None:
    """The list builds its answer from plain columns, not from RunRead models: every run in it is
    the same JSON, key for key and in the same key order, as GET /runs/{id} (NaN/Inf, times, nesting)."""
    ids = seed(client)
    rid = ids["run-3"]
    client.post(f"/api/v1/runs/{rid}/points", json={"series": [
        wire.series_entry("train/loss", "loss", [0, 1, 2], [1.5, float("inf"), float("nan")]),
        wire.series_entry("lr", "lr", [5], [float("-inf")], wall_times=[1_700_000_000.25])]})
    client.patch(f"/api/v1/runs/{rid}", json={"notes": "n", "config": {"a": {"b": [1, 2.5, None, "x"]}, "t": True}})
    listed = client.get("/api/v1/projects/p/runs", params={"limit": 1000}).json()["runs"]
    assert len(listed) == 4
    for run in listed:
        alone = client.get(f"/api/v1/runs/{run['id']}").json()
        assert run == alone and list(run) == list(alone)
        for key, summary in run["summary"].items():
            assert list(summary) == list(alone["summary"][key])
    three = next(r for r in listed if r["id"] == rid)
    assert three["summary"]["train/loss"]["last"] == "NaN" and three["summary"]["lr"]["last"] == "-Infinity"
    assert three["summary"]["lr"]["last_wall"] == 1_700_000_000.25
    assert three["created_at"].endswith("Z") and three["config"]["a"]["b"] == [1, 2.5, None, "x"]
    assert [r["name"] for r in listed] == ["run-3", "run-2", "run-1", "run-0"]  # newest first


def test_a_config_integer_past_64_bits_is_listed_exactly(client: Any) -> None:
    """orjson writes no integer past 64 bits; the list must not answer 500 for such a config (found by
    schemathesis), and must give the same exact integer as GET /runs/{id}."""
    big, small = 2**70, -(2**80)
    rid = client.post("/api/v1/projects/p/runs", json={"name": "big", "config": {"big": big, "n": {"small": small}}}).json()["id"]
    r = client.get("/api/v1/projects/p/runs")
    assert r.status_code == 200, r.text
    listed = next(run for run in r.json()["runs"] if run["id"] == rid)
    assert listed["config"] == {"big": big, "n": {"small": small}}
    assert listed == client.get(f"/api/v1/runs/{rid}").json()


def test_a_page_holds_up_to_ten_thousand_runs(client: Any) -> None:
    """losswatch.Api lists 10,000 runs a request (one sort of the project per page): the route takes
    that page size and refuses a larger one with a clear 422."""
    seed(client)
    r = client.get("/api/v1/projects/p/runs", params={"limit": 10_000})
    assert r.status_code == 200 and r.json()["limit"] == 10_000 and len(r.json()["runs"]) == 4
    r = client.get("/api/v1/projects/p/runs", params={"limit": 10_001})
    assert r.status_code == 422 and "limit" in r.text
