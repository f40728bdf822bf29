"""An MLflow-compatible subset of the tracking REST API (``/api/2.0/mlflow/...``), on losswatch's own data.

Mapping: an MLflow **experiment** is a losswatch project (its id is the project's id; experiment
``"0"``, MLflow's default, is the project ``Default``); an MLflow **run** is a run; **params** go into
the run's config (as the strings MLflow sends; a param cannot change once logged, as in MLflow);
**tags** go into the run's tags as ``key=value`` (``mlflow.runName`` renames the run instead);
each **metric key** is a series whose kind ``wire.guess_kind`` guesses from the key; MLflow's
timestamp (milliseconds) is the point's wall time and its step the point's step.

Differences from MLflow: logging the same (key, step) twice keeps the later value (MLflow keeps
both); steps must be in ``[0, 2^63-1]``; experiment names must be valid project names. Metrics go
through the normal ingest (detectors and alerts included), in a transaction of their own after the
params and tags of the same request.

Requests follow MLflow's JSON (protobuf JSON: int64 fields may come as strings, doubles as numbers
or ``"NaN"``/``"Infinity"``/``"-Infinity"``), and so do the answers. Errors are
``{"error_code": ..., "message": ...}`` with MLflow's status codes: :class:`MlflowError`.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.db import Database
from losswatch.server.errors import LosswatchError
from losswatch.server.models import Project, Run
from losswatch.server.schemas import RUN_ID_PATTERN, RunCreate, RunRead
from losswatch.server.services import ingest, points, projects, runs

# MLflow's documented limits (mlflow/utils/validation.py)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
HISTORY_PAGE = 25_000  # MLflow's page size for get-history
_RUN_ID = re.compile(RUN_ID_PATTERN)

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"

_STATUS_CODES = {
    "INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400, "RESOURCE_ALREADY_EXISTS": 400,
    "RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "INTERNAL_ERROR": 500,
}  # fmt: skip
_TO_MLFLOW = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "crashed": "FAILED",
              "stopped": "KILLED"}
_FROM_MLFLOW = {"RUNNING": "running", "SCHEDULED": "running", "FINISHED": "finished", "FAILED": "failed",
                "KILLED": "stopped"}


class MlflowError(Exception):
    """An error in MLflow's shape: ``{"error_code": code, "message": message}`` with its status."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = _STATUS_CODES.get(error_code, 400)

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


def from_losswatch(exc: LosswatchError) -> MlflowError:
    """One of our errors (a service's, or an auth dependency's) in MLflow's terms."""
    code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
            409: "RESOURCE_ALREADY_EXISTS"}.get(exc.status)
    if code is None:
        code = "INTERNAL_ERROR" if exc.status >= 500 else "INVALID_PARAMETER_VALUE"
    return MlflowError(code, exc.message)


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


# --- request fields ---------------------------------------------------------------------------


def text(body: dict[str, Any], field: str, *, required: bool = True, default: str | None = None) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing value for required parameter '{field}'. See the API docs for more "
                          "information about request parameters.")
        return default
    if not isinstance(value, str):
        raise invalid(f"Invalid value {value!r} for parameter '{field}' supplied: expected a string")
    return value


def int64(body: dict[str, Any], field: str, *, required: bool = False, default: int | None = None) -> int | None:
    """An int64 field: protobuf JSON sends them as strings ("12") or numbers."""
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing value for required parameter '{field}'.")
        return default
    if isinstance(value, bool):
        raise invalid(f"Invalid value {value!r} for parameter '{field}' supplied: expected an integer")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None or not (-(2**63) <= number < 2**63):
        raise invalid(f"Invalid value {value!r} for parameter '{field}' supplied: expected an integer")
    return number


def double(value: Any, where: str) -> float:
    if isinstance(value, bool) or value is None:
        raise invalid(f"Invalid value {value!r} for {where}: expected a number")
    if isinstance(value, str) and value not in wire.NONFINITE_SPELLINGS:
        try:
            return float(value)
        except ValueError:
            raise invalid(f"Invalid value {value!r} for {where}: expected a number") from None
    try:
        return wire.decode_value(value)
    except (ValueError, TypeError):
        raise invalid(f"Invalid value {value!r} for {where}: expected a number") from None


