"""The HTTP protocol options of ``losswatch serve``: a bounded request head.

uvicorn's httptools protocol buffers a request's line and headers without limit (a 16 MB header is
read whole, then handed to the app). :func:`uvicorn_options` gives ``uvicorn.run`` a protocol that
counts the bytes of a request head as they arrive and answers ``431 Request Header Fields Too
Large`` (and closes the connection) as soon as they pass ``LOSSWATCH_MAX_HEADER_BYTES``, so a
hostile head costs at most that much memory plus one read. Bodies are bounded separately, by
``LOSSWATCH_MAX_BODY_BYTES`` (413, in ``losswatch.server.app``). Without httptools, uvicorn's h11
protocol gets the same bound through ``h11_max_incomplete_event_size`` (h11 answers 400, not 431).
"""

from __future__ import annotations

from typing import Any

import orjson

from losswatch.server.settings import Settings


class _HeadTooLarge(Exception):
    pass


def make_protocol(max_head: int) -> type:
    """A subclass of uvicorn's httptools protocol that refuses request heads above ``max_head`` bytes."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class BoundedHeadProtocol(HttpToolsProtocol):
        max_head_bytes = max_head

        def connection_made(self, transport: Any) -> None:
            self._head_open = True  # between the end of a request and the end of the next one's headers
            self._head_seen = 0
            self._refused = False
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._head_open:
                self._head_seen += len(data)
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            except httptools.HttpParserError:
                if not self._refused:
                    msg = "Invalid HTTP request received."
                    self.logger.warning(msg)
                    self.send_400_response(msg)
                    return
            if self._refused or (self._head_open and self._head_seen > self.max_head_bytes):
                self._send_431()

        def on_headers_complete(self) -> None:
            self._head_open = False
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self.max_head_bytes:
                self._refused = True
                raise _HeadTooLarge
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._head_open, self._head_seen = True, 0
            super().on_message_complete()

        def _send_431(self) -> None:
            self._refused = True
            body = orjson.dumps({"error": {
                "code": "headers_too_large",
                "message": f"the request line and headers are larger than {self.max_head_bytes} bytes "
                           "(LOSSWATCH_MAX_HEADER_BYTES)",
                "details": None}})
            head = [STATUS_LINE[431]]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.extend([b"content-type: application/json\r\n",
                         b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                         b"connection: close\r\n", b"\r\n", body])
            self.logger.warning("refused a request head above %d bytes from %s", self.max_head_bytes,
                                f"{self.client[0]}:{self.client[1]}" if self.client else "?")
            self.transport.write(b"".join(head))
            self.transport.close()

    return BoundedHeadProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` that bound the request head."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes}
    return {"http": make_protocol(settings.max_header_bytes)}
