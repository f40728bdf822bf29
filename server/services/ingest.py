"""The ingest use case: one batch, one transaction — points, summaries, detector state, alerts and
their outbox rows commit together or not at all. On SQLite, batches that arrive together share a
transaction (the database's group-commit writer), each in a savepoint of its own: still all or
nothing per batch, and a batch is answered only once it is committed."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
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
    batch = parse(db, body, columnar=columnar)  # outside the write lock: parsing needs no database
    return record_batch(db, run_id, batch)


def submit(db: Database, run_id: str, prepare: Callable[[], tuple[bytes, bool]]) -> Future[dict[str, Any]] | None:
    """:func:`ingest` through the database's group-commit writer (SQLite), for a caller that must
    not block (the API's event loop): ``prepare()`` runs on the writer thread before the
    transaction and gives the body and whether it is columnar (it may raise: 401/403/404/415).
    The future resolves after the commit. None where the backend has no such writer (PostgreSQL,
    whose writers run side by side): call :func:`ingest` then."""
    return _submit(db, run_id, lambda: parse(db, *prepare()))


def submit_parsed(db: Database, run_id: str, batch: list[SeriesBatch]) -> Future[dict[str, Any]] | None:
    """:func:`submit` for a batch parsed already (by the caller's thread: the writer thread only
    writes, and parses nothing while batches queue behind it)."""
    return _submit(db, run_id, lambda: batch)


def _submit(db: Database, run_id: str, parsed: Callable[[], list[SeriesBatch]]) -> Future[dict[str, Any]] | None:
    writer = db.group_writer
    if writer is None:
        return None

    def write(session: Session, batch: list[SeriesBatch]) -> tuple[dict[str, Any], bool]:
        return _record(session, db, run_id, batch)

    done: Future[dict[str, Any]] = Future()
    done.set_running_or_notify_cancel()  # a caller that goes away cannot cancel a batch being written

    def settle(f: Future[tuple[dict[str, Any], bool]]) -> None:  # on the writer thread, after the commit
        exc = f.exception()
        if exc is not None:
            done.set_exception(exc)
            return
        answer, changed = f.result()
        if changed:
            db.wake_delivery()
        done.set_result(answer)

    writer.submit(parsed, write).add_done_callback(settle)
    return done


def parse(db: Database, body: bytes, columnar: bool) -> list[SeriesBatch]:
    return (batches.parse_columnar if columnar else batches.parse_batch)(body, limits=_limits(db))


def _limits(db: Database) -> BatchLimits:
    return BatchLimits(db.settings.max_series_per_batch, db.settings.max_points_per_batch)


def record_batch(db: Database, run_id: str, batch: list[SeriesBatch],
                 *, also: Callable[[Session], None] | None = None) -> dict[str, Any]:
    """Record a batch already parsed (by :func:`ingest`, or built directly as the MLflow API does),
    in one transaction. ``also`` runs inside it right after the run is locked (the params and tags of
    an MLflow batch): if it raises, nothing of the batch is written."""
    with db.write() as session:
        answer, changed = _record(session, db, run_id, batch, also)
    if changed:
        db.wake_delivery()
    return answer


def _record(session: Session, db: Database, run_id: str, batch: list[SeriesBatch],
            also: Callable[[Session], None] | None = None) -> tuple[dict[str, Any], bool]:
    """The writes of one batch in the caller's transaction; the answer, and whether alerts changed
    (the caller wakes the delivery worker once that is committed)."""
    run = touch_run(session, run_id)
    if also is not None:
        also(session)
    held = points.HeldChunks()  # the stored chunks come with the series, the new ones go with the last writes
    series = points.load_series(session, run_id, batch, held)
    fresh: list[points.SeriesBatch] = []  # the detectors see only what is new (a late retry is not)
    accepted = points.record_points(session, batch, series, fresh, held)
    ctx = alerts.run_context(session, run, db.settings.public_url)
    findings = monitor.evaluate_batch(ctx, run, fresh, series, session)
    changed = alerts.apply_findings(session, ctx, findings)
    firing = points.save_batch(session, run_id, series, held, run.monitor_state or {})
    active = alerts.active_alerts(session, run_id, also=changed) if firing or changed else []
    return {"accepted": accepted, "alerts": active}, bool(changed)


def heartbeat(db: Database, run_id: str) -> HeartbeatResult:
    with db.write() as session:
        run = touch_run(session, run_id)
        ctx = alerts.run_context(session, run, db.settings.public_url)
        findings = monitor.arrive(ctx, run, None)
        changed = alerts.apply_findings(session, ctx, findings)
        firing = save_monitor_state(session, run_id, run.monitor_state or {})
        active = alerts.active_alerts(session, run_id, also=changed) if firing or changed else []
    if changed:
        db.wake_delivery()
    return HeartbeatResult(status=run.status, alerts=active)  # type: ignore[arg-type]
