"""The MLflow-compatible subset of the tracking REST API, so that an unmodified ``mlflow`` client with
``mlflow.set_tracking_uri("http://127.0.0.1:8000")`` logs into losswatch.

Thin: parse, authorise (the same dependencies as every router), call
``losswatch.server.services.mlflow_compat``, shape the answer. Every error, auth errors included,
comes back in MLflow's shape ``{"error_code": ..., "message": ...}`` (see docs/integrations/mlflow.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from losswatch.server.api.deps import DB, Caller, JSONBytes, authorize_run, check_access, error_responses
from losswatch.server.errors import LosswatchError
from losswatch.server.schemas import JsonPayload
from losswatch.server.services import mlflow_compat as mc

log = logging.getLogger("losswatch.server")


class MlflowRoute(APIRoute):
    """Renders every error of these routes (dependencies included) as MLflow does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except mc.MlflowError as exc:
                error = exc
            except LosswatchError as exc:
                error = mc.from_losswatch(exc)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()))
                error = mc.invalid(f"Invalid request at {where}: {first.get('msg', 'invalid')}")
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


@router.get("/experiments/get-by-name", summary="MLflow: an experiment (a losswatch project) by name")
def get_experiment_by_name(request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    name = mc.text(dict(request.query_params), "experiment_name")
    assert name is not None
    with db.read() as s:
        project = mc.project_by_name(s, name)
        check_access(caller, project.id, project.name, "read")
        return {"experiment": mc.experiment_dict(project)}


@router.get("/experiments/get", summary="MLflow: an experiment by id")
def get_experiment(request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    exp_id = mc.text(dict(request.query_params), "experiment_id")
    assert exp_id is not None
    with db.read() as s:
        project = mc.project_of_experiment(s, exp_id)
        check_access(caller, project.id, project.name, "read")
        return {"experiment": mc.experiment_dict(project)}


@router.post("/experiments/create", summary="MLflow: create an experiment (a losswatch project)")
def create_experiment(body: Payload, db: DB, caller: Caller) -> dict[str, Any]:
    name = mc.text(body, "name")
    assert name is not None
    if caller.project_id is not None:  # a project's token cannot make other projects
        raise mc.MlflowError("PERMISSION_DENIED", f"this token belongs to project {caller.project!r}")
    with db.write() as s:
        project = mc.create_experiment(s, name)
        return {"experiment_id": mc.experiment_id(project)}


# --- runs -------------------------------------------------------------------------------------


@router.post("/runs/create", summary="MLflow: start a run")
def create_run(body: Payload, db: DB, caller: Caller) -> dict[str, Any]:
    exp_id = mc.text(body, "experiment_id", required=False, default=mc.DEFAULT_EXPERIMENT_ID)
    assert exp_id is not None
    with db.write() as s:
        project = mc.project_of_experiment(s, exp_id, create_default=caller.project_id is None)
        check_access(caller, project.id, project.name, "write")
        return {"run": mc.create_run(s, project, body)}


@router.get("/runs/get", summary="MLflow: a run with its latest metrics, params and tags")
def get_run(request: Request, db: DB, caller: Caller) -> JSONBytes:
    run_id = mc.run_id_of(dict(request.query_params))
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return JSONBytes({"run": mc.run_dict(s, run_id)})


@router.post("/runs/update", summary="MLflow: set a run's status, end time or name")
def update_run(body: Payload, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    run_id = mc.run_id_of(body)
    authorize_run(request, caller, run_id, "write")
    with db.write() as s:
        return mc.update_run(s, run_id, body)


def _logging_route(fn: Callable[[Any, str, dict[str, Any]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def route(body: Payload, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
        run_id = mc.run_id_of(body)
        authorize_run(request, caller, run_id, "write")
        return fn(db, run_id, body)

    route.__name__ = fn.__name__
    return route


router.post("/runs/log-batch", summary="MLflow: metrics, params and tags in one request")(_logging_route(mc.log_batch))
router.post("/runs/log-metric", summary="MLflow: one metric point")(_logging_route(mc.log_metric))
router.post("/runs/log-parameter", summary="MLflow: one param (into the run's config)")(_logging_route(mc.log_param))
router.post("/runs/set-tag", summary="MLflow: one tag")(_logging_route(mc.set_tag))


# --- metrics ----------------------------------------------------------------------------------


@router.get("/metrics/get-history", summary="MLflow: every point of one metric of a run, paged")
def get_metric_history(request: Request, db: DB, caller: Caller) -> JSONBytes:
    query = dict(request.query_params)
    run_id = mc.run_id_of(query)
    key = mc.text(query, "metric_key")
    assert key is not None
    max_results = mc.int64(query, "max_results")
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return JSONBytes(mc.metric_history(s, run_id, key, max_results, mc.text(query, "page_token", required=False)))


@router.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"], include_in_schema=False)
def not_supported(path: str) -> dict[str, Any]:
    raise mc.MlflowError("ENDPOINT_NOT_FOUND", f"losswatch does not implement the MLflow endpoint '{path}' "
                         "(see docs/integrations/mlflow.md for the supported subset)")
