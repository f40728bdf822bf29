"""Packed point chunks: encode, decode, merge and roll up (numpy, no I/O).

A chunk holds the points of one series whose steps share ``step >> CHUNK_SHIFT``.

Layout of a chunk row (bytes per point for a dense series in brackets):

- ``values``: the float64 values, little-endian, bit for bit (NaN payloads and -0.0 survive) [8]
- ``walls``: wall times in integer microseconds: a format byte, then either an int64 base and
  int32 deltas [4] or, when a delta does not fit, plain int64s [8]
- ``steps``: the step offsets inside the chunk, either as a 128-byte bitmap of the 1024 slots
  (dense chunks) [0.125] or as uint16 offsets (sparse chunks)
- ``rollup``: one record per non-empty 64-step sub-bucket (:data:`ROLLUP_DTYPE`) [0.6]

Queries coarser than 64 steps per bucket read only roll-ups; finer ones decode the chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_SHIFT = 10
CHUNK_STEPS = 1 << CHUNK_SHIFT
ROLLUP_SHIFT = 6
ROLLUP_STEPS = 1 << ROLLUP_SHIFT
OFFSET_MASK = CHUNK_STEPS - 1
BITMAP_BYTES = CHUNK_STEPS // 8

ROLLUP_DTYPE = np.dtype(
    [
        ("first", "<u2"),  # first step offset in the chunk
        ("last", "<u2"),  # last step offset in the chunk
        ("count", "<u2"),
        ("nonfinite", "<u2"),
        ("min", "<f8"),  # of finite values; NaN when there is none
        ("max", "<f8"),
        ("lastv", "<f8"),  # value at the last step, exact
        ("lastwall", "<i8"),  # wall time (µs) of the last step
    ]
)

WALL_DELTA32 = 1
WALL_RAW64 = 2


@dataclass
class Points:
    """Points of one series, steps ascending and unique."""

    steps: np.ndarray  # int64
    values: np.ndarray  # float64
    walls: np.ndarray  # int64, microseconds

    def __len__(self) -> int:
        return int(self.steps.shape[0])


def empty() -> Points:
    return Points(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64))


def concat(parts: list[Points]) -> Points:
    if not parts:
        return empty()
    if len(parts) == 1:
        return parts[0]
    return Points(
        np.concatenate([p.steps for p in parts]),
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.walls for p in parts]),
    )


def normalise(steps: np.ndarray, values: np.ndarray, walls: np.ndarray) -> Points:
    """Sort by step; when a step occurs more than once, the last occurrence wins."""
    n = steps.shape[0]
    if n > 1 and not bool(np.all(steps[1:] > steps[:-1])):
        # Reverse, take the first of each step (= the last written), stable order by step.
        rev = steps[::-1]
        uniq, idx = np.unique(rev, return_index=True)
        idx = n - 1 - idx
        return Points(uniq, values[idx], walls[idx])
    return Points(steps, values, walls)


def merge(old: Points, new: Points) -> tuple[Points, int]:
    """New points overwrite old ones at the same step. Returns the merged points and how many
    old points were replaced."""
    if len(old) == 0:
        return new, 0
    if len(new) == 0:
        return old, 0
    if new.steps[0] > old.steps[-1]:
        return concat([old, new]), 0
    keep = ~np.isin(old.steps, new.steps, assume_unique=True)
    replaced = len(old) - int(keep.sum())
    steps = np.concatenate([old.steps[keep], new.steps])
    order = np.argsort(steps, kind="stable")
    return (
        Points(
            steps[order],
            np.concatenate([old.values[keep], new.values])[order],
            np.concatenate([old.walls[keep], new.walls])[order],
        ),
        replaced,
    )


def encode_steps(steps: np.ndarray) -> bytes:
    offsets = (steps & OFFSET_MASK).astype(np.uint16)
    if offsets.shape[0] * 2 >= BITMAP_BYTES:
        bits = np.zeros(CHUNK_STEPS, np.uint8)
        bits[offsets] = 1
        return np.packbits(bits).tobytes()
    return offsets.astype("<u2").tobytes()


def decode_steps(blob: bytes, chunk_no: int) -> np.ndarray:
    base = chunk_no << CHUNK_SHIFT
    raw = np.frombuffer(blob, np.uint8)
    if raw.shape[0] == BITMAP_BYTES:
        offsets = np.flatnonzero(np.unpackbits(raw))
    else:
        offsets = np.frombuffer(blob, "<u2")
    return offsets.astype(np.int64) + base


def encode_walls(walls: np.ndarray) -> bytes:
    if walls.shape[0] == 0:
        return bytes([WALL_RAW64])
    deltas = np.diff(walls)
    if deltas.shape[0] == 0 or (deltas.min() >= -(2**31) and deltas.max() < 2**31):
        return (
            bytes([WALL_DELTA32])
            + walls[:1].astype("<i8").tobytes()
            + deltas.astype("<i4").tobytes()
        )
    return bytes([WALL_RAW64]) + walls.astype("<i8").tobytes()


def decode_walls(blob: bytes) -> np.ndarray:
    fmt = blob[0]
    if fmt == WALL_DELTA32:
        base = np.frombuffer(blob, "<i8", count=1, offset=1)
        deltas = np.frombuffer(blob, "<i4", offset=9).astype(np.int64)
        out = np.empty(deltas.shape[0] + 1, np.int64)
        out[0] = base[0]
        np.cumsum(deltas, out=out[1:])
        out[1:] += base[0]
        return out
    return np.frombuffer(blob, "<i8", offset=1).astype(np.int64)


def rollup(points: Points) -> np.ndarray:
    """One :data:`ROLLUP_DTYPE` record per non-empty 64-step sub-bucket."""
    offsets = points.steps & OFFSET_MASK
    sub = offsets >> ROLLUP_SHIFT
    starts = np.concatenate(([0], np.flatnonzero(sub[1:] != sub[:-1]) + 1))
    ends = np.concatenate((starts[1:], [offsets.shape[0]])) - 1
    values = points.values
    finite = np.isfinite(values)
    out = np.empty(starts.shape[0], ROLLUP_DTYPE)
    out["first"] = offsets[starts]
    out["last"] = offsets[ends]
    out["count"] = ends - starts + 1
    out["nonfinite"] = np.add.reduceat(~finite, starts)
    out["min"] = np.fmin.reduceat(np.where(finite, values, np.nan), starts)
    out["max"] = np.fmax.reduceat(np.where(finite, values, np.nan), starts)
    out["lastv"] = values[ends]
    out["lastwall"] = points.walls[ends]
    return out


@dataclass
class EncodedChunk:
    count: int
    nonfinite: int
    min_value: float | None
    max_value: float | None
    rollup: bytes
    steps: bytes
    walls: bytes
    values: bytes


def encode(points: Points) -> EncodedChunk:
    roll = rollup(points)
    mins, maxs = roll["min"], roll["max"]
    lo = float(np.fmin.reduce(mins)) if mins.shape[0] else float("nan")
    hi = float(np.fmax.reduce(maxs)) if maxs.shape[0] else float("nan")
    return EncodedChunk(
        count=len(points),
        nonfinite=int(roll["nonfinite"].sum()),
        min_value=None if lo != lo else lo,
        max_value=None if hi != hi else hi,
        rollup=roll.tobytes(),
        steps=encode_steps(points.steps),
        walls=encode_walls(points.walls),
        values=points.values.astype("<f8").tobytes(),
    )


def decode(chunk_no: int, steps: bytes, values: bytes, walls: bytes) -> Points:
    return Points(
        decode_steps(steps, chunk_no),
        np.frombuffer(values, "<f8").astype(np.float64),
        decode_walls(walls),
    )


def chunk_numbers(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunk number of each group of sorted steps, and the index where each group starts."""
    nos = steps >> CHUNK_SHIFT
    starts = np.concatenate(([0], np.flatnonzero(nos[1:] != nos[:-1]) + 1)) if nos.shape[0] else np.empty(0, np.int64)
    return nos[starts], starts


