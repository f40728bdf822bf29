"""Runs: create (idempotent on the client's id), read, list with filters and sorts, update, finish."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, and_, bindparam, case, delete, exists, func, select, type_coerce, update
from sqlalchemy.orm import Session

from losswatch.server.api.schemas import RunCreate, RunRead, RunUpdate, SeriesSummary
from losswatch.server.errors import InvalidRequest, run_not_found
from losswatch.server.services.alerts import check_rule_config
from losswatch.server.services.projects import get_or_create_project, get_project, now, utc
from losswatch.server.storage.models import Alert, Project, Run, Series, json_array_contains_all

ENDED = ("finished", "failed", "crashed", "stopped")


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


def run_project(session: Session, run_id: str) -> tuple[int, str]:
    """The (id, name) of the run's project, without loading the run; 404 when there is no such run."""
    row = session.execute(
        select(Project.id, Project.name).join(Run, Run.project_id == Project.id).where(Run.id == run_id)
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
_ALERTS = Alert.__table__
# The monitor state is the batch's last write to its run; the same statement says whether any alert of
# the run is firing then (the batch's own changes included), so the usual answer, none, costs no query.
_SAVE_MONITOR = (
    update(_RUNS).where(_RUNS.c.id == bindparam("rid")).values(monitor_state=bindparam("state"))
    .returning(exists().where(_ALERTS.c.run_id == bindparam("rid"), _ALERTS.c.status == "firing"))
)


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


def save_monitor_state(session: Session, run_id: str, state: dict[str, Any]) -> bool:
    """Write the run's monitor state; whether an alert of the run is firing now (after the writes of
    the caller's transaction so far: call it after the alerts are applied)."""
    return bool(session.execute(*saved_monitor_state(run_id, state)).scalar())


def saved_monitor_state(run_id: str, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The statement of :func:`save_monitor_state` and its parameters (for a caller that sends it
    with other writes: ``points.save_batch``); it returns one row, one column: whether a run's alert
    is firing."""
    return _SAVE_MONITOR, {"rid": run_id, "state": state}


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


def _summary_value(how: str) -> Any:
    """The column a summary sort reads; NULL when the series is missing or its value is not a number."""
    if how == "last":
        return case((Series.last_special.is_(None), Series.last_value), else_=None)
    return Series.min_value if how == "min" else Series.max_value


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
) -> dict[str, Any]:
    """Filter, sort and page, then read the page's runs and summarise only those. The answer is
    ``RunPage``'s JSON shape as plain data (``_page_rows``), which the route writes with orjson.

    Filters on project, status, name, group and tags, and every sort but ``config.<key>``, run in
    SQL (a summary sort joins each run's one series of that key, through the (run, key) index; the
    tag filter is ``json_array_contains_all``), so a page costs the same with 10 runs or 10,000.
    Config filters and config sorts, whose matching rules (dotted paths, a number or its text) are
    Python's, filter and sort in Python over the id and config columns of the runs SQL kept.
    Order: runs with a value first, ties in creation order whatever the direction; runs without
    a value (no such series, or a non-numeric value) last, in creation order."""
    how, field, desc = check_sort(sort)
    project = get_project(session, project_name)
    where = [Run.project_id == project.id]
    if status:
        where.append(Run.status == status)
    if name:
        where.append(func.lower(Run.name).contains(name.lower(), autoescape=True))
    if group:
        where.append(Run.group == group)
    wanted_tags = list(dict.fromkeys(tags))
    if wanted_tags:
        where.append(json_array_contains_all(session.get_bind().dialect.name, Run.tags, wanted_tags))
    if not config and how != "config":
        total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
        value: Any = getattr(Run, field) if how == "plain" else _summary_value(how)
        stmt = select(Run.id)
        if how in _SUMMARY_SORTS:
            stmt = stmt.outerjoin(Series, and_(Series.run_id == Run.id, Series.key == field))
        order: tuple[Any, ...]
        if field == "created_at":  # never NULL; newest (or oldest) first straight from the index
            order = (Run.created_at.desc(), Run.id.desc()) if desc else (Run.created_at.asc(), Run.id.asc())
        else:
            order = (value.is_(None), value.desc() if desc else value.asc(), Run.created_at, Run.id)
        stmt = stmt.where(*where).order_by(*order)
        ids = list(session.scalars(stmt.limit(limit).offset(offset)))
    else:
        ids, total = _list_in_python(session, where, how, field, desc, config or {}, limit, offset)
    return {"runs": _page_rows(session, project.name, ids), "total": total, "limit": limit, "offset": offset}


_PAGE_RUN_COLUMNS = (
    Run.id, Run.name, Run.group, type_coerce(Run.tags, Text), type_coerce(Run.config, Text), Run.notes, Run.status,
    Run.created_at, Run.started_at, Run.ended_at, Run.heartbeat_at, Run.host, type_coerce(Run.client, Text),
)
# On SQLite the times are read as the text SQLAlchemy stored ("2026-12-02 09:24:26.228580", UTC) and
# rewritten as pydantic writes them, not parsed into datetimes to be formatted again (a third of a
# 10,000-run page's time went there).
_PAGE_RUN_COLUMNS_SQLITE = (
    *_PAGE_RUN_COLUMNS[:7], *(type_coerce(c, Text) for c in (Run.created_at, Run.started_at, Run.ended_at,
                                                              Run.heartbeat_at)), *_PAGE_RUN_COLUMNS[11:],
)
_PAGE_SERIES_COLUMNS = (
    Series.run_id, Series.key, Series.kind, Series.count, Series.nonfinite, Series.first_step, Series.last_step,
    Series.last_value, Series.last_special, Series.min_value, Series.max_value, Series.last_wall_us,
)


def _iso(dt: datetime | None) -> str | None:
    """A stored time as pydantic writes it (RunRead's shape): ISO 8601, UTC as ``Z``."""
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite: naive, and UTC
        return dt.isoformat() + "Z"
    text = dt.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _iso_text(text: str | None) -> str | None:
    """A time stored by SQLAlchemy on SQLite ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) as :func:`_iso` writes it:
    ``T`` between date and time, no fraction when it is zero (``isoformat``'s rule), ``Z``."""
    if text is None:
        return None
    if text.endswith(".000000"):
        text = text[:-7]
    return f"{text[:10]}T{text[11:]}Z"


def _page_rows(session: Session, project: str, ids: list[str]) -> list[dict[str, Any]]:
    """The page's runs, each shaped exactly as ``RunRead`` (same keys, order and encodings), from
    plain columns: no ORM entities and no pydantic models per run, for the route to write with orjson."""
    if not ids:
        return []
    conn = session.connection()
    sqlite = conn.dialect.name == "sqlite"
    columns, iso = (_PAGE_RUN_COLUMNS_SQLITE, _iso_text) if sqlite else (_PAGE_RUN_COLUMNS, _iso)
    by_id: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        for (rid, name, group, tags, config, notes, status, created, started, ended, heartbeat, host,
             client) in conn.execute(select(*columns).where(Run.id.in_(part))).all():
            by_id[rid] = {
                "id": rid, "project": project, "name": name, "group": group, "tags": _json(tags),
                "config": _json(config), "notes": notes, "status": status, "created_at": iso(created),
                "started_at": iso(started), "ended_at": iso(ended), "heartbeat_at": iso(heartbeat),
                "host": host, "client": _json(client), "summary": {},
            }
        for (rid, key, kind, count, nonfinite, first, last_step, last_value, last_special, lo, hi,
             wall_us) in conn.execute(select(*_PAGE_SERIES_COLUMNS).where(Series.run_id.in_(part))
                                      .order_by(Series.id)).all():
            by_id[rid]["summary"][key] = {
                "kind": kind, "count": count, "nonfinite": nonfinite, "first_step": first, "last_step": last_step,
                "last": last_special if last_special is not None else last_value, "min": lo, "max": hi,
                "last_wall": None if wall_us is None else wall_us / 1e6,
            }
    return [by_id[i] for i in ids if i in by_id]


def _json(value: Any) -> Any:
    """A JSON column read raw: text on SQLite (decoded here, by orjson; by the standard library when the
    text holds a NaN or an Infinity, which orjson refuses), already decoded on PostgreSQL."""
    if not isinstance(value, (str, bytes)):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return json.loads(value)


def _list_in_python(session: Session, where: list[Any], how: str, field: str, desc: bool, config: dict[str, str],
                    limit: int, offset: int) -> tuple[list[str], int]:
    """The page's run ids and the total, for config filters and config sorts. Only the id, the config
    and the sort value are read, in creation order (so a run's position is its creation rank), as
    plain tuples."""
    cols: list[Any] = [Run.id, type_coerce(Run.config, Text)]
    if how == "plain" and field != "created_at":
        cols.append(getattr(Run, field))
    elif how in _SUMMARY_SORTS:
        cols.append(_summary_value(how))
    stmt = select(*cols)
    if how in _SUMMARY_SORTS:
        stmt = stmt.outerjoin(Series, and_(Series.run_id == Run.id, Series.key == field))
    result = session.connection().execute(stmt.where(*where).order_by(Run.created_at, Run.id)).all()
    rows = [(r[0], _json(r[1]) or {}, r[2] if len(cols) == 3 else None) for r in result]
    for path, raw in config.items():
        want = _parse_value(raw)
        rows = [r for r in rows if (v := _dig(r[1], path)) is not _MISSING and (v == want or str(v) == raw)]
    have: list[tuple[Any, str]] = []
    missing: list[str] = []
    for rank, (rid, conf, value) in enumerate(rows):
        if how == "config":
            v = _dig(conf, field)
            v = None if v is _MISSING else v
        elif how == "plain":
            v = rank if field == "created_at" else value
        else:
            v = value if isinstance(value, (int, float)) else None
        if v is None:
            missing.append(rid)
        else:
            have.append((v, rid))
    # Python's sort is stable, reverse too: ties keep creation order whatever the direction.
    have.sort(key=lambda vr: _sort_key(vr[0]), reverse=desc)
    ordered = [rid for _, rid in have] + missing
    return ordered[offset : offset + limit], len(ordered)
