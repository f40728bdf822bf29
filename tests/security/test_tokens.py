"""Tokens (issue 12, item 2): list, revoke and expiry through the API (admin) and the CLI; a
revocation reaches every server process within LOSSWATCH_AUTH_CACHE_SECONDS (1 s); a token made with
a token never outranks nor outlives it, and dies with it."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from losswatch.server.errors import Forbidden, InvalidRequest
from losswatch.server.services import tokens
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from losswatch.server.storage.models import Token
from tests.conftest import BIN, make_client

TTL = 1.0  # LOSSWATCH_AUTH_CACHE_SECONDS, the default


def _mint(db_url: str, project: str, scope: str, **kw: Any) -> tuple[int, str]:
    db = Database(Settings(database_url=db_url))
    with db.write() as s:
        row, plaintext = tokens.create_token(s, project, scope, "t", **kw)
        token_id = row.id
    db.dispose()
    return token_id, plaintext


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(db_url: str) -> Any:
    with make_client(db_url, auth="on", background_workers=False) as c:
        _, admin = _mint(db_url, "p", "admin")
        _mint(db_url, "other", "admin")
        yield c, admin


def test_list_and_revoke_through_the_api(api: Any) -> None:
    c, admin = api
    made = c.post("/api/v1/projects/p/tokens", json={"scope": "write", "name": "ci"}, headers=_h(admin))
    assert made.status_code == 201, made.text
    ci = made.json()
    assert c.get("/api/v1/projects/p", headers=_h(ci["token"])).status_code == 200
    listed = c.get("/api/v1/projects/p/tokens", headers=_h(admin))
    assert listed.status_code == 200
    rows = {t["id"]: t for t in listed.json()["tokens"]}
    assert set(rows) >= {ci["id"]} and all(t["project"] == "p" for t in rows.values())  # not project "other"
    assert rows[ci["id"]]["revoked_at"] is None and rows[ci["id"]]["scope"] == "write"
    assert ci["token"].startswith(rows[ci["id"]]["prefix"])
    assert ci["token"] not in listed.text and "digest" not in listed.text  # never a secret
    gone = c.delete(f"/api/v1/projects/p/tokens/{ci['id']}", headers=_h(admin))
    assert gone.status_code == 200 and gone.json()["revoked_at"] is not None
    time.sleep(TTL + 0.1)
    r = c.get("/api/v1/projects/p", headers=_h(ci["token"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    # a write token may neither list nor revoke; another project's admin gets 403; unknown ids 404
    _, writer = _mint(c.app.state.settings.database_url, "p", "write")
    assert c.get("/api/v1/projects/p/tokens", headers=_h(writer)).status_code == 403
    assert c.delete("/api/v1/projects/p/tokens/1", headers=_h(writer)).status_code == 403
    assert c.delete("/api/v1/projects/p/tokens/999999", headers=_h(admin)).status_code == 404


def test_a_token_of_another_project_cannot_be_revoked_through_this_one(api: Any, db_url: str) -> None:
    c, admin = api
    other_id, other = _mint(db_url, "other", "read")
    r = c.delete(f"/api/v1/projects/p/tokens/{other_id}", headers=_h(admin))
    assert r.status_code == 404
    assert c.get("/api/v1/projects/other", headers=_h(other)).status_code == 200


def test_an_expired_token_is_refused(api: Any, db_url: str) -> None:
    c, admin = api
    soon = datetime.now(UTC) + timedelta(hours=1)
    r = c.post("/api/v1/projects/p/tokens", json={"scope": "read", "expires_at": soon.isoformat()},
               headers=_h(admin))
    assert r.status_code == 201 and r.json()["expires_at"] is not None
    token, token_id = r.json()["token"], r.json()["id"]
    assert c.get("/api/v1/projects/p", headers=_h(token)).status_code == 200
    db = Database(Settings(database_url=db_url))
    with db.write() as s:  # the clock moves past the expiry
        s.execute(update(Token).where(Token.id == token_id).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    db.dispose()
    time.sleep(TTL + 0.1)
    assert c.get("/api/v1/projects/p", headers=_h(token)).status_code == 401
    past = c.post("/api/v1/projects/p/tokens", json={"expires_at": "2020-01-01T00:00:00Z"}, headers=_h(admin))
    assert past.status_code == 422 and past.json()["error"]["code"] == "invalid_expiry"


def test_a_minted_token_never_outlives_nor_outranks_its_parent(api: Any, db_url: str) -> None:
    c, _ = api
    limit = datetime.now(UTC) + timedelta(hours=1)
    parent_id, parent = _mint(db_url, "p", "admin", expires_at=limit)
    later = (limit + timedelta(days=1)).isoformat()
    r = c.post("/api/v1/projects/p/tokens", json={"scope": "admin", "expires_at": later}, headers=_h(parent))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_expiry", r.text
    r = c.post("/api/v1/projects/p/tokens", json={"scope": "admin"}, headers=_h(parent))  # no expiry asked
    assert r.status_code == 201
    child = r.json()
    assert datetime.fromisoformat(child["expires_at"]) == limit
    r = c.post("/api/v1/projects/p/tokens", json={"scope": "read"}, headers=_h(child["token"]))
    grandchild = r.json()
    assert r.status_code == 201 and datetime.fromisoformat(grandchild["expires_at"]) == limit
    rows = {t["id"]: t for t in c.get("/api/v1/projects/p/tokens", headers=_h(parent)).json()["tokens"]}
    assert rows[child["id"]]["parent_id"] == parent_id and rows[grandchild["id"]]["parent_id"] == child["id"]
    # revoking the parent revokes what it made, transitively
    assert c.delete(f"/api/v1/projects/p/tokens/{parent_id}", headers=_h(child["token"])).status_code == 200
    time.sleep(TTL + 0.1)
    for token in (parent, child["token"], grandchild["token"]):
        assert c.get("/api/v1/projects/p", headers=_h(token)).status_code == 401
    # scopes: the service refuses a child above its parent (the API needs admin to mint at all)
    writer = tokens.Principal(project_id=1, project="p", scope="write", token_id=1)
    db = Database(Settings(database_url=db_url))
    with db.write() as s, pytest.raises(Forbidden):
        tokens.create_token(s, "p", "admin", parent=writer)
    with db.write() as s, pytest.raises(InvalidRequest):
        tokens.create_token(s, "p", "read", parent=tokens.Principal(
            project_id=1, project="p", scope="admin", token_id=1, expires_at=limit),
            expires_at=limit + timedelta(seconds=1))
    db.dispose()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "losswatch"), *args], capture_output=True, text=True, timeout=120)


def test_cli_revocation_reaches_every_server_process_within_a_second(db_url: str, server_factory: Any) -> None:
    made = _cli("token", "create", "--db", db_url, "--project", "p", "--scope", "read", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    servers = [server_factory(db_url, env={"LOSSWATCH_AUTH": "on"}).start() for _ in range(2)]
    for sp in servers:
        for _ in range(3):  # cached by now
            assert httpx.get(sp.url + "/api/v1/projects/p", headers=_h(token)).status_code == 200
    listed = _cli("token", "list", "--db", db_url, "--project", "p")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if token.startswith(row.split("\t")[4]))
    token_id, expires = line.split("\t")[0], line.split("\t")[6]
    assert expires != "-" and datetime.fromisoformat(expires) > datetime.now(UTC) + timedelta(days=29)
    revoked = _cli("token", "revoke", token_id, "--db", db_url)
    assert revoked.returncode == 0, revoked.stderr
    time.sleep(TTL + 0.1)
    for sp in servers:
        assert httpx.get(sp.url + "/api/v1/projects/p", headers=_h(token)).status_code == 401
    assert token_id not in [r.split("\t")[0] for r in _cli("token", "list", "--db", db_url).stdout.splitlines()]
    every = _cli("token", "list", "--db", db_url, "--all").stdout.splitlines()
    assert any(r.split("\t")[0] == token_id and r.split("\t")[7] != "-" for r in every)
    assert _cli("token", "revoke", "987654", "--db", db_url).returncode != 0
