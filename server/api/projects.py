"""Projects, their runs (create, list) and their tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from losswatch.server.api.deps import API_ERRORS, DB, Caller, check_access
from losswatch.server.schemas import (
    ProjectList,
    ProjectRead,
    RunCreate,
    RunPage,
    RunRead,
    RunStatus,
    TokenCreate,
    TokenCreated,
)
from losswatch.server.services import projects, runs, tokens

router = APIRouter(prefix="/api/v1/projects", tags=["projects"], responses=API_ERRORS)


@router.get("", response_model=ProjectList, summary="List the projects the caller can see")
def list_projects(db: DB, caller: Caller) -> ProjectList:
    with db.read() as s:
        return ProjectList(projects=projects.list_projects(s, only=caller.project_id))


@router.get("/{project}", response_model=ProjectRead, summary="One project")
def get_project(project: str, db: DB, caller: Caller) -> ProjectRead:
    with db.read() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "read")
        return projects.list_projects(s, only=p.id)[0]


@router.post("/{project}/runs", response_model=RunRead, status_code=201,
             summary="Create a run (idempotent on the client's id)",
             responses={200: {"model": RunRead, "description": "The run already existed"}})
def create_run(project: str, body: RunCreate, request: Request, response: Response, db: DB, caller: Caller) -> RunRead:
    with db.write() as s:
        if caller.project_id is not None:
            p = projects.get_project(s, project)
            check_access(caller, p.id, p.name, "write")
        run, created = runs.create_run(s, project, body, create_project=caller.project_id is None)
    if not created:
        response.status_code = 200
    return run


@router.get("/{project}/runs", response_model=RunPage, summary="List, filter, sort and page runs")
def list_runs(
    project: str,
    request: Request,
    db: DB,
    caller: Caller,
    status: RunStatus | None = None,
    tag: Annotated[list[str], Query(description="Runs carrying every one of these tags")] = [],  # noqa: B006
    name: Annotated[str | None, Query(max_length=500, description="Substring of the name")] = None,
    group: Annotated[str | None, Query(max_length=500)] = None,
    sort: Annotated[str, Query(max_length=300, description=(
        "created_at, name, status, group, config.<key>, last:<series>, min:<series> or max:<series>; "
        "prefix '-' for descending"))] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> RunPage:
    config = {k[7:]: v for k, v in request.query_params.items() if k.startswith("config.") and len(k) > 7}
    with db.read() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "read")
        return runs.list_runs(s, project, status=status, tags=tag, name=name, group=group, config=config,
                              sort=sort, limit=limit, offset=offset)


@router.post("/{project}/tokens", response_model=TokenCreated, status_code=201,
             summary="Make a token for this project (admin)")
def create_token(project: str, body: TokenCreate, db: DB, caller: Caller) -> TokenCreated:
    with db.write() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "admin")
        token, plaintext = tokens.create_token(s, project, body.scope, body.name)
        return TokenCreated(id=token.id, project=project, name=token.name, scope=body.scope, token=plaintext)
