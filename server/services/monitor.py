"""Detectors at ingest and on a clock: findings are turned into alerts in the same transaction as
the points (or the heartbeat) that produced them."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.server.detectors import (
    Finding,
    build_context,
    check_stalled,
    evaluate_series,
    record_arrival,
    series_level,
)
from losswatch.server.models import Run, Series
from losswatch.server.services.alerts import RunContext, apply_findings

# Training-side series first: overfitting and misalignment read the current training level.
_EVAL_LAST = {"metric": 1}


def evaluate_batch(session: Session, run: RunContext, run_row: Run, batch: list[Any]) -> list[Finding]:
    """Run the applicable rules over the batch's points (``points.SeriesBatch`` items) and record
    the run's arrival. Updates each series' detector state and the run's monitor state."""
    all_series = {s.key: s for s in session.scalars(select(Series).where(Series.run_id == run.id))}
    kinds = {k: s.kind for k, s in all_series.items()}
    levels = {k: series_level(s.detector_state) for k, s in all_series.items()}
    lr_series = [s for s in all_series.values() if s.kind == "lr" and s.last_value is not None]
    lr = lr_series[0].last_value if lr_series else None
    findings: list[Finding] = []
    last_step = None
    for sb in sorted(batch, key=lambda b: _EVAL_LAST.get(all_series[b.key].kind, 0)):
        if len(sb.points) == 0:
            continue
        s = all_series[sb.key]
        last_step = max(last_step or 0, int(sb.points.steps[-1]))
        if not run.config.rules_for(s.key, s.kind):
            continue
        ctx = build_context(s.key, s.kind, run.config, kinds, levels, lr=lr)
        state, found = evaluate_series(s.detector_state, s.key, s.kind, sb.points.steps.tolist(),
                                       sb.points.values.tolist(), run.config, ctx)
        s.detector_state = state
        levels[s.key] = series_level(state)
        findings.extend(found)
    findings.extend(arrive(run, run_row, last_step))
    return findings


def arrive(run: RunContext, run_row: Run, step: int | None) -> list[Finding]:
    state, found = record_arrival(run_row.monitor_state, time.time(), run.config, step=step, label=run.label)
    run_row.monitor_state = state
    return found


def check_stalled_runs(session: Session, public_url: str | None = None) -> int:
    """One pass of the stall check over running runs; a stalled run is marked crashed.
    Each run is locked while checked (skipped if another process holds it). Returns alerts fired."""
    from losswatch.server.services.alerts import run_context

    ids = list(session.scalars(select(Run.id).where(Run.status == "running")))
    fired = 0
    for rid in ids:
        locked = session.scalar(
            select(Run.id).where(Run.id == rid, Run.status == "running").with_for_update(skip_locked=True)
        )
        if locked is None:
            continue
        ctx, row = run_context(session, rid, public_url)
        state, finding = check_stalled(row.monitor_state, time.time(), ctx.config, label=ctx.label)
        row.monitor_state = state
        if finding is not None:
            apply_findings(session, ctx, [finding])
            if finding.action == "fire":
                row.status = "crashed"
                fired += 1
    return fired
