"""One run: read, update, finish, heartbeat, its series; ingest and read its points."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from losswatch.client import wire
from losswatch.server.api.deps import (
    API_ERRORS,
    DB,
    Caller,
    JSONBytes,
    authorize_run,
    authorize_run_cached,
    cached_principal,
    get_db,
    get_principal,
)
from losswatch.server.api.schemas import (
    RUN_ID_PATTERN,
    ErrorResponse,
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
from losswatch.server.errors import LosswatchError
from losswatch.server.services import ingest, points, runs
from losswatch.server.services.batches import SeriesBatch

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


_BATCH_SCHEMA = {"schema": {"$ref": "#/components/schemas/IngestBatch"}}
_COLUMNAR_SCHEMA = {"schema": {"type": "string", "format": "binary",
                               "description": "The binary columnar batch of losswatch.client.wire (docs/api.md)"}}
_JSON_MEDIA = frozenset({"", wire.JSON_TYPE, "text/plain", "application/x-www-form-urlencoded"})


def _columnar(content_type: str | None) -> bool:
    """True for the binary columnar body, False for JSON; 415 for anything else. A body without a
    Content-Type, or with curl's default (form-urlencoded), is read as JSON as it always was."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == wire.COLUMNAR_TYPE:
        return True
    if media in _JSON_MEDIA or media.endswith("+json"):
        return False
    raise LosswatchError(f"ingest takes {wire.JSON_TYPE} or {wire.COLUMNAR_TYPE}, not {media!r}",
                         code="unsupported_media_type", status=415,
                         details=[{"loc": ["header", "content-type"], "msg": "unsupported media type"}])


def _checked(request: Request, run_id: str) -> bool:
    """The caller and the run's access check (401/403/404 first), then the encoding (415):
    whether the body is columnar."""
    authorize_run(request, get_principal(request), run_id, "write")
    return _columnar(request.headers.get("content-type"))


def _ingest(request: Request, run_id: str, body: bytes) -> dict[str, object]:
    """Everything of one ingest request that needs no event loop, in one worker-thread hop: the
    checks, parsing, and the transaction."""
    return ingest.ingest(get_db(request), run_id, body, columnar=_checked(request, run_id))


# Bodies parsed on the event loop when the checks need no database: about 0.3 ms for a columnar
# batch of 10,000 points, as long as a thread hop; JSON costs about ten times more per byte.
_ON_LOOP_BYTES = {True: 1 << 20, False: 1 << 16}


def _parsed_on_loop(request: Request, run_id: str, body: bytes) -> list[SeriesBatch] | None:
    """The checks and the parsing of :func:`_parsed`, where they need no database and the body is
    small; None (nothing checked) otherwise."""
    principal = cached_principal(request)
    if principal is None or not authorize_run_cached(request, principal, run_id, "write"):
        return None
    columnar = _columnar(request.headers.get("content-type"))
    if len(body) > _ON_LOOP_BYTES[columnar]:
        return None
    return ingest.parse(get_db(request), body, columnar)


def _parsed(request: Request, run_id: str, body: bytes) -> list[SeriesBatch]:
    return ingest.parse(get_db(request), body, _checked(request, run_id))


@router.post(
    "/{run_id}/points",
    response_model=IngestResult,
    summary="Ingest a columnar batch (many series x many steps), JSON or binary",
    responses={415: {"model": ErrorResponse,
                     "description": "Content-Type neither JSON nor the columnar type (`unsupported_media_type`)"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        wire.JSON_TYPE: _BATCH_SCHEMA, wire.COLUMNAR_TYPE: _COLUMNAR_SCHEMA}}},
)
async def ingest_points(run_id: str, request: Request) -> JSONBytes:
    """The body is parsed by hand, not by a pydantic model: JSON (`application/json`, schema
    `IngestBatch`) with orjson + numpy, or the binary columnar batch
    (`application/vnd.losswatch.columnar`, layout in docs/api.md) with one `numpy.frombuffer` per
    column, bit-exact. The Content-Type header chooses; the answer is JSON either way."""
    body = await request.body()
    db = get_db(request)
    if db.group_writer is None:  # PostgreSQL: a worker thread per request, the transactions side by side
        return JSONBytes(await run_in_threadpool(_ingest, request, run_id, body))
    # SQLite: checked and parsed here (in a worker thread where that needs the database), then one
    # hop to the group-commit writer, which only writes.
    batch = _parsed_on_loop(request, run_id, body)
    if batch is None:
        batch = await run_in_threadpool(_parsed, request, run_id, body)
    pending = ingest.submit_parsed(db, run_id, batch)
    assert pending is not None
    return JSONBytes(await asyncio.wrap_future(pending))


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
