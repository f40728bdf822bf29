"""``chunk_batches.encode_many``: the chunks of a whole batch encoded together must be, byte for byte,
what ``chunks.encode`` (a new chunk) and ``chunks.append`` (points after a stored chunk's last step)
give one chunk at a time, and refuse exactly what ``append`` refuses."""

from __future__ import annotations

import numpy as np
import pytest

from losswatch.server.storage import chunks
from losswatch.server.storage.chunk_batches import encode_many
from losswatch.server.storage.chunks import CHUNK_STEPS, Points


def pts(steps: np.ndarray, rng: np.random.Generator, nan_every: int = 0) -> Points:
    s = np.asarray(steps, dtype=np.int64)
    v = rng.standard_normal(s.shape[0])
    if nan_every:
        v[::nan_every] = np.nan
        v[1::nan_every * 2] = np.inf
    if s.shape[0] > 3 and rng.random() < 0.3:
        v[:] = np.nan  # a chunk with no finite value: min and max are None
    w = (1_700_000_000_000_000 + s * 1000 + rng.integers(0, 999, s.shape[0])).astype(np.int64)
    return Points(s, v, w)


def cut(p: Points, a: int, b: int) -> Points:
    return Points(p.steps[a:b], p.values[a:b], p.walls[a:b])


def one_case(rng: np.random.Generator, no: int) -> tuple[int, dict[str, object] | None, Points]:
    """A stored chunk (or none) and the new points of chunk ``no``: an append, an overwrite, a
    wall gap too wide for int32 deltas, dense and sparse both."""
    size = int(rng.choice([1, 5, 100, 255, 256, 300, CHUNK_STEPS]))
    steps = np.unique(rng.integers(0, CHUNK_STEPS, size)) + no * CHUNK_STEPS
    whole = pts(steps, rng, nan_every=int(rng.integers(0, 6)))
    if len(whole) < 2 or rng.random() < 0.25:
        return no, None, whole
    at = int(rng.integers(1, len(whole)))
    prev = dict(chunks.encode(cut(whole, 0, at)).__dict__)
    new = cut(whole, at, len(whole))
    shape = rng.random()
    if shape < 0.15:  # goes back: an overwrite
        new = cut(whole, at - 1, len(whole))
    elif shape < 0.25:  # hours later: the wall deltas no longer fit in int32
        new = Points(new.steps, new.values, new.walls + 2**33)
    elif shape < 0.3:  # walls stored as plain int64s
        prev["walls"] = chunks.encode_walls(np.array([0, 2**40], np.int64))[:1] + cut(whole, 0, at).walls.astype("<i8").tobytes()
    return no, prev, new


@pytest.mark.parametrize("seed", range(40))
def test_encode_many_equals_one_chunk_at_a_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [one_case(rng, no) for no in rng.integers(0, 50, int(rng.integers(1, 12))).tolist()]
    got = encode_many(parts)
    assert len(got) == len(parts)
    for (no, prev, new), enc in zip(parts, got, strict=True):
        want = chunks.encode(new) if prev is None else chunks.append(no, prev, new)
        if want is None:
            assert enc is None
            continue
        assert enc is not None
        assert enc.__dict__ == want.__dict__


def test_a_wide_wall_gap_in_a_new_chunk_stores_plain_int64s() -> None:
    rng = np.random.default_rng(1)
    p = pts(np.arange(10, dtype=np.int64), rng)
    p.walls[5:] += 2**33
    (enc,) = encode_many([(0, None, p)])
    assert enc is not None and enc.__dict__ == chunks.encode(p).__dict__
    assert np.array_equal(chunks.decode_walls(enc.walls), p.walls)
