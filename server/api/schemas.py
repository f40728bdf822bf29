"""Request and response schemas (pydantic v2), shared by the API and the dashboard."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from losswatch.client import wire

RunStatus = Literal["running", "finished", "failed", "crashed", "stopped"]
EndStatus = Literal["finished", "failed", "crashed", "stopped"]
Scope = Literal["read", "write", "admin"]
SeriesKind = Literal["loss", "loss_component", "metric", "lr", "grad_norm", "other"]
# A value as it travels: a number, or a non-finite spelling of losswatch.client.wire.
WireValue = float | Literal["NaN", "Infinity", "-Infinity"]

RUN_ID_PATTERN = wire.RUN_ID_PATTERN
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"


MAX_JSON_DEPTH = 64


def _storable_text(text: str) -> str:
    """Text both backends store as sent: no NUL (PostgreSQL text cannot hold it) and no lone
    surrogate (not UTF-8)."""
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return text


def _storable_json(value: Any, finite: bool = True) -> Any:
    """A JSON value both backends store and give back exactly: at most MAX_JSON_DEPTH levels, storable
    text in keys and strings, and finite numbers only (spell the others 'NaN', 'Infinity', '-Infinity',
    as losswatch.client does)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            for k, v in node.items():
                _storable_text(k)
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            _storable_text(node)
        elif finite and isinstance(node, float) and not math.isfinite(node):
            raise ValueError("non-finite numbers are not JSON: send the strings 'NaN', 'Infinity' or '-Infinity'")
    return value


def _one_line(text: str) -> str:
    """A name (run name, group, tag): storable, and no control character (the rule of
    ``wire.control_character``, which series keys follow too)."""
    bad = wire.control_character(_storable_text(text))
    if bad is not None:
        raise ValueError(f"must not contain control characters (found {bad}): tab, CR, LF and the like break "
                         "e-mail headers, logs and CSV files")
    return text


def _multi_line(text: str) -> str:
    """Free text (notes): storable; tab, CR, LF and line separators allowed, other control characters not."""
    bad = wire.control_character(_storable_text(text), multiline=True)
    if bad is not None:
        raise ValueError(f"must not contain control characters other than tab, CR and LF (found {bad})")
    return text


# Strings and JSON objects that are stored: refused with 422 where a backend would fail or change them.
Text = Annotated[str, AfterValidator(_storable_text)]
Name = Annotated[str, AfterValidator(_one_line)]
Notes = Annotated[str, AfterValidator(_multi_line)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]
# The MLflow routes' bodies: MLflow's client writes a NaN metric as a bare NaN token, which is a value
# to store (as a point), not an error; strings still must be storable.
JsonPayload = Annotated[dict[str, Any], AfterValidator(lambda v: _storable_json(v, finite=False))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ProjectRead(BaseModel):
    name: str
    created_at: datetime
    runs: int


class ProjectList(BaseModel):
    projects: list[ProjectRead]


class RunCreate(_Strict):
    id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="Client-chosen id (idempotent create).")
    name: Name | None = Field(None, max_length=500)
    group: Name | None = Field(None, max_length=500)
    tags: list[Annotated[Name, Field(max_length=500)]] = Field(default_factory=list, max_length=100)
    config: JsonObject = Field(default_factory=dict)
    notes: Notes | None = Field(None, max_length=100_000)
    host: Text | None = Field(None, max_length=500)
    client: JsonObject = Field(default_factory=dict)
    alerts: JsonObject | None = Field(
        None, description="Rule configuration for this run, e.g. {\"plateau\": false, \"silenced\": [\"stalled\"]}."
    )


class RunUpdate(_Strict):
    name: Name | None = Field(None, min_length=1, max_length=500)
    group: Name | None = Field(None, max_length=500)
    tags: list[Annotated[Name, Field(max_length=500)]] | None = Field(None, max_length=100)
    config: JsonObject | None = None
    notes: Notes | None = Field(None, max_length=100_000)
    status: RunStatus | None = None


class RunFinish(_Strict):
    status: EndStatus = "finished"


class SeriesSummary(BaseModel):
    kind: SeriesKind
    count: int
    nonfinite: int
    first_step: int | None
    last_step: int | None
    last: WireValue | None
    min: float | None
    max: float | None
    last_wall: float | None


class SeriesRead(SeriesSummary):
    key: str


