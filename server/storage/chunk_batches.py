"""Encode the chunks one ingest batch touches, all at once (numpy, no I/O).

:func:`losswatch.server.storage.chunks.encode` and :func:`~losswatch.server.storage.chunks.append`
make one chunk each with about twenty numpy calls; a batch of 10 series x 1,000 steps touches about
20 chunks, so at that size the calls, not the data, were the cost of storing (about 150 µs a chunk).
:func:`encode_many` gives the same bytes for all of a batch's chunks with about as many numpy calls
in all, over the batch's points concatenated: the roll-ups, the wall deltas, the step bitmaps and
the value bytes are computed once and sliced per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from losswatch.server.storage.chunks import (
    BITMAP_BYTES,
    CHUNK_STEPS,
    OFFSET_MASK,
    ROLLUP_DTYPE,
    ROLLUP_SHIFT,
    WALL_DELTA32,
    WALL_RAW64,
    EncodedChunk,
    Points,
)

_RECORD = ROLLUP_DTYPE.itemsize
_I32 = 2**31
_DELTA32 = bytes([WALL_DELTA32])
_RAW64 = bytes([WALL_RAW64])


def encode_many(parts: Sequence[tuple[int, Mapping[str, object] | None, Points]]) -> list[EncodedChunk | None]:
    """For each ``(chunk_no, prev, new)``: ``chunks.encode(new)`` when ``prev`` is None, else
    ``chunks.append(chunk_no, prev, new)`` (``prev`` a stored chunk's columns), byte for byte; None
    where ``append`` would give None (an overwrite, or walls that need re-encoding: the caller
    merges those the slow way). Every ``new`` holds at least one point, all in chunk ``chunk_no``."""
    k = len(parts)
    if k == 0:
        return []
    lens = np.fromiter((len(p[2]) for p in parts), np.int64, k)
    starts = np.cumsum(lens) - lens
    n = int(lens.sum())
    steps = np.concatenate([p[2].steps for p in parts])
    values = np.concatenate([p[2].values for p in parts]).astype("<f8", copy=False)
    walls = np.concatenate([p[2].walls for p in parts]).astype(np.int64, copy=False)
    offsets = steps & OFFSET_MASK
    pid = np.repeat(np.arange(k), lens)

    # Which appends can be made without decoding (chunks.append's own checks), and their stored tails.
    ok = [True] * k
    appends: list[int] = []
    tails: list[bytes] = []
    for i, (_no, prev, _new) in enumerate(parts):
        if prev is None:
            continue
        roll_blob: bytes = prev["rollup"]  # type: ignore[assignment]
        walls_blob: bytes = prev["walls"]  # type: ignore[assignment]
        if not roll_blob or walls_blob[0] != WALL_DELTA32:
            ok[i] = False
            continue
        appends.append(i)
        tails.append(roll_blob[-_RECORD:])
    old_last = np.frombuffer(b"".join(tails), ROLLUP_DTYPE)
    app = np.array(appends, np.int64)
    if app.shape[0]:
        after = offsets[starts[app]] > old_last["last"]
        for j in np.flatnonzero(~after).tolist():
            ok[appends[j]] = False

    # Wall times: int32 deltas from the previous point of the chunk (stored or new).
    deltas = np.empty(n, np.int64)
    deltas[1:] = np.diff(walls)
    deltas[starts] = 0
    if app.shape[0]:
        deltas[starts[app]] = walls[starts[app]] - old_last["lastwall"]
    fits = np.logical_and.reduceat((deltas >= -_I32) & (deltas < _I32), starts)
    d32 = deltas.astype("<i4").tobytes()
    w64 = walls.astype("<i8").tobytes()
    vb = values.tobytes()
    o16 = offsets.astype("<u2").tobytes()

    # Roll-up records of every chunk's new points, then the first one merged into the stored last one
    # where both fall in the same 64-step sub-bucket.
    sub = offsets >> ROLLUP_SHIFT
    rstarts = np.concatenate(([0], np.flatnonzero((sub[1:] != sub[:-1]) | (pid[1:] != pid[:-1])) + 1))
    rends = np.concatenate((rstarts[1:], [n])) - 1
    finite = np.isfinite(values)
    masked = np.where(finite, values, np.nan)
    roll = np.empty(rstarts.shape[0], ROLLUP_DTYPE)
    roll["first"] = offsets[rstarts]
    roll["last"] = offsets[rends]
    roll["count"] = rends - rstarts + 1
    roll["nonfinite"] = np.add.reduceat(~finite, rstarts)
    roll["min"] = np.fmin.reduceat(masked, rstarts)
    roll["max"] = np.fmax.reduceat(masked, rstarts)
    roll["lastv"] = values[rends]
    roll["lastwall"] = walls[rends]
    rpid = pid[rstarts]
    rec_lo = np.searchsorted(rpid, np.arange(k))
    rec_hi = np.append(rec_lo[1:], rstarts.shape[0])
    same = np.zeros(k, bool)
    if app.shape[0]:
        heads = rec_lo[app]
        joined = (roll["first"][heads] >> ROLLUP_SHIFT) == (old_last["first"] >> ROLLUP_SHIFT)
        h, o = heads[joined], old_last[joined]
        roll["first"][h] = o["first"]
        roll["count"][h] += o["count"]
        roll["nonfinite"][h] += o["nonfinite"]
        roll["min"][h] = np.fmin(o["min"], roll["min"][h])
        roll["max"][h] = np.fmax(o["max"], roll["max"][h])
        same[app[joined]] = True
    rb = roll.tobytes()

    # Per chunk: counts, non-finite counts and the finite range of its new points.
    nonfinite = np.add.reduceat(~finite, starts).tolist()
    lows = np.fmin.reduceat(masked, starts).tolist()
    highs = np.fmax.reduceat(masked, starts).tolist()

    # Steps: a bitmap of the chunk's CHUNK_STEPS slots once it holds CHUNK_STEPS / 16 points or more
    # (or did already), else uint16 offsets (chunks.encode_steps); all bitmaps set and packed together.
    counts: list[int] = []
    bitmap: list[bool] = []
    for i, (c, (_no, prev, _new)) in enumerate(zip(lens.tolist(), parts, strict=True)):
        stored = 0 if prev is None else int(prev["count"])  # type: ignore[call-overload]
        was_bitmap = prev is not None and len(prev["steps"]) == BITMAP_BYTES  # type: ignore[arg-type]
        counts.append(c + stored)
        bitmap.append(ok[i] and (was_bitmap or counts[i] * 2 >= BITMAP_BYTES))
    rows = np.flatnonzero(np.array(bitmap, bool))
    packed = b""
    if rows.shape[0]:
        row_of = np.full(k, -1, np.int64)
        row_of[rows] = np.arange(rows.shape[0])
        bits = np.zeros((rows.shape[0], CHUNK_STEPS), np.uint8)
        for r, i in enumerate(rows.tolist()):
            prev = parts[i][1]
            if prev is None:
                continue
            blob: bytes = prev["steps"]  # type: ignore[assignment]
            if len(blob) == BITMAP_BYTES:
                bits[r] = np.unpackbits(np.frombuffer(blob, np.uint8))
            else:
                bits[r, np.frombuffer(blob, "<u2")] = 1
        mine = row_of[pid] >= 0
        bits[row_of[pid[mine]], offsets[mine]] = 1
        packed = np.packbits(bits, axis=1).tobytes()

    out: list[EncodedChunk | None] = []
    for i, (_no, prev, _new) in enumerate(parts):
        if not ok[i] or (prev is not None and not fits[i]):
            out.append(None)
            continue
        a, b = int(starts[i]), int(starts[i] + lens[i])
        lo_r, hi_r = int(rec_lo[i]), int(rec_hi[i])
        steps_blob: bytes
        if bitmap[i]:
            r = int(np.searchsorted(rows, i))
            steps_blob = packed[r * BITMAP_BYTES:(r + 1) * BITMAP_BYTES]
        elif prev is None:
            steps_blob = o16[2 * a:2 * b]
        else:
            steps_blob = prev["steps"] + o16[2 * a:2 * b]  # type: ignore[operator]
        lo, hi = lows[i], highs[i]
        if prev is None:
            walls_blob = (_DELTA32 + w64[8 * a:8 * a + 8] + d32[4 * (a + 1):4 * b] if fits[i]
                          else _RAW64 + w64[8 * a:8 * b])
            out.append(EncodedChunk(
                count=b - a, nonfinite=nonfinite[i], min_value=None if lo != lo else lo,
                max_value=None if hi != hi else hi, rollup=rb[_RECORD * lo_r:_RECORD * hi_r],
                steps=steps_blob, walls=walls_blob, values=vb[8 * a:8 * b]))
            continue
        old_lo, old_hi = prev["min_value"], prev["max_value"]
        if lo == lo:  # some new value is finite
            lo = lo if old_lo is None else min(old_lo, lo)  # type: ignore[call-overload]
            hi = hi if old_hi is None else max(old_hi, hi)  # type: ignore[call-overload]
        else:
            lo, hi = old_lo, old_hi
        old_roll: bytes = prev["rollup"]  # type: ignore[assignment]
        out.append(EncodedChunk(
            count=counts[i], nonfinite=int(prev["nonfinite"]) + nonfinite[i],  # type: ignore[call-overload]
            min_value=lo, max_value=hi,  # type: ignore[arg-type]
            rollup=(old_roll[:-_RECORD] if same[i] else old_roll) + rb[_RECORD * lo_r:_RECORD * hi_r],
            steps=steps_blob, walls=prev["walls"] + d32[4 * a:4 * b],  # type: ignore[operator]
            values=prev["values"] + vb[8 * a:8 * b]))  # type: ignore[operator]
    return out
