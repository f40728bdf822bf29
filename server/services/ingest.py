"""The ingest use case: one batch, one transaction — points, summaries, detector state, alerts and
their outbox rows commit together or not at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from losswatch.server.api.schemas import HeartbeatResult
from losswatch.server.services import alerts, batches, monitor, points
from losswatch.server.services.batches import BatchLimits, SeriesBatch
from losswatch.server.services.runs import save_monitor_state, touch_run
from losswatch.server.storage.db import Database


def ingest(db: Database, run_id: str, body: bytes, *, columnar: bool = False) -> dict[str, Any]:
    """Record a batch (JSON, or the binary columnar body of ``losswatch.client.wire`` when
    ``columnar``). The answer's ``alerts`` are the run's firing alerts plus those this batch
    changed (a NaN that fired and resolved within one batch still reaches the training script)."""
    limits = BatchLimits(db.settings.max_series_per_batch, db.settings.max_points_per_batch)
    parse = batches.parse_columnar if columnar else batches.parse_batch
    batch = parse(body, limits=limits)  # outside the write lock: parsing needs no database
    return record_batch(db, run_id, batch)


def record_batch(db: Database, run_id: str, batch: list[SeriesBatch],
                 *, also: Callable[[Session], None] | None = None) -> dict[str, Any]:
    """Record a batch already parsed (by :func:`ingest`, or built directly as the MLflow API does),
    in one transaction. ``also`` runs inside it right after the run is locked (the params and tags of
    an MLflow batch): if it raises, nothing of the batch is written."""
    with db.write() as session:
        run = touch_run(session, run_id)
        if also is not None:
            also(session)
        series = points.load_series(session, run_id, batch)
        fresh: list[points.SeriesBatch] = []  # the detectors see only what is new (a late retry is not)
        accepted = points.record_points(session, batch, series, fresh)
        ctx = alerts.run_context(session, run, db.settings.public_url)
        findings = monitor.evaluate_batch(ctx, run, fresh, series)
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
