"""MLflow's read queries on losswatch's data: search runs, search experiments, sampled metric history.

The filter and order strings are parsed by the MLflow protocol layer (``server/api/mlflow_filters.py``)
into :class:`Condition` and :class:`Order`; this module only answers them. A metric's value is its
series' last value (the value at its last step), as MLflow compares a run's latest metric. Runs of
the chosen experiments are filtered and sorted in Python, as ``runs.list_runs`` does: a project holds
thousands of runs, not millions. Runs without the value a sort asks for come last, as in MLflow.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.errors import LosswatchError
from losswatch.server.services import points
from losswatch.server.services.mlflow_compat import RUN_NAME_TAG, experiment_dict, run_info
from losswatch.server.services.projects import utc
from losswatch.server.storage.models import Project, Run, Series

ATTRIBUTES = ("run_id", "run_name", "status", "start_time", "end_time", "user_id", "artifact_uri",
              "experiment_id", "lifecycle_stage")
NUMERIC_ATTRIBUTES = ("start_time", "end_time")


@dataclass(frozen=True)
class Condition:
    """``entity.key op value``: entity one of metric, param, tag, attribute; op one of =, !=, <,
    <=, >, >=, LIKE, ILIKE, IN, NOT IN, IS NULL, IS NOT NULL; value a float, a str, a tuple or None."""

    entity: str
    key: str
    op: str
    value: Any


@dataclass(frozen=True)
class Order:
    entity: str
    key: str
    ascending: bool


def _ms(dt: Any) -> int | None:
    dt = utc(dt)
    return None if dt is None else int(dt.timestamp() * 1000)


def _tags(run: Run) -> dict[str, str]:
    out = {}
    for tag in run.tags or []:
        key, _, value = tag.partition("=")
        out[key] = value
    out[RUN_NAME_TAG] = run.name
    return out


def _params(run: Run) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in (run.config or {}).items()}


def _attribute(run: Run, project: Project, key: str) -> Any:
    info = run_info(run, project)
    return {"run_id": run.id, "run_name": run.name, "status": info["status"], "start_time": info["start_time"],
            "end_time": info["end_time"], "user_id": info["user_id"], "artifact_uri": info["artifact_uri"],
            "experiment_id": info["experiment_id"], "lifecycle_stage": "active"}[key]


def _like(pattern: str, text: str, ignore_case: bool) -> bool:
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, text, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _compare(have: Any, op: str, want: Any) -> bool:
    if op == "IS NULL":
        return have is None
    if op == "IS NOT NULL":
        return have is not None
    if have is None:
        return False
    if op in ("IN", "NOT IN"):
        return (have in want) == (op == "IN")
    if op in ("LIKE", "ILIKE"):
        return _like(str(want), str(have), op == "ILIKE")
    if isinstance(want, float):
        try:
            have = float(have)
        except (TypeError, ValueError):
            return False
        if math.isnan(have):
            return op == "!="
    elif not isinstance(have, str):
        have = str(have)
    try:
        return {"=": have == want, "!=": have != want, "<": have < want, "<=": have <= want,
                ">": have > want, ">=": have >= want}[op]
    except TypeError:
        return False


def _last_values(session: Session, run_ids: list[str], keys: Iterable[str] | None) -> dict[str, dict[str, Any]]:
    """run -> key -> (value, last step, wall ms) of each series' last point (only ``keys`` if given)."""
    out: dict[str, dict[str, Any]] = {rid: {} for rid in run_ids}
    cols = (Series.run_id, Series.key, Series.last_value, Series.last_special, Series.last_step, Series.last_wall_us)
    wanted = None if keys is None else list(keys)
    if wanted == []:
        return out
    for i in range(0, len(run_ids), 500):
        stmt = select(*cols).where(Series.run_id.in_(run_ids[i : i + 500]), Series.last_step.is_not(None))
        if wanted is not None:
            stmt = stmt.where(Series.key.in_(wanted))
        for rid, key, value, special, step, wall in session.execute(stmt):
            v = wire.decode_value(special) if special is not None else value
            if v is not None:
                out[rid][key] = (float(v), step, 0 if wall is None else int(round(wall / 1000)))
    return out


