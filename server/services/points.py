"""Points: record a parsed batch (overwriting re-sent steps), read raw pages, export CSV.

Ingest is one transaction per batch: the run row is touched first (that takes its lock), then the
run's series rows are read, every touched chunk is read (one primary-key range per series), merged
with the new points and written back whole, and the series summaries are updated. The hot path uses
SQLAlchemy Core statements on plain rows (:class:`SeriesRow`), not ORM objects: at 10,000 points per
batch the ORM's unit of work costs more than the data; and the batch's chunks are encoded together
(``storage.chunk_batches.encode_many``): one chunk at a time, numpy's per-call cost was the data's.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Select, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.errors import series_not_found
from losswatch.server.services.batches import SeriesBatch, parse_batch
from losswatch.server.services.runs import get_run, save_monitor_state, saved_monitor_state
from losswatch.server.storage import chunks
from losswatch.server.storage.chunk_batches import encode_many
from losswatch.server.storage.chunks import Points
from losswatch.server.storage.db import pipelined, read_pipelined, write_chunks, write_pipelined
from losswatch.server.storage.models import Chunk, Series

__all__ = ["SeriesBatch", "SeriesRow", "HeldChunks", "parse_batch", "record_points", "load_series", "save_series",
           "save_batch",
           "read_points", "iter_csv", "iter_chunks", "encode_floats", "get_series"]

# --- recording -------------------------------------------------------------------------------

_SERIES = Series.__table__
_SUMMARY = ("kind", "count", "nonfinite", "first_step", "last_step", "last_value", "last_special",
            "last_wall_us", "min_value", "max_value", "detector_state")


@dataclass(eq=False)
class SeriesRow:
    """One series of a run as ingest sees it: its summary and its detector state."""

    id: int
    key: str
    kind: str
    count: int = 0
    nonfinite: int = 0
    first_step: int | None = None
    last_step: int | None = None
    last_value: float | None = None
    last_special: str | None = None
    last_wall_us: int | None = None
    min_value: float | None = None
    max_value: float | None = None
    detector_state: dict[str, Any] | None = None
    dirty: bool = field(default=False, repr=False)


# Statements are built once, with bind parameters: building them per batch costs more than running them.
_SELECT_SERIES = select(_SERIES.c.id, _SERIES.c.key, *[_SERIES.c[c] for c in _SUMMARY]).where(
    _SERIES.c.run_id == bindparam("rid"))
_INSERT_SERIES = insert(_SERIES).returning(_SERIES.c.id, _SERIES.c.key)
_UPDATE_SERIES = (
    update(_SERIES).where(_SERIES.c.id == bindparam("sid")).values({c: bindparam(c) for c in _SUMMARY})
)


def load_series(session: Session, run_id: str, batch: list[SeriesBatch],
                held: HeldChunks | None = None) -> dict[str, SeriesRow]:
    """All series of the run (detectors pair them), creating the batch's new keys.

    With ``held`` on PostgreSQL, the stored chunks the batch touches are read in the same round trip
    (``record_points`` takes them from ``held``): their series ids are this process's guess from the
    run's last batch, checked against the rows read; a wrong guess (a new series, a run deleted and
    made again) only costs ``record_points`` its own read."""
    guess = held is not None and HOLD_WRITES and pipelined(session)
    if guess:
        rows = _load_with_chunks(session, run_id, batch, held)  # type: ignore[arg-type]
    else:
        rows = {r.key: SeriesRow(*r) for r in session.execute(_SELECT_SERIES, {"rid": run_id})}
    new = [{"run_id": run_id, "key": sb.key, "kind": sb.kind, "count": 0, "nonfinite": 0}
           for sb in batch if sb.key not in rows]
    if new:
        kinds = {n["key"]: n["kind"] for n in new}
        for sid, key in session.execute(_INSERT_SERIES, new):
            rows[key] = SeriesRow(sid, key, kinds[key])
    if guess:
        _remember_ids(run_id, rows)
    for sb in batch:
        row = rows[sb.key]
        if sb.kind_given and row.kind != sb.kind:
            row.kind, row.dirty = sb.kind, True
    return rows


# run id -> {series key: series id} as last read: the guess of ``load_series`` (ids never change; a
# stale or wrong entry is caught by the check there). Bounded: the oldest runs are forgotten.
_SERIES_IDS: dict[str, dict[str, int]] = {}
_SERIES_IDS_MAX = 4096


def _batch_ranges(batch: list[SeriesBatch], ids: dict[str, int]) -> list[tuple[int, int, int]] | None:
    """The chunk ranges ``record_points`` reads for ``batch`` with these series ids, in its order;
    None when a key of the batch has no id."""
    ranges: list[tuple[int, int, int]] = []
    for sb in batch:
        if not len(sb.points):
            continue
        sid = ids.get(sb.key)
        if sid is None:
            return None
        nos = sb.points.steps >> chunks.CHUNK_SHIFT
        heads = np.flatnonzero(nos[1:] != nos[:-1]) + 1
        ranges.extend(_chunk_ranges(sid, [int(nos[0]), *nos[heads].tolist()]))
    return ranges


def _load_with_chunks(session: Session, run_id: str, batch: list[SeriesBatch],
                      held: HeldChunks) -> dict[str, SeriesRow]:
    guess = _SERIES_IDS.get(run_id)
    ranges = _batch_ranges(batch, guess) if guess is not None else None
    if ranges is not None and 0 < len(ranges) <= _RANGES_PER_SELECT:
        params: dict[str, int] = {}
        for i, (sid, a, b) in enumerate(ranges):
            params[f"s{i}"], params[f"a{i}"], params[f"b{i}"] = sid, a, b
        found, old = read_pipelined(session, [(_SELECT_SERIES, {"rid": run_id}), (_select_old(len(ranges)), params)])
    else:
        found, old = read_pipelined(session, [(_SELECT_SERIES, {"rid": run_id})])[0], None
    rows = {r[1]: SeriesRow(*r) for r in found}
    if old is not None and guess is not None and all(
            sb.key in rows and rows[sb.key].id == guess[sb.key] for sb in batch if len(sb.points)):
        names = [c.name for c in _OLD_COLUMNS]
        held.ranges, held.old = ranges, {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in old}
    return rows


def _remember_ids(run_id: str, rows: dict[str, SeriesRow]) -> None:
    _SERIES_IDS.pop(run_id, None)
    _SERIES_IDS[run_id] = {k: r.id for k, r in rows.items()}
    if len(_SERIES_IDS) > _SERIES_IDS_MAX:
        _SERIES_IDS.pop(next(iter(_SERIES_IDS)), None)


def save_series(session: Session, rows: dict[str, SeriesRow]) -> None:
    changed = _changed(rows)
    if changed:
        session.execute(_UPDATE_SERIES, changed)


def _changed(rows: dict[str, SeriesRow]) -> list[dict[str, Any]]:
    return [{"sid": r.id, **{c: getattr(r, c) for c in _SUMMARY}} for r in rows.values() if r.dirty]


# False: every write of a batch goes to the database when it is made (the benchmark's "before" figure).
HOLD_WRITES = True


@dataclass
class HeldChunks:
    """Chunk rows of a batch, encoded but not written yet: :func:`save_batch` writes them with the
    batch's last writes (on PostgreSQL one round trip for all of them)."""

    inserts: list[dict[str, object]] = field(default_factory=list)
    updates: list[dict[str, object]] = field(default_factory=list)
    # The stored chunks of these ranges, read by ``load_series`` (None: not read there).
    ranges: list[tuple[int, int, int]] | None = None
    old: dict[tuple[int, int], Any] | None = None


