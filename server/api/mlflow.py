"""The MLflow-compatible subset of the tracking REST API, so that an unmodified ``mlflow`` client with
``mlflow.set_tracking_uri("http://127.0.0.1:8000")`` logs into losswatch.

Thin: parse (``mlflow_protocol``, ``mlflow_filters``), authorise (the same checks as every router),
call one function of ``losswatch.server.services.mlflow_compat`` or ``mlflow_search``, shape the
answer. Every error, auth errors and services' errors included, comes back in MLflow's shape
``{"error_code": ..., "message": ...}`` (see docs/integrations/mlflow.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from losswatch.client import wire
from losswatch.server.api import mlflow_filters as mf
from losswatch.server.api import mlflow_protocol as mp
from losswatch.server.api.deps import DB, Caller, JSONBytes, authorize_run, check_access, error_responses
from losswatch.server.api.schemas import JsonPayload
from losswatch.server.errors import LosswatchError
from losswatch.server.services import mlflow_compat as mc
from losswatch.server.services import mlflow_search as ms
from losswatch.server.services.tokens import Principal
from losswatch.server.storage.db import Database

log = logging.getLogger("losswatch.server")


class MlflowRoute(APIRoute):
    """Renders every error of these routes (dependencies included) as MLflow does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except mp.MlflowError as exc:
                error = exc
            except LosswatchError as exc:
                error = mp.from_losswatch(exc)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()))
                error = mp.invalid(f"Invalid request at {where}: {first.get('msg', 'invalid')}")
            except StarletteHTTPException as exc:  # FastAPI's answer to a body it cannot decode (not UTF-8)
                if exc.status_code != 400:
                    raise
                error = mp.MlflowError("BAD_REQUEST", "Malformed request body: expected UTF-8 encoded JSON")
            return JSONResponse(error.body(), status_code=error.status)

        return route


class MlflowErrorResponse(BaseModel):
    """An error as MLflow answers it."""

    error_code: str
    message: str


_MLFLOW_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": MlflowErrorResponse, "description": text}
    for status, text in ((400, "INVALID_PARAMETER_VALUE / BAD_REQUEST / RESOURCE_ALREADY_EXISTS"),
                         (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (404, "RESOURCE_DOES_NOT_EXIST"))
}
_MLFLOW_ERRORS.update(error_responses(413))  # the body limit answers before the route, in losswatch's envelope

router = APIRouter(prefix="/api/2.0/mlflow", tags=["mlflow"], route_class=MlflowRoute, responses=_MLFLOW_ERRORS)
Payload = Annotated[JsonPayload, Body()]


# --- experiments ------------------------------------------------------------------------------


def _readable(caller: Principal, found: mc.Experiment, hidden: LosswatchError, scope: str = "read") -> mc.Experiment:
    """``found`` once the caller may act on it; another project's experiment answers as a missing one."""
    check_access(caller, found.project_id, found.project, scope, hidden=hidden)
    return found


