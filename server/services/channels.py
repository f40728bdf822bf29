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
from losswatch.server.services.projects import now
from losswatch.server.storage.models import Channel, DeliveryAttempt, Outbox

_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")
_MAX_URL = 2048
# Query parameters whose values are hidden wherever a channel URL is shown (API, logs, attempts).
_SECRET_PARAM = re.compile(r"token|key|secret|pass|pwd|sig|auth|credential|session|code", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST = re.compile(r"^[A-Za-z0-9._-]+$")


def url_problem(url: object) -> str | None:
    """What is wrong with ``url`` as a channel URL (a message without the URL's user info), or None.
    Only plain ASCII http(s) URLs with a host and a valid port pass: a URL the standard library
    cannot split (``http://[::1``, ``http://a:99999/``, fullwidth characters) is an error, not a 500."""
    if not isinstance(url, str) or not url:
        return "the URL must be a non-empty string"
    if len(url) > _MAX_URL:
        return f"the URL is longer than {_MAX_URL} characters"
    if not url.isascii():
        return ("the URL must be ASCII: write an international host name in punycode (xn--...) and "
                "percent-encode the path")
    if any(c.isspace() or not c.isprintable() for c in url):
        return "the URL must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        return f"the URL cannot be parsed: {str(exc).split(':')[0]}"
    if parts.scheme not in ("http", "https") or not host:
        return "the URL must be http:// or https:// with a host"
    if ":" in host:  # a bracketed IPv6 literal (with an optional zone)
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return "the URL's host is not a valid IPv6 address"
    elif not _HOST.match(host):
        return "the URL's host must be a name or an IPv4 address (letters, digits, '.', '-', '_')"
    if port == 0:
        return "the URL's port must be between 1 and 65535"
    return None


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and reaches: IPv4-mapped (::ffff:a.b.c.d), 6to4
    (2002::/16), Teredo (2001::/32: its server and its client) and NAT64 (64:ff9b::/96)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def _not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # not is_global also covers the shared address space 100.64.0.0/10 (some clouds' metadata)
    return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast \
        or ip.is_unspecified or not ip.is_global


def private_address_reason(url: str) -> str | None:
    """Why ``url`` must not be called from the server (SSRF), or None when it may.
    Every address the host name resolves to is checked; an IPv6 address that carries an IPv4
    address (see :func:`embedded_ipv4`) is judged by that IPv4 address."""
    problem = url_problem(url)
    if problem is not None:
        return problem
    parts = urlsplit(url)
    assert parts.hostname is not None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        return f"the host {parts.hostname!r} does not resolve ({exc})"
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        inner = embedded_ipv4(ip)
        if any(_not_public(v4) for v4 in inner) or (not inner and _not_public(ip)):
            shown = f"{ip} ({', '.join(map(str, inner))})" if inner else str(ip)
            return (f"{parts.hostname} resolves to {shown}, a loopback, private or link-local address; "
                    "set LOSSWATCH_ALLOW_PRIVATE_CHANNELS=true to allow it")
    return None


def mask_url(url: str) -> str:
    """A channel URL as it may be shown (API answers, delivery errors, logs): no ``user:password@``,
    no path (Slack's carry the secret), no fragment, and the values of secret-looking query
    parameters (``token``, ``key``, ``secret``, ``password``, ``sig`` ...) replaced by ``…``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "…"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "…@" + netloc.rsplit("@", 1)[1]
    path = parts.path if parts.path in ("", "/") else "/…"
    shown = f"{parts.scheme}://{netloc}{path}"
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            name, eq, _value = pair.partition("=")
            pairs.append(f"{name}={'…'}" if eq and _SECRET_PARAM.search(name) else pair)
        shown += "?" + "&".join(pairs)
    return shown


def redact(channel: Channel) -> dict[str, Any]:
    """A channel as the API shows it: secrets, user info and URL paths (Slack's carry the secret) hidden."""
    config = dict(channel.config)
    if "url" in config:
        config["url"] = mask_url(str(config["url"]))
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
        problem = url_problem(url)
        if problem is not None:
            raise InvalidRequest(f"refused channel URL: {problem}", code="channel_url_refused",
                                 details=[{"loc": ["body", "config", "url"], "msg": problem}])
        reason = private_address_reason(url) if not allow_private else None
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


def delete_channel(session: Session, project_id: int, channel_id: int) -> None:
    session.delete(get_channel(session, project_id, channel_id))


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
