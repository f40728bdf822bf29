"""Downsampled queries: many series of many runs, each cut into at most N buckets.

Every bucket keeps the min and max of its finite values, its last value, its point count and its
count of non-finite values, so no spike and no NaN is hidden at any zoom. Buckets are aligned to
multiples of their width. A width of 32 steps or more is answered from the chunks' roll-ups at a
multiple of 64 steps (O(chunks) work, not O(points); at least half the buckets asked for); a finer one
decodes the few chunks of the range. The chunks of many series are read in a few SELECTs (series
that need the same chunk numbers together), not one per series: a sweep's 220 series cost a handful of
round trips.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.errors import InvalidRequest
from losswatch.server.services.points import encode_floats
from losswatch.server.services.runs import get_run
from losswatch.server.storage import chunks
from losswatch.server.storage.models import Chunk, Series

MAX_BUCKETS = 20_000
MAX_SERIES = 400
# Chunks read per SELECT when many series are read at once (bounds the memory of one fetch: a raw
# chunk is ~10 KB, a roll-up 256 B).
FETCH_CHUNKS = 512


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


def _from_rollups(rows: list[tuple[int, bytes]], run_id: str, s: Series, lo: int, hi: int, width: int) -> dict[str, Any]:
    """Buckets of ``width`` (a multiple of the roll-up size) from the (chunk_no, rollup) rows of [lo, hi]."""
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
    if width >= chunks.ROLLUP_STEPS // 2:
        # Answered from the roll-ups: widths of 32..63 steps become 64 (at least half the buckets asked
        # for, as a width of 65 becoming 128 already gives), which saves decoding every point of the range.
        width = -(-width // chunks.ROLLUP_STEPS) * chunks.ROLLUP_STEPS
    return width


def _plan(s: Series, start: int, end: int, buckets: int) -> tuple[int, int, int] | None:
    """(lo, hi, width) of a series' answer: its range clipped and aligned to the bucket width."""
    if s.first_step is None or s.last_step is None:
        return None
    lo, hi = max(start, s.first_step), min(end, s.last_step)
    if lo > hi:
        return None
    width = bucket_width(lo, hi, buckets)
    return (lo // width) * width, min((hi // width) * width + width - 1, wire.MAX_STEP), width


def _fetch(session: Session, columns: tuple[Any, ...], plans: list[tuple[Series, int, int]]) -> dict[int, list[Any]]:
    """Rows (chunk_no, *columns) of every series' chunks overlapping its [lo, hi], by series id, in chunk
    order. Series that need the same chunk numbers (a sweep's runs, a zoom) share a SELECT, at most
    about FETCH_CHUNKS chunks each."""
    out: dict[int, list[Any]] = defaultdict(list)
    by_range: dict[tuple[int, int], list[int]] = defaultdict(list)
    for s, lo, hi in plans:
        by_range[(lo >> chunks.CHUNK_SHIFT, hi >> chunks.CHUNK_SHIFT)].append(s.id)
    for (clo, chi), ids in by_range.items():
        per = max(1, FETCH_CHUNKS // (chi - clo + 1))
        for i in range(0, len(ids), per):
            rows = session.execute(
                select(Chunk.series_id, Chunk.chunk_no, *columns)
                .where(Chunk.series_id.in_(ids[i:i + per]), Chunk.chunk_no >= clo, Chunk.chunk_no <= chi)
                .order_by(Chunk.series_id, Chunk.chunk_no)
            ).all()
            for row in rows:
                out[row[0]].append(tuple(row[1:]))
    return out


def _raw_points(rows: list[Any], lo: int, hi: int) -> chunks.Points:
    """The points of [lo, hi] from (chunk_no, steps, values, walls) rows."""
    parts = []
    for chunk_no, steps, values, walls in rows:
        p = chunks.decode(chunk_no, steps, values, walls)
        if p.steps[0] < lo or p.steps[-1] > hi:
            m = (p.steps >= lo) & (p.steps <= hi)
            p = chunks.Points(p.steps[m], p.values[m], p.walls[m])
        if len(p):
            parts.append(p)
    return chunks.concat(parts)


def downsample(session: Session, found: list[tuple[str, Series]], start: int, end: int,
               buckets: int) -> list[dict[str, Any]]:
    """The buckets of every (run id, series), in the order given, with a few batched reads."""
    plans = [_plan(s, start, end, buckets) for _, s in found]
    coarse = [(s, p[0], p[1]) for (_, s), p in zip(found, plans, strict=True) if p and p[2] >= chunks.ROLLUP_STEPS]
    fine = [(s, p[0], p[1]) for (_, s), p in zip(found, plans, strict=True) if p and p[2] < chunks.ROLLUP_STEPS]
    rollups = _fetch(session, (Chunk.rollup,), coarse) if coarse else {}
    raw = _fetch(session, (Chunk.steps, Chunk.values, Chunk.walls), fine) if fine else {}
    out = []
    for (run_id, s), plan in zip(found, plans, strict=True):
        if plan is None:
            out.append(_empty(run_id, s, 1))
            continue
        lo, hi, width = plan
        if width >= chunks.ROLLUP_STEPS:
            out.append(_from_rollups(rollups.get(s.id, []), run_id, s, lo, hi, width))
            continue
        p = _raw_points(raw.get(s.id, []), lo, hi)
        out.append(_empty(run_id, s, width) if len(p) == 0 else _from_points(run_id, s, p, width))
    return out


def downsample_series(session: Session, run_id: str, s: Series, start: int, end: int, buckets: int) -> dict[str, Any]:
    """The buckets of one series."""
    return downsample(session, [(run_id, s)], start, end, buckets)[0]


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
    return {"series": downsample(session, [(s.run_id, s) for s in found], start, end, buckets)}
