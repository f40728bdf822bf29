"""Another project's token gets the 404 a missing resource gets, never a 403 that confirms it exists
(issue 12, item 6), on SQLite and PostgreSQL; scope errors inside the caller's own project stay 403."""

from __future__ import annotations

from typing import Any

import pytest

from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import make_client

SECRET = "secret-name-of-project-a"


@pytest.fixture
def world(db_url: str) -> Any:
    db = Database(Settings(database_url=db_url))
    with make_client(db_url, auth="on", background_workers=False) as c:
        with db.write() as s:
            tok = {(p, scope): create_token(s, p, scope, f"{p}-{scope}")[1]
                   for p in ("proj-a", "proj-b") for scope in ("read", "write", "admin")}
        db.dispose()
        h = {k: {"Authorization": f"Bearer {v}"} for k, v in tok.items()}
        run = c.post("/api/v1/projects/proj-a/runs", json={"name": SECRET}, headers=h[("proj-a", "admin")])
        assert run.status_code == 201, run.text
        rid = run.json()["id"]
        c.post(f"/api/v1/runs/{rid}/points", headers=h[("proj-a", "admin")],
               json={"series": [{"key": "train/loss", "steps": [1], "values": [1.0]}]})
        yield c, h, rid


def _same_answer(a: Any, b: Any, swap: tuple[str, str]) -> None:
    assert a.status_code == b.status_code == 404, (a.text, b.text)
    assert a.text.replace(*swap) == b.text, (a.text, b.text)
    assert SECRET not in a.text and "proj-b" not in a.text


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/api/v1/runs/{rid}", None), ("PATCH", "/api/v1/runs/{rid}", {"notes": "x"}),
    ("GET", "/api/v1/runs/{rid}/series", None), ("GET", "/api/v1/runs/{rid}/points?key=train/loss", None),
    ("POST", "/api/v1/runs/{rid}/points", {"series": [{"key": "x", "steps": [1], "values": [1]}]}),
    ("GET", "/api/v1/query?run={rid}&key=train/loss", None), ("GET", "/api/v1/runs/{rid}/export.csv?key=train/loss", None),
    ("DELETE", "/api/v1/runs/{rid}?confirm={rid}", None),
])
def test_another_projects_run_is_a_404_like_a_missing_one(world: Any, method: str, path: str, body: Any) -> None:
    c, h, rid = world
    missing = "no-such-run-00"
    for token in (("proj-b", "admin"), ("proj-b", "read")):
        there = c.request(method, path.format(rid=rid), json=body, headers=h[token])
        nowhere = c.request(method, path.format(rid=missing), json=body, headers=h[token])
        _same_answer(there, nowhere, (rid, missing))
    assert c.get(f"/api/v1/runs/{rid}", headers=h[("proj-a", "read")]).status_code == 200


def test_another_projects_project_is_a_404_like_a_missing_one(world: Any) -> None:
    c, h, _ = world
    for path in ("/api/v1/projects/{p}", "/api/v1/projects/{p}/runs", "/api/v1/projects/{p}/alerts",
                 "/api/v1/projects/{p}/channels"):
        there = c.get(path.format(p="proj-a"), headers=h[("proj-b", "admin")])
        nowhere = c.get(path.format(p="proj-zz"), headers=h[("proj-b", "admin")])
        _same_answer(there, nowhere, ("proj-a", "proj-zz"))


def test_mlflow_answers_the_same_for_another_projects_and_a_missing_run(world: Any) -> None:
    c, h, rid = world
    there = c.get("/api/2.0/mlflow/runs/get", params={"run_id": rid}, headers=h[("proj-b", "admin")])
    nowhere = c.get("/api/2.0/mlflow/runs/get", params={"run_id": "nosuchrun"}, headers=h[("proj-b", "admin")])
    assert there.status_code == nowhere.status_code == 404
    assert there.json()["error_code"] == nowhere.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert SECRET not in there.text and "proj-b" not in there.text
    exp = c.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "proj-a"},
                headers=h[("proj-a", "read")]).json()["experiment"]["experiment_id"]
    there = c.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": exp}, headers=h[("proj-b", "read")])
    nowhere = c.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": "99999"},
                    headers=h[("proj-b", "read")])
    _same_answer(there, nowhere, (exp, "99999"))


def test_scope_errors_inside_the_callers_project_stay_403(world: Any) -> None:
    c, h, rid = world
    r = c.patch(f"/api/v1/runs/{rid}", json={"notes": "x"}, headers=h[("proj-a", "read")])
    assert r.status_code == 403 and "needs 'write'" in r.json()["error"]["message"]
    r = c.get("/api/v1/projects/proj-a/channels", headers=h[("proj-a", "write")])
    assert r.status_code == 403 and "needs 'admin'" in r.json()["error"]["message"]
