"""Security headers and the sign-in cookie of the dashboard.

Every dashboard page carries a Content-Security-Policy that allows only this origin's scripts (no
inline script at all: page data travels in ``data-`` attributes that Jinja2 escapes) plus the usual
hardening headers. The router sets them on each page; :class:`SecurityHeadersMiddleware` does the same
for any other non-API response (static files, the app's own HTML error pages) when the app adds it::

    app.add_middleware(SecurityHeadersMiddleware)

The API accepts the token from the ``losswatch_token`` cookie as well as from the Bearer header; the
cookie is set only by ``POST /login`` (HttpOnly, SameSite=Strict), so page scripts never see it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from losswatch.client import wire

TOKEN_COOKIE: Final = wire.TOKEN_COOKIE

# uPlot writes inline style attributes, hence 'unsafe-inline' for styles only.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def apply_security_headers(headers: MutableMapping[str, str]) -> None:
    """Set the dashboard's security headers on a response's headers (existing values win)."""
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:
            headers[name] = value


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: adds :data:`SECURITY_HEADERS` to every HTTP response outside ``/api``.

    API answers are JSON read by scripts; they get ``X-Content-Type-Options`` only.
    """

    def __init__(self, app: ASGIApp, api_prefix: str = "/api/") -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = str(scope.get("path", "")).startswith(self.api_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {name.lower() for name, _ in raw}
                wanted = {"X-Content-Type-Options": "nosniff"} if is_api else SECURITY_HEADERS
                for name, value in wanted.items():
                    if name.lower().encode("latin-1") not in present:
                        raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)
