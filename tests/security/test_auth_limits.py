"""Memory exhaustion without a token (issue 12, item 1): the auth cache keeps verified tokens only,
in a bounded LRU; a real server process refuses an oversized request head (431) before buffering it,
and an oversized body (413)."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from losswatch.server.services.tokens import AuthCache, Principal, create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import make_client


def _admin_token(db_url: str) -> str:
    db = Database(Settings(database_url=db_url))
    with db.write() as s:
        plaintext = create_token(s, "p", "admin", "t")[1]
    db.dispose()
    return plaintext


def test_only_verified_tokens_are_cached(db_url: str) -> None:
    with make_client(db_url, auth="on", background_workers=False) as c:
        good = _admin_token(db_url)
        cache: AuthCache = c.app.state.auth_cache
        junk = [secrets.token_urlsafe(3000) for _ in range(20)]
        junk += [f"lw_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}" for _ in range(20)]  # well-formed, unknown
        junk += [good[:-2] + "xx"]  # a known lookup with the wrong secret
        for token in junk:
            r = c.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, r.text
        assert len(cache) == 0, "an unverified token was kept in the auth cache"
        assert c.get("/api/v1/projects", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert c.get("/api/v1/projects", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert len(cache) == 1


def test_auth_cache_is_a_bounded_lru_that_forgets_after_its_ttl() -> None:
    cache = AuthCache(size=3, ttl=60)
    who = {t: Principal(project_id=1, project="p", scope="read", token_id=i) for i, t in enumerate("abcde")}
    for t in "abc":
        cache.put(t, who[t])
    assert cache.get("a") == who["a"]  # "a" is now the most recently used
    cache.put("d", who["d"])
    cache.put("e", who["e"])
    assert len(cache) == 3
    assert cache.get("b") is None and cache.get("c") is None  # the least recently used went first
    assert [cache.get(t) for t in "ade"] == [who["a"], who["d"], who["e"]]
    short = AuthCache(size=3, ttl=0.05)
    short.put("a", who["a"])
    time.sleep(0.1)
    assert short.get("a") is None and len(short) == 0
    from datetime import UTC, datetime, timedelta

    expired = Principal(project_id=1, project="p", scope="read", token_id=9,
                        expires_at=datetime.now(UTC) - timedelta(seconds=1))
    cache.put("x", expired)
    assert cache.get("x") is None  # never past the token's own expiry


# --- a real server process: request head and body limits --------------------------------------


def _raw_request(port: int, head: bytes, junk_bytes: int) -> tuple[bytes, list[BaseException]]:
    """Send ``head`` then ``junk_bytes`` of header value (64 KiB at a time, stopping when the server
    closes), and read whatever the server answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(head)
            chunk = b"a" * 65536
            sent = 0
            while sent < junk_bytes:
                sock.sendall(chunk[: junk_bytes - sent])
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except OSError as exc:  # a reset after the answer: the server closed with our bytes unread
        errors.append(exc)
    sender.join()
    sock.close()
    return data, errors


@pytest.fixture
def server(server_factory: Any, tmp_path: Path) -> Any:
    return server_factory(f"sqlite:///{tmp_path / 'limits.db'}",
                          env={"LOSSWATCH_MAX_BODY_BYTES": str(1 << 20)}).start()


def test_a_16_mb_header_is_refused_with_431_before_it_is_buffered(server: Any) -> None:
    proc = psutil.Process(server.proc.pid)
    httpx.get(server.url + "/healthz")
    before = proc.memory_info().rss
    data, _ = _raw_request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ", 16 << 20)
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert b'"headers_too_large"' in data and b"LOSSWATCH_MAX_HEADER_BYTES" in data
    grown = proc.memory_info().rss - before
    assert grown < 8 << 20, f"the server grew by {grown >> 20} MiB reading a refused header"
    assert httpx.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("where", ["header", "bearer token", "request line"])
def test_a_head_over_the_limit_gets_431_and_one_under_it_is_served(server: Any, where: str) -> None:
    def head(n: int) -> bytes:
        pad = b"a" * n
        if where == "header":
            return b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + pad + b"\r\nConnection: close\r\n\r\n"
        if where == "bearer token":
            return (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + pad
                    + b"\r\nConnection: close\r\n\r\n")
        return b"GET /healthz?q=" + pad + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    ok, _ = _raw_request(server.port, head(60_000), 0)
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]
    refused, _ = _raw_request(server.port, head(70_000), 0)
    assert refused.startswith(b"HTTP/1.1 431 "), refused[:200]


def test_a_body_over_the_limit_gets_413(server: Any) -> None:
    r = httpx.post(server.url + "/api/v1/projects/p/runs", content=b"{" + b" " * (2 << 20) + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
