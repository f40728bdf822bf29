"""Alerts: turn detector findings into alert rows (fire, de-duplicate, resolve) and outbox rows,
in the caller's transaction; list them; read and write the rule configuration."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.detectors import Finding, RuleConfig
from losswatch.server.errors import InvalidRequest, NotFound, project_not_found, run_not_found
from losswatch.server.services.projects import now, utc
from losswatch.server.storage.models import Alert, Channel, Outbox, Project, Run

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class RunRow(Protocol):
    """What alerting reads of a run (``runs.TouchedRun`` has it): runs import this module, not the reverse."""

    id: str
    name: str
    project_id: int
    alert_config: dict[str, Any] | None


@dataclass
class RunContext:
    """What alerting needs to know about a run, read once per ingest."""

    id: str
    name: str
    project_id: int
    project: str
    config: RuleConfig
    public_url: str | None = None

    @property
    def label(self) -> str:
        return f"run {self.name!r}"


def alert_to_dict(a: Alert, run_name: str | None = None) -> dict[str, Any]:
    value: float | str | None = a.value_special if a.value_special is not None else a.value
    out = {
        "id": a.id, "run": a.run_id, "series": a.series_key, "rule": a.rule, "severity": a.severity,
        "status": a.status, "onset_step": a.onset_step, "step": a.step, "resolved_step": a.resolved_step,
        "value": value, "reference": a.reference, "message": a.message, "details": a.details,
        "created_at": utc(a.created_at).isoformat(),  # type: ignore[union-attr]
        "updated_at": utc(a.updated_at).isoformat(),  # type: ignore[union-attr]
        "resolved_at": utc(a.resolved_at).isoformat() if a.resolved_at else None,  # type: ignore[union-attr]
    }
    if run_name is not None:
        out["run_name"] = run_name
    return out


def _set_value(a: Alert, value: float | None) -> None:
    if value is None or math.isfinite(value):
        a.value, a.value_special = value, None
    else:
        a.value, a.value_special = None, wire.encode_value(value)  # type: ignore[assignment]


def _message(run: RunContext, f: Finding) -> str:
    return f"[{f.severity}] {run.label} in {run.project}: {f.reason}"


def _firing(session: Session, run_id: str) -> dict[tuple[str | None, str], Alert]:
    rows = session.scalars(select(Alert).where(Alert.run_id == run_id, Alert.status == "firing"))
    return {(a.series_key, a.rule): a for a in rows}


def apply_findings(session: Session, run: RunContext, findings: list[Finding]) -> list[Alert]:
    """Fire, update or resolve alerts for the findings; queue an outbox row per channel and event.
    Returns the alerts that changed."""
    if not findings:
        return []
    firing = _firing(session, run.id)
    channels: list[Channel] | None = None
    changed: list[Alert] = []
    t = now()
    for f in findings:
        key = (f.key or None, f.rule)
        current = firing.get(key)
        if f.action == "fire":
            if current is not None:  # de-duplicate: the same condition, still going on
                current.step = f.step
                _set_value(current, f.value)
                current.reference = f.reference
                current.updated_at = t
                if SEVERITY_RANK.get(f.severity, 0) > SEVERITY_RANK.get(current.severity, 0):
                    current.severity = f.severity
                    current.message = _message(run, f)
                changed.append(current)
                continue
            alert = Alert(
                run_id=run.id, project_id=run.project_id, series_key=f.key or None, rule=f.rule,
                severity=f.severity, status="firing", onset_step=f.onset_step if f.onset_step is not None else f.step,
                step=f.step, reference=f.reference, message=_message(run, f), details=dict(f.details),
                created_at=t, updated_at=t,
            )
            _set_value(alert, f.value)
            session.add(alert)
            session.flush()
            firing[key] = alert
            changed.append(alert)
            event = "fired"
        else:  # resolve, or escalate (closed as superseded by a stronger rule)
            if current is None:
                continue
            alert = current
            alert.status = "resolved"
            alert.resolved_step = f.step
            alert.resolved_at = t
            alert.updated_at = t
            alert.details = {**alert.details, "resolution": f.reason, "escalated": f.action == "escalate"}
            del firing[key]
            changed.append(alert)
            event = "resolved"
        if channels is None:
            channels = list(session.scalars(select(Channel).where(Channel.project_id == run.project_id,
                                                                  Channel.enabled.is_(True))))
        for ch in channels:
            if SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK.get(ch.min_severity, 0):
                continue
            if ch.rules and alert.rule not in ch.rules:
                continue
            session.add(Outbox(alert_id=alert.id, channel_id=ch.id, event=event,
                               payload=event_payload(run, alert, event), status="pending", attempts=0,
                               next_attempt_at=t, created_at=t))
    session.flush()
    return changed


def event_payload(run: RunContext, alert: Alert, event: str) -> dict[str, Any]:
    """What a channel receives: the alert, the run, and one line a person reads at a glance."""
    text = alert.message if event == "fired" else f"[resolved] {run.label}: {alert.rule} on " \
        f"{alert.series_key or 'the run'} resolved at step {alert.resolved_step}"
    base = run.public_url.rstrip("/") if run.public_url else None
    return {"event": f"alert.{event}", "text": text,
            "link": f"{base}{chart_path(run.project, alert)}" if base else None,
            "run_link": f"{base}/runs/{run.id}" if base else None,
            "run": {"id": run.id, "name": run.name, "project": run.project},
            "alert": alert_to_dict(alert)}


def chart_path(project: str, alert: Alert) -> str:
    """The dashboard's compare chart of the alert's run and series, zoomed around its onset (and its
    resolution), padded by the incident's length or 50 steps: what a person opens from a message.
    The alerts page builds the same view (dashboard/static/alerts.js, ``chartUrl``)."""
    params: dict[str, str] = {"runs": alert.run_id}
    if alert.series_key:
        params["key"] = alert.series_key
    onset = alert.onset_step if alert.onset_step is not None else alert.step
    if onset is not None:
        last = max(onset, alert.resolved_step if alert.resolved_step is not None else (alert.step or onset))
        pad = max(50, last - onset)
        params |= {"start": str(max(0, onset - pad)), "end": str(last + pad)}
    return f"/p/{quote(project, safe='')}/compare?{urlencode(params)}"


def active_alerts(session: Session, run_id: str, also: list[Alert] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """The run's firing alerts, and ``also`` (alerts just changed, resolved ones included)."""
    firing = list(session.scalars(_FIRING_IDS, {"rid": run_id}))  # the usual answer: none, cheaply
    rows: dict[int, Alert] = {}
    if firing:
        rows = {a.id: a for a in session.scalars(select(Alert).where(Alert.id.in_(firing)))}
    rows.update((a.id, a) for a in also)
    return [alert_to_dict(rows[i]) for i in sorted(rows)]