def save_batch(session: Session, run_id: str, rows: dict[str, SeriesRow], held: HeldChunks | None,
               monitor_state: dict[str, Any]) -> bool:
    """The last writes of an ingest batch, in the caller's transaction, in this order: the chunk rows
    ``record_points`` held back, the changed series summaries (``save_series``) and the run's monitor
    state (``save_monitor_state``, whose answer this returns: whether an alert of the run is firing).
    On PostgreSQL they go in one psycopg pipeline, one round trip where they took three; the ORM's
    pending changes (alerts just fired) are flushed first, so the firing check sees them."""
    held = held or HeldChunks()
    if HOLD_WRITES and pipelined(session):
        session.flush()
        row = write_pipelined(session, held.inserts, held.updates, [(_UPDATE_SERIES, _changed(rows))],
                              saved_monitor_state(run_id, monitor_state))
        return bool(row[0])
    write_chunks(session, held.inserts, held.updates, _INSERT_CHUNK, _UPDATE_CHUNK)
    save_series(session, rows)
    return save_monitor_state(session, run_id, monitor_state)


_CHUNKS = Chunk.__table__
_INSERT_COLUMNS = ("count", "nonfinite", "min_value", "max_value", "rollup", "steps", "walls", "values")
_INSERT_CHUNK = insert(_CHUNKS).values(
    series_id=bindparam("sid"), chunk_no=bindparam("no"), **{c: bindparam(c) for c in _INSERT_COLUMNS}
)
_UPDATE_CHUNK = (
    update(_CHUNKS)
    .where(_CHUNKS.c.series_id == bindparam("sid"), _CHUNKS.c.chunk_no == bindparam("no"))
    .values({c: bindparam(c) for c in _INSERT_COLUMNS})
)
_OLD_COLUMNS = (_CHUNKS.c.series_id, _CHUNKS.c.chunk_no, *[_CHUNKS.c[c] for c in _INSERT_COLUMNS])
_RANGES_PER_SELECT = 100  # OR terms per statement: SQLite's parser nests them (expression depth 1000)


