"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from losswatch import __version__
from losswatch.dashboard import views as dashboard
from losswatch.server.api import admin, alerts, mlflow, openapi, projects, query, runs, tokens
from losswatch.server.errors import LosswatchError
from losswatch.server.services.tokens import AuthCache
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database, prepare_database

log = logging.getLogger("losswatch.server")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden",
               413: "body_too_large", 415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}}, status_code=status)


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _render_error(request: Request, status: int, code: str, message: str, details: Any = None) -> Response:
    if _wants_html(request):
        return dashboard.render_app_error(request, status, code, message)
    return error_response(status, code, message, details)


class BodyLimit:
    """413 for bodies above ``limit`` bytes, whether or not they declare a Content-Length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(413, "body_too_large",
                              f"the request body is larger than {self.limit} bytes (LOSSWATCH_MAX_BODY_BYTES); "
                              "send smaller batches")
        await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


class RefuseNul:
    """422 for a NUL character anywhere in the path or the query string: no backend stores it
    (PostgreSQL text cannot hold one) and no name contains one, so it can only be an attack or a bug."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope.get("path", "")
                                        or b"%00" in scope.get("query_string", b"")):
            where = "path" if "\x00" in scope.get("path", "") else "query"
            resp = error_response(422, "invalid_request", f"the {where} contains a NUL (%00) character",
                                  [{"loc": [where], "msg": "NUL character"}])
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings)
        prepare_database(settings, db)
        app.state.db = db
        workers = None
        if settings.background_workers:
            from losswatch.server.alerts.delivery import BackgroundWorkers

            workers = BackgroundWorkers(db)
            workers.start()
        try:
            yield
        finally:
            if workers is not None:
                workers.stop()
            db.dispose()

    app = FastAPI(
        title="losswatch",
        version=__version__,
        summary="Training-metrics monitoring: losses, their components and eval metrics of every batch.",
        lifespan=lifespan,
        docs_url=None,  # served by api.openapi.install: Swagger UI from local assets, under the CSP
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.auth_cache = AuthCache(ttl=settings.auth_cache_seconds)  # verified tokens only, LRU-bounded
    app.state.run_projects = {}

    @app.exception_handler(LosswatchError)
    async def _losswatch_error(request: Request, exc: LosswatchError) -> Response:
        return _render_error(request, exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in exc.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        return _render_error(request, 422, "invalid_request", f"invalid request at {where}: {first['msg']}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body that is not JSON (or not UTF-8): the same 422 as ingest gives
            return _render_error(request, 422, "invalid_json", "the request body is not valid JSON",
                                 [{"loc": ["body"], "msg": "not valid JSON"}])
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _render_error(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _render_error(request, 500, "internal_error", "unexpected server error; see the server log")

    for router in (projects.router, tokens.router, runs.router, query.router, alerts.router, admin.router,
                   mlflow.router, mlflow.artifacts_router):
        app.include_router(router)

    openapi.install(app)

    @app.get("/healthz", tags=["meta"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    _mount_dashboard(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RefuseNul)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    from fastapi.staticfiles import StaticFiles

    app.include_router(dashboard.router)
    static = Path(dashboard.__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")
    dashboard.setup(app)