def append(chunk_no: int, prev: dict[str, object], new: Points) -> EncodedChunk | None:
    """Encode ``prev`` (a stored chunk's columns) with ``new`` points after its last step, without
    decoding the stored arrays: the bytes are extended and only the last roll-up record is merged.
    Returns None when ``new`` is not a pure append (an overwrite) or the walls need re-encoding;
    the caller then merges the slow way."""
    roll_old = np.frombuffer(prev["rollup"], ROLLUP_DTYPE)  # type: ignore[call-overload]
    base = chunk_no << CHUNK_SHIFT
    offsets = (new.steps - base).astype(np.int64)
    if roll_old.shape[0] == 0 or offsets[0] <= int(roll_old[-1]["last"]):
        return None
    walls_blob: bytes = prev["walls"]  # type: ignore[assignment]
    if walls_blob[0] != WALL_DELTA32:
        return None
    deltas = np.diff(new.walls, prepend=np.int64(roll_old[-1]["lastwall"]))
    if deltas.min() < -(2**31) or deltas.max() >= 2**31:
        return None
    count = int(prev["count"]) + len(new)  # type: ignore[call-overload]
    steps_blob: bytes = prev["steps"]  # type: ignore[assignment]
    if len(steps_blob) == BITMAP_BYTES or count * 2 >= BITMAP_BYTES:
        bits = np.zeros(CHUNK_STEPS, np.uint8)
        if len(steps_blob) == BITMAP_BYTES:
            bits[:] = np.unpackbits(np.frombuffer(steps_blob, np.uint8))
        else:
            bits[np.frombuffer(steps_blob, "<u2")] = 1
        bits[offsets] = 1
        steps_blob = np.packbits(bits).tobytes()
    else:
        steps_blob = steps_blob + offsets.astype("<u2").tobytes()
    roll_new = rollup(new)
    old_last = roll_old[-1]
    if int(roll_new[0]["first"]) >> ROLLUP_SHIFT == int(old_last["first"]) >> ROLLUP_SHIFT:
        head = roll_new[:1].copy()
        head["first"] = old_last["first"]
        head["count"] = int(old_last["count"]) + int(head["count"][0])
        head["nonfinite"] = int(old_last["nonfinite"]) + int(head["nonfinite"][0])
        head["min"] = np.fmin(old_last["min"], head["min"])
        head["max"] = np.fmax(old_last["max"], head["max"])
        roll_blob = roll_old[:-1].tobytes() + head.tobytes() + roll_new[1:].tobytes()
    else:
        roll_blob = prev["rollup"] + roll_new.tobytes()  # type: ignore[operator]
    finite = new.values[np.isfinite(new.values)]
    lo, hi = prev["min_value"], prev["max_value"]
    if finite.shape[0]:
        lo = float(finite.min()) if lo is None else min(lo, float(finite.min()))  # type: ignore[call-overload]
        hi = float(finite.max()) if hi is None else max(hi, float(finite.max()))  # type: ignore[call-overload]
    return EncodedChunk(
        count=count,
        nonfinite=int(prev["nonfinite"]) + len(new) - int(finite.shape[0]),  # type: ignore[call-overload]
        min_value=lo,  # type: ignore[arg-type]
        max_value=hi,  # type: ignore[arg-type]
        rollup=roll_blob,
        steps=steps_blob,
        walls=walls_blob + deltas.astype("<i4").tobytes(),
        values=prev["values"] + new.values.astype("<f8").tobytes(),  # type: ignore[operator]
    )


