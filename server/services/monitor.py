"""Detectors at ingest and on a clock. Evaluating a batch is pure (rows in, findings and new states
out); the caller writes the states and the alerts in the transaction of the points."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.server.detectors import Finding, check_stalled, evaluate_run, record_arrival
from losswatch.server.services import peers
from losswatch.server.services.alerts import RunContext, apply_findings, run_context
from losswatch.server.services.batches import SeriesBatch
from losswatch.server.services.points import SeriesRow
from losswatch.server.services.runs import TouchedRun, save_monitor_state
from losswatch.server.storage.models import Run


def evaluate_batch(run: RunContext, touched: TouchedRun, batch: list[SeriesBatch],
                   series: dict[str, SeriesRow], session: Session | None = None) -> list[Finding]:
    """Run the applicable rules over the batch's points (``detectors.evaluate_run``, the same pure
    step the labelled benchmark measures) and record the run's arrival. Updates the rows' detector
    states and ``touched.monitor_state`` in memory. With ``session``, the plateau rule also gets the
    project's comparable runs (``services/peers.py``, cached)."""
    lr_rows = [s for s in series.values() if s.kind == "lr" and s.last_value is not None]
    points = {sb.key: (sb.points.steps, sb.points.values) for sb in batch if len(sb.points)}  # the parsed columns
    kinds = {k: s.kind for k, s in series.items()}
    before = {k: s.detector_state for k, s in series.items()}
    if session is not None:
        before = peers.with_references(session, run.id, run.project_id, run.config, before, kinds, points)
    states, findings = evaluate_run(before, kinds, points, run.config,
                                    lr=lr_rows[0].last_value if lr_rows else None)
    for key in points:
        row = series[key]
        if states.get(key) is not row.detector_state:
            row.detector_state, row.dirty = states[key], True
    last_step = max((int(sb.points.steps[-1]) for sb in batch if len(sb.points)), default=None)
    findings.extend(arrive(run, touched, last_step))
    return findings


def arrive(run: RunContext, touched: TouchedRun, step: int | None) -> list[Finding]:
    state, found = record_arrival(touched.monitor_state, time.time(), run.config, step=step, label=run.label)
    touched.monitor_state = state
    return found


def check_stalled_runs(session: Session, public_url: str | None = None) -> int:
    """One pass of the stall check over running runs; a stalled run is marked crashed.
    Each run is locked while checked (skipped if another process holds it). Returns alerts fired."""
    ids = list(session.scalars(select(Run.id).where(Run.status == "running")))
    fired = 0
    for rid in ids:
        row = session.execute(
            select(Run.status, Run.name, Run.project_id, Run.alert_config, Run.monitor_state)
            .where(Run.id == rid, Run.status == "running").with_for_update(skip_locked=True)
        ).first()
        if row is None:
            continue
        touched = TouchedRun(rid, *row)
        ctx = run_context(session, touched, public_url)
        state, finding = check_stalled(touched.monitor_state, time.time(), ctx.config, label=ctx.label)
        save_monitor_state(session, rid, state)
        if finding is not None:
            apply_findings(session, ctx, [finding])
            if finding.action == "fire":
                session.execute(Run.__table__.update().where(Run.id == rid).values(status="crashed"))
                fired += 1
    return fired