def list_alerts(
    session: Session, project_id: int, *, status: str | None = None, run_id: str | None = None,
    rule: str | None = None, severity: str | None = None, limit: int = 100, offset: int = 0,
) -> dict[str, Any]:
    stmt = select(Alert, Run.name).join(Run, Run.id == Alert.run_id).where(Alert.project_id == project_id)
    if status:
        stmt = stmt.where(Alert.status == status)
    if run_id:
        stmt = stmt.where(Alert.run_id == run_id)
    if rule:
        stmt = stmt.where(Alert.rule == rule)
    if severity:
        stmt = stmt.where(Alert.severity == severity)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(stmt.order_by(Alert.id.desc()).limit(limit).offset(offset)).all()
    return {"alerts": [alert_to_dict(a, name) for a, name in rows], "total": total, "limit": limit, "offset": offset}


def acknowledge(session: Session, project_id: int, alert_id: int, by: str, *, acknowledged: bool = True) -> dict[str, Any]:
    """Mark an alert as seen by someone (or take the mark back). The mark lives in the alert's
    ``details`` (``acknowledged_at``, ``acknowledged_by``); it changes neither the alert's status nor
    its deliveries, and a resolution keeps it."""
    row = session.execute(select(Alert, Run.name).join(Run, Run.id == Alert.run_id)
                          .where(Alert.id == alert_id, Alert.project_id == project_id)).first()
    if row is None:
        raise NotFound(f"no alert {alert_id} in this project", code="alert_not_found")
    alert, run_name = row
    details = {k: v for k, v in (alert.details or {}).items() if k not in ("acknowledged_at", "acknowledged_by")}
    if acknowledged:
        details["acknowledged_at"] = utc(now()).isoformat()  # type: ignore[union-attr]
        details["acknowledged_by"] = by
    alert.details = details  # a new dict: the JSON column sees the change
    return alert_to_dict(alert, run_name)


