"""The ingest use case: one batch, one transaction — points, summaries, detector state, alerts and
their outbox rows commit together or not at all."""

from __future__ import annotations

from typing import Any

from losswatch.server.db import Database
from losswatch.server.schemas import HeartbeatResult
from losswatch.server.services import alerts, monitor, points
from losswatch.server.services.runs import touch_run


def ingest(db: Database, run_id: str, body: bytes) -> dict[str, Any]:
    """Record a batch. The answer's ``alerts`` are the run's firing alerts plus those this batch
    changed (a NaN that fired and resolved within one batch still reaches the training script)."""
    batch = points.parse_batch(body)  # outside the write lock: parsing needs no database
    with db.write() as session:
        accepted, _series = points.record_points(session, run_id, batch)
        ctx, run = alerts.run_context(session, run_id, db.settings.public_url)
        changed = alerts.apply_findings(session, ctx, monitor.evaluate_batch(session, ctx, run, batch))
        active = alerts.active_alerts(session, run_id, also=changed)
    if changed:
        db.wake_delivery()
    return {"accepted": accepted, "alerts": active}


def heartbeat(db: Database, run_id: str) -> HeartbeatResult:
    with db.write() as session:
        status = touch_run(session, run_id)
        ctx, run = alerts.run_context(session, run_id, db.settings.public_url)
        changed = alerts.apply_findings(session, ctx, monitor.arrive(ctx, run, None))
        active = alerts.active_alerts(session, run_id, also=changed)
    if changed:
        db.wake_delivery()
    return HeartbeatResult(status=status, alerts=active)  # type: ignore[arg-type]
