"""A small real HTTP server (stdlib, 127.0.0.1) that plays the losswatch API for client tests.

It keeps the runs and points it accepted, with the server's (series, step) overwrite rule, records
every request, can answer with any status through ``responder``, and can be stopped and started
again on the same port (open keep-alive connections are cut, as when a server process dies).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from losswatch.client import wire

Reply = tuple[int, dict[str, str], Any]
Responder = Callable[[str, str, bytes], "Reply | None"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeServer:
    def __init__(self, port: int | None = None, start: bool = True) -> None:
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.points: dict[tuple[str, str], dict[int, float]] = {}  # (run, key) -> {step: value}
        self.kinds: dict[tuple[str, str], str] = {}
        self.arrivals: list[tuple[str, str, int, float]] = []  # every point received, in order
        self.alerts: list[dict[str, Any]] = []
        self.responder: Responder | None = None
        self.connections = 0
        self._socks: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with outer.lock:
                    outer.connections += 1
                    outer._socks.add(self.connection)

            def finish(self) -> None:
                with outer.lock:
                    outer._socks.discard(self.connection)
                super().finish()

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, data = outer.handle(self.command, self.path, dict(self.headers), body)
                payload = data if isinstance(data, bytes) else json.dumps(data).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self.lock:
            for s in list(self._socks):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd = None

    # ---- the fake API -----------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self.lock:
            self.requests.append((method, path, headers, body))
        if self.responder is not None:
            reply = self.responder(method, path, body)
            if reply is not None:
                return reply
        m = re.fullmatch(r"/api/v1/projects/([^/]+)/runs", path)
        if method == "POST" and m:
            data = json.loads(body)
            with self.lock:
                fresh = data["id"] not in self.runs
                if fresh:
                    self.runs[data["id"]] = {**data, "project": m.group(1), "status": "running"}
                return (201 if fresh else 200), {}, self.runs[data["id"]]
        m = re.fullmatch(r"/api/v1/runs/([^/]+)", path)
        if method == "PATCH" and m:  # the real server's rule: a field given replaces the stored one
            with self.lock:
                if m.group(1) not in self.runs:
                    return 404, {}, {"error": {"code": "run_not_found", "message": f"no run {m.group(1)!r}"}}
                self.runs[m.group(1)].update(json.loads(body))
                return 200, {}, self.runs[m.group(1)]
        m = re.fullmatch(r"/api/v1/runs/([^/]+)/(points|finish|heartbeat)", path)
        if method == "POST" and m:
            run_id, what = m.groups()
            with self.lock:
                if run_id not in self.runs:
                    return 404, {}, {"error": {"code": "run_not_found", "message": f"no run {run_id!r}"}}
                data = wire.loads_batch(body)  # JSON, or the client's binary columnar batch
                if what == "finish":
                    self.runs[run_id]["status"] = data["status"]
                    return 200, {}, self.runs[run_id]
                if what == "heartbeat":
                    return 200, {}, {"ok": True}
                n = 0
                for s in data["series"]:
                    target = self.points.setdefault((run_id, s["key"]), {})
                    self.kinds[(run_id, s["key"])] = s["kind"]
                    for step, value in zip(s["steps"], s["values"], strict=True):
                        v = wire.decode_value(value)
                        target[step] = v
                        self.arrivals.append((run_id, s["key"], step, v))
                        n += 1
                return 200, {}, {"accepted": n, "alerts": list(self.alerts)}
        return 404, {}, {"error": {"code": "not_found", "message": path}}

    # ---- helpers for tests ------------------------------------------------------------------------

    def series(self, run_id: str, key: str) -> dict[int, float]:
        with self.lock:
            return dict(self.points.get((run_id, key), {}))

    def paths(self, suffix: str = "") -> list[str]:
        with self.lock:
            return [p for _, p, _, _ in self.requests if p.endswith(suffix)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()
