"""Read timeouts for ``losswatch serve``: a client that sends its request slowly is cut off.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has no timeout while a
request is being read: a connection that sends its headers one byte every few seconds (slowloris),
or that opens and sends nothing, holds a socket and a little memory for ever, and a thousand of them
exhaust the process's file descriptors. :func:`with_read_timeouts` wraps uvicorn's HTTP protocol
class (httptools or h11, or a subclass such as ``losswatch.server.protocol``'s) with two timers:

- the **head** (request line and headers) must arrive whole within ``LOSSWATCH_HEADER_TIMEOUT_SECONDS``
  of the connection opening, or of the first byte after the previous response; otherwise the
  server answers ``408`` and closes the connection;
- while a **body** is read, the client must not go silent for more than
  ``LOSSWATCH_BODY_TIMEOUT_SECONDS`` between two reads (time spent while the server itself has
  paused reading, because the app has not consumed the body yet, does not count).
"""

from __future__ import annotations

from typing import Any

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")


def _body(message: str) -> bytes:
    import orjson

    return orjson.dumps({"error": {"code": "request_timeout", "message": message, "details": None}})


def with_read_timeouts(base: type, head_seconds: float, body_seconds: float) -> type:
    """A subclass of the uvicorn protocol class ``base`` that enforces the two read timeouts."""

    class ReadTimeoutProtocol(base):  # type: ignore[valid-type, misc]
        header_timeout = head_seconds
        body_timeout = body_seconds

        def connection_made(self, transport: Any) -> None:
            self._head_timer: Any = None
            self._body_timer: Any = None
            super().connection_made(transport)
            self._arm_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self._awaiting_head():
                self._arm_head()
            super().data_received(data)
            if self.transport.is_closing():
                self._cancel_timers()
                return
            if not self._awaiting_head():
                if self._head_timer is not None:
                    self._head_timer.cancel()
                    self._head_timer = None
                if self.cycle.more_body:
                    self._arm_body()
                elif self._body_timer is not None:
                    self._body_timer.cancel()
                    self._body_timer = None

        # --- timers --------------------------------------------------------------------------

        def _awaiting_head(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or bool(cycle.response_complete)

        def _arm_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

        def _arm_body(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_expired)

        def _cancel_timers(self) -> None:
            for name in ("_head_timer", "_body_timer"):
                timer = getattr(self, name, None)
                if timer is not None:
                    timer.cancel()
                    setattr(self, name, None)

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not self._awaiting_head():
                return
            self._refuse(f"the request line and headers did not arrive within {self.header_timeout:g} s "
                         "(LOSSWATCH_HEADER_TIMEOUT_SECONDS)")

        def _body_expired(self) -> None:
            self._body_timer = None
            cycle = getattr(self, "cycle", None)
            if self.transport.is_closing() or cycle is None or not cycle.more_body or cycle.response_complete:
                return
            if self.flow.read_paused:  # the server is not reading: not the client's fault
                self._arm_body()
                return
            if cycle.response_started:
                self.transport.close()
                return
            cycle.keep_alive = False
            self._refuse(f"the request body stalled for {self.body_timeout:g} s (LOSSWATCH_BODY_TIMEOUT_SECONDS)")

        def _refuse(self, message: str) -> None:
            body = _body(message)
            peer = f"{self.client[0]}:{self.client[1]}" if getattr(self, "client", None) else "?"
            self.logger.warning("closed a slow connection from %s: %s", peer, message)
            self.transport.write(_408 % (len(body), body))
            self.transport.close()

    ReadTimeoutProtocol.__name__ = ReadTimeoutProtocol.__qualname__ = f"ReadTimeout{base.__name__}"
    return ReadTimeoutProtocol


def protocol_class(http: Any) -> type:
    """The protocol class behind uvicorn's ``http=`` option (a class already, or 'h11'/'httptools'/'auto')."""
    if isinstance(http, type):
        return http
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol  # type: ignore[no-any-return]


def with_timeouts(options: dict[str, Any], settings: Any) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments ``options`` with their protocol wrapped by :func:`with_read_timeouts`
    (``LOSSWATCH_HEADER_TIMEOUT_SECONDS``, ``LOSSWATCH_BODY_TIMEOUT_SECONDS``)."""
    base = protocol_class(options.get("http", "auto"))
    return {**options, "http": with_read_timeouts(base, settings.header_timeout_seconds,
                                                  settings.body_timeout_seconds)}
