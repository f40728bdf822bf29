"""Request and response schemas (pydantic v2), shared by the API and the dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from losswatch.client import wire

RunStatus = Literal["running", "finished", "failed", "crashed", "stopped"]
EndStatus = Literal["finished", "failed", "crashed", "stopped"]
Scope = Literal["read", "write", "admin"]
SeriesKind = Literal["loss", "loss_component", "metric", "lr", "grad_norm", "other"]
# A value as it travels: a number, or a non-finite spelling of losswatch.client.wire.
WireValue = float | Literal["NaN", "Infinity", "-Infinity"]

RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"


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
    name: str | None = Field(None, max_length=500)
    group: str | None = Field(None, max_length=500)
    tags: list[str] = Field(default_factory=list, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    notes: str | None = Field(None, max_length=100_000)
    host: str | None = Field(None, max_length=500)
    client: dict[str, Any] = Field(default_factory=dict)
    alerts: dict[str, Any] | None = Field(
        None, description="Rule configuration for this run, e.g. {\"plateau\": false, \"silenced\": [\"stalled\"]}."
    )


class RunUpdate(_Strict):
    name: str | None = Field(None, min_length=1, max_length=500)
    group: str | None = Field(None, max_length=500)
    tags: list[str] | None = Field(None, max_length=100)
    config: dict[str, Any] | None = None
    notes: str | None = Field(None, max_length=100_000)
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
    key: str = Field(min_length=1, max_length=wire.MAX_KEY_LENGTH)
    kind: SeriesKind | None = None
    steps: list[int] = Field(description="Integers in [0, 2^63-1].")
    values: list[WireValue] = Field(description="Numbers, or 'NaN', 'Infinity', '-Infinity'.")
    wall_times: list[float] | None = Field(None, description="Seconds since the epoch; default: arrival.")


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
    name: str = Field("api", min_length=1, max_length=200)
    scope: Scope = "read"


class TokenCreated(BaseModel):
    id: int
    project: str
    name: str
    scope: Scope
    token: str = Field(description="Shown once; only its hash is stored.")


class AlertList(BaseModel):
    alerts: list[Alert]
    total: int
    limit: int
    offset: int


class ChannelCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["webhook", "slack", "email"]
    config: dict[str, Any] = Field(description="webhook: {url, secret?}; slack: {url}; email: {to: [addresses]}")
    min_severity: Literal["info", "warning", "critical"] = "warning"
    rules: list[str] | None = Field(None, max_length=20, description="Only these rules (default: all)")


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
