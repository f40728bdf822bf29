"""Runs: create (idempotent on the client's id), read, list with filters and sorts, update, finish."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from losswatch.server.errors import InvalidRequest, run_not_found
from losswatch.server.models import Alert, Project, Run, Series
from losswatch.server.schemas import RunCreate, RunPage, RunRead, RunUpdate, SeriesSummary
from losswatch.server.services.projects import get_or_create_project, get_project, now

ENDED = ("finished", "failed", "crashed", "stopped")


def check_rule_config(data: dict[str, Any]) -> dict[str, Any]:
    from losswatch.server.services.alerts import check_rule_config as check

    return check(data)


def utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def summary_of(s: Series) -> SeriesSummary:
    last: float | str | None = s.last_special if s.last_special is not None else s.last_value
    return SeriesSummary(
        kind=s.kind,  # type: ignore[arg-type]
        count=s.count,
        nonfinite=s.nonfinite,
        first_step=s.first_step,
        last_step=s.last_step,
        last=last,
        min=s.min_value,
        max=s.max_value,
        last_wall=None if s.last_wall_us is None else s.last_wall_us / 1e6,
    )


def _summaries(session: Session, run_ids: list[str]) -> dict[str, dict[str, SeriesSummary]]:
    out: dict[str, dict[str, SeriesSummary]] = {rid: {} for rid in run_ids}
    for i in range(0, len(run_ids), 500):
        for s in session.scalars(select(Series).where(Series.run_id.in_(run_ids[i : i + 500]))):
            out[s.run_id][s.key] = summary_of(s)
    return out


def to_read(run: Run, project: str, summary: dict[str, SeriesSummary]) -> RunRead:
    return RunRead(
        id=run.id, project=project, name=run.name, group=run.group, tags=run.tags, config=run.config,
        notes=run.notes, status=run.status,  # type: ignore[arg-type]
        created_at=utc(run.created_at), started_at=utc(run.started_at),  # type: ignore[arg-type]
        ended_at=utc(run.ended_at), heartbeat_at=utc(run.heartbeat_at), host=run.host,
        client=run.client, summary=summary,
    )


def get_run(session: Session, run_id: str) -> tuple[Run, str]:
    row = session.execute(
        select(Run, Project.name).join(Project, Project.id == Run.project_id).where(Run.id == run_id)
    ).first()
    if row is None:
        raise run_not_found(run_id)
    return row[0], row[1]


def read_run(session: Session, run_id: str) -> RunRead:
    run, project = get_run(session, run_id)
    return to_read(run, project, _summaries(session, [run.id])[run.id])


def create_run(session: Session, project_name: str, data: RunCreate, *, create_project: bool) -> tuple[RunRead, bool]:
    """Create a run, or return the existing one with the same id (a retried create)."""
    project = get_or_create_project(session, project_name) if create_project else get_project(session, project_name)
    run_id = data.id or uuid.uuid4().hex
    existing = session.get(Run, run_id)
    if existing is not None:
        if existing.project_id != project.id:
            raise InvalidRequest(f"run id {run_id!r} is taken by another project", code="run_id_taken")
        return to_read(existing, project.name, _summaries(session, [run_id])[run_id]), False
    t = now()
    run = Run(
        id=run_id, project_id=project.id, name=data.name or run_id[:8], group=data.group,
        tags=list(dict.fromkeys(data.tags)), config=data.config, notes=data.notes, status="running",
        created_at=t, started_at=t, heartbeat_at=t, host=data.host, client=data.client,
        alert_config=check_rule_config(data.alerts) if data.alerts else None,
    )
    session.add(run)
    session.flush()
    return to_read(run, project.name, {}), True


def update_run(session: Session, run_id: str, data: RunUpdate) -> RunRead:
    run, _ = get_run(session, run_id)
    fields = data.model_dump(exclude_unset=True)
    for required in ("name", "status"):
        if required in fields and fields[required] is None:
            raise InvalidRequest(f"{required} cannot be null", details=[{"loc": ["body", required], "msg": "null"}])
    for name, value in fields.items():
        if name == "tags" and value is not None:
            value = list(dict.fromkeys(value))
        if name in ("tags", "config") and value is None:
            continue
        setattr(run, name, value)
    if "status" in fields:
        run.ended_at = now() if fields["status"] in ENDED else None
    session.flush()
    return read_run(session, run_id)


def finish_run(session: Session, run_id: str, status: str) -> RunRead:
    run, _ = get_run(session, run_id)
    run.status = status
    run.ended_at = now()
    session.flush()
    return read_run(session, run_id)


def delete_run(session: Session, run_id: str) -> dict[str, Any]:
    """Delete a run with its series, points, alerts and their outbox rows (the foreign keys
    cascade). Returns what went, for the answer and the audit line."""
    run, project = get_run(session, run_id)
    series, points = session.execute(
        select(func.count(), func.coalesce(func.sum(Series.count), 0)).where(Series.run_id == run_id)
    ).one()
    n_alerts = session.scalar(select(func.count()).select_from(Alert).where(Alert.run_id == run_id)) or 0
    gone = {"id": run.id, "project": project, "name": run.name, "series": int(series), "points": int(points),
            "alerts": int(n_alerts)}
    session.execute(delete(Run).where(Run.id == run_id))
    return gone


@dataclass
class TouchedRun:
    """What ingest needs of a run, read back by the statement that locked it."""

    id: str
    status: str
    name: str
    project_id: int
    alert_config: dict[str, Any] | None
    monitor_state: dict[str, Any] | None


_RUNS = Run.__table__


_TOUCH = (
    update(_RUNS).where(_RUNS.c.id == bindparam("rid")).values(heartbeat_at=bindparam("t"))
    .returning(_RUNS.c.status, _RUNS.c.name, _RUNS.c.project_id, _RUNS.c.alert_config, _RUNS.c.monitor_state)
)
_SAVE_MONITOR = update(_RUNS).where(_RUNS.c.id == bindparam("rid")).values(monitor_state=bindparam("state"))


def touch_run(session: Session, run_id: str) -> TouchedRun:
    """Record that the client is alive; the first write of an ingest transaction, so it also takes
    the run's row lock (PostgreSQL) or the write lock (SQLite) before anything is read.
    A crashed run that sends again is running again."""
    row = session.execute(_TOUCH, {"rid": run_id, "t": now()}).first()
    if row is None:
        raise run_not_found(run_id)
    touched = TouchedRun(run_id, *row)
    if touched.status == "crashed":
        session.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(status="running", ended_at=None))
        touched.status = "running"
    return touched


def save_monitor_state(session: Session, run_id: str, state: dict[str, Any]) -> None:
    session.execute(_SAVE_MONITOR, {"rid": run_id, "state": state})


# --- listing ---------------------------------------------------------------------------------

_SUMMARY_SORTS = ("last", "min", "max")
_PLAIN_SORTS = ("created_at", "name", "status", "group")


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _dig(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    if path in config:
        return config[path]
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers, then strings, then everything else; comparable across types."""
    if isinstance(value, bool):
        return (1, float(value))
    if isinstance(value, (int, float)):
        return (0, float(value)) if not (isinstance(value, float) and math.isnan(value)) else (3, 0)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def check_sort(sort: str) -> tuple[str, str, bool]:
    desc = sort.startswith("-")
    field = sort[1:] if desc else sort
    if field in _PLAIN_SORTS:
        return "plain", field, desc
    if field.startswith("config.") and len(field) > 7:
        return "config", field[7:], desc
    agg, sep, key = field.partition(":")
    if sep and agg in _SUMMARY_SORTS and key:
        return agg, key, desc
    raise InvalidRequest(
        f"cannot sort by {sort!r}: use created_at, name, status, group, config.<key>, or "
        "last:<series>, min:<series>, max:<series> (prefix '-' for descending)",
        code="invalid_sort", details=[{"loc": ["query", "sort"], "msg": "unknown sort"}],
    )


