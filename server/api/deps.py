"""Dependencies shared by the routers: the database, the caller, and access checks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from losswatch.client import wire
from losswatch.server.api.schemas import ErrorResponse
from losswatch.server.errors import Forbidden, LosswatchError, Unauthorized, project_not_found, run_not_found
from losswatch.server.services import projects, runs
from losswatch.server.services.tokens import LOCAL, AuthCache, Principal, authenticate
from losswatch.server.storage.db import Database

TOKEN_COOKIE = wire.TOKEN_COOKIE

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
_RUN_OWNER_TTL_S = 10.0  # a deleted run's id is free for another project after this many seconds


class JSONBytes(Response):
    """A JSON answer already shaped by a service (wire-encoded floats), written by orjson."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # an integer past 64 bits in a run's config: exact, by the standard library
            return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def _token_of(request: Request) -> tuple[str | None, bool]:
    """The presented token and whether it came from the dashboard's cookie (not a header)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must read 'Bearer <token>'")
        return value.strip(), False
    token = request.cookies.get(TOKEN_COOKIE)
    return token, token is not None


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CROSS_SITE = "cross_site_request"


def _check_cookie_request(request: Request) -> None:
    """CSRF: a request that changes state with the sign-in cookie (which a browser attaches by itself)
    must come from this site's own pages: a same-origin ``Origin`` (or, without one,
    ``Sec-Fetch-Site: same-origin``), and a JSON body if it has one (an HTML form or a ``no-cors``
    fetch from another page can send only form or text bodies). Bearer-token clients are not affected."""
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"a request signed in with the dashboard cookie must come from this site's pages "
                        f"(Sec-Fetch-Site: {site[:40]}); scripts use 'Authorization: Bearer <token>'", code=_CROSS_SITE)
    if origin is not None:
        if not _same_origin(request, origin):
            raise Forbidden(f"a request signed in with the dashboard cookie must come from this site's pages, "
                            f"not from {origin[:100]!r}; scripts use 'Authorization: Bearer <token>'", code=_CROSS_SITE)
    elif site != "same-origin":
        raise Forbidden("a request signed in with the dashboard cookie must carry a same-origin Origin or "
                        "Sec-Fetch-Site header; scripts use 'Authorization: Bearer <token>'", code=_CROSS_SITE)
    has_body = request.headers.get("transfer-encoding") is not None or request.headers.get(
        "content-length", "0").strip() not in ("", "0")
    if has_body:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise LosswatchError(
                f"a request signed in with the dashboard cookie must send JSON (Content-Type: application/json), "
                f"not {media[:60] or 'no content type'!r}", status=415, code="unsupported_media_type")


def _same_origin(request: Request, origin: str) -> bool:
    if origin == "null":
        return False
    netloc = urlsplit(origin).netloc
    if netloc and netloc == request.headers.get("host", ""):
        return True
    public = request.app.state.settings.public_url
    return bool(public) and netloc == urlsplit(public).netloc


def get_principal(request: Request) -> Principal:
    principal = _principal(request, lookup=True)
    assert principal is not None
    return principal


def cached_principal(request: Request) -> Principal | None:
    """:func:`get_principal` without the database (for the event loop): None where the token is not
    in this process's cache and would have to be read. Raises as :func:`get_principal` does."""
    return _principal(request, lookup=False)


def _principal(request: Request, *, lookup: bool) -> Principal | None:
    state = request.app.state
    if not state.settings.auth_required:
        return LOCAL
    token, from_cookie = _token_of(request)
    if not token:
        raise Unauthorized("this server requires a token: send 'Authorization: Bearer <token>' "
                           "(make one with `losswatch token create --project NAME`)")
    if from_cookie:
        _check_cookie_request(request)
    cache: AuthCache = state.auth_cache
    principal = cache.get(token)
    if principal is None:
        if not lookup:
            return None
        with state.db.read() as session:
            principal = authenticate(session, token)
        if principal is None:  # unknown, revoked or expired: never cached
            raise Unauthorized("the token is not valid, has expired or was revoked")
        cache.put(token, principal)
    return principal


DB = Annotated[Database, Depends(get_db)]
Caller = Annotated[Principal, Depends(get_principal)]


def check_access(principal: Principal, project_id: int, project: str, scope: str,
                 hidden: Exception | None = None) -> None:
    """404 unless ``project`` is the caller's (the answer for a missing one: another project's token
    learns nothing, not even that a project or run exists; ``hidden`` is that answer, default
    ``project_not_found``); 403 when the caller's scope is too low for ``scope``."""
    if principal.project_id is not None and principal.project_id != project_id:
        raise hidden if hidden is not None else project_not_found(project)
    if not principal.allows(scope):
        raise Forbidden(f"this token has scope {principal.scope!r}; this needs {scope!r}")


@dataclass(frozen=True)
class ProjectRef:
    """A project the caller may act on: what handlers pass on to services (never the ORM row)."""

    id: int
    name: str


class ProjectAccess:
    """Dependency: the project of the ``{project}`` path parameter, once the caller may act on it with
    ``scope`` (401 without a valid token, 404 for a missing or another project's, 403 for too low a scope).
    It reads in its own short session, so the handler's transaction holds only the handler's work."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, project: str, db: DB, caller: Caller) -> ProjectRef:
        with db.read() as session:
            ref = ProjectRef(*projects.project_key(session, project))
        check_access(caller, ref.id, ref.name, self.scope)
        return ref


ReadProject = Annotated[ProjectRef, Depends(ProjectAccess("read"))]
WriteProject = Annotated[ProjectRef, Depends(ProjectAccess("write"))]
AdminProject = Annotated[ProjectRef, Depends(ProjectAccess("admin"))]


def authorize_run(request: Request, principal: Principal, run_id: str, scope: str) -> None:
    """404 (another project's run, or none) or 403 (too low a scope) unless the caller may act on the run. A run never changes project, so the
    run -> project mapping is cached; only for ``_RUN_OWNER_TTL_S``, because a deleted run's id can
    be taken again (by another project) while another server process still holds the old entry."""
    _authorize_run(request, principal, run_id, scope, lookup=True)


def authorize_run_cached(request: Request, principal: Principal, run_id: str, scope: str) -> bool:
    """:func:`authorize_run` without the database (for the event loop): False, having checked
    nothing, where the run's project is not in this process's cache. Raises as :func:`authorize_run`."""
    return _authorize_run(request, principal, run_id, scope, lookup=False)


def _authorize_run(request: Request, principal: Principal, run_id: str, scope: str, *, lookup: bool) -> bool:
    cache: dict[str, tuple[float, int, str]] = request.app.state.run_projects
    hit = cache.get(run_id)
    now = time.monotonic()
    if hit is None or hit[0] <= now:
        if not lookup:
            return False
        with request.app.state.db.read() as session:
            project_id, project = runs.run_project(session, run_id)
        hit = (now + _RUN_OWNER_TTL_S, project_id, project)
        if len(cache) > 100_000:
            cache.clear()
        cache[run_id] = hit
    check_access(principal, hit[1], hit[2], scope, hidden=run_not_found(run_id))
    return True


def forget_run(request: Request, run_id: str) -> None:
    """Drop a deleted run from this process's run -> project cache."""
    request.app.state.run_projects.pop(run_id, None)
