"""MLflow's REST protocol: its error shape and codes, its request fields and bodies, its limits and
page tokens. Requests are parsed here into the plain arguments of
``losswatch.server.services.mlflow_compat`` (which knows nothing of MLflow's JSON); the search syntax
is in ``mlflow_filters``.

Requests follow MLflow's JSON (protobuf JSON: int64 fields may come as strings, doubles as numbers
or ``"NaN"``/``"Infinity"``/``"-Infinity"``), and so do the answers. Errors are
``{"error_code": ..., "message": ...}`` with MLflow's status codes (:class:`MlflowError`); a service's
``LosswatchError`` becomes one through :func:`from_losswatch`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from losswatch.client import wire
from losswatch.server.api.schemas import RUN_ID_PATTERN
from losswatch.server.errors import LosswatchError
from losswatch.server.services.mlflow_compat import RUN_NAME_TAG, Metric

# MLflow's documented limits (mlflow/utils/validation.py)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
HISTORY_PAGE = 25_000  # MLflow's page size for get-history
MAX_RUNS_PAGE = 50_000  # MLflow's SEARCH_MAX_RESULTS_THRESHOLD
BULK_INTERVAL_RESULTS = 2500  # MLflow's MAX_RESULTS_PER_RUN of get-history-bulk-interval
_RUN_ID = re.compile(RUN_ID_PATTERN)

_STATUS_CODES = {
    "INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400, "RESOURCE_ALREADY_EXISTS": 400,
    "RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "INTERNAL_ERROR": 500, "NOT_IMPLEMENTED": 501,
}  # fmt: skip
_FROM_MLFLOW = {"RUNNING": "running", "SCHEDULED": "running", "FINISHED": "finished", "FAILED": "failed",
                "KILLED": "stopped"}


# --- errors -----------------------------------------------------------------------------------


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


def required_text(body: dict[str, Any], field: str) -> str:
    value = text(body, field)
    assert value is not None
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


def int_between(body: dict[str, Any], field: str, default: int, low: int, high: int) -> int:
    value = int64(body, field, default=default)
    assert value is not None
    if not low <= value <= high:
        raise invalid(f"Invalid value {value} for parameter '{field}' supplied: between {low} and {high}")
    return value


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


def _one_line(value: str, where: str) -> str:
    """A run name, tag key or tag value: no control character (``wire.control_character``, the rule of
    the REST API's names and of series keys)."""
    bad = wire.control_character(value)
    if bad is not None:
        raise invalid(f"Invalid value {value[:80]!r} for {where}: control characters (found {bad}) are not allowed")
    return value


def run_name(body: dict[str, Any]) -> str | None:
    name = text(body, "run_name", required=False)
    return None if name is None else _one_line(name, "parameter 'run_name'")


def run_id_of(body: dict[str, Any]) -> str:
    """The run a request is about (``run_id``, or the older ``run_uuid``); a malformed id is a
    missing run, as in MLflow."""
    rid = body.get("run_id") or body.get("run_uuid")
    if not rid:
        raise invalid("Missing value for required parameter 'run_id'.")
    if not isinstance(rid, str):
        raise invalid(f"Invalid value {rid!r} for parameter 'run_id' supplied: expected a string")
    if not _RUN_ID.match(rid):
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run '{rid[:80]}' not found")
    return rid


def experiment_name(body: dict[str, Any]) -> str:
    name = required_text(body, "name")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise invalid(f"Experiment name exceeds the maximum length of {MAX_EXPERIMENT_NAME_LENGTH}")
    return name


def run_status(body: dict[str, Any]) -> str | None:
    """``status`` of runs/update as a losswatch status."""
    status = text(body, "status", required=False)
    if status is not None and status not in _FROM_MLFLOW:
        raise invalid(f"Invalid value {status!r} for parameter 'status': one of {', '.join(_FROM_MLFLOW)}")
    return None if status is None else _FROM_MLFLOW[status]


# --- request bodies: tags, params, metrics ------------------------------------------------------


def _items(raw: Any, field: str, what: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(f"Invalid value for parameter '{field}': expected a list")
    if not all(isinstance(item, dict) for item in raw):
        raise invalid(f"Invalid value for parameter '{field}': expected a list of {what}")
    return raw


def tag_pairs(raw: Any, field: str = "tags") -> list[tuple[str, str]]:
    out = []
    for item in _items(raw, field, "{key, value}"):
        key = _key(item.get("key"), "tag")
        value = item.get("value", "")
        if not isinstance(value, str):
            raise invalid(f"Invalid value {value!r} for tag '{key}': expected a string")
        if len(value) > MAX_TAG_VAL_LENGTH:
            raise invalid(f"Tag '{key}' had value length {len(value)}, which exceeded length limit of "
                          f"{MAX_TAG_VAL_LENGTH}")
        _one_line(key, "a tag key")
        _one_line(value, f"tag '{key[:80]}'")
        out.append((key, value))
    return out


def split_run_name(tags: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
    """The tags without ``mlflow.runName``, and the run name it sets (its last value), if any."""
    names = [value for key, value in tags if key == RUN_NAME_TAG]
    return [(k, v) for k, v in tags if k != RUN_NAME_TAG], (names[-1] if names else None)


def _param_pairs(raw: Any) -> list[tuple[str, str]]:
    out = []
    seen: dict[str, str] = {}
    for item in _items(raw, "params", "{key, value}"):
        key = _key(item.get("key"), "param")
        value = item.get("value", "")
        if not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        if len(value) > MAX_PARAM_VAL_LENGTH:
            raise invalid(f"Param value '{value[:50]}...' had length {len(value)}, which exceeded length "
                          f"limit of {MAX_PARAM_VAL_LENGTH}")
        if seen.setdefault(key, value) != value:
            raise invalid(f"Duplicate parameter keys have been submitted: ['{key}']. Please ensure the request "
                          "contains only one param value per param key.")
        out.append((key, value))
    return out


def _metrics(raw: Any) -> list[Metric]:
    out = []
    for item in _items(raw, "metrics", "metrics"):
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
        out.append(Metric(key, value, timestamp, step))
    return out


@dataclass
class LogBatch:
    """A log-batch request, checked against MLflow's limits before anything is written."""

    metrics: list[Metric]
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]  # without mlflow.runName
    name: str | None  # the run's new name (an mlflow.runName tag)


def _check_counts(body: dict[str, Any]) -> None:
    for field in ("metrics", "params", "tags"):
        if body.get(field) is not None and not isinstance(body[field], list):
            raise invalid(f"Invalid value for parameter '{field}': expected a list")
    n = {field: len(body.get(field) or []) for field in ("metrics", "params", "tags")}
    for field, most in (("metrics", MAX_METRICS_PER_BATCH), ("params", MAX_PARAMS_TAGS_PER_BATCH),
                        ("tags", MAX_PARAMS_TAGS_PER_BATCH)):
        if n[field] > most:
            raise invalid(f"A batch logging request can contain at most {most} {field}. Got {n[field]} {field}. "
                          f"Please split up {field} across multiple requests and try again.")
    total = sum(n.values())
    if total > MAX_ENTITIES_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_ENTITIES_PER_BATCH} total metrics, "
                      f"params, and tags. Got {total}. Please split up across multiple requests and try again.")