def check_rule_config(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a rule configuration (as stored per project or per run)."""
    try:
        RuleConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"invalid alert configuration: {exc}", code="invalid_alert_config") from None
    return data


def _configured(session: Session, project_id: int | None, run_id: str | None) -> Project | Run:
    """The project's row, or the run's when ``run_id`` is given; 404 when it is gone."""
    row = session.get(Run, run_id) if run_id is not None else session.get(Project, project_id)
    if row is None:
        raise run_not_found(str(run_id)) if run_id is not None else project_not_found(f"#{project_id}")
    return row


def rule_config(session: Session, *, project_id: int | None = None, run_id: str | None = None) -> dict[str, Any]:
    """The stored rule configuration of a project or of a run (what differs from the defaults)."""
    return dict(_configured(session, project_id, run_id).alert_config or {})


def set_rule_config(session: Session, data: dict[str, Any], *, project_id: int | None = None,
                    run_id: str | None = None) -> dict[str, Any]:
    """Validate and store the rule configuration of a project or of a run, in the caller's transaction."""
    _configured(session, project_id, run_id).alert_config = check_rule_config(data)
    return dict(data)


def run_alerts(session: Session, run_id: str, status: str | None = None) -> dict[str, Any]:
    """A run's alerts (up to 1000), newest first."""
    project_id = session.scalar(select(Run.project_id).where(Run.id == run_id))
    if project_id is None:
        raise run_not_found(run_id)
    return list_alerts(session, project_id, run_id=run_id, status=status, limit=1000)


_PROJECTS = Project.__table__
_PROJECT_CONFIG = select(_PROJECTS.c.name, _PROJECTS.c.alert_config).where(_PROJECTS.c.id == bindparam("pid"))
_ALERTS = Alert.__table__
_FIRING_IDS = select(_ALERTS.c.id).where(_ALERTS.c.run_id == bindparam("rid"), _ALERTS.c.status == "firing")


@functools.lru_cache(maxsize=256)
def _resolve(project_json: str, run_json: str) -> RuleConfig:
    from losswatch.server.detectors import resolve_config

    project, run = json.loads(project_json), json.loads(run_json)
    try:  # the run's config may carry {"silenced": [...]}
        return resolve_config(project, run)
    except ValueError:  # stored before a rule changed: fall back to the project's and the defaults
        return resolve_config(project, None)


def run_context(session: Session, run: RunRow, public_url: str | None = None) -> RunContext:
    """The run's alerting context: its project, and its rule configuration resolved (cached)."""
    name, project_config = session.execute(_PROJECT_CONFIG, {"pid": run.project_id}).one()
    config = _resolve(json.dumps(project_config, sort_keys=True), json.dumps(run.alert_config, sort_keys=True))
    return RunContext(run.id, run.name, run.project_id, name, config, public_url)


def stamp(dt: datetime) -> float:
    return utc(dt).timestamp()  # type: ignore[union-attr]
