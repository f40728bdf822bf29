"""Administration: deleting a run (admin scope, explicit, logged).

``DELETE /api/v1/runs/{run_id}?confirm=<run_id>`` removes the run with its series, points, alerts
and their pending deliveries. The ``confirm`` parameter must repeat the run id, so that a
mistyped or half-built URL deletes nothing. Every deletion is written to the server log (logger
``losswatch.audit``, level WARNING) with who asked (the token's id and label, never the token) and
what went.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from losswatch.server.api.deps import API_ERRORS, DB, Caller, authorize_run, forget_run
from losswatch.server.errors import InvalidRequest
from losswatch.server.services import runs

audit = logging.getLogger("losswatch.audit")

router = APIRouter(prefix="/api/v1", tags=["admin"], responses=API_ERRORS)


class RunDeleted(BaseModel):
    id: str
    project: str
    name: str
    series: int
    points: int
    alerts: int


@router.delete("/runs/{run_id}", response_model=RunDeleted,
               summary="Delete a run with its series, points and alerts (admin; needs ?confirm=<run_id>)")
def delete_run(
    run_id: str, request: Request, db: DB, caller: Caller,
    confirm: Annotated[str | None, Query(max_length=64, description="The run id again")] = None,
) -> RunDeleted:
    authorize_run(request, caller, run_id, "admin")
    if confirm != run_id:
        raise InvalidRequest(
            f"deleting run {run_id!r} cannot be undone: repeat its id as ?confirm={run_id}",
            code="confirmation_required", details=[{"loc": ["query", "confirm"], "msg": "must equal the run id"}],
        )
    with db.write() as s:
        gone = runs.delete_run(s, run_id)
    forget_run(request, run_id)
    audit.warning("run %s (%r) of project %r deleted by %s from %s: %d series, %d points, %d alerts",
                  gone["id"], gone["name"], gone["project"], caller.describe(),
                  request.client.host if request.client else "?", gone["series"], gone["points"], gone["alerts"])
    return RunDeleted(**gone)
