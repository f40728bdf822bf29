"""Talking to the server: one request, its answer classified. Shared by the sender and ``sync``.

Outcomes of a request:

- ``ok``: 2xx (``data`` holds the parsed answer);
- ``retry``: no answer (network error), 408, 429 or 5xx: try again later, after ``retry_after``
  seconds if the server said so;
- ``auth``: 401/403: nothing this process sends will be accepted with this token;
- ``missing_run``: 404 on a run route: the run must be created (again) first;
- ``dropped``: 413 for a single point, 422 or another 4xx: this batch can never succeed.

A 413 answer splits the batch in two halves and sends each, recursively; the size that was
refused is remembered in :class:`Limits` so later batches of that size are split before sending.

An ingest batch is JSON or the binary columnar body (``wire.is_columnar``). A server that does not
take the binary body (415, or the 422 ``invalid_json`` of a server older than the encoding) gets
that batch again in JSON, and :class:`Limits` remembers to send JSON from then on.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any

from losswatch.client import wire
from losswatch.client.errors import LosswatchError, ServerError, TransportError
from losswatch.client.transport import Transport

API = "/api/v1"


@dataclass
class Result:
    outcome: str
    status: int = 0
    code: str = ""
    message: str = ""
    details: Any = None
    retry_after: float | None = None
    data: Any = None
    dropped_points: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)  # (category, message) worth a warning

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def error(self) -> LosswatchError:
        if self.status == 0:
            return TransportError(self.message)
        return ServerError(self.status, self.code, self.message, self.details)

    def describe(self) -> str:
        if self.status == 0:
            return self.message
        text = f"HTTP {self.status}"
        if self.code:
            text += f" {self.code}"
        if self.message:
            text += f": {self.message}"
        if self.details:
            text += f" {json.dumps(self.details, default=str)[:500]}"
        return text


@dataclass
class Limits:
    too_large: int | None = None  # smallest body size (bytes) the server refused with 413
    json_only: bool = False  # the server refused a columnar body: send JSON


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify(status: int, headers: dict[str, str], body: bytes) -> Result:
    data: Any = None
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    if 200 <= status < 300:
        return Result("ok", status, data=data)
    code, message, details = "", "", None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or "")
        message = str(err.get("message") or "")
        details = err.get("details")
    elif isinstance(data, dict) and "detail" in data:
        details = data["detail"]
    elif body:
        message = body[:300].decode("utf-8", "replace")
    if status in (408, 429) or status >= 500:
        outcome = "retry"
    elif status in (401, 403):
        outcome = "auth"
    elif status == 404:
        outcome = "missing_run"
    elif status == 413:
        outcome = "too_large"
    else:
        outcome = "dropped"
    return Result(outcome, status, code, message, details, _retry_after(headers.get("retry-after")))


def call(transport: Transport, method: str, path: str, payload: bytes | None) -> Result:
    try:
        status, headers, body = transport.request(method, path, payload)
    except TransportError as exc:
        return Result("retry", 0, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - a custom transport failing: treat as no answer
        return Result("retry", 0, message=f"{type(exc).__name__}: {exc}")
    return classify(status, headers, body)


def create_run(transport: Transport, project: str, payload: dict[str, Any]) -> Result:
    from urllib.parse import quote

    res = call(transport, "POST", f"{API}/projects/{quote(project, safe='')}/runs", wire.dumps(payload))
    if res.outcome in ("missing_run", "too_large"):
        res.outcome = "dropped"  # a 404 here means the project is unknown: not fixable by retrying
    return res


def update_run(transport: Transport, run_id: str, body: bytes) -> Result:
    """``PATCH`` the run's fields (``body``: a JSON object of name, tags, config, notes)."""
    return call(transport, "PATCH", f"{API}/runs/{run_id}", body)


def finish_run(transport: Transport, run_id: str, status: str) -> Result:
    return call(transport, "POST", f"{API}/runs/{run_id}/finish", wire.dumps({"status": status}))


def heartbeat(transport: Transport, run_id: str) -> Result:
    return call(transport, "POST", f"{API}/runs/{run_id}/heartbeat", b"{}")


def count_points(batch: dict[str, Any]) -> int:
    return sum(len(s.get("steps", ())) for s in batch.get("series", ()))


def split_batch(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Two halves with the points of ``batch`` in the same order; ``None`` for a single point."""
    series = batch.get("series", [])
    total = count_points(batch)
    if total < 2:
        return None
    half = total // 2
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    taken = 0
    for s in series:
        n = len(s.get("steps", ()))
        if taken >= half:
            second.append(s)
        elif taken + n <= half:
            first.append(s)
        else:
            cut = half - taken
            a = {k: (v[:cut] if isinstance(v, list) else v) for k, v in s.items()}
            b = {k: (v[cut:] if isinstance(v, list) else v) for k, v in s.items()}
            first.append(a)
            second.append(b)
        taken += n
    return {**batch, "series": first}, {**batch, "series": second}


def _refuses_columnar(res: Result) -> bool:
    return res.status == 415 or (res.status in (400, 422) and res.code in ("invalid_json", "unsupported_media_type"))


def send_points(transport: Transport, run_id: str, body: bytes, limits: Limits) -> Result:
    """Send one ingest batch, splitting it on 413. The answers' data are collected in ``data`` (a list)."""
    answers: list[Any] = []
    if limits.json_only or not getattr(transport, "columnar", False):
        body = wire.to_json(body)
    res = _send(transport, run_id, body, None, limits, answers)
    if wire.is_columnar(body) and _refuses_columnar(res):
        limits.json_only = True
        answers.clear()
        res = _send(transport, run_id, wire.to_json(body), None, limits, answers)
    res.data = answers
    return res


def _encode_like(body: bytes, half: dict[str, Any]) -> bytes:
    return wire.batch_to_columnar(half) if wire.is_columnar(body) else wire.dumps(half)


def _send(
    transport: Transport,
    run_id: str,
    body: bytes,
    batch: dict[str, Any] | None,
    limits: Limits,
    answers: list[Any],
) -> Result:
    if limits.too_large is None or len(body) < limits.too_large:
        res = call(transport, "POST", f"{API}/runs/{run_id}/points", body)
        if res.outcome != "too_large":
            if res.ok:
                answers.append(res.data)
            elif res.outcome == "dropped":
                if batch is None:
                    batch = wire.loads_batch(body)
                res.dropped_points = count_points(batch)
                res.notes.append(("invalid", res.describe()))
            return res
        limits.too_large = len(body) if limits.too_large is None else min(limits.too_large, len(body))
        first_note = ("too_large", res.describe())
    else:
        first_note = None
    if batch is None:
        batch = wire.loads_batch(body)
    halves = split_batch(batch)
    if halves is None:
        res = Result("dropped", 413, "body_too_large", "a single point is larger than the server accepts")
        res.dropped_points = count_points(batch)
        res.notes.append(("too_large_point", res.describe()))
        return res
    total = Result("ok", 200)
    if first_note:
        total.notes.append(first_note)
    for half in halves:
        part = _send(transport, run_id, _encode_like(body, half), half, limits, answers)
        total.notes.extend(part.notes)
        total.dropped_points += part.dropped_points
        if part.outcome not in ("ok", "dropped"):
            part.notes = total.notes
            part.dropped_points = total.dropped_points
            return part
    return total
