"""The ingest use case: one batch, one transaction — points, summaries, detector state, alerts and
their outbox rows commit together or not at all."""

from __future__ import annotations

from typing import Any

from losswatch.server.db import Database
from losswatch.server.schemas import HeartbeatResult
from losswatch.server.services import alerts, monitor, points
from losswatch.server.services.runs import save_monitor_state, touch_run


def ingest(db: Database, run_id: str, body: bytes) -> dict[str, Any]:
    """Record a batch. The answer's ``alerts`` are the run's firing alerts plus those this batch
    changed (a NaN that fired and resolved within one batch still reaches the training script)."""
    batch = points.parse_batch(body)  # outside the write lock: parsing needs no database
    with db.write() as session:
        run = touch_run(session, run_id)
        series = points.load_series(session, run_id, batch)
        accepted = points.record_points(session, batch, series)
        ctx = alerts.run_context(session, run, db.settings.public_url)
        findings = monitor.evaluate_batch(ctx, run, batch, series)
        points.save_series(session, series)
        save_monitor_state(session, run_id, run.monitor_state or {})
        changed = alerts.apply_findings(session, ctx, findings)
        active = alerts.active_alerts(session, run_id, also=changed)
    if changed:
        db.wake_delivery()
    return {"accepted": accepted, "alerts": active}


def heartbeat(db: Database, run_id: str) -> HeartbeatResult:
    with db.write() as session:
        run = touch_run(session, run_id)
        ctx = alerts.run_context(session, run, db.settings.public_url)
        findings = monitor.arrive(ctx, run, None)
        save_monitor_state(session, run_id, run.monitor_state or {})
        changed = alerts.apply_findings(session, ctx, findings)
        active = alerts.active_alerts(session, run_id, also=changed)
    if changed:
        db.wake_delivery()
    return HeartbeatResult(status=run.status, alerts=active)  # type: ignore[arg-type]
