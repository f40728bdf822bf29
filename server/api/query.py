"""The downsampled query over many runs and series."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response

from losswatch.client import wire
from losswatch.server.api.deps import API_ERRORS, DB, Caller, authorize_run
from losswatch.server.api.schemas import QueryResult
from losswatch.server.services import query as query_service

router = APIRouter(prefix="/api/v1", tags=["query"], responses=API_ERRORS)


@router.get("/query", response_model=QueryResult,
            summary="Downsampled series of many runs (min/max/last/count/non-finite per bucket)",
            responses={200: {"content": {query_service.BINARY_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary",
                           "description": "format=binary: the same buckets as typed columns (docs/api.md)"}}}}})
def query(
    request: Request, db: DB, caller: Caller,
    run: Annotated[list[str], Query(min_length=1, max_length=100, description="Run ids (repeat)")],
    key: Annotated[list[str], Query(max_length=100, description="Series keys (repeat); none: all")] = [],  # noqa: B006
    start: Annotated[int, Query(ge=0, le=wire.MAX_STEP)] = 0,
    end: Annotated[int, Query(ge=0, le=wire.MAX_STEP)] = wire.MAX_STEP,
    buckets: Annotated[int, Query(ge=1, le=query_service.MAX_BUCKETS)] = 1000,
    format: Annotated[Literal["json", "binary"], Query(  # noqa: A002 - the parameter's public name
        description="json (default), or binary: the same buckets as typed columns (docs/api.md)")] = "json",
) -> Response:
    for rid in dict.fromkeys(run):
        authorize_run(request, caller, rid, "read")
    with db.read() as s:
        answer = query_service.query(s, run, key, start, end, buckets)
    if format == "binary":
        return Response(query_service.encode_binary(answer), media_type=query_service.BINARY_MEDIA_TYPE)
    # The columns are numpy arrays: orjson writes them without a Python object per number.
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
