"""Downsampled queries: many series of many runs, each cut into at most N buckets.

Every bucket keeps the min and max of its finite values, its last value, its point count and its
count of non-finite values, so no spike and no NaN is hidden at any zoom. Buckets are aligned to
multiples of their width. A width of 64 steps or more is answered from the chunks' roll-ups
(O(chunks) work, not O(points)); a finer one decodes the few chunks of the range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server import chunks
from losswatch.server.errors import InvalidRequest
from losswatch.server.models import Chunk, Series
from losswatch.server.services.points import encode_floats, iter_chunks
from losswatch.server.services.runs import get_run

MAX_BUCKETS = 20_000
MAX_SERIES = 400


def _nullable(arr: np.ndarray) -> list[float | None]:
    out: list[float | None] = arr.tolist()
    for i in np.flatnonzero(np.isnan(arr)).tolist():
        out[i] = None
    return out


def _empty(run_id: str, s: Series, width: int) -> dict[str, Any]:
    return {"run": run_id, "key": s.key, "kind": s.kind, "width": width, "step": [], "last_step": [],
            "min": [], "max": [], "last": [], "count": [], "nonfinite": [], "wall": []}


def _from_points(run_id: str, s: Series, p: chunks.Points, width: int) -> dict[str, Any]:
    if width == 1:
        finite = np.isfinite(p.values)
        mm = np.where(finite, p.values, np.nan)
        return {"run": run_id, "key": s.key, "kind": s.kind, "width": 1, "step": p.steps.tolist(),
                "last_step": p.steps.tolist(), "min": _nullable(mm), "max": _nullable(mm),
                "last": encode_floats(p.values), "count": [1] * len(p),
                "nonfinite": (~finite).astype(np.int64).tolist(), "wall": (p.walls / 1e6).tolist()}
    b = p.steps // width
    starts = np.concatenate(([0], np.flatnonzero(b[1:] != b[:-1]) + 1))
    ends = np.append(starts[1:], len(p)) - 1
    finite = np.isfinite(p.values)
    masked = np.where(finite, p.values, np.nan)
    return {
        "run": run_id, "key": s.key, "kind": s.kind, "width": width,
        "step": p.steps[starts].tolist(), "last_step": p.steps[ends].tolist(),
        "min": _nullable(np.fmin.reduceat(masked, starts)), "max": _nullable(np.fmax.reduceat(masked, starts)),
        "last": encode_floats(p.values[ends]), "count": (ends - starts + 1).tolist(),
        "nonfinite": np.add.reduceat((~finite).astype(np.int64), starts).tolist(),
        "wall": (p.walls[ends] / 1e6).tolist(),
    }


def _from_rollups(session: Session, run_id: str, s: Series, lo: int, hi: int, width: int) -> dict[str, Any]:
    rows = session.execute(
        select(Chunk.chunk_no, Chunk.rollup)
        .where(Chunk.series_id == s.id, Chunk.chunk_no >= lo >> chunks.CHUNK_SHIFT,
               Chunk.chunk_no <= hi >> chunks.CHUNK_SHIFT)
        .order_by(Chunk.chunk_no)
    ).all()
    if not rows:
        return _empty(run_id, s, width)
    # One buffer for all roll-ups: concatenating many small structured arrays is slow in numpy.
    size = chunks.ROLLUP_DTYPE.itemsize
    roll = np.frombuffer(b"".join([r[1] for r in rows]), chunks.ROLLUP_DTYPE)
    base = np.repeat(np.array([r[0] for r in rows], np.int64) << chunks.CHUNK_SHIFT,
                     [len(r[1]) // size for r in rows])
    first = roll["first"].astype(np.int64) + base
    last = roll["last"].astype(np.int64) + base
    keep = (first >= lo) & (first <= hi)  # lo/hi are bucket-aligned, so sub-buckets fit whole
    if not keep.all():
        roll, first, last = roll[keep], first[keep], last[keep]
    if roll.shape[0] == 0:
        return _empty(run_id, s, width)
    b = first // width
    starts = np.concatenate(([0], np.flatnonzero(b[1:] != b[:-1]) + 1))
    ends = np.append(starts[1:], roll.shape[0]) - 1
    return {
        "run": run_id, "key": s.key, "kind": s.kind, "width": width,
        "step": first[starts].tolist(), "last_step": last[ends].tolist(),
        "min": _nullable(np.fmin.reduceat(roll["min"], starts)),
        "max": _nullable(np.fmax.reduceat(roll["max"], starts)),
        "last": encode_floats(roll["lastv"][ends]),
        "count": np.add.reduceat(roll["count"].astype(np.int64), starts).tolist(),
        "nonfinite": np.add.reduceat(roll["nonfinite"].astype(np.int64), starts).tolist(),
        "wall": (roll["lastwall"][ends] / 1e6).tolist(),
    }


def bucket_width(lo: int, hi: int, buckets: int) -> int:
    """The smallest width that cuts [lo, hi] into at most ``buckets`` aligned buckets; a multiple
    of the roll-up size once it reaches it."""
    span = hi - lo + 1
    if span <= buckets:
        return 1
    width = -(-(span - 1) // (buckets - 1)) if buckets > 1 else span
    while (hi // width) - (lo // width) + 1 > buckets:
        width += 1
    if width >= chunks.ROLLUP_STEPS:
        width = -(-width // chunks.ROLLUP_STEPS) * chunks.ROLLUP_STEPS
    return width


def downsample_series(session: Session, run_id: str, s: Series, start: int, end: int, buckets: int) -> dict[str, Any]:
    if s.first_step is None or s.last_step is None:
        return _empty(run_id, s, 1)
    lo, hi = max(start, s.first_step), min(end, s.last_step)
    if lo > hi:
        return _empty(run_id, s, 1)
    width = bucket_width(lo, hi, buckets)
    lo_a, hi_a = (lo // width) * width, min((hi // width) * width + width - 1, wire.MAX_STEP)
    if width >= chunks.ROLLUP_STEPS:
        return _from_rollups(session, run_id, s, lo_a, hi_a, width)
    p = chunks.concat(list(iter_chunks(session, s.id, lo_a, hi_a)))
    if len(p) == 0:
        return _empty(run_id, s, width)
    return _from_points(run_id, s, p, width)


def query(
    session: Session, run_ids: list[str], keys: list[str], start: int = 0, end: int = wire.MAX_STEP,
    buckets: int = 1000,
) -> dict[str, Any]:
    """Downsampled series for every (run, key) pair that exists; an unknown run is a 404."""
    if not run_ids:
        raise InvalidRequest("name at least one run: ?run=<id>", code="invalid_query",
                             details=[{"loc": ["query", "run"], "msg": "field required"}])
    if start > end:
        raise InvalidRequest(f"start ({start}) is after end ({end})", code="invalid_query",
                             details=[{"loc": ["query", "start"], "msg": "start > end"}])
    for rid in dict.fromkeys(run_ids):
        get_run(session, rid)
    stmt = select(Series).where(Series.run_id.in_(list(dict.fromkeys(run_ids))))
    if keys:
        stmt = stmt.where(Series.key.in_(keys))
    found = list(session.scalars(stmt))
    if len(found) > MAX_SERIES:
        raise InvalidRequest(f"the query matches {len(found)} series; ask for at most {MAX_SERIES}",
                             code="query_too_large")
    order = {rid: i for i, rid in enumerate(dict.fromkeys(run_ids))}
    korder = {k: i for i, k in enumerate(keys)}
    found.sort(key=lambda s: (order[s.run_id], korder.get(s.key, len(korder)), s.key))
    return {"series": [downsample_series(session, s.run_id, s, start, end, buckets) for s in found]}
