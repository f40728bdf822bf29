"""One run: read, update, finish, heartbeat, its series; ingest and read its points."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from losswatch.client import wire
from losswatch.server.api.deps import API_ERRORS, DB, Caller, JSONBytes, authorize_run
from losswatch.server.schemas import (
    RUN_ID_PATTERN,
    HeartbeatResult,
    IngestBatch,
    IngestResult,
    RawPoints,
    RunFinish,
    RunRead,
    RunUpdate,
    SeriesList,
    SeriesRead,
)
from losswatch.server.services import ingest, points, runs

router = APIRouter(prefix="/api/v1/runs", tags=["runs"], responses=API_ERRORS)
RunId = Annotated[str, Query(pattern=RUN_ID_PATTERN)]
Step = Annotated[int, Query(ge=0, le=wire.MAX_STEP)]


@router.get("/{run_id}", response_model=RunRead, summary="One run with its series summaries")
def get_run(run_id: str, request: Request, db: DB, caller: Caller) -> RunRead:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return runs.read_run(s, run_id)


@router.patch("/{run_id}", response_model=RunRead, summary="Update name, group, tags, config, notes or status")
def update_run(run_id: str, body: RunUpdate, request: Request, db: DB, caller: Caller) -> RunRead:
    authorize_run(request, caller, run_id, "write")
    with db.write() as s:
        return runs.update_run(s, run_id, body)


@router.post("/{run_id}/finish", response_model=RunRead, summary="End a run")
def finish_run(run_id: str, body: RunFinish, request: Request, db: DB, caller: Caller) -> RunRead:
    authorize_run(request, caller, run_id, "write")
    with db.write() as s:
        return runs.finish_run(s, run_id, body.status)


@router.post("/{run_id}/heartbeat", response_model=HeartbeatResult, summary="The client is alive")
def heartbeat(run_id: str, request: Request, db: DB, caller: Caller) -> HeartbeatResult:
    authorize_run(request, caller, run_id, "write")
    return ingest.heartbeat(db, run_id)


@router.get("/{run_id}/series", response_model=SeriesList, summary="The run's series with summaries")
def list_series(run_id: str, request: Request, db: DB, caller: Caller) -> SeriesList:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        run = runs.read_run(s, run_id)
    return SeriesList(series=[SeriesRead(key=k, **v.model_dump()) for k, v in run.summary.items()])


@router.post(
    "/{run_id}/points",
    response_model=IngestResult,
    summary="Ingest a columnar batch (many series x many steps)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/IngestBatch"}}}}},
)
async def ingest_points(run_id: str, request: Request, db: DB, caller: Caller) -> JSONBytes:
    """The body is parsed by hand (orjson + numpy), not by a pydantic model: that is 4x faster
    for large batches. Its schema is still `IngestBatch`."""
    await run_in_threadpool(authorize_run, request, caller, run_id, "write")
    body = await request.body()
    result = await run_in_threadpool(ingest.ingest, db, run_id, body)
    return JSONBytes(result)


@router.get("/{run_id}/points", response_model=RawPoints, summary="Exact raw points of one series, paged")
def read_points(
    run_id: str, request: Request, db: DB, caller: Caller,
    key: Annotated[str, Query(min_length=1, max_length=wire.MAX_KEY_LENGTH)],
    start: Step = 0, end: Step = wire.MAX_STEP,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> JSONBytes:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return JSONBytes(points.read_points(s, run_id, key, start, end, limit))


@router.get("/{run_id}/export.csv", summary="Streaming CSV of one or more series",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}, "description": "key,step,value,wall_time rows"}})
def export_csv(
    run_id: str, request: Request, db: DB, caller: Caller,
    key: Annotated[list[str], Query(min_length=1, description="Series keys (repeat the parameter)")],
) -> StreamingResponse:
    authorize_run(request, caller, run_id, "read")
    session = db.sessions()
    try:
        rows = points.iter_csv(session, run_id, key)
        head = next(rows)  # raises 404 here, before the response starts
    except BaseException:
        session.close()
        raise

    def stream():  # type: ignore[no-untyped-def]
        try:
            yield head
            yield from rows
        finally:
            session.close()

    filename = f"{run_id}.csv"
    return StreamingResponse(stream(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


_ = IngestBatch  # referenced by the OpenAPI requestBody above
