"""Auth, table-driven over every route of the API: a token of project A can neither read nor write
project B, a read token cannot write, a write token cannot administer; 401 without a token."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute

from losswatch.server.db import Database
from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from tests.conftest import make_client

# (method, path template, scope needed, body). {project} and {run_id} are filled per test.
ROUTES: list[tuple[str, str, str, Any]] = [
    ("GET", "/api/v1/projects/{project}", "read", None),
    ("GET", "/api/v1/projects/{project}/runs", "read", None),
    ("POST", "/api/v1/projects/{project}/runs", "write", {"name": "x"}),
    ("POST", "/api/v1/projects/{project}/tokens", "admin", {"scope": "read"}),
    ("GET", "/api/v1/runs/{run_id}", "read", None),
    ("PATCH", "/api/v1/runs/{run_id}", "write", {"notes": "n"}),
    ("POST", "/api/v1/runs/{run_id}/finish", "write", {"status": "finished"}),
    ("POST", "/api/v1/runs/{run_id}/heartbeat", "write", None),
    ("GET", "/api/v1/runs/{run_id}/series", "read", None),
    ("POST", "/api/v1/runs/{run_id}/points", "write", {"series": [{"key": "l", "steps": [1], "values": [1.0]}]}),
    ("GET", "/api/v1/runs/{run_id}/points?key=l", "read", None),
    ("GET", "/api/v1/runs/{run_id}/export.csv?key=l", "read", None),
    ("GET", "/api/v1/query?run={run_id}", "read", None),
]
# Routes that carry no project: listing projects shows only the caller's own.
UNSCOPED = {("GET", "/api/v1/projects"), ("GET", "/healthz")}
SCOPES = ("read", "write", "admin")


@pytest.fixture
def world(db_url: str) -> Any:
    settings = Settings(database_url=db_url, auth="on")
    with make_client(db_url, auth="on") as c:
        db = Database(settings)
        tokens: dict[tuple[str, str], str] = {}
        with db.write() as s:
            for project in ("a", "b"):
                for scope in SCOPES:
                    tokens[(project, scope)] = create_token(s, project, scope, f"{project}-{scope}")[1]
        db.dispose()
        runs = {}
        for project in ("a", "b"):
            h = {"Authorization": f"Bearer {tokens[(project, 'write')]}"}
            runs[project] = c.post(f"/api/v1/projects/{project}/runs", json={}, headers=h).json()["id"]
            c.post(f"/api/v1/runs/{runs[project]}/points", headers=h,
                   json={"series": [{"key": "l", "steps": [1], "values": [1.0]}]})
        yield c, tokens, runs


def call(c: Any, method: str, path: str, body: Any, project: str, run_id: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = path.format(project=project, run_id=run_id)
    return c.request(method, url, json=body, headers=headers)


def test_the_table_covers_every_api_route(world: Any) -> None:
    c, _, _ = world
    app_routes = {(m, r.path) for r in c.app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")
                  for m in r.methods}
    table = {(m, p.split("?")[0]) for m, p, _, _ in ROUTES} | UNSCOPED
    assert app_routes <= table, f"routes without an auth test: {sorted(app_routes - table)}"


@pytest.mark.parametrize("method,path,scope,body", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_route_access(world: Any, method: str, path: str, scope: str, body: Any) -> None:
    c, tokens, runs = world
    a = ("a", runs["a"])
    r = call(c, method, path, body, *a, None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    r = call(c, method, path, body, *a, "lw_000000000000_forged")
    assert r.status_code == 401, r.text
    # A token of project B, whatever its scope, gets nothing of project A.
    r = call(c, method, path, body, *a, tokens[("b", "admin")])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert "project 'b'" in r.json()["error"]["message"]
    for have in SCOPES:
        r = call(c, method, path, body, *a, tokens[("a", have)])
        if SCOPES.index(have) < SCOPES.index(scope):
            assert r.status_code == 403, (have, r.text)
            assert f"needs '{scope}'" in r.json()["error"]["message"]
        else:
            assert r.status_code < 400, (have, r.text)


def test_project_list_shows_only_the_tokens_project(world: Any) -> None:
    c, tokens, _ = world
    r = c.get("/api/v1/projects", headers={"Authorization": f"Bearer {tokens[('b', 'read')]}"})
    assert [p["name"] for p in r.json()["projects"]] == ["b"]
    assert c.get("/api/v1/projects").status_code == 401


def test_query_mixing_runs_of_two_projects_is_forbidden(world: Any) -> None:
    c, tokens, runs = world
    r = c.get("/api/v1/query", params={"run": [runs["a"], runs["b"]]},
              headers={"Authorization": f"Bearer {tokens[('a', 'read')]}"})
    assert r.status_code == 403


def test_malformed_authorization_header(world: Any) -> None:
    c, tokens, _ = world
    r = c.get("/api/v1/projects", headers={"Authorization": f"Token {tokens[('a', 'read')]}"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]


def test_tokens_are_stored_hashed(world: Any, db_url: str) -> None:
    _, tokens, _ = world
    from sqlalchemy import select

    from losswatch.server.models import Token

    db = Database(Settings(database_url=db_url))
    with db.read() as s:
        stored = [(t.lookup, t.digest) for t in s.scalars(select(Token))]
    db.dispose()
    plain = set(tokens.values())
    assert len(stored) == len(plain)
    assert not any(d in plain or any(d in p for p in plain) for _, d in stored)
    assert all(len(d) == 64 for _, d in stored)


def test_token_cookie_works_like_the_header(world: Any) -> None:
    c, tokens, runs = world
    c.cookies.set("losswatch_token", tokens[("a", "read")])
    try:
        assert c.get(f"/api/v1/runs/{runs['a']}").status_code == 200
        assert c.get(f"/api/v1/runs/{runs['b']}").status_code == 403
    finally:
        c.cookies.clear()


def test_admin_token_makes_a_working_token(world: Any) -> None:
    c, tokens, runs = world
    r = c.post("/api/v1/projects/a/tokens", json={"scope": "read", "name": "ci"},
               headers={"Authorization": f"Bearer {tokens[('a', 'admin')]}"})
    assert r.status_code == 201
    new = r.json()["token"]
    assert c.get(f"/api/v1/runs/{runs['a']}", headers={"Authorization": f"Bearer {new}"}).status_code == 200
