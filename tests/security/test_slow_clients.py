"""Slow clients against a real `losswatch serve` process over real sockets (issue 12, item 6): a
connection that sends its headers byte by byte, or nothing at all, or that stalls in its body, is
answered 408 and closed after LOSSWATCH_HEADER_TIMEOUT_SECONDS / LOSSWATCH_BODY_TIMEOUT_SECONDS
(set to 1 s here), while normal requests on the same server are unaffected."""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

TIMEOUTS = {"LOSSWATCH_HEADER_TIMEOUT_SECONDS": "1", "LOSSWATCH_BODY_TIMEOUT_SECONDS": "1"}
TRICKLE_S = 40.0  # how long the trickle would go on if nobody stopped it


@pytest.fixture
def server(sqlite_url: str, server_factory: Any) -> Any:
    return server_factory(sqlite_url, env=TIMEOUTS).start()


def _connect(server: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _closed_by_server(sock: socket.socket, trickle: bytes, interval: float = 0.25) -> bytes | None:
    """Send ``trickle`` one byte per ``interval`` (for at most TRICKLE_S); the bytes the server sent
    before it closed the connection, or None if it never closed it."""
    got = b""
    deadline = time.monotonic() + TRICKLE_S
    i = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
            continue
        if trickle:
            try:
                sock.send(trickle[i % len(trickle):i % len(trickle) + 1])
            except (BrokenPipeError, ConnectionResetError):
                return got
            i += 1
    return None


def test_headers_sent_byte_by_byte_are_cut_off(server: Any) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        got = _closed_by_server(sock, b"X-Slow: aaaaaaaaaaaaaaaa\r\n")
    assert got is not None, f"a slow-header connection stayed open for {TRICKLE_S} s"
    assert got.startswith(b"HTTP/1.1 408") and b"LOSSWATCH_HEADER_TIMEOUT_SECONDS" in got, got[:300]


def test_a_connection_that_sends_nothing_is_closed(server: Any) -> None:
    with _connect(server) as sock:
        got = _closed_by_server(sock, b"")
    assert got is not None and got.startswith(b"HTTP/1.1 408"), got


def test_a_stalled_body_is_cut_off(server: Any) -> None:
    rid = httpx.post(server.url + "/api/v1/projects/p/runs", json={}).json()["id"]
    with _connect(server) as sock:
        sock.sendall(f"POST /api/v1/runs/{rid}/points HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     "content-length: 1000\r\n\r\n{\"series\": [".encode())
        got = _closed_by_server(sock, b"")  # 13 of 1000 bytes, then silence
    assert got is not None, "a stalled body kept its connection open"
    assert got.startswith(b"HTTP/1.1 408") and b"LOSSWATCH_BODY_TIMEOUT_SECONDS" in got, got[:300]


def test_many_slow_connections_are_all_closed_and_the_server_keeps_serving(server: Any) -> None:
    socks = [_connect(server) for _ in range(60)]
    try:
        for s in socks:
            s.sendall(b"GET /api/v1/projects HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        # normal requests are served meanwhile, on fresh connections and on a kept-alive one
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(3):
                assert c.get("/healthz").status_code == 200
        open_ones = list(socks)
        deadline = time.monotonic() + TRICKLE_S
        while open_ones and time.monotonic() < deadline:
            readable, _, _ = select.select(open_ones, [], [], 0.5)
            for s in readable:
                data = b""
                try:
                    while chunk := s.recv(65536):
                        data += chunk
                except ConnectionResetError:
                    pass
                assert data.startswith(b"HTTP/1.1 408") or data == b"", data[:200]
                open_ones.remove(s)
        assert not open_ones, f"{len(open_ones)} of {len(socks)} slow connections still open after {TRICKLE_S} s"
    finally:
        for s in socks:
            s.close()
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_complete_request_is_not_cut_off_while_the_app_works(server: Any) -> None:
    """The timers watch the client, not the server: a body sent whole, and a kept-alive connection
    used again after a pause shorter than the keep-alive, are served normally."""
    with httpx.Client(base_url=server.url, timeout=10) as c:
        rid = c.post("/api/v1/projects/p/runs", json={}).json()["id"]
        body = {"series": [{"key": "train/loss", "steps": list(range(50_000)), "values": [0.5] * 50_000}]}
        assert c.post(f"/api/v1/runs/{rid}/points", json=body).status_code == 200
        time.sleep(1.5)  # longer than the header timeout, shorter than uvicorn's keep-alive (5 s)
        assert c.get(f"/api/v1/runs/{rid}").status_code == 200
