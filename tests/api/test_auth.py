"""Auth, table-driven over every route of the app: a token of project A can neither read nor write
project B, a read token cannot write, a write token cannot administer; 401 without a token. The
table covers the /api/v1 routes, the MLflow-compatible routes under /api/2.0/mlflow and the
dashboard pages; a test fails when a route of the app has no entry."""

from __future__ import annotations

from typing import Any

import pytest

from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import make_client

MLFLOW = "/api/2.0/mlflow"
# (method, path template, scope needed, body). {project}, {run_id}, {channel_id} and {exp_id} (the
# project's MLflow experiment id) are filled per test, in the path and in string values of the body.
ROUTES: list[tuple[str, str, str, Any]] = [
    ("GET", "/api/v1/projects/{project}", "read", None),
    ("GET", "/api/v1/projects/{project}/runs", "read", None),
    ("POST", "/api/v1/projects/{project}/runs", "write", {"name": "x"}),
    ("POST", "/api/v1/projects/{project}/tokens", "admin", {"scope": "read"}),
    ("GET", "/api/v1/projects/{project}/tokens", "admin", None),
    ("DELETE", "/api/v1/projects/{project}/tokens/{token_id}", "admin", None),
    ("GET", "/api/v1/runs/{run_id}", "read", None),
    ("PATCH", "/api/v1/runs/{run_id}", "write", {"notes": "n"}),
    ("POST", "/api/v1/runs/{run_id}/finish", "write", {"status": "finished"}),
    ("POST", "/api/v1/runs/{run_id}/heartbeat", "write", None),
    ("GET", "/api/v1/runs/{run_id}/series", "read", None),
    ("POST", "/api/v1/runs/{run_id}/points", "write", {"series": [{"key": "l", "steps": [1], "values": [1.0]}]}),
    ("GET", "/api/v1/runs/{run_id}/points?key=l", "read", None),
    ("GET", "/api/v1/runs/{run_id}/export.csv?key=l", "read", None),
    ("GET", "/api/v1/query?run={run_id}", "read", None),
    # alerts, their rule configuration and the channels
    ("GET", "/api/v1/projects/{project}/alerts", "read", None),
    ("GET", "/api/v1/runs/{run_id}/alerts", "read", None),
    ("POST", "/api/v1/projects/{project}/alerts/{alert_id}/ack", "write", None),
    ("DELETE", "/api/v1/projects/{project}/alerts/{alert_id}/ack", "write", None),
    ("GET", "/api/v1/projects/{project}/alert-config", "read", None),
    ("PUT", "/api/v1/projects/{project}/alert-config", "admin", {"plateau": False}),
    ("GET", "/api/v1/runs/{run_id}/alert-config", "read", None),
    ("PUT", "/api/v1/runs/{run_id}/alert-config", "write", {"silenced": ["stalled"]}),
    ("GET", "/api/v1/projects/{project}/channels", "admin", None),
    ("POST", "/api/v1/projects/{project}/channels", "admin",
     {"name": "hook2", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/h"}}),
    ("GET", "/api/v1/projects/{project}/channels/{channel_id}/attempts", "admin", None),
    ("DELETE", "/api/v1/projects/{project}/channels/{channel_id}", "admin", None),
    # administration
    ("DELETE", "/api/v1/runs/{run_id}?confirm={run_id}", "admin", None),
    # the MLflow-compatible subset (errors in MLflow's shape)
    ("GET", MLFLOW + "/experiments/get-by-name?experiment_name={project}", "read", None),
    ("GET", MLFLOW + "/experiments/get?experiment_id={exp_id}", "read", None),
    ("POST", MLFLOW + "/runs/create", "write", {"experiment_id": "{exp_id}"}),
    ("GET", MLFLOW + "/runs/get?run_id={run_id}", "read", None),
    ("POST", MLFLOW + "/runs/update", "write", {"run_id": "{run_id}", "status": "RUNNING"}),
    ("POST", MLFLOW + "/runs/log-batch", "write",
     {"run_id": "{run_id}", "metrics": [{"key": "m", "value": 1.0, "timestamp": 0, "step": 3}]}),
    ("POST", MLFLOW + "/runs/log-metric", "write",
     {"run_id": "{run_id}", "key": "m", "value": 1.0, "timestamp": 0, "step": 1}),
    ("POST", MLFLOW + "/runs/log-parameter", "write", {"run_id": "{run_id}", "key": "p", "value": "v"}),
    ("POST", MLFLOW + "/runs/set-tag", "write", {"run_id": "{run_id}", "key": "t", "value": "v"}),
    ("GET", MLFLOW + "/metrics/get-history?run_id={run_id}&metric_key=l", "read", None),
    ("GET", MLFLOW + "/metrics/get-history-bulk-interval?run_ids={run_id}&metric_key=l", "read", None),
    ("POST", MLFLOW + "/runs/search", "read", {"experiment_ids": ["{exp_id}"]}),
]
# Routes that carry no project. Each has its own test below.
UNSCOPED = {
    ("GET", "/api/v1/projects"),  # lists only the caller's project
    ("GET", "/healthz"),  # liveness, no data
    ("GET", "/static/wire.js"),  # the contract constants of losswatch.client.wire, for the page scripts
    ("POST", MLFLOW + "/experiments/create"),  # makes a project: only without auth (no project token may)
    *((m, MLFLOW + "/{path:path}") for m in ("GET", "POST", "PATCH", "DELETE")),  # "not implemented", no data
    *((m, MLFLOW + "/artifacts/{path:path}") for m in ("GET", "POST", "PUT", "DELETE")),  # "not stored", no data
    *((m, "/api/2.0/mlflow-artifacts/{path:path}") for m in ("GET", "POST", "PUT", "DELETE", "PATCH")),
    *((m, MLFLOW + "/experiments/search") for m in ("GET", "POST")),  # lists only the caller's project
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
}
# Dashboard pages: HTML shells whose scripts call the API above; they must not show another
# project's data, nor tell whether a project or run exists.
PAGES = ["/p/{project}", "/p/{project}/compare", "/p/{project}/alerts", "/p/{project}/tokens", "/runs/{run_id}"]
PAGE_ROUTES = {("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"),
               *(("GET", p.replace("{run_id}", "{run_id}")) for p in PAGES)}
SCOPES = ("read", "write", "admin")
SECRET_NAME = "secret-run-name-of-a"
NAMES = {"a": "proj-a", "b": "proj-b"}


@pytest.fixture
def world(db_url: str) -> Any:
    settings = Settings(database_url=db_url, auth="on")
    with make_client(db_url, auth="on", allow_private_channels=True, background_workers=False) as c:
        db = Database(settings)
        tokens: dict[tuple[str, str], str] = {}
        with db.write() as s:
            for project in ("a", "b"):
                for scope in SCOPES:
                    tokens[(project, scope)] = create_token(s, NAMES[project], scope, f"{project}-{scope}")[1]
            spare: dict[str, int] = {}
            for project in NAMES:  # revoked by the DELETE .../tokens/{token_id} entry of the table
                row, tokens[(project, "spare")] = create_token(s, NAMES[project], "read", "spare")
                spare[project] = row.id
        db.dispose()
        ids: dict[str, dict[str, Any]] = {}
        for key, project in NAMES.items():
            h = {"Authorization": f"Bearer {tokens[(key, 'admin')]}"}
            run = c.post(f"/api/v1/projects/{project}/runs", json={"name": SECRET_NAME if key == "a" else "b-run",
                                                                   "config": {"secret_lr": 0.123}}, headers=h).json()
            c.post(f"/api/v1/runs/{run['id']}/points", headers=h,
                   json={"series": [{"key": "l", "steps": [1], "values": [1.0]}]})
            nan = c.post(f"/api/v1/runs/{run['id']}/points", headers=h,  # an alert to acknowledge
                         json={"series": [{"key": "train/loss", "kind": "loss", "steps": [1, 2], "values": [1.0, "NaN"]}]})
            ch = c.post(f"/api/v1/projects/{project}/channels", headers=h,
                        json={"name": "hook", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/hook"}})
            assert ch.status_code == 201, ch.text
            exp = c.get(MLFLOW + "/experiments/get-by-name", params={"experiment_name": project}, headers=h)
            ids[key] = {"project": project, "run_id": run["id"], "channel_id": ch.json()["id"], "token_id": spare[key],
                        "alert_id": nan.json()["alerts"][0]["id"], "exp_id": exp.json()["experiment"]["experiment_id"]}
        yield c, tokens, ids


def _fill(obj: Any, ids: dict[str, Any]) -> Any:
    if isinstance(obj, str):
        return obj.format(**ids)
    if isinstance(obj, dict):
        return {k: _fill(v, ids) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, ids) for v in obj]
    return obj


def call(c: Any, method: str, path: str, body: Any, ids: dict[str, Any], token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return c.request(method, _fill(path, ids), json=_fill(body, ids), headers=headers)


def error_of(r: Any) -> tuple[str, str]:
    """(code, message) of an error in losswatch's envelope or in MLflow's shape."""
    body = r.json()
    if "error" in body:
        return body["error"]["code"], body["error"]["message"]
    return body["error_code"], body["message"]


_CODES = {401: ("unauthorized", "UNAUTHENTICATED"), 403: ("forbidden", "PERMISSION_DENIED"),
          404: ("project_not_found", "run_not_found", "RESOURCE_DOES_NOT_EXIST")}


def all_routes(routes: Any, prefix: str = "") -> Any:
    """(path, route) of every route, through the routers FastAPI includes lazily (an included
    router is one entry of ``app.routes`` that holds the router's own routes)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes, prefix + getattr(r.include_context, "prefix", ""))
        else:
            yield prefix + r.path, r


def test_the_table_covers_every_route_of_the_app(world: Any) -> None:
    c, _, _ = world
    routes = list(all_routes(c.app.routes))
    app_routes = {(m, path) for path, r in routes for m in (getattr(r, "methods", None) or ()) if m != "HEAD"}
    assert {path for path, r in routes if not getattr(r, "methods", None)} == {"/static"}  # the only mount
    assert len(app_routes) > 50
    table = {(m, p.split("?")[0]) for m, p, _, _ in ROUTES} | UNSCOPED | PAGE_ROUTES
    assert app_routes <= table, f"routes without an auth test: {sorted(app_routes - table)}"
    assert table - app_routes == set(), f"table entries for routes that are gone: {sorted(table - app_routes)}"


@pytest.mark.parametrize("method,path,scope,body", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_route_access(world: Any, method: str, path: str, scope: str, body: Any) -> None:
    c, tokens, ids = world
    a = ids["a"]
    r = call(c, method, path, body, a, None)
    assert r.status_code == 401 and error_of(r)[0] in _CODES[401], r.text
    r = call(c, method, path, body, a, "lw_000000000000_forged")
    assert r.status_code == 401, r.text
    # A token of project B, whatever its scope, gets nothing of project A, and learns nothing of it:
    # the 404 a missing project, run or experiment gets (issue 12), not a 403 that says it exists.
    r = call(c, method, path, body, a, tokens[("b", "admin")])
    assert r.status_code == 404 and error_of(r)[0] in _CODES[404], r.text
    assert SECRET_NAME not in r.text and "0.123" not in r.text and "proj-b" not in r.text
    for have in SCOPES:
        r = call(c, method, path, body, a, tokens[("a", have)])
        if SCOPES.index(have) < SCOPES.index(scope):
            assert r.status_code == 403, (have, r.text)
            assert f"needs '{scope}'" in error_of(r)[1]
        else:
            assert r.status_code < 400, (have, r.text)


def test_no_project_token_creates_an_mlflow_experiment(world: Any) -> None:
    c, tokens, _ = world
    for token in (None, tokens[("a", "admin")]):
        r = c.post(MLFLOW + "/experiments/create", json={"name": "new"},
                   headers={"Authorization": f"Bearer {token}"} if token else {})
        assert r.status_code in (401, 403) and error_of(r)[0] in ("UNAUTHENTICATED", "PERMISSION_DENIED"), r.text
    assert "new" not in [p["name"] for p in c.get("/api/v1/projects", headers={
        "Authorization": f"Bearer {tokens[('a', 'admin')]}"}).json()["projects"]]


def test_unimplemented_mlflow_endpoints_reveal_nothing(world: Any) -> None:
    c, tokens, ids = world
    for token in (None, tokens[("b", "admin")]):
        r = c.post(MLFLOW + "/runs/delete", json={"run_id": ids["a"]["run_id"]},
                   headers={"Authorization": f"Bearer {token}"} if token else {})
        assert r.status_code == 404 and error_of(r)[0] == "ENDPOINT_NOT_FOUND"
        assert SECRET_NAME not in r.text
    assert c.get(f"/api/v1/runs/{ids['a']['run_id']}",
                 headers={"Authorization": f"Bearer {tokens[('a', 'read')]}"}).status_code == 200


def test_healthz_and_schema_carry_no_data(world: Any) -> None:
    c, _, _ = world
    for path in ("/healthz", "/openapi.json", "/docs", "/redoc"):
        r = c.get(path)
        assert r.status_code == 200 and SECRET_NAME not in r.text and "lw_" not in r.text


@pytest.mark.parametrize("page", PAGES)
def test_dashboard_pages_show_nothing_of_another_project(world: Any, page: str) -> None:
    """A page is the same shell whether the project or run exists or not, signed in to another
    project or not at all: the data comes only through the API, which checks the token."""
    c, tokens, ids = world
    a = ids["a"]
    missing = {**a, "project": "no-such-project", "run_id": "no-such-run"}
    bodies = []
    for token in (None, tokens[("b", "admin")]):
        if token:
            c.cookies.set("losswatch_token", token)
        try:
            for target in (a, missing):
                r = c.get(page.format(**target), headers={"Accept": "text/html"})
                assert r.status_code == 200, r.text
                assert SECRET_NAME not in r.text and "0.123" not in r.text and "secret_lr" not in r.text
                name = target["run_id"] if "{run_id}" in page else target["project"]
                bodies.append(r.text.replace(name, "NAME"))
        finally:
            c.cookies.clear()
    assert bodies[0] == bodies[1], "the page tells an existing project or run from a missing one"
    assert bodies[2] == bodies[3]
    r = c.get(page.format(**a), headers={"Accept": "text/html"})
    assert "losswatch_token" not in r.text


def test_project_list_shows_only_the_tokens_project(world: Any) -> None:
    c, tokens, _ = world
    r = c.get("/api/v1/projects", headers={"Authorization": f"Bearer {tokens[('b', 'read')]}"})
    assert [p["name"] for p in r.json()["projects"]] == ["proj-b"]
    assert c.get("/api/v1/projects").status_code == 401


def test_query_mixing_runs_of_two_projects_is_forbidden(world: Any) -> None:
    c, tokens, ids = world
    r = c.get("/api/v1/query", params={"run": [ids["a"]["run_id"], ids["b"]["run_id"]]},
              headers={"Authorization": f"Bearer {tokens[('a', 'read')]}"})
    assert r.status_code == 404  # another project's run: as if it did not exist


def test_malformed_authorization_header(world: Any) -> None:
    c, tokens, _ = world
    r = c.get("/api/v1/projects", headers={"Authorization": f"Token {tokens[('a', 'read')]}"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]


def test_tokens_are_stored_hashed(world: Any, db_url: str) -> None:
    _, tokens, _ = world  # see also tests/security/test_secrets.py (constant-time compare)
    from sqlalchemy import select

    from losswatch.server.storage.models import Token

    db = Database(Settings(database_url=db_url))
    with db.read() as s:
        stored = [(t.lookup, t.digest) for t in s.scalars(select(Token))]
    db.dispose()
    plain = set(tokens.values())
    assert len(stored) == len(plain)
    assert not any(d in plain or any(d in p for p in plain) for _, d in stored)
    assert all(len(d) == 64 for _, d in stored)


def test_token_cookie_works_like_the_header(world: Any) -> None:
    c, tokens, ids = world
    runs = {p: ids[p]["run_id"] for p in ids}
    c.cookies.set("losswatch_token", tokens[("a", "read")])
    try:
        assert c.get(f"/api/v1/runs/{runs['a']}").status_code == 200
        assert c.get(f"/api/v1/runs/{runs['b']}").status_code == 404
    finally:
        c.cookies.clear()


def test_admin_token_makes_a_working_token(world: Any) -> None:
    c, tokens, ids = world
    runs = {p: ids[p]["run_id"] for p in ids}
    r = c.post("/api/v1/projects/proj-a/tokens", json={"scope": "read", "name": "ci"},
               headers={"Authorization": f"Bearer {tokens[('a', 'admin')]}"})
    assert r.status_code == 201
    new = r.json()["token"]
    assert c.get(f"/api/v1/runs/{runs['a']}", headers={"Authorization": f"Bearer {new}"}).status_code == 200
