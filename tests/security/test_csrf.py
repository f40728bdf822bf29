"""CSRF through the dashboard's sign-in cookie (issue 12, item 3): with the cookie, a request that
changes state needs a same-origin ``Origin`` (or ``Sec-Fetch-Site: same-origin``) and a JSON body;
reads, and clients that send a Bearer token, are not affected."""

from __future__ import annotations

from typing import Any

import pytest

from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import make_client

HOST = "testserver"  # the Host header of FastAPI's TestClient
POINT = b'{"series": [{"key": "loss", "steps": [7], "values": [1.5]}]}'


@pytest.fixture
def world(sqlite_url: str) -> Any:  # the check is in the request path, the same on either backend
    db_url = sqlite_url
    with make_client(db_url, auth="on", background_workers=False) as c:
        db = Database(Settings(database_url=db_url))
        with db.write() as s:
            token = create_token(s, "p", "admin", "browser")[1]
        db.dispose()
        run = c.post("/api/v1/projects/p/runs", json={"name": "r"}, headers={"Authorization": f"Bearer {token}"})
        assert run.status_code == 201
        yield c, token, run.json()["id"]


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", "Content-Type": "text/plain"},  # the attack as reported
    {"Origin": "http://testserver:8001", "Content-Type": "application/json"},  # another port of the same host
    {"Origin": "null", "Content-Type": "application/json"},  # a sandboxed frame or a data: URL
    {"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"},
    {"Sec-Fetch-Site": "cross-site", "Origin": f"http://{HOST}", "Content-Type": "application/json"},
    {"Content-Type": "application/json"},  # neither Origin nor Sec-Fetch-Site
], ids=["foreign-origin-text", "other-port", "null-origin", "same-site", "cross-site", "no-origin"])
def test_cookie_ingest_from_another_origin_is_refused_and_stores_nothing(world: Any, headers: dict[str, str]) -> None:
    c, token, run_id = world
    c.cookies.set("losswatch_token", token)
    try:
        r = c.post(f"/api/v1/runs/{run_id}/points", content=POINT, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request", r.text
        r = c.post(f"/api/v1/runs/{run_id}/heartbeat", headers={k: v for k, v in headers.items()
                                                                 if k != "Content-Type"})
        assert r.status_code == 403, r.text
        r = c.patch(f"/api/v1/runs/{run_id}", json={"notes": "owned"}, headers=headers)
        assert r.status_code == 403, r.text
        r = c.delete(f"/api/v1/runs/{run_id}?confirm={run_id}", headers=headers)
        assert r.status_code == 403, r.text
    finally:
        c.cookies.clear()
    run = c.get(f"/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}).json()
    assert run["summary"] == {} and run["notes"] is None


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_cookie_requests_from_this_origin_must_send_json(world: Any, content_type: str | None) -> None:
    c, token, run_id = world
    c.cookies.set("losswatch_token", token)
    headers = {"Origin": f"http://{HOST}"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        r = c.post(f"/api/v1/runs/{run_id}/points", content=POINT, headers=headers)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    finally:
        c.cookies.clear()


def test_same_origin_json_with_the_cookie_works(world: Any) -> None:
    c, token, run_id = world
    c.cookies.set("losswatch_token", token)
    try:
        r = c.post(f"/api/v1/runs/{run_id}/points", content=POINT,
                   headers={"Origin": f"http://{HOST}", "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        r = c.post(f"/api/v1/runs/{run_id}/heartbeat", headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.text
        r = c.patch(f"/api/v1/runs/{run_id}", json={"notes": "mine"},
                    headers={"Origin": f"http://{HOST}", "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.text
        # reads need nothing more than the cookie (the dashboard's own fetch calls are GETs)
        assert c.get(f"/api/v1/runs/{run_id}", headers={"Origin": "http://evil.example"}).status_code == 200
    finally:
        c.cookies.clear()
    run = c.get(f"/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}).json()
    assert run["summary"]["loss"]["count"] == 1 and run["notes"] == "mine"


def test_bearer_clients_are_unaffected(world: Any) -> None:
    c, token, run_id = world
    r = c.post(f"/api/v1/runs/{run_id}/points", content=POINT,
               headers={"Authorization": f"Bearer {token}", "Origin": "http://evil.example",
                        "Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    r = c.post(f"/api/v1/runs/{run_id}/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
