"""Packed chunks: encode/decode round trips, merges, and the append fast path, which must give
byte-for-byte the columns a full re-encode gives."""

from __future__ import annotations

import numpy as np
import pytest

from losswatch.server.storage import chunks
from losswatch.server.storage.chunks import CHUNK_STEPS, Points


def pts(steps: list[int] | np.ndarray, seed: int = 0, nan_every: int = 0) -> Points:
    s = np.asarray(steps, dtype=np.int64)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(s.shape[0])
    if nan_every:
        v[::nan_every] = np.nan
        v[1::nan_every * 2] = np.inf
    w = (1_700_000_000_000_000 + s * 1000 + rng.integers(0, 999, s.shape[0])).astype(np.int64)
    return Points(s, v, w)


def columns(enc: chunks.EncodedChunk) -> dict[str, object]:
    return dict(enc.__dict__)


@pytest.mark.parametrize("steps", [list(range(10)), list(range(0, CHUNK_STEPS, 3)), list(range(CHUNK_STEPS)),
                                   [5], [CHUNK_STEPS - 1], list(range(0, CHUNK_STEPS, 9))])
def test_encode_decode_round_trip_is_exact(steps: list[int]) -> None:
    p = pts(np.array(steps) + 7 * CHUNK_STEPS, nan_every=4)
    enc = chunks.encode(p)
    back = chunks.decode(7, enc.steps, enc.values, enc.walls)
    assert np.array_equal(back.steps, p.steps)
    assert back.values.tobytes() == p.values.tobytes()  # NaN payloads and -0.0 too
    assert np.array_equal(back.walls, p.walls)
    assert enc.count == len(p) and enc.nonfinite == int((~np.isfinite(p.values)).sum())


@pytest.mark.parametrize("seed", range(25))
def test_append_equals_full_reencode(seed: int) -> None:
    rng = np.random.default_rng(seed)
    all_steps = np.unique(rng.integers(0, CHUNK_STEPS, rng.integers(2, CHUNK_STEPS)))
    cut = int(rng.integers(1, all_steps.shape[0])) if all_steps.shape[0] > 1 else 1
    whole = pts(all_steps + 3 * CHUNK_STEPS, seed=seed, nan_every=int(rng.integers(0, 6)))
    first = Points(whole.steps[:cut], whole.values[:cut], whole.walls[:cut])
    rest = Points(whole.steps[cut:], whole.values[cut:], whole.walls[cut:])
    if len(rest) == 0:
        return
    prev = columns(chunks.encode(first))
    appended = chunks.append(3, prev, rest)
    assert appended is not None
    assert columns(appended) == columns(chunks.encode(whole))


def test_append_refuses_overwrites_and_wide_wall_gaps() -> None:
    first = pts(range(100, 200))
    prev = columns(chunks.encode(first))
    assert chunks.append(0, prev, pts(range(150, 160))) is None  # goes back: an overwrite
    late = pts(range(300, 310))
    late.walls[:] = first.walls[-1] + 2**33  # hours later: deltas no longer fit in int32
    assert chunks.append(0, prev, late) is None


def test_merge_overwrites_and_counts_replacements() -> None:
    old = pts(range(0, 10))
    new = Points(np.array([3, 12], np.int64), np.array([9.0, 8.0]), np.array([1, 2], np.int64))
    merged, replaced = chunks.merge(old, new)
    assert replaced == 1
    assert merged.steps.tolist() == [*range(10), 12]
    assert merged.values[3] == 9.0 and merged.values[-1] == 8.0


def test_normalise_keeps_the_last_write_of_a_step() -> None:
    p = chunks.normalise(np.array([5, 1, 5, 2], np.int64), np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4, np.int64))
    assert p.steps.tolist() == [1, 2, 5] and p.values.tolist() == [2.0, 4.0, 3.0]
