"""Downsampled queries: many series of many runs, each cut into at most N buckets.

Every bucket keeps the min and max of its finite values, its last value, its point count and its
count of non-finite values, so no spike and no NaN is hidden at any zoom. Buckets are aligned to
multiples of their width. A width of 32 steps or more is answered from the chunks' roll-ups at a
multiple of 64 steps (O(chunks) work, not O(points); at least half the buckets asked for); a finer one
decodes the few chunks of the range. The chunks of many series are read in a few SELECTs (series
that need the same chunk numbers together), not one per series: a sweep's 220 series cost a handful of
round trips. What they return is decoded and bucketed for all the series at once (a few numpy calls over
every chunk, not a dozen per series), and the answer's columns stay numpy arrays for orjson to write.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import orjson
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


def _empty(run_id: str, s: Series, width: int) -> dict[str, Any]:
    return {"run": run_id, "key": s.key, "kind": s.kind, "width": width, "step": [], "last_step": [],
            "min": [], "max": [], "last": [], "count": [], "nonfinite": [], "wall": []}


class _Parts:
    """Summaries in (series, step) order, each one a point or a 64-step roll-up record: the input of
    :func:`_bucket`. ``owner`` is the index of the series (in the plan list) each one belongs to."""

    def __init__(self, owner: np.ndarray, first: np.ndarray, last: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 lastv: np.ndarray, lastwall: np.ndarray, count: np.ndarray | None, nonfinite: np.ndarray) -> None:
        self.owner, self.first, self.last, self.lo, self.hi = owner, first, last, lo, hi
        self.lastv, self.lastwall, self.count, self.nonfinite = lastv, lastwall, count, nonfinite


def _points_parts(rows: list[tuple[int, Any]], lo: np.ndarray, hi: np.ndarray) -> _Parts | None:
    """The points of the (owner, (chunk_no, steps, values, walls)) rows inside their owner's [lo, hi],
    as one-point summaries."""
    if not rows:
        return None
    p, counts = chunks.decode_many(np.fromiter((r[1][0] for r in rows), np.int64, len(rows)),
                                   [r[1][1] for r in rows], [r[1][2] for r in rows], [r[1][3] for r in rows])
    owner = np.repeat(np.fromiter((r[0] for r in rows), np.int64, len(rows)), counts)
    keep = (p.steps >= lo[owner]) & (p.steps <= hi[owner])
    if not keep.all():
        p, owner = chunks.Points(p.steps[keep], p.values[keep], p.walls[keep]), owner[keep]
    finite = np.isfinite(p.values)
    masked = p.values if finite.all() else np.where(finite, p.values, np.nan)
    return _Parts(owner, p.steps, p.steps, masked, masked, p.values, p.walls, None, (~finite).astype(np.int64))


def _rollup_parts(rows: list[tuple[int, Any]], lo: np.ndarray, hi: np.ndarray) -> _Parts | None:
    """The 64-step roll-up records of the (owner, (chunk_no, rollup)) rows."""
    if not rows:
        return None
    size = chunks.ROLLUP_DTYPE.itemsize
    # One buffer for all roll-ups: concatenating many small structured arrays is slow in numpy.
    roll = np.frombuffer(b"".join([r[1][1] for r in rows]), chunks.ROLLUP_DTYPE)
    per = np.fromiter((len(r[1][1]) // size for r in rows), np.int64, len(rows))
    base = np.repeat(np.fromiter((r[1][0] for r in rows), np.int64, len(rows)) << chunks.CHUNK_SHIFT, per)
    owner = np.repeat(np.fromiter((r[0] for r in rows), np.int64, len(rows)), per)
    first = roll["first"].astype(np.int64) + base
    keep = (first >= lo[owner]) & (first <= hi[owner])  # lo/hi are bucket-aligned: sub-buckets fit whole
    if not keep.all():
        roll, base, owner, first = roll[keep], base[keep], owner[keep], first[keep]
    return _Parts(owner, first, roll["last"].astype(np.int64) + base,
                  roll["min"], roll["max"], roll["lastv"], roll["lastwall"], roll["count"].astype(np.int64),
                  roll["nonfinite"].astype(np.int64))


def _bucket(parts: _Parts | None, width: np.ndarray) -> dict[int, dict[str, Any]]:
    """Buckets of every series at once: {owner: columns}. A summary belongs to the bucket of its first
    step (widths of roll-ups are multiples of 64)."""
    if parts is None:
        return {}
    n = parts.owner.shape[0]
    if n == 0:
        return {}
    b = parts.first // width[parts.owner]
    new = np.flatnonzero((b[1:] != b[:-1]) | (parts.owner[1:] != parts.owner[:-1])) + 1
    if new.shape[0] == n - 1:  # one summary per bucket (width 1): nothing to reduce
        starts = ends = np.arange(n)
        mins, maxs, nonfinite = parts.lo, parts.hi, parts.nonfinite
        count = np.ones(n, np.int64) if parts.count is None else parts.count
    else:
        starts = np.concatenate(([0], new))
        ends = np.append(starts[1:], n) - 1
        mins, maxs = np.fmin.reduceat(parts.lo, starts), np.fmax.reduceat(parts.hi, starts)
        count = ends - starts + 1 if parts.count is None else np.add.reduceat(parts.count, starts)
        nonfinite = np.add.reduceat(parts.nonfinite, starts)
    # Columns stay numpy arrays, sliced per series (views), for orjson to write (a NaN min/max as null);
    # only a `last` column holding NaN or ±Inf becomes a list, with those spelled out.
    lastv = parts.lastv[ends]
    cols: dict[str, Any] = {
        "step": parts.first[starts], "last_step": parts.last[ends],
        "min": np.ascontiguousarray(mins), "max": np.ascontiguousarray(maxs),  # roll-up fields are strided
        "last": lastv if np.isfinite(lastv).all() else encode_floats(lastv),
        "count": np.ascontiguousarray(count), "nonfinite": np.ascontiguousarray(nonfinite),
        "wall": parts.lastwall[ends] / 1e6,
    }
    owners = parts.owner[starts]
    cut = np.flatnonzero(owners[1:] != owners[:-1]) + 1
    bounds = np.concatenate(([0], cut, [owners.shape[0]])).tolist()
    out = {}
    for i, own in enumerate(owners[np.concatenate(([0], cut))].tolist()):
        a, z = bounds[i], bounds[i + 1]
        out[own] = {name: col[a:z] for name, col in cols.items()}
    return out


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


def downsample(session: Session, found: list[tuple[str, Series]], start: int, end: int,
               buckets: int) -> list[dict[str, Any]]:
    """The buckets of every (run id, series), in the order given: a few batched reads, then the
    decoding and bucketing of all the series together (numpy over every chunk at once)."""
    plans = [_plan(s, start, end, buckets) for _, s in found]
    coarse = [i for i, p in enumerate(plans) if p and p[2] >= chunks.ROLLUP_STEPS]
    fine = [i for i, p in enumerate(plans) if p and p[2] < chunks.ROLLUP_STEPS]
    lo = np.array([p[0] if p else 0 for p in plans], np.int64)
    hi = np.array([p[1] if p else -1 for p in plans], np.int64)
    width = np.array([p[2] if p else 1 for p in plans], np.int64)
    done: dict[int, dict[str, Any]] = {}
    for which, columns, parts_of in ((coarse, (Chunk.rollup,), _rollup_parts),
                                     (fine, (Chunk.steps, Chunk.values, Chunk.walls), _points_parts)):
        if not which:
            continue
        rows = _fetch(session, columns, [(found[i][1], int(lo[i]), int(hi[i])) for i in which])
        done.update(_bucket(parts_of([(i, r) for i in which for r in rows.get(found[i][1].id, [])], lo, hi), width))
    out = []
    for i, ((run_id, s), plan) in enumerate(zip(found, plans, strict=True)):
        if plan is None:
            out.append(_empty(run_id, s, 1))
        elif i not in done:
            out.append(_empty(run_id, s, plan[2]))
        else:
            out.append({"run": run_id, "key": s.key, "kind": s.kind, "width": plan[2], **done[i]})
    return out


def downsample_series(session: Session, run_id: str, s: Series, start: int, end: int, buckets: int) -> dict[str, Any]:
    """The buckets of one series."""
    return downsample(session, [(run_id, s)], start, end, buckets)[0]


# The binary answer (``GET /api/v1/query?format=binary``; docs/api.md): the same buckets as the JSON
# answer, as little-endian columns a browser reads with typed arrays, without parsing a number.
BINARY_MEDIA_TYPE = "application/vnd.losswatch.query"
BINARY_MAGIC = b"LWQ1"
_BINARY_COLUMNS = ("step", "last_step", "min", "max", "last", "wall", "count", "nonfinite")
_INTEGER_COLUMNS = frozenset({"step", "last_step", "count", "nonfinite"})


def _values(col: Any) -> np.ndarray:
    """A column of the answer as float64: a ``last`` list of wire values back to NaN / ±Inf."""
    if isinstance(col, np.ndarray):
        return col.astype("<f8", copy=False)
    return np.array([float(v) for v in col], "<f8")  # float() reads "NaN", "Infinity", "-Infinity"


def encode_binary(answer: dict[str, Any]) -> bytes:
    """:func:`query`'s answer as one binary body::

        "LWQ1" | uint32 header length H | H bytes of UTF-8 JSON header | zero padding to a multiple of 8
        | one block per column of the header, in its order: that column of every series, in series order

    The header is ``{"series": [{"run", "key", "kind", "width", "n"}], "columns": [{"name", "type"}]}``;
    a type is ``"f8"`` (float64) or ``"u4"`` (uint32), little-endian. Steps and counts are uint32 when
    every value fits, else float64; the float64 blocks come first, so every block starts aligned to its
    type. A min or max without a finite value is NaN; ``last`` keeps NaN and ±Inf as they are."""
    series = answer["series"]
    cols: dict[str, np.ndarray] = {}
    for name in _BINARY_COLUMNS:
        parts = [_values(s[name]) for s in series]
        cols[name] = np.concatenate(parts) if parts else np.empty(0, "<f8")
    types = {}
    for name, col in cols.items():
        small = name in _INTEGER_COLUMNS and (col.size == 0 or (col.min() >= 0 and col.max() < 2**32))
        types[name] = "u4" if small else "f8"
    order = [n for n in _BINARY_COLUMNS if types[n] == "f8"] + [n for n in _BINARY_COLUMNS if types[n] == "u4"]
    header = orjson.dumps({
        "series": [{"run": s["run"], "key": s["key"], "kind": s["kind"], "width": s["width"], "n": len(s["step"])}
                   for s in series],
        "columns": [{"name": n, "type": types[n]} for n in order],
    })
    head = BINARY_MAGIC + len(header).to_bytes(4, "little") + header
    blocks = [head, bytes(-len(head) % 8)]
    for name in order:
        blocks.append(cols[name].astype("<u4" if types[name] == "u4" else "<f8").tobytes())
    return b"".join(blocks)


def query(
    session: Session, run_ids: list[str], keys: list[str], start: int = 0, end: int = wire.MAX_STEP,
    buckets: int = 1000,
) -> dict[str, Any]:
    """Downsampled series for every (run, key) pair that exists; an unknown run is a 404. The columns
    are numpy arrays (``last`` a list of wire values when it holds NaN or ±Inf), for orjson's numpy
    option to write (a NaN min or max, a bucket without a finite value, as null)."""
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
