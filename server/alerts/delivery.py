"""The delivery worker: drains the outbox apart from ingest, so a slow or dead receiver never slows
ingest, and an alert event is retried (with backoff) until delivered or too old.

Rows are leased, not locked while sending: a worker marks due rows ``sending`` with a lease, commits,
sends, then records the attempt. A worker that dies mid-send leaves a lease that expires and another
worker (or the restarted one) sends again: delivery is at least once, and every payload carries its
delivery id (``X-Losswatch-Delivery``) for receivers that de-duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update

from losswatch.server.alerts.senders import DeliveryError, send_email, send_slack, send_webhook
from losswatch.server.services.channels import private_address_reason
from losswatch.server.services.projects import now
from losswatch.server.storage.db import Database
from losswatch.server.storage.models import Channel, DeliveryAttempt, Outbox

log = logging.getLogger("losswatch.delivery")

LEASE = timedelta(seconds=60)
BATCH = 16
MAX_BACKOFF_S = 600.0
MAX_ATTEMPTS_4XX = 5  # a receiver that keeps refusing (404, 410...) is given up on sooner


def backoff(attempts: int) -> float:
    """Seconds before the next try: 1, 2, 4, ... capped at 10 minutes."""
    return min(MAX_BACKOFF_S, 2.0 ** max(0, attempts - 1))


def claim(db: Database, limit: int = BATCH) -> list[tuple[int, int, str, dict[str, Any], dict[str, Any], int]]:
    """Lease due rows. Returns (outbox id, attempts, channel kind, channel config, payload, channel id)."""
    t = now()
    with db.write() as s:
        due = (
            select(Outbox.id)
            .where(or_(Outbox.status == "pending", Outbox.status == "sending"),
                   or_(Outbox.lease_until.is_(None), Outbox.lease_until < t),
                   Outbox.next_attempt_at <= t)
            .order_by(Outbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = list(s.scalars(due))
        if not ids:
            return []
        s.execute(update(Outbox).where(Outbox.id.in_(ids)).values(status="sending", lease_until=t + LEASE))
        rows = s.execute(
            select(Outbox.id, Outbox.attempts, Channel.kind, Channel.config, Outbox.payload, Channel.id)
            .join(Channel, Channel.id == Outbox.channel_id)
            .where(Outbox.id.in_(ids))
            .order_by(Outbox.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def send_one(db: Database, client: httpx.Client, kind: str, config: dict[str, Any], payload: dict[str, Any],
             delivery_id: int) -> int:
    settings = db.settings
    if kind in ("webhook", "slack") and not settings.allow_private_channels:
        reason = private_address_reason(config["url"])  # again at send time: DNS may have changed
        if reason:
            raise DeliveryError(f"refused: {reason}", retry=False)
    if kind == "webhook":
        return send_webhook(client, config, payload, delivery_id)
    if kind == "slack":
        return send_slack(client, config, payload, delivery_id)
    return send_email(settings, config, payload, delivery_id)


def record(db: Database, outbox_id: int, attempts: int, created_ok: bool, code: int | None, error: str | None,
           duration_ms: float, retry: bool) -> None:
    t = now()
    with db.write() as s:
        s.add(DeliveryAttempt(outbox_id=outbox_id, at=t, ok=created_ok, status_code=code, error=error,
                              duration_ms=duration_ms))
        row = s.get(Outbox, outbox_id)
        if row is None:
            return
        row.attempts = attempts + 1
        row.lease_until = None
        if created_ok:
            row.status, row.delivered_at, row.last_error = "delivered", t, None
            return
        row.last_error = error
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=t.tzinfo)
        too_old = t - created > timedelta(hours=db.settings.delivery_max_age_hours)
        if too_old or (not retry and row.attempts >= MAX_ATTEMPTS_4XX):
            row.status = "failed"
            log.warning("giving up on delivery %d after %d attempts: %s", outbox_id, row.attempts, error)
        else:
            row.status = "pending"
            row.next_attempt_at = t + timedelta(seconds=backoff(row.attempts))


def deliver_pending(db: Database, client: httpx.Client, pool: ThreadPoolExecutor | None = None) -> int:
    """Send every due row once. Returns how many were attempted."""
    claimed = claim(db)

    def attempt(item: tuple[int, int, str, dict[str, Any], dict[str, Any], int]) -> None:
        outbox_id, attempts, kind, config, payload, _channel = item
        start = time.perf_counter()
        try:
            code = send_one(db, client, kind, config, payload, outbox_id)
            record(db, outbox_id, attempts, True, code, None, (time.perf_counter() - start) * 1000, True)
        except DeliveryError as exc:
            record(db, outbox_id, attempts, False, exc.status_code, str(exc),
                   (time.perf_counter() - start) * 1000, exc.retry)
        except Exception as exc:  # noqa: BLE001 - the worker's boundary: log, record, go on
            log.exception("delivery %d failed unexpectedly", outbox_id)
            record(db, outbox_id, attempts, False, None, type(exc).__name__, (time.perf_counter() - start) * 1000, True)

    if pool is not None and len(claimed) > 1:
        list(pool.map(attempt, claimed))
    else:
        for item in claimed:
            attempt(item)
    return len(claimed)


class BackgroundWorkers:
    """The delivery loop and the stall check, as daemon threads of one server process."""

    def __init__(self, db: Database, tick_s: float = 1.0) -> None:
        self.db, self.tick_s = db, tick_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._deliver_loop, "losswatch-delivery"), (self._stall_loop, "losswatch-stall")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.db.outbox_event.set()
        for t in self._threads:
            t.join(timeout=10)

    def _deliver_loop(self) -> None:
        timeout = httpx.Timeout(self.db.settings.delivery_timeout_seconds)
        with httpx.Client(timeout=timeout, follow_redirects=False) as client, ThreadPoolExecutor(4) as pool:
            while not self._stop.is_set():
                try:
                    n = deliver_pending(self.db, client, pool)
                except Exception:  # noqa: BLE001 - keep the worker alive (database restarting...)
                    log.exception("delivery loop error")
                    n = 0
                if n == 0:
                    self.db.outbox_event.wait(self.tick_s)
                    self.db.outbox_event.clear()

    def _stall_loop(self) -> None:
        from losswatch.server.services.monitor import check_stalled_runs

        while not self._stop.wait(self.db.settings.stalled_check_seconds):
            try:
                with self.db.write() as s:
                    fired = check_stalled_runs(s, self.db.settings.public_url)
                if fired:
                    self.db.wake_delivery()
            except Exception:  # noqa: BLE001
                log.exception("stall check error")
