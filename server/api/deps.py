"""Dependencies shared by the routers: the database, the caller, and access checks."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from losswatch.server.db import Database
from losswatch.server.errors import Forbidden, Unauthorized
from losswatch.server.services.tokens import LOCAL, Principal, authenticate

TOKEN_COOKIE = "losswatch_token"
_AUTH_TTL_S = 10.0  # a revoked token stops working within this many seconds


class JSONBytes(Response):
    """A JSON answer already shaped by a service (wire-encoded floats), written by orjson."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must read 'Bearer <token>'")
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE)


def get_principal(request: Request) -> Principal:
    state = request.app.state
    if not state.settings.auth_required:
        return LOCAL
    token = _token_of(request)
    if not token:
        raise Unauthorized("this server requires a token: send 'Authorization: Bearer <token>' "
                           "(make one with `losswatch token create --project NAME`)")
    cache: dict[str, tuple[float, Principal | None]] = state.auth_cache
    hit = cache.get(token)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        principal = hit[1]
    else:
        with state.db.read() as session:
            principal = authenticate(session, token)
        if len(cache) > 10_000:
            cache.clear()
        cache[token] = (now + _AUTH_TTL_S, principal)
    if principal is None:
        raise Unauthorized("the token is not valid or was revoked")
    return principal


DB = Annotated[Database, Depends(get_db)]
Caller = Annotated[Principal, Depends(get_principal)]


def check_access(principal: Principal, project_id: int, project: str, scope: str) -> None:
    """403 unless the caller may act on ``project`` with ``scope``."""
    if principal.project_id is not None and principal.project_id != project_id:
        raise Forbidden(f"this token belongs to project {principal.project!r}, not {project!r}")
    if not principal.allows(scope):
        raise Forbidden(f"this token has scope {principal.scope!r}; this needs {scope!r}")


def check_scope(principal: Principal, scope: str) -> None:
    if not principal.allows(scope):
        raise Forbidden(f"this token has scope {principal.scope!r}; this needs {scope!r}")


def authorize_run(request: Request, principal: Principal, run_id: str, scope: str) -> None:
    """403/404 unless the caller may act on the run. A run never changes project, so the
    run -> project mapping is cached for the life of the process."""
    cache: dict[str, tuple[int, str]] = request.app.state.run_projects
    owner = cache.get(run_id)
    if owner is None:
        from losswatch.server.services.runs import get_run

        with request.app.state.db.read() as session:
            run, project = get_run(session, run_id)
        owner = (run.project_id, project)
        if len(cache) > 100_000:
            cache.clear()
        cache[run_id] = owner
    check_access(principal, owner[0], owner[1], scope)
