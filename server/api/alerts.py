"""Alerts, their rule configuration (per project and per run) and the project's channels."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request

from losswatch.server.api.deps import (
    API_ERRORS,
    DB,
    AdminProject,
    Caller,
    ReadProject,
    WriteProject,
    authorize_run,
)
from losswatch.server.api.schemas import (
    Alert,
    AlertConfig,
    AlertList,
    ChannelCreate,
    ChannelList,
    ChannelRead,
    DeliveryAttemptList,
    JsonObject,
)
from losswatch.server.services import alerts, channels

router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=API_ERRORS)
ChannelId = Annotated[int, Path(ge=1, le=2**31 - 1)]
AlertId = Annotated[int, Path(ge=1, le=2**31 - 1)]
ConfigBody = Annotated[JsonObject, Body(description='e.g. {"divergence": {"rtol": 1.0}, "plateau": false, '
                                                      '"silenced": ["stalled"]}')]


@router.get("/projects/{project}/alerts", response_model=AlertList, summary="The project's alerts, newest first")
def list_alerts(
    project: ReadProject, db: DB,
    status: Literal["firing", "resolved"] | None = None,
    run: Annotated[str | None, Query(max_length=64)] = None,
    rule: Annotated[str | None, Query(max_length=32)] = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    with db.read() as s:
        return alerts.list_alerts(s, project.id, status=status, run_id=run, rule=rule, severity=severity,
                                  limit=limit, offset=offset)


@router.post("/projects/{project}/alerts/{alert_id}/ack", response_model=Alert,
             summary="Acknowledge an alert: someone has seen it (write)")
def acknowledge_alert(project: WriteProject, alert_id: AlertId, db: DB, caller: Caller) -> dict[str, Any]:
    who = caller.token_name or (f"token #{caller.token_id}" if caller.token_id is not None else "local user")
    with db.write() as s:
        return alerts.acknowledge(s, project.id, alert_id, who)


@router.delete("/projects/{project}/alerts/{alert_id}/ack", response_model=Alert,
               summary="Take an alert's acknowledgement back (write)")
def unacknowledge_alert(project: WriteProject, alert_id: AlertId, db: DB) -> dict[str, Any]:
    with db.write() as s:
        return alerts.acknowledge(s, project.id, alert_id, "", acknowledged=False)


@router.get("/runs/{run_id}/alerts", response_model=AlertList, summary="A run's alerts")
def run_alerts(run_id: str, request: Request, db: DB, caller: Caller,
               status: Literal["firing", "resolved"] | None = None) -> dict[str, Any]:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return alerts.run_alerts(s, run_id, status)


@router.get("/projects/{project}/alert-config", response_model=AlertConfig,
            summary="The project's rule configuration (what differs from the defaults)")
def get_project_config(project: ReadProject, db: DB) -> dict[str, Any]:
    with db.read() as s:
        return alerts.rule_config(s, project_id=project.id)


@router.put("/projects/{project}/alert-config", response_model=AlertConfig,
            summary="Set the project's rule configuration (admin)")
def put_project_config(project: AdminProject, body: ConfigBody, db: DB) -> dict[str, Any]:
    with db.write() as s:
        return alerts.set_rule_config(s, body, project_id=project.id)


@router.get("/runs/{run_id}/alert-config", response_model=AlertConfig, summary="A run's rule configuration")
def get_run_config(run_id: str, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    authorize_run(request, caller, run_id, "read")
    with db.read() as s:
        return alerts.rule_config(s, run_id=run_id)


@router.put("/runs/{run_id}/alert-config", response_model=AlertConfig,
            summary="Set a run's rule configuration; {\"silenced\": [rule, ...]} silences rules")
def put_run_config(run_id: str, body: ConfigBody, request: Request, db: DB, caller: Caller) -> dict[str, Any]:
    authorize_run(request, caller, run_id, "write")
    with db.write() as s:
        return alerts.set_rule_config(s, body, run_id=run_id)


@router.get("/projects/{project}/channels", response_model=ChannelList, summary="Where alerts go (admin)")
def list_channels(project: AdminProject, db: DB) -> dict[str, Any]:
    with db.read() as s:
        return {"channels": channels.list_channels(s, project.id)}


@router.post("/projects/{project}/channels", response_model=ChannelRead, status_code=201,
             summary="Add a webhook, Slack or e-mail channel (admin)")
def create_channel(project: AdminProject, body: ChannelCreate, request: Request, db: DB) -> dict[str, Any]:
    with db.write() as s:
        ch = channels.create_channel(s, project.id, body, request.app.state.settings.allow_private_channels)
        return channels.redact(ch)


@router.delete("/projects/{project}/channels/{channel_id}", status_code=204, summary="Remove a channel (admin)")
def delete_channel(project: AdminProject, channel_id: ChannelId, db: DB) -> None:
    with db.write() as s:
        channels.delete_channel(s, project.id, channel_id)


@router.get("/projects/{project}/channels/{channel_id}/attempts", response_model=DeliveryAttemptList,
            summary="The channel's recent delivery attempts (admin)")
def channel_attempts(project: AdminProject, channel_id: ChannelId, db: DB) -> dict[str, Any]:
    with db.read() as s:
        channels.get_channel(s, project.id, channel_id)
        return {"attempts": channels.attempts(s, channel_id)}
