"""The app's OpenAPI document, completed, and its pages (installed by ``create_app``).

:func:`install` completes the document (every schema a route refers to by ``$ref`` without a pydantic
body parameter, such as ``IngestBatch``, which ingest parses by hand) and serves the API docs at
``/docs`` with Swagger UI from ``dashboard/static/vendor/swagger-ui`` (installed from the npm registry at
the version pinned in ``dashboard/package-lock.json`` by ``make assets``; no CDN, no inline script, so
the page works offline and under the dashboard's Content-Security-Policy). The API reference page
(docs/api-reference.md) is written from the document by ``losswatch.server.openapi_docs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import HTMLResponse, RedirectResponse

from losswatch.server.api import schemas

_REF = "#/components/schemas/"
_VENDOR = "/static/vendor/swagger-ui"

_DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>losswatch API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{_VENDOR}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="/openapi.json" data-oauth2-redirect-url="/docs/oauth2-redirect"></div>
<script src="{_VENDOR}/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""
_OAUTH2_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>losswatch API</title></head>
<body><script src="{_VENDOR}/oauth2-redirect.js"></script></body></html>
"""


def _refs(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF):
                yield ref[len(_REF):]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def complete_components(spec: dict[str, Any]) -> dict[str, Any]:
    """Add to ``spec`` every schema of :mod:`losswatch.server.api.schemas` that it refers to but lacks
    (a route that parses its body by hand declares it with ``openapi_extra`` and a ``$ref``)."""
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    while missing := sorted(set(_refs(spec)) - set(components)):
        for name in missing:
            model = getattr(schemas, name, None)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise RuntimeError(f"the OpenAPI document refers to {_REF}{name}, which is no schema of "
                                   "losswatch.server.api.schemas")
            schema = model.model_json_schema(ref_template=_REF + "{model}", mode="validation")
            for sub, definition in schema.pop("$defs", {}).items():
                components.setdefault(sub, definition)
            components[name] = schema
    return spec


def install(app: FastAPI) -> None:
    """Complete the app's OpenAPI document and serve ``/docs`` (Swagger UI, local assets);
    ``/redoc`` leads there too. Call on an app made with ``docs_url=None, redoc_url=None``."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_components(plain())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(_DOCS_PAGE)

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def docs_oauth2_redirect() -> HTMLResponse:
        return HTMLResponse(_OAUTH2_PAGE)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        return RedirectResponse("/docs")