def log_batch(body: dict[str, Any]) -> LogBatch:
    """runs/log-batch's body (also the shape the single-item calls are put in)."""
    _check_counts(body)
    params = _param_pairs(body.get("params"))
    metrics = _metrics(body.get("metrics"))
    tags, name = split_run_name(tag_pairs(body.get("tags")))
    return LogBatch(metrics, params, tags, name)


def log_metric(body: dict[str, Any]) -> LogBatch:
    key = _key(body.get("key"), "metric")
    if body.get("value") is None:
        raise invalid("Missing value for required parameter 'value'.")
    return log_batch({"metrics": [{"key": key, "value": body["value"], "timestamp": body.get("timestamp"),
                                   "step": body.get("step")}]})


def log_param(body: dict[str, Any]) -> LogBatch:
    return log_batch({"params": [{"key": body.get("key"), "value": body.get("value", "")}]})


def set_tag(body: dict[str, Any]) -> LogBatch:
    return log_batch({"tags": [{"key": body.get("key"), "value": body.get("value", "")}]})


# --- pages ------------------------------------------------------------------------------------


def history_page_token(token: str | None) -> int:
    """get-history's page token: the step the page starts at."""
    if not token:
        return 0
    if not token.isdigit():
        raise invalid(f"Invalid page token {token[:40]!r}")
    return int(token)


def parse_page_token(token: Any) -> int:
    """A search page token: base64 JSON ``{"offset": n}``, as MLflow's own stores write them."""
    if token is None or token == "":
        return 0
    try:
        offset = json.loads(base64.b64decode(str(token), validate=True))["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError
        return offset
    except (ValueError, TypeError, KeyError) as exc:
        raise invalid(f"Invalid page token, could not base64-decode it: {str(token)[:40]!r}") from exc


def page_token(offset: int | None) -> str | None:
    return None if offset is None else base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def page(items_field: str, items: list[Any], next_offset: int | None) -> dict[str, Any]:
    """A search answer: the items and, when there are more, ``next_page_token``."""
    out: dict[str, Any] = {items_field: items}
    token = page_token(next_offset)
    if token:
        out["next_page_token"] = token
    return out