def decode_many(chunk_nos: np.ndarray, steps: list[bytes], values: list[bytes], walls: list[bytes]) -> tuple[Points, np.ndarray]:
    """The points of many chunks, one after the other, decoded with a few numpy calls for all of them
    (not a dozen per chunk), and each chunk's point count. Bitmap steps and 32-bit wall deltas, the
    dense case, are decoded together; other chunks one by one."""
    k = len(values)
    vals = np.frombuffer(b"".join(values), "<f8").astype(np.float64)
    counts = np.fromiter((len(v) >> 3 for v in values), np.int64, k)
    n = int(counts.sum())
    firsts = np.cumsum(counts) - counts
    nos = np.asarray(chunk_nos, np.int64)
    dense = np.flatnonzero(np.fromiter((len(s) == BITMAP_BYTES for s in steps), bool, k))
    st = np.empty(n, np.int64)
    if dense.shape[0]:
        bits = np.unpackbits(np.frombuffer(b"".join([steps[i] for i in dense.tolist()]), np.uint8)
                             .reshape(dense.shape[0], BITMAP_BYTES), axis=1)
        row, col = np.nonzero(bits)  # row-major: chunk by chunk, offsets ascending
        if dense.shape[0] == k:
            st[:] = (nos[row] << CHUNK_SHIFT) + col
        else:
            at = np.cumsum(counts[dense]) - counts[dense]  # where each dense chunk starts among row/col
            st[firsts[dense][row] + np.arange(row.shape[0]) - at[row]] = (nos[dense][row] << CHUNK_SHIFT) + col
    for i in np.flatnonzero(np.fromiter((len(s) != BITMAP_BYTES for s in steps), bool, k)).tolist():
        st[firsts[i]:firsts[i] + counts[i]] = decode_steps(steps[i], int(nos[i]))
    fmt = np.fromiter((w[0] for w in walls), np.uint8, k)
    if k and (fmt == WALL_DELTA32).all():
        bases = np.frombuffer(b"".join([w[1:9] for w in walls]), "<i8")
        step_up = np.empty(n, np.int64)
        inner = np.ones(n, bool)
        inner[firsts] = False
        step_up[inner] = np.frombuffer(b"".join([w[9:] for w in walls]), "<i4")
        step_up[firsts] = 0
        run = np.cumsum(step_up)
        wl = run - np.repeat(run[firsts] - bases, counts)
    else:
        wl = np.empty(n, np.int64)
        for i in range(k):
            wl[firsts[i]:firsts[i] + counts[i]] = decode_walls(walls[i])
    return Points(st, vals, wl), counts
