"""Helpers of the end-to-end tests: the query API of a real server, a real HTTP proxy that can fail
on purpose, bit-exact comparison of floats."""

from __future__ import annotations

import http.client
import json
import math
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from losswatch.client import wire

# init() options for tests: short flush interval and backoff, no heartbeat noise
FAST = {"flush_interval": 0.1, "retry_min": 0.1, "retry_max": 0.5, "heartbeat_interval": 3600.0}


def bits(x: float) -> bytes:
    """The float's 8 bytes; every NaN is one value on the wire ("NaN"), so NaNs compare equal."""
    return b"nan" if math.isnan(x) else struct.pack("<d", x)


def same_bits(got: dict[int, float], expected: dict[int, float]) -> bool:
    return sorted(got) == sorted(expected) and all(bits(got[s]) == bits(expected[s]) for s in expected)


class Api:
    """The public HTTP API of one server process (what a script or the dashboard would call)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url + "/api/v1", headers=headers, timeout=30)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def run(self, run_id: str) -> dict[str, Any]:
        return self.get(f"/runs/{run_id}")  # type: ignore[no-any-return]

    def points(self, run_id: str, key: str, missing_ok: bool = False) -> dict[int, float]:
        """Every raw point of a series, {step: value}, paging through the API (``missing_ok``: a
        series or run that does not exist yet has no points)."""
        out: dict[int, float] = {}
        start: int | None = 0
        while start is not None:
            r = self.http.get(f"/runs/{run_id}/points", params={"key": key, "start": start, "limit": 100_000})
            if missing_ok and r.status_code == 404:
                return out
            r.raise_for_status()
            page = r.json()
            for s, v in zip(page["steps"], page["values"], strict=True):
                assert s not in out, f"step {s} of {key} listed twice"
                out[s] = wire.decode_value(v)
            start = page["next_start"]
        return out

    def count(self, run_id: str, key: str) -> int:
        summary = self.run(run_id)["summary"].get(key)
        return int(summary["count"]) if summary else 0

    def alerts(self, run_id: str) -> list[dict[str, Any]]:
        return list(reversed(self.get(f"/runs/{run_id}/alerts")["alerts"]))  # oldest first


class Proxy:
    """A real HTTP proxy on 127.0.0.1 in front of one server port.

    ``fail_with`` set to a status makes it answer that status to every ``/points`` request instead
    of forwarding (a server in trouble); when the upstream is down it answers 502, as a load
    balancer does. It records every ingest request it forwards: its ``body`` and ``status``: ``None``
    while in flight, ``0`` when the upstream died before answering, ``-1`` when it refused the
    connection (the request never reached it).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        self.ingests: list[dict[str, Any]] = []
        self.failed_answers = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # headers and body go out in two writes: no Nagle delay between them
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, data = proxy.forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        ingest = method == "POST" and path.endswith("/points")
        if ingest and self.fail_with is not None:
            with self.lock:
                self.failed_answers += 1
            error = {"error": {"code": "internal", "message": "proxy says no"}}
            return self.fail_with, [("Content-Type", "application/json")], json.dumps(error).encode()
        record: dict[str, Any] | None = None
        if ingest:
            record = {"body": body, "status": None, "started": time.monotonic()}
            with self.lock:
                self.ingests.append(record)
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.connect()
        except OSError:
            conn.close()
            if record is not None:
                record["status"] = -1  # refused: the upstream is down, the request never reached it
            return 502, [("Content-Type", "application/json")], b'{"error": {"code": "bad_gateway", "message": ""}}'
        try:
            keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body or None, headers=keep)
            resp = conn.getresponse()
            data = resp.read()
            status, out_headers = resp.status, resp.getheaders()
        except (OSError, http.client.HTTPException):
            if record is not None:
                record["status"] = 0
                record["ended"] = time.monotonic()
            return 502, [("Content-Type", "application/json")], b'{"error": {"code": "bad_gateway", "message": ""}}'
        finally:
            conn.close()
        if record is not None:
            record["status"] = status
            record["ended"] = time.monotonic()
        return status, out_headers, data

    def in_flight_for(self) -> float:
        """How long the oldest ingest request now in flight has been waiting (0 if none)."""
        with self.lock:
            waiting = [r["started"] for r in self.ingests if r["status"] is None]
        return time.monotonic() - min(waiting) if waiting else 0.0


def batch_points(body: bytes) -> dict[tuple[str, int], float]:
    """{(key, step): value} of one ingest body."""
    out: dict[tuple[str, int], float] = {}
    for s in wire.loads_batch(body)["series"]:
        for step, value in zip(s["steps"], s["values"], strict=True):
            out[(s["key"], step)] = wire.decode_value(value)
    return out
