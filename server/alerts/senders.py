"""How one alert event reaches one channel: a webhook POST, a Slack message, an e-mail.

Each sender raises :class:`DeliveryError` with a message that never contains a secret (a Slack URL
is a secret; so is the webhook signing key and the SMTP password)."""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

import httpx

from losswatch.server.services.channels import mask_url
from losswatch.server.settings import Settings


class DeliveryError(Exception):
    def __init__(self, message: str, status_code: int | None = None, retry: bool = True) -> None:
        super().__init__(message)
        self.status_code, self.retry = status_code, retry


def _where(url: str) -> str:
    """Where a delivery went, as errors and logs may show it (no user info, path or secret)."""
    return mask_url(url)


def _header_text(text: str) -> str:
    """One line for a mail header: every control character (CR, LF, NEL, the line separators ...)
    becomes a space. Names are refused with control characters at every door; this is the second
    line of defence, so that no name already stored can make every e-mail of its run fail."""
    return "".join(" " if c.isspace() or not c.isprintable() else c for c in text)[:900]


def _post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> int:
    try:
        r = client.post(url, content=body, headers={"content-type": "application/json", **headers})
    except httpx.TimeoutException:
        raise DeliveryError(f"timed out posting to {_where(url)}") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"could not post to {_where(url)}: {type(exc).__name__}") from None
    if r.status_code >= 300:
        # 4xx other than 408/429 will not get better by retrying; still retried a few times in case
        # the receiver is being redeployed, but the worker gives up sooner (see delivery.py).
        retry = r.status_code >= 500 or r.status_code in (408, 429)
        raise DeliveryError(f"{_where(url)} answered {r.status_code}", status_code=r.status_code, retry=retry)
    return r.status_code


def send_webhook(client: httpx.Client, config: dict[str, Any], payload: dict[str, Any], delivery_id: int) -> int:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"X-Losswatch-Event": payload.get("event", ""), "X-Losswatch-Delivery": str(delivery_id)}
    secret = config.get("secret")
    if secret:
        sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Losswatch-Signature"] = f"sha256={sig}"
    return _post(client, config["url"], body, headers)


def send_slack(client: httpx.Client, config: dict[str, Any], payload: dict[str, Any], delivery_id: int) -> int:
    text = payload["text"] + (f"\n<{payload['link']}|open the chart>" if payload.get("link") else "")
    return _post(client, config["url"], json.dumps({"text": text}).encode(), {})


def send_email(settings: Settings, config: dict[str, Any], payload: dict[str, Any], delivery_id: int) -> int:
    if not settings.smtp_host:
        raise DeliveryError("no SMTP server configured (LOSSWATCH_SMTP_HOST)", retry=True)
    msg = EmailMessage()
    alert = payload.get("alert", {})
    state = "RESOLVED" if payload.get("event") == "alert.resolved" else str(alert.get("severity", "")).upper()
    msg["Subject"] = _header_text(f"[losswatch] {state}: {alert.get('rule')} on {payload['run']['name']}"
                                  f" ({alert.get('series') or 'run'})")
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(config["to"])
    msg["X-Losswatch-Delivery"] = str(delivery_id)
    msg.set_content(payload["text"] + (f"\n\n{payload['link']}" if payload.get("link") else "") + "\n")
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.delivery_timeout_seconds) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username and settings.smtp_password:
                smtp.login(settings.smtp_username, settings.smtp_password)
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP {settings.smtp_host}:{settings.smtp_port}: {type(exc).__name__}") from None
    return 250