@functools.cache
def _select_old(n: int) -> Select[Any]:
    """The stored chunks of ``n`` ranges ``(series, first chunk, last chunk)``, built once per ``n``.
    One ``series_id = ? AND chunk_no BETWEEN ? AND ?`` term per range, OR-ed: both backends search
    the primary key once per term (SQLite's multi-index OR, PostgreSQL's bitmap OR), where a row-value
    ``IN`` of pairs made SQLite scan the whole table."""
    c = _CHUNKS.c
    return select(*_OLD_COLUMNS).where(or_(*(
        and_(c.series_id == bindparam(f"s{i}"), c.chunk_no >= bindparam(f"a{i}"), c.chunk_no <= bindparam(f"b{i}"))
        for i in range(n))))


def _chunk_ranges(sid: int, nos: list[int]) -> Iterator[tuple[int, int, int]]:
    """Runs of consecutive chunk numbers (sorted) as ``(sid, first, last)``."""
    first = last = nos[0]
    for no in nos[1:]:
        if no != last + 1:
            yield sid, first, last
            first = no
        last = no
    yield sid, first, last


def _read_old(session: Session, ranges: list[tuple[int, int, int]]) -> dict[tuple[int, int], Any]:
    old: dict[tuple[int, int], Any] = {}
    for at in range(0, len(ranges), _RANGES_PER_SELECT):
        part = ranges[at:at + _RANGES_PER_SELECT]
        params: dict[str, int] = {}
        for i, (sid, a, b) in enumerate(part):
            params[f"s{i}"], params[f"a{i}"], params[f"b{i}"] = sid, a, b
        for r in session.execute(_select_old(len(part)), params):
            old[(r[0], r[1])] = r._mapping
    return old


def _special(value: float) -> str | None:
    return None if math.isfinite(value) else wire.encode_value(value)  # type: ignore[return-value]