def _key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"Missing value for required parameter 'key' of a {what}.")
    if len(value) > MAX_ENTITY_KEY_LENGTH:
        raise invalid(f"{what.capitalize()} '{value[:50]}...' had length {len(value)}, which exceeded "
                      f"length limit of {MAX_ENTITY_KEY_LENGTH}")
    return value


def _run_id(body: dict[str, Any]) -> str:
    rid = body.get("run_id") or body.get("run_uuid")
    if not rid:
        raise invalid("Missing value for required parameter 'run_id'.")
    if not isinstance(rid, str):
        raise invalid(f"Invalid value {rid!r} for parameter 'run_id' supplied: expected a string")
    return rid


def run_id_of(body: dict[str, Any]) -> str:
    """The run a request is about (``run_id``, or the older ``run_uuid``); a malformed id is a
    missing run, as in MLflow."""
    rid = _run_id(body)
    if not _RUN_ID.match(rid):
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run '{rid[:80]}' not found")
    return rid


# --- experiments ------------------------------------------------------------------------------


def _ms(dt: datetime | None) -> int | None:
    dt = runs.utc(dt)
    return None if dt is None else int(dt.timestamp() * 1000)


def experiment_id(project: Project) -> str:
    return DEFAULT_EXPERIMENT_ID if project.name == DEFAULT_EXPERIMENT_NAME else str(project.id)


def experiment_dict(project: Project) -> dict[str, Any]:
    created = _ms(project.created_at)
    return {
        "experiment_id": experiment_id(project), "name": project.name,
        "artifact_location": "", "lifecycle_stage": "active",
        "creation_time": created, "last_update_time": created, "tags": [],
    }  # fmt: skip


def project_of_experiment(session: Session, exp_id: str, *, create_default: bool = False) -> Project:
    """The project behind an experiment id (``"0"``: the ``Default`` project, made on first use
    when ``create_default``)."""
    if exp_id == DEFAULT_EXPERIMENT_ID:
        if create_default:
            return projects.get_or_create_project(session, DEFAULT_EXPERIMENT_NAME)
        project = session.scalar(select(Project).where(Project.name == DEFAULT_EXPERIMENT_NAME))
    else:
        project = session.get(Project, int(exp_id)) if exp_id.isdigit() and len(exp_id) < 12 else None
    if project is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={exp_id} exists")
    return project


def project_by_name(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name}'")
    return project


def create_experiment(session: Session, name: str) -> Project:
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise invalid(f"Experiment name exceeds the maximum length of {MAX_EXPERIMENT_NAME_LENGTH}")
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists.")
    try:
        projects.check_name(name)
    except LosswatchError as exc:
        raise invalid(f"Invalid experiment name {name!r}: in losswatch an experiment is a project, and {exc.message}") from None
    return projects.get_or_create_project(session, name)


# --- runs -------------------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    key, _, value = tag.partition("=")
    return key, value


def run_info(run: Run, project: Project) -> dict[str, Any]:
    return {
        "run_id": run.id, "run_uuid": run.id, "run_name": run.name, "experiment_id": experiment_id(project),
        "user_id": str((run.client or {}).get("mlflow_user", "")),
        "status": _TO_MLFLOW.get(run.status, "RUNNING"),
        "start_time": _ms(run.started_at or run.created_at), "end_time": _ms(run.ended_at),
        "artifact_uri": "", "lifecycle_stage": "active",
    }  # fmt: skip


def run_dict(session: Session, run_id: str) -> dict[str, Any]:
    read: RunRead = runs.read_run(session, run_id)
    run, _ = runs.get_run(session, run_id)
    project = session.get(Project, run.project_id)
    assert project is not None
    metrics = []
    for key, s in sorted(read.summary.items()):
        if s.last_step is None or s.last is None:
            continue
        metrics.append({"key": key, "value": s.last, "step": s.last_step,
                        "timestamp": int(round((s.last_wall or 0.0) * 1000))})
    params = [{"key": k, "value": v if isinstance(v, str) else _param_text(v)} for k, v in sorted(read.config.items())]
    tags = [{"key": k, "value": v} for k, v in map(_split_tag, read.tags)]
    tags.append({"key": RUN_NAME_TAG, "value": read.name})
    return {"info": run_info(run, project), "data": {"metrics": metrics, "params": params, "tags": tags}}


