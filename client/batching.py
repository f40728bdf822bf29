"""The collector thread: from the run's queue to encoded columnar batches.

``Run.log()`` appends ``(step, {key: value}, wall_time, is_eval)`` to a deque and nothing more. This
thread drains the deque into one column per key, and cuts a batch when ``flush_every`` points are
pending or ``flush_interval`` seconds have passed (or on ``flush()``/``finish()``). Cutting converts
the values (tensors in bulk, see :mod:`losswatch.client.values`), drops points that cannot be sent
(with a warning), encodes the batch once with :mod:`losswatch.client.wire` and hands it to the
sender.
"""

from __future__ import annotations

import logging
import operator
import random
import threading
import time
from collections import deque
from typing import Any

from losswatch.client import wire
from losswatch.client.errors import LosswatchError
from losswatch.client.sender import Notices, Sender
from losswatch.client.values import materialize

log = logging.getLogger("losswatch")

EVAL_KINDS = ("loss", "loss_component")  # what log_eval() keeps from guess_kind; anything else is "metric"


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
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.wake_points = max(64, flush_every // 4)
        self._kinds = kinds  # the run's explicit kinds (the run may add to it)
        self._guessed: dict[str, str] = {}
        self._suffix = key_suffix
        self._cols: dict[Any, tuple[list[Any], list[Any], list[float], bool]] = {}
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
        deadline = time.monotonic() + self.flush_interval * random.uniform(0.5, 1.0)
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
                drained = self._drain(self.flush_every - self._npending)
                if self._npending >= self.flush_every:
                    self._cut()
                elif drained == 0 or not run._q:
                    break
            now = time.monotonic()
            if self._npending and (requests or updates or status is not None or now >= deadline):
                self._cut()
            for body in updates:  # after the points logged before the update() call
                self._sender.put_update(body)
            if now >= deadline:
                deadline = now + self.flush_interval * random.uniform(0.8, 1.2)
            pending = self._notices.pending or run._stop_due() is not None
            run._mark = -1 if pending else run._n_out + self.wake_points
            for cut in requests:
                cut.seq = self._sender.seq
                cut.set()
            if status is not None:
                self.finish_seq = self._sender.put_finish(status)
                return
            run._wake.wait(max(0.0, deadline - time.monotonic()))
            run._wake.clear()

    def _drain(self, limit: int) -> int:
        q = self._owner._q
        cols = self._cols
        n = 0
        while n < limit:
            try:
                step, values, wall, is_eval = q.popleft()
            except IndexError:
                break
            for key, value in values.items():
                col = cols.get(key)
                if col is None:
                    col = cols[key] = ([], [], [], is_eval)
                col[0].append(step)
                col[1].append(value)
                col[2].append(wall)
            n += len(values)
        self._npending += n
        self._owner._n_out += n
        return n

    def _kind(self, key: str, is_eval: bool) -> str:
        kind = self._kinds.get(key) or self._guessed.get(key)
        if kind is None:
            kind = wire.guess_kind(key)
            if is_eval and kind not in EVAL_KINDS:
                kind = "metric"
            self._guessed[key] = kind
        return kind

    def _cut(self) -> None:
        cols, self._cols, self._npending = self._cols, {}, 0
        if not cols:
            return
        items = list(cols.items())
        materialize([col[1] for _, col in items])
        entries = []
        total = 0
        for raw_key, (steps, values, walls, is_eval) in items:
            key = raw_key if type(raw_key) is str else str(raw_key)
            if not key or len(key) + len(self._suffix) > wire.MAX_KEY_LENGTH:
                self._notices.report(
                    "key",
                    f"losswatch: dropped the points of key {key[:80]!r}: keys must be 1 to "
                    f"{wire.MAX_KEY_LENGTH} characters.",
                    LosswatchError(f"bad key {key[:80]!r}"),
                )
                continue
            steps, values, walls = self._clean(key, steps, values, walls)
            if steps:
                entries.append(
                    wire.series_entry(key + self._suffix, self._kind(key, is_eval), steps, values, walls)
                )
                total += len(steps)
        if entries:
            self._sender.put_points(wire.dumps(wire.batch(entries)), total)

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
