"""Points: parse a columnar batch, record it (overwriting re-sent steps), read raw pages, export CSV.

Ingest is one transaction per batch: the run row is touched first (that takes its lock), then the
series rows, then every touched chunk is read, merged with the new points and written back whole.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from sqlalchemy import bindparam, func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server import chunks
from losswatch.server.chunks import Points
from losswatch.server.errors import InvalidRequest, series_not_found
from losswatch.server.models import Chunk, Series
from losswatch.server.services.runs import get_run, touch_run

_KINDS = frozenset(wire.SERIES_KINDS)
_MAX_WALL_S = 1e11  # year 5138; anything above is a unit mistake (ms or ns sent as seconds)


@dataclass
class SeriesBatch:
    key: str
    kind: str
    kind_given: bool
    points: Points


# --- parsing ---------------------------------------------------------------------------------


def _bad(loc: list[object], msg: str) -> InvalidRequest:
    where = ".".join(str(p) for p in loc[1:])
    return InvalidRequest(f"invalid batch at {where}: {msg}", code="invalid_points",
                          details=[{"loc": loc, "msg": msg}])


def _first_bad(items: list[object], ok: type | tuple[type, ...], loc: list[object], msg: str) -> InvalidRequest:
    for i, item in enumerate(items):
        if type(item) is bool or not isinstance(item, ok):
            return _bad([*loc, i], f"{msg}, got {json.dumps(item)[:40] if _jsonable(item) else repr(item)[:40]}")
    return _bad(loc, msg)


def _jsonable(item: object) -> bool:
    try:
        json.dumps(item)
        return True
    except (TypeError, ValueError):
        return False


def _steps(raw: object, loc: list[object]) -> np.ndarray:
    if not isinstance(raw, list):
        raise _bad(loc, "steps must be a list of integers")
    types = set(map(type, raw))
    if not types <= {int}:
        raise _first_bad(raw, int, loc, "a step must be an integer")
    try:
        arr = np.array(raw, dtype=np.int64)
    except OverflowError:
        big = next(i for i, s in enumerate(raw) if not (-(2**63) <= s < 2**63))
        raise _bad([*loc, big], f"a step must be at most 2^63-1, got {raw[big]}") from None
    if arr.shape[0] and int(arr.min()) < 0:
        neg = int(np.argmax(arr < 0))
        raise _bad([*loc, neg], f"a step must be >= 0, got {raw[neg]}")
    return arr


def _values(raw: object, loc: list[object]) -> np.ndarray:
    if not isinstance(raw, list):
        raise _bad(loc, "values must be a list of numbers")
    types = set(map(type, raw))
    if not types <= {float, int}:
        if not types <= {float, int, str}:
            raise _first_bad(raw, (int, float, str), loc, "a value must be a number or 'NaN', 'Infinity', '-Infinity'")
        for i, v in enumerate(raw):
            if isinstance(v, str) and v not in wire.NONFINITE_SPELLINGS:
                raise _bad([*loc, i], f"a value must be a number or 'NaN', 'Infinity', '-Infinity', got {v[:40]!r}")
        raw = [wire.NONFINITE_SPELLINGS[v] if isinstance(v, str) else v for v in raw]
    try:
        return np.array(raw, dtype=np.float64)
    except OverflowError:
        raise _bad([*loc, _first_overflow(raw)], "a value must fit in a float64") from None


def _first_overflow(items: list[object]) -> int:
    for i, v in enumerate(items):
        try:
            float(v)  # type: ignore[arg-type]
        except OverflowError:
            return i
    return 0


def _walls(raw: object, n: int, now_us: int, loc: list[object]) -> np.ndarray:
    if raw is None:
        return np.full(n, now_us, np.int64)
    if not isinstance(raw, list):
        raise _bad(loc, "wall_times must be a list of numbers (seconds since the epoch)")
    if not set(map(type, raw)) <= {float, int}:
        raise _first_bad(raw, (int, float), loc, "a wall time must be a number of seconds")
    try:
        arr = np.array(raw, dtype=np.float64)
    except OverflowError:
        raise _bad(loc, "a wall time must be a number of seconds since the epoch") from None
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > _MAX_WALL_S)
    if bad.any():
        i = int(np.argmax(bad))
        raise _bad([*loc, i], f"a wall time must be seconds since the epoch in [0, 1e11], got {raw[i]}")
    return np.round(arr * 1e6).astype(np.int64)


def _check_key(key: object, loc: list[object]) -> str:
    if not isinstance(key, str) or not key:
        raise _bad(loc, "key must be a non-empty string")
    if len(key) > wire.MAX_KEY_LENGTH:
        raise _bad(loc, f"key must be at most {wire.MAX_KEY_LENGTH} characters, got {len(key)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise _bad(loc, "key must not contain control characters")
    return key


def parse_batch(body: bytes, now_us: int | None = None) -> list[SeriesBatch]:
    """Parse and validate an ingest body. Bare NaN/Infinity tokens (as Python's json module
    writes them) are accepted as well as the wire spellings."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("series"), list):
        raise _bad(["body", "series"], 'the body must be an object {"series": [...]}')
    extra = set(doc) - {"series"}
    if extra:
        raise _bad(["body", sorted(extra)[0]], "unknown field")
    now_us = now_us if now_us is not None else int(time.time() * 1e6)
    merged: dict[str, SeriesBatch] = {}
    for i, entry in enumerate(doc["series"]):
        loc: list[object] = ["body", "series", i]
        if not isinstance(entry, dict):
            raise _bad(loc, "each series must be an object with key, steps and values")
        extra = set(entry) - {"key", "kind", "steps", "values", "wall_times"}
        if extra:
            raise _bad([*loc, sorted(extra)[0]], "unknown field")
        key = _check_key(entry.get("key"), [*loc, "key"])
        kind = entry.get("kind")
        if kind is not None and kind not in _KINDS:
            raise _bad([*loc, "kind"], f"kind must be one of {', '.join(wire.SERIES_KINDS)}, got {str(kind)[:40]!r}")
        if "steps" not in entry or "values" not in entry:
            raise _bad([*loc, "steps" if "steps" not in entry else "values"], "field required")
        steps = _steps(entry["steps"], [*loc, "steps"])
        values = _values(entry["values"], [*loc, "values"])
        if values.shape[0] != steps.shape[0]:
            raise _bad([*loc, "values"], f"values has {values.shape[0]} items but steps has {steps.shape[0]}")
        walls = _walls(entry.get("wall_times"), steps.shape[0], now_us, [*loc, "wall_times"])
        if walls.shape[0] != steps.shape[0]:
            raise _bad([*loc, "wall_times"], f"wall_times has {walls.shape[0]} items but steps has {steps.shape[0]}")
        pts = Points(steps, values, walls)
        prev = merged.get(key)
        if prev is not None:  # the same key twice in one batch: later points win
            pts = chunks.concat([prev.points, pts])
            kind = kind or (prev.kind if prev.kind_given else None)
        merged[key] = SeriesBatch(key, kind or wire.guess_kind(key), kind is not None, pts)
    for sb in merged.values():
        sb.points = chunks.normalise(sb.points.steps, sb.points.values, sb.points.walls)
    return list(merged.values())