def _param_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def create_run(session: Session, project: Project, body: dict[str, Any]) -> dict[str, Any]:
    tags = _tag_pairs(body.get("tags"), "tags")
    name = text(body, "run_name", required=False)
    start = int64(body, "start_time")
    user = text(body, "user_id", required=False)
    kept = []
    for key, value in tags:
        if key == RUN_NAME_TAG:
            name = name or value
        else:
            kept.append(f"{key}={value}" if value != "" else key)
    client = {"api": "mlflow"}
    if user:
        client["mlflow_user"] = user
    rid = uuid.uuid4().hex
    runs.create_run(session, project.name, RunCreate(id=rid, name=name or None, tags=kept, client=client),
                    create_project=False)
    run, _ = runs.get_run(session, rid)
    if start is not None and start > 0:
        run.started_at = _from_ms(start)
    session.flush()
    return run_dict(session, rid)


def _from_ms(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise invalid(f"Invalid timestamp {ms}: expected milliseconds since the epoch") from None


def update_run(session: Session, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    status = text(body, "status", required=False)
    end_time = int64(body, "end_time")
    name = text(body, "run_name", required=False)
    run, _ = runs.get_run(session, run_id)
    if status is not None:
        if status not in _FROM_MLFLOW:
            raise invalid(f"Invalid value {status!r} for parameter 'status': one of {', '.join(_FROM_MLFLOW)}")
        run.status = _FROM_MLFLOW[status]
        if run.status == "running":
            run.ended_at = None
        else:
            run.ended_at = _from_ms(end_time) if end_time else projects.now()
    if name:
        run.name = name[:500]
    session.flush()
    project = session.get(Project, run.project_id)
    assert project is not None
    return {"run_info": run_info(run, project)}


# --- log-batch --------------------------------------------------------------------------------


def _tag_pairs(raw: Any, field: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(f"Invalid value for parameter '{field}': expected a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise invalid(f"Invalid value for parameter '{field}': expected a list of {{key, value}}")
        key = _key(item.get("key"), "tag")
        value = item.get("value", "")
        if not isinstance(value, str):
            raise invalid(f"Invalid value {value!r} for tag '{key}': expected a string")
        if len(value) > MAX_TAG_VAL_LENGTH:
            raise invalid(f"Tag '{key}' had value length {len(value)}, which exceeded length limit of "
                          f"{MAX_TAG_VAL_LENGTH}")
        out.append((key, value))
    return out


def _param_pairs(raw: Any) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("Invalid value for parameter 'params': expected a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise invalid("Invalid value for parameter 'params': expected a list of {key, value}")
        key = _key(item.get("key"), "param")
        value = item.get("value", "")
        if not isinstance(value, str):
            value = _param_text(value)
        if len(value) > MAX_PARAM_VAL_LENGTH:
            raise invalid(f"Param value '{value[:50]}...' had length {len(value)}, which exceeded length "
                          f"limit of {MAX_PARAM_VAL_LENGTH}")
        out.append((key, value))
    return out


def _metric_points(raw: Any) -> dict[str, tuple[list[int], list[float], list[float]]]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise invalid("Invalid value for parameter 'metrics': expected a list")
    series: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise invalid("Invalid value for parameter 'metrics': expected a list of metrics")
        key = _key(item.get("key"), "metric")
        if "value" not in item:
            raise invalid(f"Missing value for required parameter 'value' of metric '{key}'.")
        value = double(item["value"], f"metric '{key}'")
        timestamp = int64(item, "timestamp", required=True)
        step = int64(item, "step", default=0)
        assert timestamp is not None and step is not None
        if step < 0:
            raise invalid(f"Invalid value {step} for the step of metric '{key}': losswatch keeps steps in [0, 2^63-1]")
        if not 0 <= timestamp <= 1e14:
            raise invalid(f"Invalid value {timestamp} for the timestamp of metric '{key}': expected milliseconds")
        steps, values, walls = series.setdefault(key, ([], [], []))
        steps.append(step)
        values.append(value)
        walls.append(timestamp / 1000.0)
    return series


def check_batch(body: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]], list[tuple[str, str]]]:
    """Validate a log-batch body against MLflow's limits before anything is written."""
    for field in ("metrics", "params", "tags"):
        if body.get(field) is not None and not isinstance(body[field], list):
            raise invalid(f"Invalid value for parameter '{field}': expected a list")
    n_metrics = len(body.get("metrics") or [])
    n_params = len(body.get("params") or [])
    n_tags = len(body.get("tags") or [])
    if n_metrics > MAX_METRICS_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_METRICS_PER_BATCH} metrics. "
                      f"Got {n_metrics} metrics. Please split up metrics across multiple requests and try again.")
    if n_params > MAX_PARAMS_TAGS_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_PARAMS_TAGS_PER_BATCH} params. "
                      f"Got {n_params} params. Please split up params across multiple requests and try again.")
    if n_tags > MAX_PARAMS_TAGS_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_PARAMS_TAGS_PER_BATCH} tags. "
                      f"Got {n_tags} tags. Please split up tags across multiple requests and try again.")
    total = n_metrics + n_params + n_tags
    if total > MAX_ENTITIES_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_ENTITIES_PER_BATCH} total metrics, "
                      f"params, and tags. Got {total}. Please split up across multiple requests and try again.")
    params = _param_pairs(body.get("params"))
    seen: dict[str, str] = {}
    for key, value in params:
        if seen.setdefault(key, value) != value:
            raise invalid(f"Duplicate parameter keys have been submitted: ['{key}']. Please ensure the request "
                          "contains only one param value per param key.")
    return _metric_points(body.get("metrics")), params, _tag_pairs(body.get("tags"), "tags")


