"""The collector thread: from the run's queue to encoded columnar batches.

``Run.log()`` appends ``(step, {key: value}, wall_time, is_eval)`` to a deque and nothing more. This
thread moves whole ``log()`` calls off the deque, and cuts a batch when ``flush_every`` points are
pending or ``flush_interval`` seconds have passed (or on ``flush()``/``finish()``). Cutting works in
bulk, not point by point: runs of calls with the same keys are transposed into one column per key
by ``zip``, columns of plain numbers become ``array`` objects at once, and the batch is encoded once
by :mod:`losswatch.client.wire` (binary columnar, or JSON for a transport that takes only JSON).
Columns holding anything else (tensors, fetched in bulk by :mod:`losswatch.client.values`; numpy
scalars; bad steps or values, dropped with a warning) take the slow way.
"""

from __future__ import annotations

import logging
import operator
import random
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Sequence
from itertools import chain, groupby
from typing import Any

from losswatch.client import wire
from losswatch.client.errors import LosswatchError
from losswatch.client.sender import Notices, Sender
from losswatch.client.values import materialize

# Jitter from a generator of our own: the module-level one belongs to the training script, which may
# seed it for reproducibility; drawing from it would change the script's random numbers.
_JITTER = random.Random()

log = logging.getLogger("losswatch")



MAX_HELD_BATCH = 50_000  # points: the largest batch the collector grows while the sender is behind


class Cut(threading.Event):
    """A flush request: set once everything logged before it has been cut; ``seq`` is the last batch."""

    seq = 0


