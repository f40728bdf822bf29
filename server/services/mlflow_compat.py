"""MLflow's entities on losswatch's data: the domain side of the MLflow-compatible API.

Mapping: an MLflow **experiment** is a losswatch project (its id is the project's id; experiment
``"0"``, MLflow's default, is the project ``Default``); an MLflow **run** is a run; **params** go into
the run's config (as the strings MLflow sends; a param cannot change once logged, as in MLflow);
**tags** go into the run's tags as ``key=value`` (``mlflow.runName`` renames the run instead);
each **metric key** is a series whose kind ``wire.guess_kind`` guesses from the key; MLflow's
timestamp (milliseconds) is the point's wall time and its step the point's step.

Differences from MLflow: logging the same (key, step) twice keeps the later value (MLflow keeps
both); steps must be in ``[0, 2^63-1]``; experiment names must be valid project names. A log-batch
is one transaction: its params, tags and metrics (through the ingest path, detectors and alerts
included) are written together or not at all.

The functions here take plain arguments (already parsed from MLflow's JSON by
``losswatch.server.api.mlflow_protocol``) and raise ``losswatch.server.errors``; the protocol layer
renders those in MLflow's error shape. The dicts they return are MLflow's entities (Experiment,
RunInfo, Run, Metric), shared with ``mlflow_search``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.api.schemas import RunCreate, RunRead
from losswatch.server.errors import Conflict, InvalidRequest, LosswatchError, NotFound
from losswatch.server.services import ingest, points, projects, runs
from losswatch.server.services.batches import BatchLimits, SeriesBatch, check_key
from losswatch.server.storage import chunks
from losswatch.server.storage.db import Database
from losswatch.server.storage.models import Project, Run

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"
_TO_MLFLOW = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "crashed": "FAILED",
              "stopped": "KILLED"}


def invalid(message: str) -> InvalidRequest:
    """A value MLflow's API would refuse (rendered as ``INVALID_PARAMETER_VALUE``)."""
    return InvalidRequest(message, code="invalid_parameter_value")


# --- experiments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """An experiment as a route needs it: the project behind it (for the access check) and
    MLflow's view of it."""

    project_id: int
    project: str
    info: dict[str, Any]


def _ms(dt: datetime | None) -> int | None:
    dt = runs.utc(dt)
    return None if dt is None else int(dt.timestamp() * 1000)


def experiment_id(project: Project) -> str:
    return DEFAULT_EXPERIMENT_ID if project.name == DEFAULT_EXPERIMENT_NAME else str(project.id)


def experiment_dict(project: Project) -> dict[str, Any]:
    created = _ms(project.created_at)
    return {
        "experiment_id": experiment_id(project), "name": project.name,
        "artifact_location": f"mlflow-artifacts:/{experiment_id(project)}", "lifecycle_stage": "active",
        "creation_time": created, "last_update_time": created, "tags": [],
    }  # fmt: skip


def _experiment(project: Project) -> Experiment:
    return Experiment(project.id, project.name, experiment_dict(project))


def experiment_not_found(exp_id: str) -> NotFound:
    """The answer for a missing experiment, and for another project's (which must look the same)."""
    return NotFound(f"No Experiment with id={exp_id} exists", code="experiment_not_found")


def experiment_name_not_found(name: str) -> NotFound:
    return NotFound(f"Could not find experiment with name '{name}'", code="experiment_not_found")


def find_experiment(session: Session, exp_id: str, *, create_default: bool = False) -> Experiment:
    """The experiment ``exp_id`` (``"0"``: the ``Default`` project, made on first use when
    ``create_default``)."""
    if exp_id == DEFAULT_EXPERIMENT_ID:
        if create_default:
            return _experiment(projects.get_or_create_project(session, DEFAULT_EXPERIMENT_NAME))
        project = session.scalar(select(Project).where(Project.name == DEFAULT_EXPERIMENT_NAME))
    else:
        project = session.get(Project, int(exp_id)) if exp_id.isdigit() and len(exp_id) < 12 else None
    if project is None:
        raise experiment_not_found(exp_id)
    return _experiment(project)


