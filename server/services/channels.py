"""Alert channels of a project: create (validated, SSRF-checked), list, delete, test."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.server.errors import InvalidRequest, NotFound
from losswatch.server.models import Channel, DeliveryAttempt, Outbox
from losswatch.server.services.projects import now

_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")


def private_address_reason(url: str) -> str | None:
    """Why ``url`` must not be called from the server (SSRF), or None when it may.
    Every address the host name resolves to is checked."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the URL must be http:// or https:// with a host"
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        return f"the host {parts.hostname!r} does not resolve ({exc})"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        # not is_global also covers the shared address space 100.64.0.0/10 (some clouds' metadata)
        if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast \
                or ip.is_unspecified or not ip.is_global:
            return (f"{parts.hostname} resolves to {ip}, a loopback, private or link-local address; "
                    "set LOSSWATCH_ALLOW_PRIVATE_CHANNELS=true to allow it")
    return None


def redact(channel: Channel) -> dict[str, Any]:
    """A channel as the API shows it: secrets and URL paths (Slack's carry the secret) hidden."""
    config = dict(channel.config)
    if "url" in config:
        parts = urlsplit(config["url"])
        config["url"] = f"{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") else config["url"]
    if "secret" in config:
        config["secret"] = "…"
    return {"id": channel.id, "name": channel.name, "kind": channel.kind, "config": config,
            "min_severity": channel.min_severity, "rules": channel.rules, "enabled": channel.enabled}


def create_channel(session: Session, project_id: int, data: Any, allow_private: bool) -> Channel:
    config = dict(data.config)
    if data.kind in ("webhook", "slack"):
        url = config.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"a {data.kind} channel needs config.url", code="invalid_channel",
                                 details=[{"loc": ["body", "config", "url"], "msg": "field required"}])
        reason = private_address_reason(url) if not allow_private else (
            None if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname
            else "the URL must be http:// or https:// with a host")
        if reason:
            raise InvalidRequest(f"refused channel URL: {reason}", code="channel_url_refused",
                                 details=[{"loc": ["body", "config", "url"], "msg": reason}])
        unknown = set(config) - {"url", "secret"}
    else:
        to = config.get("to")
        if isinstance(to, str):
            to = [to]
        if not to or not isinstance(to, list) or not all(isinstance(a, str) and _EMAIL.match(a) for a in to):
            raise InvalidRequest("an email channel needs config.to: a list of addresses", code="invalid_channel",
                                 details=[{"loc": ["body", "config", "to"], "msg": "list of e-mail addresses"}])
        config["to"] = to
        unknown = set(config) - {"to"}
    if unknown:
        raise InvalidRequest(f"unknown config field {sorted(unknown)[0]!r} for a {data.kind} channel",
                             code="invalid_channel")
    ch = Channel(project_id=project_id, name=data.name, kind=data.kind, config=config,
                 min_severity=data.min_severity, rules=data.rules, enabled=True, created_at=now())
    session.add(ch)
    session.flush()
    return ch


def get_channel(session: Session, project_id: int, channel_id: int) -> Channel:
    ch = session.get(Channel, channel_id)
    if ch is None or ch.project_id != project_id:
        raise NotFound(f"no channel {channel_id} in this project", code="channel_not_found")
    return ch


def list_channels(session: Session, project_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Channel).where(Channel.project_id == project_id).order_by(Channel.id))
    return [redact(c) for c in rows]


def attempts(session: Session, channel_id: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = session.execute(
        select(DeliveryAttempt, Outbox.event, Outbox.alert_id, Outbox.status)
        .join(Outbox, Outbox.id == DeliveryAttempt.outbox_id)
        .where(Outbox.channel_id == channel_id)
        .order_by(DeliveryAttempt.id.desc())
        .limit(limit)
    ).all()
    return [{"outbox_id": a.outbox_id, "alert_id": alert_id, "event": event, "delivery_status": status,
             "at": a.at.isoformat(), "ok": a.ok, "status_code": a.status_code, "error": a.error,
             "duration_ms": round(a.duration_ms, 1)} for a, event, alert_id, status in rows]