@router.get("/experiments/get-by-name", summary="MLflow: an experiment (a losswatch project) by name")
def get_experiment_by_name(request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    name = mp.required_text(dict(request.query_params), "experiment_name")
    with db.read() as s:
        found = mc.experiment_by_name(s, name)
    return {"experiment": _readable(caller, found, mc.experiment_name_not_found(name)).info}


@router.get("/experiments/get", summary="MLflow: an experiment by id")
def get_experiment(request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    exp_id = mp.required_text(dict(request.query_params), "experiment_id")
    with db.read() as s:
        found = mc.find_experiment(s, exp_id)
    return {"experiment": _readable(caller, found, mc.experiment_not_found(exp_id)).info}


@router.post("/experiments/create", summary="MLflow: create an experiment (a losswatch project)")
def create_experiment(body: Payload, db: DB, caller: Caller) -> dict[str, Any]:
    name = mp.experiment_name(body)
    if caller.project_id is not None:  # a project's token cannot make other projects
        raise mp.MlflowError("PERMISSION_DENIED", f"this token belongs to project {caller.project!r}")
    with db.write() as s:
        return {"experiment_id": mc.create_experiment(s, name)}


# --- runs -------------------------------------------------------------------------------------


@router.post("/runs/create", summary="MLflow: start a run")
def create_run(body: Payload, db: DB, caller: Caller) -> dict[str, Any]:
    exp_id = mp.text(body, "experiment_id", required=False, default=mc.DEFAULT_EXPERIMENT_ID)
    assert exp_id is not None
    tags, tag_name = mp.split_run_name(mp.tag_pairs(body.get("tags")))
    name = mp.run_name(body) or tag_name
    start_ms = mp.int64(body, "start_time")
    user = mp.text(body, "user_id", required=False)
    with db.write() as s:
        found = mc.find_experiment(s, exp_id, create_default=caller.project_id is None)
        _readable(caller, found, mc.experiment_not_found(exp_id), "write")
        return {"run": mc.create_run(s, found.project_id, name=name, tags=tags, start_ms=start_ms, user=user)}


@router.get("/runs/get", summary="MLflow: a run with its latest metrics, params and tags")
def get_run(request: Request, db: DB, caller: Caller) -> JSONBytes:
    run_id = mp.run_id_of(dict(request.query_params))
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return JSONBytes({"run": mc.run_dict(s, run_id)})


@router.post("/runs/update", summary="MLflow: set a run's status, end time or name")
def update_run(body: Payload, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    run_id = mp.run_id_of(body)
    authorize_run(request, caller, run_id, "write")
    status, end_ms, name = mp.run_status(body), mp.int64(body, "end_time"), mp.run_name(body)
    with db.write() as s:
        return {"run_info": mc.update_run(s, run_id, status=status, end_ms=end_ms, name=name)}


def _logging_route(parse: Callable[[dict[str, Any]], mp.LogBatch]) -> Callable[..., dict[str, Any]]:
    """log-batch and the single-item calls: parse the body as a batch, then one transaction."""

    def route(body: Payload, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
        run_id = mp.run_id_of(body)
        authorize_run(request, caller, run_id, "write")
        batch = parse(body)
        mc.log_batch(db, run_id, metrics=batch.metrics, params=batch.params, tags=batch.tags, name=batch.name)
        return {}

    route.__name__ = parse.__name__
    return route


router.post("/runs/log-batch", summary="MLflow: metrics, params and tags in one request")(_logging_route(mp.log_batch))
router.post("/runs/log-metric", summary="MLflow: one metric point")(_logging_route(mp.log_metric))
router.post("/runs/log-parameter", summary="MLflow: one param (into the run's config)")(_logging_route(mp.log_param))
router.post("/runs/set-tag", summary="MLflow: one tag")(_logging_route(mp.set_tag))


# --- metrics ----------------------------------------------------------------------------------


@router.get("/metrics/get-history", summary="MLflow: every point of one metric of a run, paged")
def get_metric_history(request: Request, db: DB, caller: Caller) -> JSONBytes:
    query = dict(request.query_params)
    run_id = mp.run_id_of(query)
    key = mp.required_text(query, "metric_key")
    limit = mp.int_between(query, "max_results", mp.HISTORY_PAGE, 1, mp.HISTORY_PAGE)
    start = mp.history_page_token(mp.text(query, "page_token", required=False))
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        metrics, next_start = mc.metric_history(s, run_id, key, start, limit)
    out: dict[str, Any] = {"metrics": metrics}
    if next_start is not None:
        out["next_page_token"] = str(next_start)
    return JSONBytes(out)


# --- search (MLflow's read calls: mlflow.search_runs, search_experiments, the UI's charts) ----------


def _experiment_projects(db: Database, caller: Principal, ids: Any) -> list[int]:
    """The projects behind ``experiment_ids`` (every id must exist and be readable)."""
    if not isinstance(ids, list) or not ids or not all(isinstance(i, (str, int)) for i in ids):
        raise mp.invalid("Invalid value for parameter 'experiment_ids': expected a non-empty list of ids")
    exp_ids = list(dict.fromkeys(str(i) for i in ids))
    with db.read() as s:
        found = [mc.find_experiment(s, exp_id) for exp_id in exp_ids]
    return [_readable(caller, f, mc.experiment_not_found(exp_id)).project_id for f, exp_id in zip(found, exp_ids, strict=True)]


@router.post("/runs/search", summary="MLflow: search runs (filter on metrics, params, tags, attributes; order_by; pages)")
def search_runs(body: Payload, db: DB, caller: Caller) -> JSONBytes:
    conditions = mf.parse_filter(mp.text(body, "filter", required=False))
    order = mf.parse_order_by(body.get("order_by"))
    max_results = mp.int64(body, "max_results", default=1000)
    assert max_results is not None
    if not 1 <= max_results <= mp.MAX_RUNS_PAGE:
        raise mp.invalid(f"Invalid value {max_results} for parameter 'max_results' supplied. It must be at most "
                         f"{mp.MAX_RUNS_PAGE}, and at least 1.")
    offset = mp.parse_page_token(body.get("page_token"))
    project_ids = _experiment_projects(db, caller, body.get("experiment_ids"))
    with db.read() as s:
        found, next_offset = ms.search_runs(s, project_ids, conditions, order, max_results, offset)
    return JSONBytes(mp.page("runs", found, next_offset))


async def search_experiments(request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        try:
            parsed = await request.json()
        except ValueError:
            raise mp.MlflowError("BAD_REQUEST", "Malformed request body: expected JSON") from None
        if not isinstance(parsed, dict):
            raise mp.invalid("Invalid request body: expected a JSON object")
        body = parsed
    name_like = mf.experiment_name_filter(mp.text(body, "filter", required=False))
    max_results = mp.int_between(body, "max_results", 1000, 1, 50_000)
    offset = mp.parse_page_token(body.get("page_token"))
    with db.read() as s:
        found, next_offset = ms.search_experiments(s, caller.project_id, name_like, max_results, offset)
    return mp.page("experiments", found, next_offset)


for _method in ("GET", "POST"):
    router.add_api_route("/experiments/search", search_experiments, methods=[_method],
                         summary="MLflow: search experiments (projects)",
                         operation_id=f"mlflow_search_experiments_{_method.lower()}")


@router.get("/metrics/get-history-bulk-interval", summary="MLflow: one metric of several runs, sampled by step")
def get_history_bulk_interval(request: Request, db: DB, caller: Caller) -> JSONBytes:
    run_ids = request.query_params.getlist("run_ids")
    if not run_ids:
        raise mp.invalid("Missing value for required parameter 'run_ids'.")
    if len(run_ids) > 100:
        raise mp.invalid(f"GetMetricHistoryBulkInterval request must specify at most 100 run_ids. Received {len(run_ids)} run_ids.")
    query = dict(request.query_params)
    key = mp.required_text(query, "metric_key")
    start = mp.int64(query, "start_step", default=0)
    end = mp.int64(query, "end_step", default=wire.MAX_STEP)
    max_results = mp.int64(query, "max_results", default=mp.BULK_INTERVAL_RESULTS)
    assert start is not None and end is not None and max_results is not None
    if start > end or start < 0:
        raise mp.invalid(f"end_step must be greater than start_step and start_step must be at least 0. Found "
                         f"start_step={start}, end_step={end}.")
    if not 1 <= max_results <= mp.BULK_INTERVAL_RESULTS:
        raise mp.invalid(f"max_results must be between 1 and {mp.BULK_INTERVAL_RESULTS}.")
    for rid in dict.fromkeys(run_ids):
        authorize_run(request, caller, mp.run_id_of({"run_id": rid}), "read")
    with db.read() as s:
        return JSONBytes({"metrics": ms.sampled_history(s, list(dict.fromkeys(run_ids)), key, start,
                                                        min(end, wire.MAX_STEP), max_results)})


_NO_ARTIFACTS = ("losswatch stores metrics, params and tags, not artifacts: {what} is not supported "
                 "(mlflow.log_artifact, log_text, log_dict, log_figure, log_image, log_model and artifact listing "
                 "need an MLflow artifact store; see docs/integrations/mlflow.md)")


@router.api_route("/artifacts/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
def artifacts_not_supported(path: str) -> dict[str, Any]:
    raise mp.MlflowError("NOT_IMPLEMENTED", _NO_ARTIFACTS.format(what=f"the MLflow endpoint 'artifacts/{path}'"))


artifacts_router = APIRouter(prefix="/api/2.0/mlflow-artifacts", tags=["mlflow"], route_class=MlflowRoute)


@artifacts_router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def artifact_store_not_supported(path: str) -> dict[str, Any]:
    raise mp.MlflowError("NOT_IMPLEMENTED", _NO_ARTIFACTS.format(what=f"storing or reading the artifact '{path[:200]}'"))


@router.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"], include_in_schema=False)
def not_supported(path: str) -> dict[str, Any]:
    raise mp.MlflowError("ENDPOINT_NOT_FOUND", f"losswatch does not implement the MLflow endpoint '{path}' "
                         "(see docs/integrations/mlflow.md for the supported subset)")
