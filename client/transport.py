"""The network part of the client, one small replaceable object.

Anything with ``request(method, path, body) -> (status, headers, body)`` can stand in for
:class:`HTTPTransport` (``losswatch.init(transport=...)``, ``sync_dir(transport=...)``): tests pass a
transport that calls the app in process, as httpx's mock and ASGI transports do. ``path`` starts
with ``/api/v1``; ``body`` is the encoded request body or ``None``; ``headers`` in the answer
is a dict with lower-case names. A transport raises :class:`TransportError` when no HTTP answer
came back; an error status is an answer, not an exception.

Bodies are JSON, except ingest batches to a transport whose ``columnar`` attribute is true: those
are the binary columnar body of :mod:`losswatch.client.wire`, and the transport sends them with
``Content-Type: wire.content_type(body)`` (:class:`HTTPTransport` does). A transport without the
attribute gets JSON only.
"""

from __future__ import annotations

import http.client
import socket
import urllib.parse
from typing import Protocol

from losswatch.client import wire
from losswatch.client.errors import TransportError

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "losswatch-client/0.1.0"

Response = tuple[int, dict[str, str], bytes]


class Transport(Protocol):
    def request(self, method: str, path: str, body: bytes | None = None) -> Response: ...

    def close(self) -> None: ...


class HTTPTransport:
    """One HTTP/1.1 keep-alive connection to the server (standard library ``http.client``).

    Not thread-safe: the client uses it from its sender thread only. A connection the server
    closed while idle is reopened once at once (every losswatch request is idempotent).
    """

    columnar = True  # ingest batches go out in the binary columnar encoding

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"losswatch: expected an http:// or https:// URL, got {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            try:
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = wire.content_type(body)
        reused = self._conn is not None
        for attempt in (0, 1):
            try:
                conn = self._connect()
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 0 and reused:
                    continue  # the server dropped an idle keep-alive connection: reopen once
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            if resp.will_close:
                self.close()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