class Collector(threading.Thread):
    def __init__(
        self,
        run: Any,
        sender: Sender,
        notices: Notices,
        *,
        flush_every: int,
        flush_interval: float,
        kinds: dict[str, str],
        key_suffix: str = "",
    ) -> None:
        super().__init__(name=f"losswatch-collector-{sender.run_id[:8]}", daemon=True)
        self._owner = run
        self._sender = sender
        self._notices = notices
        sender.on_drained = run._wake.set
        self.flush_every = flush_every
        # While the sender is behind (a batch in flight and another waiting), pending points are held
        # and cut as one larger batch when it catches up, up to this many: a fast loop's batches grow
        # to what the server takes per request instead of queueing many small ones (fewer requests,
        # less work per point on both sides); a loop the sender keeps up with gets flush_every batches.
        self.max_batch = max(flush_every, min(10 * flush_every, MAX_HELD_BATCH))
        self.flush_interval = flush_interval
        self.wake_points = max(64, flush_every // 4)
        self._kinds = kinds  # the run's explicit kinds (the run may add to it)
        self._guessed: dict[str, str] = {}
        self._suffix = key_suffix
        self._pending: list[tuple[Any, dict[Any, Any], float, bool]] = []  # drained log() calls
        self._npending = 0
        self._requests: deque[Cut] = deque()
        self._updates: deque[bytes] = deque()  # run.update() bodies, sent after the points logged before them
        self._finish_status: str | None = None
        self.finish_seq = 0

    # ---- called from the training thread ------------------------------------------------------

    def request_cut(self) -> Cut:
        cut = Cut()
        self._requests.append(cut)
        self._owner._wake.set()
        return cut

    def put_update(self, body: bytes) -> None:
        self._updates.append(body)
        self._owner._wake.set()

    def finish(self, status: str) -> None:
        self._finish_status = status
        self._owner._wake.set()

    # ---- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - the boundary of the thread
            log.exception("losswatch: the collector thread failed")
            self._notices.report(
                "internal",
                "losswatch: the collector thread failed (see the 'losswatch' log); later points are not sent.",
                LosswatchError("collector thread failed"),
            )
        finally:
            while self._requests:
                self._requests.popleft().set()

    def _loop(self) -> None:
        run = self._owner
        # Each interval is jittered by ±20 %: jobs started together (a sweep, a load test) would
        # otherwise all send at the same instant, forever, and queue behind each other on the server.
        deadline = time.monotonic() + self.flush_interval * _JITTER.uniform(0.5, 1.0)
        while True:
            # read in this order: whatever the training thread queued before finish() or flush() is seen
            status = self._finish_status
            requests = []
            while self._requests:
                requests.append(self._requests.popleft())
            updates = []
            while self._updates:
                updates.append(self._updates.popleft())
            while True:
                free = self._sender.backlog <= 1
                room = (self.flush_every if free else self.max_batch) - self._npending
                drained = self._drain(room) if room > 0 else 0
                if self._npending >= self.flush_every and (free or self._npending >= self.max_batch):
                    self._cut()
                elif drained == 0 or not run._q:
                    break
            now = time.monotonic()
            if self._npending and (requests or updates or status is not None or now >= deadline):
                self._cut()
            for body in updates:  # after the points logged before the update() call
                self._sender.put_update(body)
            if now >= deadline:
                deadline = now + self.flush_interval * _JITTER.uniform(0.8, 1.2)
            pending = self._notices.pending or run._stop_due() is not None
            run._mark = -1 if pending else run._n_out + self.wake_points
            for cut in requests:
                cut.seq = self._sender.seq
                cut.set()
            if status is not None:
                system = getattr(run, "_system", None)
                if system is not None and system.is_alive():  # its last sample goes before the finish
                    system.join(1.0)
                self.finish_seq = self._sender.put_finish(status)
                return
            run._wake.wait(max(0.0, deadline - time.monotonic()))
            run._wake.clear()

    def _drain(self, limit: int) -> int:
        """Move queued ``log()`` calls (whole ones) to the pending list until ``limit`` points;
        they are turned into columns in bulk when the batch is cut. Calls are taken in slices
        sized by the width of the first one waiting, so a slice of same-width calls ends at most
        one call past ``limit``."""
        q = self._owner._q
        popleft = q.popleft
        n = 0
        while n < limit:
            waiting = len(q)
            if not waiting:
                break
            width = len(q[0][1]) or 1
            got = [popleft() for _ in range(min(waiting, -(-(limit - n) // width)))]
            self._pending.extend(got)
            n += sum(map(len, map(_second, got)))
        self._npending += n
        self._owner._n_out += n
        return n

    def _kind(self, key: str, is_eval: bool) -> str:
        kind = self._kinds.get(key) or self._guessed.get(key)
        if kind is None:
            kind = wire.guess_kind(key, evaluation=is_eval)
            self._guessed[key] = kind
        return kind

    def _cut(self) -> None:
        entries, self._pending, self._npending = self._pending, [], 0
        if not entries:
            return
        cols = _columns(entries)
        torch = sys.modules.get("torch")
        slow: list[tuple[Any, list[Any], list[Any], list[float]]] = []
        ready: dict[Any, tuple[array[int], array[float], array[float]]] = {}
        shared: dict[int, Any] = {}  # the step and wall columns of a run of calls, converted once for all its keys
        for raw_key, (steps, values, walls, _) in cols.items():
            arrays = _fast_arrays(steps, values, walls, torch is not None, shared)
            if arrays is None:
                slow.append((raw_key, _flat(steps), _flat(values), _flat(walls)))
            else:
                ready[raw_key] = arrays
        if slow:  # tensors (fetched in bulk across keys), numpy scalars, bad steps or values
            if torch is not None:
                _reduce_norms([values for _, _, values, _ in slow], torch)
            materialize([values for _, _, values, _ in slow])
            for raw_key, steps, values, walls in slow:
                key = raw_key if type(raw_key) is str else str(raw_key)
                steps, values, walls = self._clean(key, steps, values, walls)
                ready[raw_key] = (array("q", steps), array("d", values), array("d", walls))
        series = []
        total = 0
        for raw_key, (_, _, _, is_eval) in cols.items():
            key = raw_key if type(raw_key) is str else str(raw_key)
            if not key or len(key) + len(self._suffix) > wire.MAX_KEY_LENGTH:
                self._notices.report(
                    "key",
                    f"losswatch: dropped the points of key {key[:80]!r}: keys must be 1 to "
                    f"{wire.MAX_KEY_LENGTH} characters.",
                    LosswatchError(f"bad key {key[:80]!r}"),
                )
                continue
            steps_a, values_a, walls_a = ready[raw_key]
            if steps_a:
                series.append((key + self._suffix, self._kind(key, is_eval), steps_a, values_a, walls_a))
                total += len(steps_a)
        if not series:
            return
        if self._sender.columnar:
            body = wire.encode_columnar(series)
        else:
            body = wire.dumps(wire.batch(
                wire.series_entry(k, kind, s.tolist(), v.tolist(), w.tolist()) for k, kind, s, v, w in series))
        self._sender.put_points(body, total)

    def _clean(
        self, key: str, steps: list[Any], values: list[Any], walls: list[float]
    ) -> tuple[list[int], list[float], list[float]]:
        """Drop the points whose value is not a number or whose step is not an integer in range."""
        for s, v in zip(steps, values, strict=True):
            if v is None or type(s) is not int or s < 0 or s > wire.MAX_STEP:
                break
        else:
            return steps, values, walls
        keep_s: list[int] = []
        keep_v: list[float] = []
        keep_w: list[float] = []
        bad_values = bad_steps = 0
        for s, v, w in zip(steps, values, walls, strict=True):
            if v is None:
                bad_values += 1
                continue
            try:
                s = operator.index(s)
            except TypeError:
                s = -1
            if not 0 <= s <= wire.MAX_STEP:
                bad_steps += 1
                continue
            keep_s.append(s)
            keep_v.append(v)
            keep_w.append(w)
        if bad_values:
            self._notices.report(
                "value",
                f"losswatch: dropped {bad_values} value(s) of {key!r} that are not numbers. Log Python "
                "numbers, numpy scalars or one-element tensors.",
                LosswatchError(f"values of {key!r} are not numbers"),
            )
        if bad_steps:
            self._notices.report(
                "step",
                f"losswatch: dropped {bad_steps} point(s) of {key!r} whose step is not an integer in "
                "[0, 2**63-1].",
                LosswatchError(f"bad steps for {key!r}"),
            )
        return keep_s, keep_v, keep_w


class NormParts:
    """A 2-norm still to be reduced: the per-tensor norms of one step (0-d tensors on one device, e.g.
    ``torch._foreach_norm(grads)``), logged as a value. The training thread leaves the last two ops
    (stack, norm) to the collector, which reduces the parts of every step of a batch together: one
    stack and one norm per batch instead of two ops per step."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = parts

    def __float__(self) -> float:  # not reduced in bulk (should not happen): one at a time
        torch = sys.modules["torch"]
        return float(torch.linalg.vector_norm(torch.stack(list(self.parts)), 2.0))


def _reduce_norms(columns: list[list[Any]], torch: Any) -> None:
    """Replace, in place, each :class:`NormParts` by its norm, a 0-d tensor (fetched in bulk with the
    other tensors): the parts of all the steps with as many parts on one device and of one dtype are
    stacked at once into a (steps, parts) tensor, reduced along its rows."""
    groups: dict[tuple[Any, ...], list[tuple[list[Any], int]]] = {}
    for values in columns:
        for i, v in enumerate(values):
            if type(v) is NormParts and v.parts:
                first = v.parts[0]
                groups.setdefault((len(v.parts), first.device, first.dtype), []).append((values, i))
    for (n, _, _), where in groups.items():
        try:
            flat = torch.stack([t for values, i in where for t in values[i].parts]).reshape(len(where), n)
            norms = torch.linalg.vector_norm(flat, 2.0, dim=1).unbind()
        except Exception:  # noqa: BLE001 - parts that do not stack together (devices): one at a time
            log.debug("losswatch: norms reduced one by one", exc_info=True)
            norms = [_norm_or_none(values[i]) for values, i in where]
        for (values, i), norm in zip(where, norms, strict=True):
            values[i] = norm


def _norm_or_none(value: NormParts) -> float | None:
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - dropped with the warning for values that are not numbers
        return None


# key -> (steps, values, walls: each a list of parts, one per run of calls with the key; is_eval)
_Columns = dict[Any, tuple[list[Sequence[Any]], list[Sequence[Any]], list[Sequence[float]], bool]]


def _columns(entries: list[tuple[Any, dict[Any, Any], float, bool]]) -> _Columns:
    """One column per key from ``log()`` calls, in bulk: consecutive calls with the same keys (the
    usual training loop) are transposed at once by ``zip``, so no Python runs per point. The steps
    and wall times of such a run of calls are one list shared by all its keys."""
    cols: _Columns = {}
    dicts = list(map(_second, entries))
    pos = 0
    for (keys, is_eval), group in groupby(zip(map(tuple, dicts), map(_fourth, entries), strict=True)):
        m = len(list(group))
        part = entries[pos : pos + m]
        steps = list(map(_first, part))
        walls = list(map(_third, part))
        for key, column in zip(keys, zip(*map(dict.values, dicts[pos : pos + m]), strict=True), strict=True):
            col = cols.get(key)
            if col is None:
                cols[key] = ([steps], [column], [walls], is_eval)
            else:
                col[0].append(steps)
                col[1].append(column)
                col[2].append(walls)
        pos += m
    return cols


def _flat(parts: list[Sequence[Any]]) -> list[Any]:
    return list(parts[0]) if len(parts) == 1 else list(chain.from_iterable(parts))


def _fast_arrays(
    steps: list[Sequence[Any]], values: list[Sequence[Any]], walls: list[Sequence[float]], torch_loaded: bool,
    shared: dict[int, Any],
) -> tuple[array[int], array[float], array[float]] | None:
    """The columns (lists of parts) as arrays when every step is an int in range and every value a
    plain number; None otherwise (the caller converts and cleans point by point). With torch
    loaded, a column holding anything but float and int takes the slow way: a tensor must not be
    read one by one. ``shared`` caches the arrays of step and wall parts that several keys share."""
    if torch_loaded and not all(set(map(type, part)) <= _PLAIN for part in values):
        return None
    try:
        values_a = array("d", values[0]) if len(values) == 1 else array("d", chain.from_iterable(values))
        if len(steps) == 1:
            steps_a = shared.get(id(steps[0]))
            if steps_a is None:
                steps_a = shared[id(steps[0])] = array("q", steps[0])
                if steps_a and min(steps_a) < 0:
                    shared[id(steps[0])] = False
            walls_a = shared.get(id(walls[0]))
            if walls_a is None:
                walls_a = shared[id(walls[0])] = array("d", walls[0])
        else:
            steps_a = array("q", chain.from_iterable(steps))
            if steps_a and min(steps_a) < 0:
                return None
            walls_a = array("d", chain.from_iterable(walls))
    except (TypeError, ValueError, OverflowError):
        return None
    if steps_a is False:
        return None
    return steps_a, values_a, walls_a


_PLAIN = frozenset({float, int})
_first, _second, _third, _fourth = (operator.itemgetter(i) for i in range(4))
