"""Dependencies shared by the routers: the database, the caller, and access checks."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from losswatch.server.db import Database
from losswatch.server.errors import Forbidden, Unauthorized
from losswatch.server.schemas import ErrorResponse
from losswatch.server.services.tokens import LOCAL, Principal, authenticate

TOKEN_COOKIE = "losswatch_token"

_ERROR_TEXT = {
    400: "Bad request",
    401: "Missing, malformed or revoked token (`unauthorized`)",
    403: "The token lacks the scope or belongs to another project (`forbidden`)",
    404: "No such project, run, series or channel",
    409: "Conflict",
    413: "Body above LOSSWATCH_MAX_BODY_BYTES (`body_too_large`)",
    422: "Invalid request (`invalid_request` and more specific codes), with `details` per bad field",
}


def error_responses(*statuses: int, model: type = ErrorResponse) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` entries for the error statuses a route can answer, all in one envelope
    (declared so that clients and the schema fuzzer know every status a route can give)."""
    return {status: {"model": model, "description": _ERROR_TEXT[status]} for status in statuses}


# What any /api/v1 route can answer besides its success: auth, a missing resource, the body limit and
# validation. Routers pass this as ``APIRouter(responses=API_ERRORS)``.
API_ERRORS = error_responses(401, 403, 404, 413, 422)
_AUTH_TTL_S = 10.0  # a revoked token stops working within this many seconds
_RUN_OWNER_TTL_S = 10.0  # a deleted run's id is free for another project after this many seconds


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
    run -> project mapping is cached; only for ``_RUN_OWNER_TTL_S``, because a deleted run's id can
    be taken again (by another project) while another server process still holds the old entry."""
    cache: dict[str, tuple[float, int, str]] = request.app.state.run_projects
    hit = cache.get(run_id)
    now = time.monotonic()
    if hit is None or hit[0] <= now:
        from losswatch.server.services.runs import get_run

        with request.app.state.db.read() as session:
            run, project = get_run(session, run_id)
        hit = (now + _RUN_OWNER_TTL_S, run.project_id, project)
        if len(cache) > 100_000:
            cache.clear()
        cache[run_id] = hit
    check_access(principal, hit[1], hit[2], scope)


def forget_run(request: Request, run_id: str) -> None:
    """Drop a deleted run from this process's run -> project cache."""
    request.app.state.run_projects.pop(run_id, None)