def record_points(session: Session, batch: list[SeriesBatch], series: dict[str, SeriesRow],
                  fresh: list[SeriesBatch] | None = None, held: HeldChunks | None = None) -> int:
    """Write a parsed batch in the caller's transaction (the run already touched and locked).
    Updates the rows' summaries in memory (``save_series`` writes them). Returns points accepted.

    ``fresh``, when given, receives the batch less the points stored already with the same value,
    bit for bit, and the same wall time: what is new to the detectors. A retried batch that arrives
    after the batches sent after it (another server process took the retry first) adds nothing
    there, so it cannot look like the run going back in time; a chunk that such a retry leaves
    unchanged is not rewritten.

    ``held``, when given, receives the chunk rows to write instead of the database (``save_batch``
    writes them), unless an overwrite needs the series' range read back from the written chunks."""
    live = [sb for sb in batch if len(sb.points)]
    if not live:
        return 0
    # The chunks of every series and the finite range of its new points, with a few numpy calls
    # over the batch's points together (one series at a time, the calls cost more than the data).
    lens = np.fromiter((len(sb.points) for sb in live), np.int64, len(live))
    firsts = np.cumsum(lens) - lens
    steps = np.concatenate([sb.points.steps for sb in live])
    values = np.concatenate([sb.points.values for sb in live])
    nos = steps >> chunks.CHUNK_SHIFT
    heads = np.union1d(np.flatnonzero(nos[1:] != nos[:-1]) + 1, firsts)  # each chunk's first point
    masked = np.where(np.isfinite(values), values, np.nan)
    lows, highs = np.fmin.reduceat(masked, firsts).tolist(), np.fmax.reduceat(masked, firsts).tolist()
    cuts = np.searchsorted(heads, np.append(firsts, steps.shape[0])).tolist()
    head_list, no_heads, first_list = heads.tolist(), nos[heads].tolist(), firsts.tolist()
    work: list[tuple[SeriesBatch, SeriesRow, list[int], list[int], list[int]]] = []
    ranges: list[tuple[int, int, int]] = []
    for i, sb in enumerate(live):
        row, at = series[sb.key], first_list[i]
        no_list = no_heads[cuts[i]:cuts[i + 1]]
        a_list = [h - at for h in head_list[cuts[i]:cuts[i + 1]]]
        work.append((sb, row, no_list, a_list, [*a_list[1:], len(sb.points)]))
        ranges.extend(_chunk_ranges(row.id, no_list))
    old = held.old if held is not None and held.old is not None and held.ranges == ranges else _read_old(session, ranges)
    # Every touched chunk, encoded together (new chunks, and appends after the stored points); an
    # overwrite or a retry comes back None and is merged below, one chunk at a time.
    parts: list[tuple[int, Any, Points]] = []
    for sb, row, nos, a_list, b_list in work:
        pts = sb.points
        whole = len(nos) == 1
        for no, a, b in zip(nos, a_list, b_list, strict=True):
            new = pts if whole else Points(pts.steps[a:b], pts.values[a:b], pts.walls[a:b])
            parts.append((no, old.get((row.id, no)), new))
    encoded = iter(encode_many(parts))
    given = iter(parts)
    inserts: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    accepted = 0
    recompute: list[SeriesRow] = []
    for (sb, row, nos, a_list, b_list), lo, hi in zip(work, lows, highs, strict=True):
        pts = sb.points
        d_count = d_nonfinite = 0
        replaced_any = False
        seen: np.ndarray | None = None  # points stored already with the same value
        for no, a, b in zip(nos, a_list, b_list, strict=True):
            enc = next(encoded)
            _, prev, new = next(given)
            if enc is None:  # an overwrite or a retry: decode, merge, encode
                stored = chunks.decode(no, prev["steps"], prev["values"], prev["walls"])
                if seen is None:
                    seen = np.zeros(len(pts), bool)
                seen[a:b], same_walls = _stored_already(stored, new)
                if same_walls:  # a retry of stored points: nothing to write
                    continue
                merged, replaced = chunks.merge(stored, new)
                replaced_any = replaced_any or replaced > 0
                enc = chunks.encode(merged)
            (updates if prev is not None else inserts).append({"sid": row.id, "no": no, **enc.__dict__})
            d_count += enc.count - (prev["count"] if prev is not None else 0)
            d_nonfinite += enc.nonfinite - (prev["nonfinite"] if prev is not None else 0)
        accepted += len(pts)
        _update_summary(row, pts, d_count, d_nonfinite)
        if replaced_any:
            recompute.append(row)
        else:
            _extend_range(row, lo, hi)
        if fresh is not None and (seen is None or not seen.all()):
            fresh.append(sb if seen is None or not seen.any() else SeriesBatch(
                sb.key, sb.kind, sb.kind_given, Points(pts.steps[~seen], pts.values[~seen], pts.walls[~seen])))
    if held is not None and HOLD_WRITES and not recompute:
        held.inserts.extend(inserts)
        held.updates.extend(updates)
        return accepted
    write_chunks(session, inserts, updates, _INSERT_CHUNK, _UPDATE_CHUNK)
    for row in recompute:  # an overwrite may have removed the old min or max
        row.min_value, row.max_value = session.execute(
            select(func.min(_CHUNKS.c.min_value), func.max(_CHUNKS.c.max_value)).where(_CHUNKS.c.series_id == row.id)
        ).one()
    return accepted