def apply_params_and_tags(session: Session, run_id: str, params: list[tuple[str, str]],
                          tags: list[tuple[str, str]]) -> None:
    if not params and not tags:
        runs.get_run(session, run_id)  # a missing run is still an error
        return
    run, _ = runs.get_run(session, run_id)
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
            if key == RUN_NAME_TAG:
                run.name = value[:500] or run.name
                continue
            current = [t for t in current if _split_tag(t)[0] != key]
            current.append(f"{key}={value}" if value != "" else key)
        run.tags = current
    session.flush()


def log_batch(db: Database, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    metrics, params, tags = check_batch(body)
    with db.write() as session:
        apply_params_and_tags(session, run_id, params, tags)
    if metrics:
        entries = [{"key": k, "steps": s, "values": wire.encode_values(v), "wall_times": w}
                   for k, (s, v, w) in metrics.items()]
        ingest.ingest(db, run_id, wire.dumps({"series": entries}))
    return {}


def log_metric(db: Database, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    key = _key(body.get("key"), "metric")
    metric = {"key": key, "value": body.get("value"), "timestamp": body.get("timestamp"),
              "step": body.get("step")}
    if metric["value"] is None:
        raise invalid("Missing value for required parameter 'value'.")
    return log_batch(db, run_id, {"metrics": [metric]})


def log_param(db: Database, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return log_batch(db, run_id, {"params": [{"key": body.get("key"), "value": body.get("value", "")}]})


def set_tag(db: Database, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return log_batch(db, run_id, {"tags": [{"key": body.get("key"), "value": body.get("value", "")}]})


# --- metric history ---------------------------------------------------------------------------


def metric_history(session: Session, run_id: str, key: str, max_results: int | None,
                   page_token: str | None) -> dict[str, Any]:
    runs.get_run(session, run_id)
    limit = HISTORY_PAGE if max_results is None else max_results
    if not 1 <= limit <= HISTORY_PAGE:
        raise invalid(f"Invalid value {limit} for parameter 'max_results': between 1 and {HISTORY_PAGE}")
    start = 0
    if page_token:
        if not page_token.isdigit():
            raise invalid(f"Invalid page token {page_token[:40]!r}")
        start = int(page_token)
    try:
        page = points.read_points(session, run_id, key, start, wire.MAX_STEP, limit)
    except LosswatchError as exc:
        if exc.code == "series_not_found":
            return {"metrics": []}
        raise
    metrics = [
        {"key": key, "value": v, "timestamp": int(round(w * 1000)), "step": s}
        for s, v, w in zip(page["steps"], page["values"], page["wall_times"], strict=True)  # type: ignore[call-overload]
    ]
    out: dict[str, Any] = {"metrics": metrics}
    if page["next_start"] is not None:
        out["next_page_token"] = str(page["next_start"])
    return out