def experiment_by_name(session: Session, name: str) -> Experiment:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise experiment_name_not_found(name)
    return _experiment(project)


def create_experiment(session: Session, name: str) -> str:
    """A new project for experiment ``name``; its experiment id."""
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"Experiment '{name}' already exists.", code="experiment_exists")
    try:
        projects.check_name(name)
    except LosswatchError as exc:
        raise invalid(f"Invalid experiment name {name!r}: in losswatch an experiment is a project, and {exc.message}") from None
    return experiment_id(projects.get_or_create_project(session, name))


# --- runs -------------------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    key, _, value = tag.partition("=")
    return key, value


def _tag_text(key: str, value: str) -> str:
    return f"{key}={value}" if value != "" else key


def _param_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def run_info(run: Run, project: Project) -> dict[str, Any]:
    return {
        "run_id": run.id, "run_uuid": run.id, "run_name": run.name, "experiment_id": experiment_id(project),
        "user_id": str((run.client or {}).get("mlflow_user", "")),
        "status": _TO_MLFLOW.get(run.status, "RUNNING"),
        "start_time": _ms(run.started_at or run.created_at), "end_time": _ms(run.ended_at),
        "artifact_uri": f"mlflow-artifacts:/{experiment_id(project)}/{run.id}/artifacts",  # answered 501
        "lifecycle_stage": "active",
    }  # fmt: skip


def _run_info(session: Session, run: Run) -> dict[str, Any]:
    project = session.get(Project, run.project_id)
    assert project is not None
    return run_info(run, project)


def run_dict(session: Session, run_id: str) -> dict[str, Any]:
    """MLflow's Run: its info and its latest metrics, params and tags."""
    read: RunRead = runs.read_run(session, run_id)
    run, _ = runs.get_run(session, run_id)
    metrics = []
    for key, s in sorted(read.summary.items()):
        if s.last_step is None or s.last is None:
            continue
        metrics.append({"key": key, "value": s.last, "step": s.last_step,
                        "timestamp": int(round((s.last_wall or 0.0) * 1000))})
    params = [{"key": k, "value": v if isinstance(v, str) else _param_text(v)} for k, v in sorted(read.config.items())]
    tags = [{"key": k, "value": v} for k, v in map(_split_tag, read.tags)]
    tags.append({"key": RUN_NAME_TAG, "value": read.name})
    return {"info": _run_info(session, run), "data": {"metrics": metrics, "params": params, "tags": tags}}


