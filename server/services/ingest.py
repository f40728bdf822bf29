"""The ingest use case: one batch, one transaction — points, summaries (and, with issue 4,
detector state and alerts) commit together or not at all."""

from __future__ import annotations

from typing import Any

from losswatch.server.db import Database
from losswatch.server.schemas import HeartbeatResult
from losswatch.server.services import points
from losswatch.server.services.runs import touch_run
from sqlalchemy.orm import Session


def ingest(db: Database, run_id: str, body: bytes) -> dict[str, Any]:
    batch = points.parse_batch(body)  # outside the write lock: parsing needs no database
    with db.write() as session:
        accepted, _series = points.record_points(session, run_id, batch)
    return {"accepted": accepted, "alerts": []}


def heartbeat(session: Session, run_id: str) -> HeartbeatResult:
    status = touch_run(session, run_id)
    return HeartbeatResult(status=status, alerts=[])  # type: ignore[arg-type]
