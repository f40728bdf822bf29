"""One base error for the server: a status, a short machine code and a message.

Services raise it; one handler in ``losswatch.server.app`` renders it as
``{"error": {"code": ..., "message": ..., "details": ...}}``.
"""

from __future__ import annotations

from typing import Any


class LosswatchError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details


class NotFound(LosswatchError):
    status = 404
    code = "not_found"


class InvalidRequest(LosswatchError):
    status = 422
    code = "invalid_request"


class Unauthorized(LosswatchError):
    status = 401
    code = "unauthorized"


class Forbidden(LosswatchError):
    status = 403
    code = "forbidden"


class Conflict(LosswatchError):
    status = 409
    code = "conflict"


def run_not_found(run_id: str) -> NotFound:
    return NotFound(f"no run {run_id!r}", code="run_not_found")


def project_not_found(name: str) -> NotFound:
    return NotFound(f"no project {name!r}", code="project_not_found")


def series_not_found(run_id: str, key: str) -> NotFound:
    return NotFound(f"run {run_id!r} has no series {key!r}", code="series_not_found")
