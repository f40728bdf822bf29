"""Peers for the ingest benchmark: FastAPI endpoints with no database, on the same route.

``orjson_app``: parse the body with orjson and count the points (the floor of any JSON ingest).
``parse_app``: losswatch's own batch parser and validation, no storage.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response


def _app(parse: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/runs/{run_id}/points")
    async def points(run_id: str, request: Request) -> Response:
        body = await request.body()
        if parse:
            from losswatch.server.services.batches import parse_batch

            n = sum(len(sb.points) for sb in parse_batch(body))
        else:
            n = sum(len(s["values"]) for s in orjson.loads(body)["series"])
        return Response(orjson.dumps({"accepted": n, "alerts": []}), media_type="application/json")

    return app


def orjson_app() -> FastAPI:
    return _app(parse=False)


def parse_app() -> FastAPI:
    return _app(parse=True)