def list_runs(
    session: Session,
    project_name: str,
    *,
    status: str | None = None,
    tags: Iterable[str] = (),
    name: str | None = None,
    group: str | None = None,
    config: dict[str, str] | None = None,
    sort: str = "-created_at",
    limit: int = 50,
    offset: int = 0,
) -> RunPage:
    """Filter in SQL where it is portable (project, status, name, group), then by tags and
    config values and sort in Python: a project holds thousands of runs, not millions."""
    how, field, desc = check_sort(sort)
    project = get_project(session, project_name)
    stmt = select(Run).where(Run.project_id == project.id)
    if status:
        stmt = stmt.where(Run.status == status)
    if name:
        stmt = stmt.where(func.lower(Run.name).contains(name.lower(), autoescape=True))
    if group:
        stmt = stmt.where(Run.group == group)
    runs = list(session.scalars(stmt))
    wanted_tags = set(tags)
    if wanted_tags:
        runs = [r for r in runs if wanted_tags.issubset(r.tags)]
    for path, raw in (config or {}).items():
        want = _parse_value(raw)
        runs = [r for r in runs if (v := _dig(r.config, path)) is not _MISSING and (v == want or str(v) == raw)]
    summaries = _summaries(session, [r.id for r in runs])

    def value_of(run: Run) -> Any:
        if how == "plain":
            v = getattr(run, field)
            return utc(v) if isinstance(v, datetime) else v
        if how == "config":
            v = _dig(run.config, field)
            return None if v is _MISSING else v
        s = summaries[run.id].get(field)
        if s is None:
            return None
        v = {"last": s.last, "min": s.min, "max": s.max}[how]
        return v if isinstance(v, (int, float)) else None

    present = [(value_of(r), r) for r in runs]
    have = [(v, r) for v, r in present if v is not None]
    missing = [r for v, r in present if v is None]
    # Ties keep creation order whatever the direction (Python's sort is stable, reverse too).
    have.sort(key=lambda vr: (utc(vr[1].created_at), vr[1].id))
    have.sort(key=lambda vr: (0, vr[0].timestamp()) if isinstance(vr[0], datetime) else _sort_key(vr[0]), reverse=desc)
    ordered = [r for _, r in have] + missing
    page = ordered[offset : offset + limit]
    return RunPage(
        runs=[to_read(r, project.name, summaries[r.id]) for r in page],
        total=len(ordered), limit=limit, offset=offset,
    )
