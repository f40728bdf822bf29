"""Peers for the ingest benchmark: FastAPI endpoints with no database, on the same route.

``orjson_app``: parse the body with orjson and count the points (the floor of any JSON ingest).
``parse_app``: losswatch's own batch parser and validation, no storage.
``columnar_app``: read the frame of a binary columnar body and count its points (the floor of the
binary encoding); ``columnar_parse_app``: losswatch's columnar parser and validation, no storage.
The work runs inline on the event loop: no thread-pool hop, the lowest overhead FastAPI allows.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response


def _count(body: bytes, parse: bool) -> int:
    from losswatch.client import wire

    columnar = wire.is_columnar(body)
    if parse:
        from losswatch.server.services.batches import parse_batch, parse_columnar

        return sum(len(sb.points) for sb in (parse_columnar if columnar else parse_batch)(body))
    if columnar:
        return sum(s.n for s in wire.columnar_layout(body))
    return sum(len(s["values"]) for s in orjson.loads(body)["series"])


def _app(parse: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/runs/{run_id}/points")
    async def points(run_id: str, request: Request) -> Response:
        body = await request.body()
        n = _count(body, parse)
        return Response(orjson.dumps({"accepted": n, "alerts": []}), media_type="application/json")

    return app


def orjson_app() -> FastAPI:
    return _app(parse=False)


def parse_app() -> FastAPI:
    return _app(parse=True)


columnar_app = orjson_app  # the same apps: the body's magic chooses the parser
columnar_parse_app = parse_app