class SeriesList(BaseModel):
    series: list[SeriesRead]


class RunRead(BaseModel):
    id: str
    project: str
    name: str
    group: str | None
    tags: list[str]
    config: dict[str, Any]
    notes: str | None
    status: RunStatus
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    host: str | None
    client: dict[str, Any]
    summary: dict[str, SeriesSummary]


class RunPage(BaseModel):
    runs: list[RunRead]
    total: int
    limit: int
    offset: int


class SeriesPoints(_Strict):
    """One series of an ingest batch. Documentation only: ingest parses its body by hand
    (``losswatch.server.services.batches``), with the same rules."""

    key: str = Field(min_length=1, max_length=wire.MAX_KEY_LENGTH, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$",
                     description="The series key; no control characters.")
    kind: SeriesKind | None = None
    steps: list[Annotated[int, Field(ge=0, le=wire.MAX_STEP)]] = Field(description="Integers in [0, 2^63-1].")
    values: list[WireValue] = Field(description="Numbers, or 'NaN', 'Infinity', '-Infinity'; as many as steps.")
    wall_times: list[Annotated[float, Field(ge=0, le=1e11)]] | None = Field(
        None, description="Seconds since the epoch; default: arrival.")


class IngestBatch(_Strict):
    series: list[SeriesPoints]


class Alert(BaseModel):
    id: int
    run: str
    run_name: str | None = None
    series: str | None
    rule: str
    severity: Literal["info", "warning", "critical"]
    status: Literal["firing", "resolved"]
    onset_step: int | None
    step: int | None
    resolved_step: int | None
    value: WireValue | None = None
    reference: float | None = None
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None


class IngestResult(BaseModel):
    accepted: int
    alerts: list[Alert]


class HeartbeatResult(BaseModel):
    status: RunStatus
    alerts: list[Alert]


class RawPoints(BaseModel):
    run: str
    key: str
    kind: SeriesKind
    steps: list[int]
    values: list[WireValue]
    wall_times: list[float]
    next_start: int | None


class Buckets(BaseModel):
    run: str
    key: str
    kind: SeriesKind
    width: int
    step: list[int]
    last_step: list[int]
    min: list[float | None]
    max: list[float | None]
    last: list[WireValue]
    count: list[int]
    nonfinite: list[int]
    wall: list[float]


class QueryResult(BaseModel):
    series: list[Buckets]


class TokenCreate(_Strict):
    name: Name = Field("api", min_length=1, max_length=200)
    scope: Scope = "read"
    expires_at: datetime | None = Field(
        None, description="When the token stops working (ISO 8601, with a time zone; none: never). A token made "
        "with a token that expires expires at the latest with it.")


class TokenCreated(BaseModel):
    id: int
    project: str
    name: str
    scope: Scope
    expires_at: datetime | None = None
    token: str = Field(description="Shown once; only its hash is stored.")


class TokenRead(BaseModel):
    """A token as lists show it: never its secret."""

    id: int
    project: str
    name: str
    scope: Scope
    prefix: str = Field(description="The start of the token's text, up to its secret part, to recognise it")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    parent_id: int | None = Field(description="The token that made this one, if it was made through the API")


class TokenList(BaseModel):
    tokens: list[TokenRead]


class AlertList(BaseModel):
    alerts: list[Alert]
    total: int
    limit: int
    offset: int


class ChannelCreate(_Strict):
    name: Name = Field(min_length=1, max_length=200)
    kind: Literal["webhook", "slack", "email"]
    config: JsonObject = Field(description="webhook: {url, secret?}; slack: {url}; email: {to: [addresses]}")
    min_severity: Literal["info", "warning", "critical"] = "warning"
    rules: list[Annotated[Text, Field(max_length=32)]] | None = Field(
        None, max_length=20, description="Only these rules (default: all)")


class ChannelRead(BaseModel):
    id: int
    name: str
    kind: str
    config: dict[str, Any]
    min_severity: str
    rules: list[str] | None
    enabled: bool


class ChannelList(BaseModel):
    channels: list[ChannelRead]


class DeliveryAttemptRead(BaseModel):
    outbox_id: int
    alert_id: int
    event: str
    delivery_status: str
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryAttemptList(BaseModel):
    attempts: list[DeliveryAttemptRead]


class AlertConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