def _from_ms(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise invalid(f"Invalid timestamp {ms}: expected milliseconds since the epoch") from None


def create_run(session: Session, project_id: int, *, name: str | None, tags: list[tuple[str, str]],
               start_ms: int | None, user: str | None) -> dict[str, Any]:
    """A new run in the project; MLflow's Run of it. ``tags`` exclude ``mlflow.runName`` (that is ``name``)."""
    client = {"api": "mlflow"}
    if user:
        client["mlflow_user"] = user
    rid = uuid.uuid4().hex
    try:
        data = RunCreate(id=rid, name=name or None, tags=[_tag_text(k, v) for k, v in tags], client=client)
    except ValidationError as exc:  # e.g. a "key=value" tag longer than a losswatch tag may be
        first = exc.errors()[0]
        raise invalid(f"Invalid run: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    project = session.get(Project, project_id)
    assert project is not None
    runs.create_run(session, project.name, data, create_project=False)
    run, _ = runs.get_run(session, rid)
    if start_ms is not None and start_ms > 0:
        run.started_at = _from_ms(start_ms)
    session.flush()
    return run_dict(session, rid)


def update_run(session: Session, run_id: str, *, status: str | None, end_ms: int | None,
               name: str | None) -> dict[str, Any]:
    """Set a run's status (a losswatch status), end time or name; MLflow's RunInfo of it."""
    run, _ = runs.get_run(session, run_id)
    if status is not None:
        run.status = status
        if status == "running":
            run.ended_at = None
        else:
            run.ended_at = _from_ms(end_ms) if end_ms else projects.now()
    if name:
        run.name = name[:500]
    session.flush()
    return _run_info(session, run)


# --- log-batch: params, tags and metrics in one transaction -------------------------------------


@dataclass
class Metric:
    key: str
    value: float
    timestamp_ms: int
    step: int


def series_batch(metrics: list[Metric]) -> list[SeriesBatch]:
    """MLflow metrics as the ingest path's parsed batch, built directly (no re-encoding): one series
    per key, points sorted by step, the later of two points at one step kept."""
    grouped: dict[str, list[Metric]] = {}
    for m in metrics:
        grouped.setdefault(m.key, []).append(m)
    out = []
    for key, ms in grouped.items():
        check_key(key)
        pts = chunks.normalise(np.array([m.step for m in ms], np.int64), np.array([m.value for m in ms], np.float64),
                               np.array([m.timestamp_ms for m in ms], np.int64) * 1000)
        out.append(SeriesBatch(key, wire.guess_kind(key), False, pts))
    return out


def apply_params_and_tags(session: Session, run_id: str, params: list[tuple[str, str]],
                          tags: list[tuple[str, str]], name: str | None = None) -> None:
    """Params into the run's config (refusing a changed value), tags into its tags (a key's new value
    replaces the old), ``name`` as its new name."""
    run, _ = runs.get_run(session, run_id)  # a missing run is an error even with nothing to write
    if params:
        config = dict(run.config or {})
        for key, value in params:
            old = config.get(key)
            if old is not None and (old if isinstance(old, str) else _param_text(old)) != value:
                raise invalid(
                    f"Changing param values is not allowed. Param with key='{key}' was already logged with "
                    f"value='{old}' for run ID='{run_id}'. Attempted logging new value '{value}'."
                )
            config[key] = value
        run.config = config
    if tags:
        current = list(run.tags or [])
        for key, value in tags:
            current = [t for t in current if _split_tag(t)[0] != key]
            current.append(_tag_text(key, value))
        run.tags = current
    if name:
        run.name = name[:500]
    session.flush()


def log_batch(db: Database, run_id: str, *, metrics: list[Metric], params: list[tuple[str, str]],
              tags: list[tuple[str, str]], name: str | None = None) -> None:
    """One MLflow batch, one transaction: params and tags are applied inside the ingest transaction
    of the metrics (after it has locked the run), so a failure anywhere leaves nothing written."""
    batch = series_batch(metrics)  # outside the write lock, as ingest parses
    if not batch:
        with db.write() as session:
            apply_params_and_tags(session, run_id, params, tags, name)
        return
    limits = BatchLimits(db.settings.max_series_per_batch, db.settings.max_points_per_batch)
    limits.check_counts(len(batch), lambda: len(metrics))
    ingest.record_batch(db, run_id, batch,
                        also=lambda session: apply_params_and_tags(session, run_id, params, tags, name))


# --- metric history ---------------------------------------------------------------------------


def metric_history(session: Session, run_id: str, key: str, start: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` points of one metric from step ``start`` as MLflow Metrics, and the step the
    next page starts at (None on the last page). A metric the run never logged has no points."""
    runs.get_run(session, run_id)
    try:
        page = points.read_points(session, run_id, key, start, wire.MAX_STEP, limit)
    except LosswatchError as exc:
        if exc.code == "series_not_found":
            return [], None
        raise
    metrics = [
        {"key": key, "value": v, "timestamp": int(round(w * 1000)), "step": s}
        for s, v, w in zip(page["steps"], page["values"], page["wall_times"], strict=True)  # type: ignore[call-overload]
    ]
    return metrics, page["next_start"]  # type: ignore[return-value]