def _stored_already(stored: Points, new: Points) -> tuple[np.ndarray, bool]:
    """Which of ``new``'s points ``stored`` holds already: same step, same value bits and same wall
    time (a retry carries the wall times of the first attempt; a job resumed from a checkpoint logs
    its steps again at a later time, which the detectors must see), and whether that is all of them
    (then the chunk needs no rewrite)."""
    pos = np.minimum(np.searchsorted(stored.steps, new.steps), len(stored) - 1)
    same = ((stored.steps[pos] == new.steps) & (stored.walls[pos] == new.walls)
            & (np.ascontiguousarray(stored.values[pos]).view(np.int64)
               == np.ascontiguousarray(new.values).view(np.int64)))
    return same, bool(same.all())


def _update_summary(s: SeriesRow, pts: Points, d_count: int, d_nonfinite: int) -> None:
    s.dirty = True
    s.count += d_count
    s.nonfinite += d_nonfinite
    first, last = int(pts.steps[0]), int(pts.steps[-1])
    s.first_step = first if s.first_step is None else min(s.first_step, first)
    if s.last_step is None or last >= s.last_step:
        value = float(pts.values[-1])
        s.last_step = last
        s.last_special = _special(value)
        s.last_value = value if s.last_special is None else None
        s.last_wall_us = int(pts.walls[-1])


def _extend_range(s: SeriesRow, lo: float, hi: float) -> None:
    """Widen the series' range by the finite range ``lo``..``hi`` of new points (NaN: none finite)."""
    if lo == lo:
        s.min_value = lo if s.min_value is None else min(s.min_value, lo)
        s.max_value = hi if s.max_value is None else max(s.max_value, hi)


# --- reading ---------------------------------------------------------------------------------


def get_series(session: Session, run_id: str, key: str) -> Series:
    s = session.scalar(select(Series).where(Series.run_id == run_id, Series.key == key))
    if s is None:
        get_run(session, run_id)  # 404 for the run first
        raise series_not_found(run_id, key)
    return s


def iter_chunks(session: Session, series_id: int, start: int, end: int, batch: int = 64) -> Iterator[Points]:
    """Decoded chunks of a series overlapping [start, end], in step order, clipped to the range."""
    lo, hi = start >> chunks.CHUNK_SHIFT, end >> chunks.CHUNK_SHIFT
    while lo <= hi:
        rows = session.execute(
            select(Chunk.chunk_no, Chunk.steps, Chunk.values, Chunk.walls)
            .where(Chunk.series_id == series_id, Chunk.chunk_no >= lo, Chunk.chunk_no <= hi)
            .order_by(Chunk.chunk_no)
            .limit(batch)
        ).all()
        if not rows:
            return
        for row in rows:
            p = chunks.decode(row.chunk_no, row.steps, row.values, row.walls)
            if p.steps[0] < start or p.steps[-1] > end:
                m = (p.steps >= start) & (p.steps <= end)
                p = Points(p.steps[m], p.values[m], p.walls[m])
            if len(p):
                yield p
        lo = rows[-1].chunk_no + 1


