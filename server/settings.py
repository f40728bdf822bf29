"""Server settings: one validated object, built late (in ``create_app`` or the CLI).

Every setting reads from an environment variable with the ``LOSSWATCH_`` prefix. Nothing else in
the server reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSSWATCH_", extra="ignore")

    database_url: str = Field(
        "sqlite:///losswatch.db",
        description="SQLAlchemy URL of the database: a SQLite file (default, in the working directory) "
        "or postgresql+psycopg://user@host/db.",
    )
    host: str = Field("127.0.0.1", description="Address `losswatch serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `losswatch serve` listens on.")
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Require API tokens: 'on', 'off', or 'auto' (off when bound to a loopback address, "
        "on otherwise).",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest accepted request body in bytes (413 above)."
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, le=16 * 1024 * 1024,
        description="Largest accepted request head (request line and headers together) in bytes; "
        "431 above, before the server buffers more of it.",
    )
    max_series_per_batch: int = Field(
        1000, ge=1,
        description="Most series in one ingest batch (413 above; the client splits the batch and sends "
        "the parts). Bounds the time one batch holds the write lock.",
    )
    max_points_per_batch: int = Field(
        200_000, ge=1,
        description="Most points (all series together) in one ingest batch (413 above; the client splits "
        "the batch). Bounds the time one batch holds the write lock.",
    )
    auth_cache_seconds: float = Field(
        1.0, ge=0, le=10,
        description="How long a server process trusts a verified token before reading it again: a revoked "
        "or expired token stops working on every process within this many seconds.",
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="`losswatch serve` closes a connection (408) whose request line and headers have not "
        "all arrived this many seconds after it opened or after its previous answer (slow-header attacks).",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="`losswatch serve` closes a connection (408) whose request body stalls for this many "
        "seconds between two reads.",
    )
    auto_migrate: bool = Field(
        True, description="Apply pending database migrations when the server starts."
    )
    db_pool_size: int = Field(8, ge=1, description="Connections kept open to PostgreSQL per process.")
    stalled_check_seconds: float = Field(
        15.0, gt=0, description="How often the server looks for runs that stopped sending (seconds)."
    )
    log_level: str = Field("info", description="Log level of the server process.")
    public_url: str | None = Field(
        None, description="The dashboard's address as people reach it, for links in alert messages."
    )
    allow_private_channels: bool = Field(
        False,
        description="Allow webhook and Slack URLs that point at loopback, link-local or private "
        "addresses (off: such URLs are refused, against SSRF).",
    )
    delivery_timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one alert delivery attempt.")
    delivery_max_age_hours: float = Field(
        24.0, gt=0, description="Give up delivering an alert event after this many hours of retries."
    )
    smtp_host: str | None = Field(None, description="SMTP server for e-mail channels.")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP port.")
    smtp_from: str = Field("losswatch@localhost", description="Sender address of alert e-mails.")
    smtp_username: str | None = Field(None, description="SMTP user name (optional).")
    smtp_password: str | None = Field(None, description="SMTP password (optional; never logged).")
    smtp_starttls: bool = Field(False, description="Use STARTTLS with the SMTP server.")
    background_workers: bool = Field(
        True, description="Run the alert delivery worker and the stall check in this server process."
    )

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def auth_required(self) -> bool:
        if self.auth != "auto":
            return self.auth == "on"
        return not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
