"""Projects and their runs (create, list); their tokens are in ``losswatch.server.api.tokens``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from losswatch.server.api.deps import API_ERRORS, DB, Caller, JSONBytes, ReadProject, check_access
from losswatch.server.api.schemas import (
    ProjectList,
    ProjectRead,
    RunCreate,
    RunPage,
    RunRead,
    RunStatus,
)
from losswatch.server.services import projects, runs

router = APIRouter(prefix="/api/v1/projects", tags=["projects"], responses=API_ERRORS)


@router.get("", response_model=ProjectList, summary="List the projects the caller can see")
def list_projects(db: DB, caller: Caller) -> ProjectList:
    with db.read() as s:
        return ProjectList(projects=projects.list_projects(s, only=caller.project_id))


@router.get("/{project}", response_model=ProjectRead, summary="One project")
def get_project(project: ReadProject, db: DB) -> ProjectRead:
    with db.read() as s:
        return projects.list_projects(s, only=project.id)[0]


@router.post("/{project}/runs", response_model=RunRead, status_code=201,
             summary="Create a run (idempotent on the client's id)",
             responses={200: {"model": RunRead, "description": "The run already existed"}})
def create_run(project: str, body: RunCreate, request: Request, response: Response, db: DB, caller: Caller) -> RunRead:
    with db.write() as s:
        if caller.project_id is not None:  # a project's token: that project, which must exist
            check_access(caller, *projects.project_key(s, project), "write")
        run, created = runs.create_run(s, project, body, create_project=caller.project_id is None)
    if not created:
        response.status_code = 200
    return run


@router.get("/{project}/runs", response_model=RunPage, summary="List, filter, sort and page runs")
def list_runs(
    project: ReadProject,
    request: Request,
    db: DB,
    status: RunStatus | None = None,
    tag: Annotated[list[str], Query(description="Runs carrying every one of these tags")] = [],  # noqa: B006
    name: Annotated[str | None, Query(max_length=500, description="Substring of the name")] = None,
    group: Annotated[str | None, Query(max_length=500)] = None,
    sort: Annotated[str, Query(max_length=300, description=(
        "created_at, name, status, group, config.<key>, last:<series>, min:<series> or max:<series>; "
        "prefix '-' for descending"))] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JSONBytes:
    """The page comes from the service already in `RunPage`'s shape (plain data) and is written by
    orjson, not re-validated run by run through the response model."""
    config = {k[7:]: v for k, v in request.query_params.items() if k.startswith("config.") and len(k) > 7}
    with db.read() as s:
        return JSONBytes(runs.list_runs(s, project.name, status=status, tags=tag, name=name, group=group,
                                        config=config, sort=sort, limit=limit, offset=offset))
