"""The storage model (SQLAlchemy 2, typed). The schema itself is made only by Alembic migrations.

Points are not stored one row each: a series' points live in **chunks** of 1024 consecutive
steps (``chunk_no = step >> 10``), each a row with the packed arrays and a roll-up of 64-step
sub-buckets (min, max, last, counts). A coarse query reads only the roll-ups, so drawing a
million-point series costs O(chunks), and a point costs about 13 bytes on disk
(see ``losswatch.server.storage.chunks``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    and_,
    column,
    exists,
    func,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


def json_array_contains_all(dialect: str, array: Any, values: list[str]) -> Any:
    """A condition true when the JSON array ``array`` holds every one of ``values`` (strings).
    The one per-dialect branch of the run list: JSONB containment (``@>``) on PostgreSQL, one
    ``EXISTS (... json_each ...)`` per value on SQLite."""
    if dialect == "postgresql":
        return type_coerce(array, JSONB).contains(values)
    return and_(*(exists(select(1).select_from(func.json_each(array).table_valued("value"))
                         .where(column("value") == v)) for v in values))


RUN_STATUSES = ("running", "finished", "failed", "crashed", "stopped")
TOKEN_SCOPES = ("read", "write", "admin")


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    alert_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))
    lookup: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The token that minted this one (through the API), if any: revoking it revokes this one too.
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_project_created", "project_id", "created_at", "id"),)  # the run list

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    group: Mapped[str | None] = mapped_column("group_name", String(500), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSONType)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    host: Mapped[str | None] = mapped_column(String(500), nullable=True)
    client: Mapped[dict[str, Any]] = mapped_column(JSONType)
    alert_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    monitor_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class Series(Base):
    """One named sequence of a run, with a running summary kept up to date at ingest."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(250))
    kind: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    nonfinite: Mapped[int] = mapped_column(BigInteger, default=0)
    first_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The value at last_step. SQLite turns NaN into NULL, so a non-finite last value is kept
    # as its wire spelling in last_special and last_value is NULL.
    last_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_special: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_wall_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    min_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    detector_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class Chunk(Base):
    """Up to 1024 consecutive steps of one series, packed (see ``losswatch.server.storage.chunks``)."""

    __tablename__ = "chunks"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True
    )
    chunk_no: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    nonfinite: Mapped[int] = mapped_column(Integer)
    min_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Small columns and the roll-up come first: SQLite reads a row front to back, so a coarse
    # query never walks the overflow pages of the big blobs behind them.
    rollup: Mapped[bytes] = mapped_column(LargeBinary)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    walls: Mapped[bytes] = mapped_column(LargeBinary)
    values: Mapped[bytes] = mapped_column(LargeBinary)


ALERT_STATUSES = ("firing", "resolved")
CHANNEL_KINDS = ("webhook", "slack", "email")


class Alert(Base):
    """A rule firing on a series of a run (or on the run itself, for ``stalled``), from an onset
    step until it resolves. At most one firing alert per (run, series, rule): ingest of a run is
    serialised by the run's row lock, so the check-then-insert cannot race."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    series_key: Mapped[str | None] = mapped_column(String(250), nullable=True)
    rule: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    onset_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resolved_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    value_special: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reference: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Channel(Base):
    """Where a project's alerts go: a webhook, a Slack incoming webhook, or e-mail."""

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    min_severity: Mapped[str] = mapped_column(String(16))
    rules: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Outbox(Base):
    """One alert event to deliver to one channel, written in the transaction that made the event.
    A delivery worker leases due rows, sends them and records every attempt."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(16))  # fired | resolved | test
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | sending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ok: Mapped[bool] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
