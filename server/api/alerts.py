"""Alerts, their rule configuration (per project and per run) and the project's channels."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request

from losswatch.server.api.deps import API_ERRORS, DB, Caller, authorize_run, check_access
from losswatch.server.schemas import (
    AlertConfig,
    AlertList,
    ChannelCreate,
    ChannelList,
    ChannelRead,
    DeliveryAttemptList,
    JsonObject,
)
from losswatch.server.services import alerts, channels, projects
from losswatch.server.services.runs import get_run

router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=API_ERRORS)
ChannelId = Annotated[int, Path(ge=1, le=2**31 - 1)]
ConfigBody = Annotated[JsonObject, Body(description='e.g. {"divergence": {"rtol": 1.0}, "plateau": false, '
                                                      '"silenced": ["stalled"]}')]


@router.get("/projects/{project}/alerts", response_model=AlertList, summary="The project's alerts, newest first")
def list_alerts(
    project: str, db: DB, caller: Caller,
    status: Literal["firing", "resolved"] | None = None,
    run: Annotated[str | None, Query(max_length=64)] = None,
    rule: Annotated[str | None, Query(max_length=32)] = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    with db.read() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "read")
        return alerts.list_alerts(s, p.id, status=status, run_id=run, rule=rule, severity=severity,
                                  limit=limit, offset=offset)


@router.get("/runs/{run_id}/alerts", response_model=AlertList, summary="A run's alerts")
def run_alerts(run_id: str, request: Request, db: DB, caller: Caller,
               status: Literal["firing", "resolved"] | None = None) -> dict[str, Any]:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        run, _ = get_run(s, run_id)
        return alerts.list_alerts(s, run.project_id, run_id=run_id, status=status, limit=1000)


@router.get("/projects/{project}/alert-config", response_model=AlertConfig,
            summary="The project's rule configuration (what differs from the defaults)")
def get_project_config(project: str, db: DB, caller: Caller) -> dict[str, Any]:
    with db.read() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "read")
        return dict(p.alert_config or {})


@router.put("/projects/{project}/alert-config", response_model=AlertConfig,
            summary="Set the project's rule configuration (admin)")
def put_project_config(project: str, body: ConfigBody, db: DB, caller: Caller) -> dict[str, Any]:
    with db.write() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "admin")
        p.alert_config = alerts.check_rule_config(body)
        return dict(p.alert_config)


@router.get("/runs/{run_id}/alert-config", response_model=AlertConfig, summary="A run's rule configuration")
def get_run_config(run_id: str, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        run, _ = get_run(s, run_id)
        return dict(run.alert_config or {})


@router.put("/runs/{run_id}/alert-config", response_model=AlertConfig,
            summary="Set a run's rule configuration; {\"silenced\": [rule, ...]} silences rules")
def put_run_config(run_id: str, body: ConfigBody, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    authorize_run(request, caller, run_id, "write")
    with db.write() as s:
        run, _ = get_run(s, run_id)
        run.alert_config = alerts.check_rule_config(body)
        return dict(run.alert_config)


@router.get("/projects/{project}/channels", response_model=ChannelList, summary="Where alerts go (admin)")
def list_channels(project: str, db: DB, caller: Caller) -> dict[str, Any]:
    with db.read() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "admin")
        return {"channels": channels.list_channels(s, p.id)}


@router.post("/projects/{project}/channels", response_model=ChannelRead, status_code=201,
             summary="Add a webhook, Slack or e-mail channel (admin)")
def create_channel(project: str, body: ChannelCreate, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    with db.write() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "admin")
        ch = channels.create_channel(s, p.id, body, request.app.state.settings.allow_private_channels)
        return channels.redact(ch)


@router.delete("/projects/{project}/channels/{channel_id}", status_code=204, summary="Remove a channel (admin)")
def delete_channel(project: str, channel_id: ChannelId, db: DB, caller: Caller) -> None:
    with db.write() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "admin")
        s.delete(channels.get_channel(s, p.id, channel_id))


@router.get("/projects/{project}/channels/{channel_id}/attempts", response_model=DeliveryAttemptList,
            summary="The channel's recent delivery attempts (admin)")
def channel_attempts(project: str, channel_id: ChannelId, db: DB, caller: Caller) -> dict[str, Any]:
    with db.read() as s:
        p = projects.get_project(s, project)
        check_access(caller, p.id, p.name, "admin")
        channels.get_channel(s, p.id, channel_id)
        return {"attempts": channels.attempts(s, channel_id)}