def search_runs(
    session: Session, project_ids: list[int], conditions: list[Condition], order: list[Order],
    max_results: int, offset: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the runs of the projects ``project_ids`` that meet every condition, sorted; (runs, next offset)."""
    by_id = {p.id: p for p in session.scalars(select(Project).where(Project.id.in_(project_ids)))}
    runs = list(session.scalars(select(Run).where(Run.project_id.in_(list(by_id)))))
    metric_keys = {c.key for c in conditions if c.entity == "metric"} | {o.key for o in order if o.entity == "metric"}
    metrics = _last_values(session, [r.id for r in runs], metric_keys)

    def value(run: Run, entity: str, key: str) -> Any:
        if entity == "metric":
            m = metrics[run.id].get(key)
            return None if m is None else m[0]
        if entity == "param":
            return _params(run).get(key)
        if entity == "tag":
            return _tags(run).get(key)
        return _attribute(run, by_id[run.project_id], key)

    kept = [r for r in runs if all(_compare(value(r, c.entity, c.key), c.op, c.value) for c in conditions)]
    # MLflow's default order, then the requested keys from the last to the first (stable sorts)
    kept.sort(key=lambda r: r.id)
    kept.sort(key=lambda r: _ms(r.started_at or r.created_at) or 0, reverse=True)
    for o in reversed(order):
        have = [(value(r, o.entity, o.key), r) for r in kept]
        present = [(v, r) for v, r in have if v is not None and not (isinstance(v, float) and math.isnan(v))]
        missing = [r for v, r in have if v is None or (isinstance(v, float) and math.isnan(v))]
        present.sort(key=lambda vr: vr[0], reverse=not o.ascending)
        kept = [r for _, r in present] + missing
    page = kept[offset : offset + max_results]
    more = offset + max_results < len(kept)
    return run_dicts(session, page, by_id), (offset + max_results if more else None)


def run_dicts(session: Session, runs: list[Run], projects: dict[int, Project]) -> list[dict[str, Any]]:
    """MLflow's Run objects (info, latest metrics, params, tags) for many runs in two queries."""
    metrics = _last_values(session, [r.id for r in runs], None)
    out = []
    for run in runs:
        data_metrics = [{"key": k, "value": wire.encode_value(v), "step": step, "timestamp": wall}
                        for k, (v, step, wall) in sorted(metrics[run.id].items())]
        params = [{"key": k, "value": v} for k, v in sorted(_params(run).items())]
        tags = [{"key": k, "value": v} for k, v in _tags(run).items()]
        out.append({"info": run_info(run, projects[run.project_id]),
                    "data": {"metrics": data_metrics, "params": params, "tags": tags}})
    return out


def search_experiments(session: Session, only: int | None, name: tuple[str, str] | None, max_results: int,
                       offset: int) -> tuple[list[dict[str, Any]], int | None]:
    """Projects (all, or the token's ``only``) whose name meets ``name`` = (operator, value)."""
    stmt = select(Project).order_by(Project.id)
    if only is not None:
        stmt = stmt.where(Project.id == only)
    found = [p for p in session.scalars(stmt) if name is None or _compare(p.name, *name)]
    page = found[offset : offset + max_results]
    return [experiment_dict(p) for p in page], (offset + max_results if offset + max_results < len(found) else None)


def sampled_history(session: Session, run_ids: list[str], key: str, start: int, end: int,
                    max_results: int) -> list[dict[str, Any]]:
    """At most ``max_results`` points of each run's series ``key`` in steps [start, end]: all of them,
    or evenly spaced steps that always include the first and the last (MLflow's bulk-interval sampling)."""
    out: list[dict[str, Any]] = []
    for rid in run_ids:
        try:
            page = points.read_points(session, rid, key, start, end, 100_000_000)
        except LosswatchError as exc:
            if exc.code == "series_not_found":
                continue
            raise
        steps: list[int] = page["steps"]  # type: ignore[assignment]
        n = len(steps)
        if n > max_results:
            if max_results == 1:
                idx = [n - 1]
            else:
                idx = sorted({round(i * (n - 1) / (max_results - 1)) for i in range(max_results)})
        else:
            idx = list(range(n))
        values, walls = page["values"], page["wall_times"]
        out += [{"key": key, "value": values[i], "timestamp": int(round(walls[i] * 1000)),  # type: ignore[index]
                 "step": steps[i], "run_id": rid} for i in idx]
    return out