# --- recording -------------------------------------------------------------------------------


def _special(value: float) -> str | None:
    return None if math.isfinite(value) else wire.encode_value(value)  # type: ignore[return-value]


def get_or_create_series(session: Session, run_id: str, batch: list[SeriesBatch]) -> dict[str, Series]:
    keys = [sb.key for sb in batch]
    found = {s.key: s for s in session.scalars(select(Series).where(Series.run_id == run_id, Series.key.in_(keys)))}
    for sb in batch:
        s = found.get(sb.key)
        if s is None:
            s = Series(run_id=run_id, key=sb.key, kind=sb.kind, count=0, nonfinite=0)
            session.add(s)
            found[sb.key] = s
        elif sb.kind_given and s.kind != sb.kind:
            s.kind = sb.kind
    session.flush()
    return found


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


def record_points(session: Session, run_id: str, batch: list[SeriesBatch]) -> tuple[int, dict[str, Series]]:
    """Write a parsed batch in the caller's transaction. Returns the number of points accepted and
    the series rows touched (their summaries updated)."""
    touch_run(session, run_id)
    series = get_or_create_series(session, run_id, batch)
    work: list[tuple[Series, SeriesBatch, np.ndarray, np.ndarray]] = []
    wanted: list[tuple[int, int]] = []
    for sb in batch:
        if len(sb.points) == 0:
            continue
        s = series[sb.key]
        nos, starts = chunks.chunk_numbers(sb.points.steps)
        work.append((s, sb, nos, starts))
        wanted.extend((s.id, int(no)) for no in nos)
    if not work:
        return 0, series
    old: dict[tuple[int, int], Any] = {}
    for i in range(0, len(wanted), 400):
        part = wanted[i : i + 400]
        for row in session.execute(
            select(Chunk.series_id, Chunk.chunk_no, Chunk.count.label("n"), Chunk.nonfinite.label("nf"),
                   Chunk.steps, Chunk.values, Chunk.walls)
            .where(tuple_(Chunk.series_id, Chunk.chunk_no).in_(part))
        ):
            old[(row.series_id, row.chunk_no)] = row
    inserts: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    accepted = 0
    recompute: list[Series] = []
    for s, sb, nos, starts in work:
        pts = sb.points
        ends = np.append(starts[1:], len(pts))
        d_count = d_nonfinite = 0
        replaced_any = False
        for no, a, b in zip(nos.tolist(), starts.tolist(), ends.tolist(), strict=True):
            new = Points(pts.steps[a:b], pts.values[a:b], pts.walls[a:b])
            prev = old.get((s.id, no))
            if prev is not None:
                merged, replaced = chunks.merge(chunks.decode(no, prev.steps, prev.values, prev.walls), new)
                replaced_any = replaced_any or replaced > 0
            else:
                merged = new
            enc = chunks.encode(merged)
            row = {"sid": s.id, "no": no, **enc.__dict__}
            (updates if prev is not None else inserts).append(row)
            d_count += enc.count - (prev.n if prev is not None else 0)
            d_nonfinite += enc.nonfinite - (prev.nf if prev is not None else 0)
        accepted += len(pts)
        _update_summary(s, pts, d_count, d_nonfinite)
        if replaced_any:
            recompute.append(s)
        else:
            _extend_range(s, pts)
    if inserts:
        session.execute(_INSERT_CHUNK, inserts)
    if updates:
        session.execute(_UPDATE_CHUNK, updates)
    for s in recompute:  # an overwrite may have removed the old min or max
        lo, hi = session.execute(
                select(func.min(Chunk.min_value), func.max(Chunk.max_value)).where(Chunk.series_id == s.id)
        ).one()
        s.min_value, s.max_value = lo, hi
    session.flush()
    return accepted, series


def _update_summary(s: Series, pts: Points, d_count: int, d_nonfinite: int) -> None:
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


def _extend_range(s: Series, pts: Points) -> None:
    finite = pts.values[np.isfinite(pts.values)]
    if finite.shape[0]:
        lo, hi = float(finite.min()), float(finite.max())
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


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


_CSV_SPELL = {"nan": wire.NAN, "inf": wire.POS_INF, "-inf": wire.NEG_INF}


def iter_csv(session: Session, run_id: str, keys: list[str]) -> Iterator[bytes]:
    """``key,step,value,wall_time`` rows of the given series, one chunk at a time."""
    all_series = [get_series(session, run_id, k) for k in keys]
    yield b"key,step,value,wall_time\n"
    for s in all_series:
        prefix = _csv_field(s.key) + ","
        for p in iter_chunks(session, s.id, 0, wire.MAX_STEP):
            vals = list(map(repr, p.values.tolist()))
            if s.nonfinite:
                vals = [_CSV_SPELL.get(v, v) for v in vals]
            walls = (p.walls / 1e6).tolist()
            yield "".join(
                [f"{prefix}{st},{v},{w!r}\n" for st, v, w in zip(p.steps.tolist(), vals, walls, strict=True)]
            ).encode()