def encode_floats(arr: np.ndarray) -> list[float | str]:
    """A float array as wire values: numbers, non-finite ones spelled out."""
    out: list[float | str] = arr.tolist()
    bad = np.flatnonzero(~np.isfinite(arr))
    for i in bad.tolist():
        out[i] = wire.encode_value(out[i])  # type: ignore[arg-type]
    return out


def read_points(session: Session, run_id: str, key: str, start: int, end: int, limit: int) -> dict[str, object]:
    s = get_series(session, run_id, key)
    parts: list[Points] = []
    n = 0
    for p in iter_chunks(session, s.id, start, end, batch=max(1, min(64, limit // 512 + 1))):
        parts.append(p)
        n += len(p)
        if n > limit:
            break
    pts = chunks.concat(parts)
    next_start = int(pts.steps[limit]) if len(pts) > limit else None
    pts = Points(pts.steps[:limit], pts.values[:limit], pts.walls[:limit])
    return {
        "run": run_id, "key": key, "kind": s.kind, "steps": pts.steps.tolist(),
        "values": encode_floats(pts.values), "wall_times": (pts.walls / 1e6).tolist(),
        "next_start": next_start,
    }


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_field(text: str) -> str:
    """A text cell (a series key): quoted as RFC 4180 says, and neutralised against spreadsheet
    formulas as OWASP recommends (a cell that starts with = + - @ tab or CR gets a leading ``'``).
    Number cells (steps, values, wall times, ``-1.5``) are written as numbers, untouched."""
    if text.startswith(_FORMULA_START):
        text = "'" + text
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


_CSV_SPELL = {wire.NAN: wire.NAN.encode(), wire.POS_INF: wire.POS_INF.encode(), wire.NEG_INF: wire.NEG_INF.encode()}
_CSV_ROWS = 65_536


def _csv_rows(key: bytes, p: Points) -> bytes:
    """``key,step,value,wall_time`` lines. orjson writes the numbers (the shortest text that reads
    back to the same float, as repr does), about twice as fast as formatting them in Python."""
    steps = orjson.dumps(p.steps.tolist())[1:-1].split(b",")
    values = orjson.dumps(p.values.tolist())[1:-1].split(b",")  # NaN/±Inf come out as null
    for i in np.flatnonzero(~np.isfinite(p.values)).tolist():
        values[i] = _CSV_SPELL[wire.encode_value(float(p.values[i]))]  # type: ignore[index]
    walls = orjson.dumps((p.walls / 1e6).tolist())[1:-1].split(b",")
    return b"\n".join(map(b",".join, zip(itertools.repeat(key, len(steps)), steps, values, walls, strict=True))) + b"\n"


def iter_csv(session: Session, run_id: str, keys: list[str]) -> Iterator[bytes]:
    """``key,step,value,wall_time`` rows of the given series, about 64k rows at a time."""
    all_series = [get_series(session, run_id, k) for k in keys]
    yield b"key,step,value,wall_time\n"
    for s in all_series:
        key = _csv_field(s.key).encode()
        parts: list[Points] = []
        n = 0
        for p in iter_chunks(session, s.id, 0, wire.MAX_STEP):
            parts.append(p)
            n += len(p)
            if n >= _CSV_ROWS:
                yield _csv_rows(key, chunks.concat(parts))
                parts, n = [], 0
        if parts:
            yield _csv_rows(key, chunks.concat(parts))
