"""The sender thread: delivers encoded batches in order, spooling them when it cannot.

Batches (and the final ``finish``) arrive from the collector already encoded and numbered. Each
goes either to the in-memory outbox or, in *disk mode*, to the run's spool file. Order is kept by
one invariant: everything unread in the spool comes before everything in the outbox.

- The server answers: batches are posted from the outbox over one keep-alive connection.
- No answer, 5xx or 429: the sender goes offline, moves the outbox (including the batch in flight)
  to the spool, enters disk mode and retries with exponential backoff (honouring ``Retry-After``).
  Back online, it replays the spool in order, deletes it and returns to memory mode.
- The outbox grows past ``max_buffer_bytes``: the same move to disk, while still online.
- 401/403: nothing more is sent by this process; everything goes to the spool for ``losswatch sync``.
- 422 (or a single point refused with 413): that batch is dropped, with a warning.

Problems are reported once per kind through :class:`Notices`; ``Run`` turns them into warnings
(or, with ``strict=True``, exceptions) on the training thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from losswatch.client import delivery, spool, wire
from losswatch.client.errors import LosswatchError
from losswatch.client.transport import Transport

# Jitter from a generator of our own: the module-level one belongs to the training script, which may
# seed it for reproducibility; drawing from it would change the script's random numbers.
_JITTER = random.Random()

log = logging.getLogger("losswatch")

_Item = tuple[int, str, bytes, int]  # (seq, "points" | "update" | "finish", body or status, points)


class Notices:
    """Problems to tell the user about, each kind once; drained by the training thread."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, str, LosswatchError | None]] = deque()
        self._seen: set[str] = set()
        self.on_new: Callable[[], None] = lambda: None

    def seen(self, *kinds: str) -> bool:
        return any(k in self._seen for k in kinds)

    def report(self, kind: str, message: str, error: LosswatchError | None = None) -> None:
        if kind in self._seen:
            log.info("%s", message)
            return
        self._seen.add(kind)
        log.debug("%s", message)
        self.pending.append((kind, message, error))
        self.on_new()


class Sender(threading.Thread):
    def __init__(
        self,
        *,
        run_id: str,
        project: str,
        create_payload: dict[str, Any],
        transport: Transport,
        url: str,
        spool_file: spool.Spool | None,
        notices: Notices,
        max_buffer_bytes: int,
        heartbeat_interval: float,
        retry_min: float,
        retry_max: float,
        on_answer: Callable[[Any], None],
        created: bool = False,
    ) -> None:
        super().__init__(name=f"losswatch-sender-{run_id[:8]}", daemon=True)
        self.run_id = run_id
        self.project = project
        self._create_payload = create_payload
        self._transport = transport
        self._url = url
        self.spool = spool_file
        self._notices = notices
        self._max_buffer = max_buffer_bytes
        self._heartbeat_interval = heartbeat_interval
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._on_answer = on_answer
        self._limits = delivery.Limits()

        self.cv = threading.Condition()
        self._outbox: deque[_Item] = deque()
        self._outbox_bytes = 0
        self._disk = False
        self._spool_ok = spool_file is not None
        self._read_pos = 0
        self.seq = 0  # last number given
        self.acked = 0  # every item numbered up to this one was delivered (or dropped for good)
        self._sent = 0  # highest number delivered
        self._created = created
        self._missing = 0
        self.offline = False
        self.blocked = False
        self._retry_at = 0.0
        self._backoff = retry_min
        self._final = False  # close() was called: a few quick tries, then the spool
        self._finish_seq = 0  # the run's finish is queued with this number
        self._final_failures = 0
        self._halt = False
        self._next_heartbeat = time.monotonic() + heartbeat_interval
        self.sent_points = 0
        self.dropped_points = 0
        # called (on this thread) when a delivered batch leaves the outbox and at most one is left: the
        # collector, which holds its pending points while the sender is behind, may cut them now
        self.on_drained: Callable[[], None] = lambda: None

    # ---- called by the collector -------------------------------------------------------------

    @property
    def columnar(self) -> bool:
        """Whether batches should be encoded in binary: the transport takes it and the server has
        not refused it (see :mod:`losswatch.client.delivery`). The spool keeps them as they are."""
        return bool(getattr(self._transport, "columnar", False)) and not self._limits.json_only

    @property
    def backlog(self) -> int:
        """Items in the outbox, the one being sent included, while the server answers: 0 when it is not
        known to (the run not created yet, offline, refused) or in disk mode, where larger batches would
        not help and the spool takes them at ``flush_every`` points each."""
        if not self._created or self.offline or self.blocked or self._disk:
            return 0
        return len(self._outbox)

    def put_points(self, body: bytes, points: int) -> int:
        """An encoded batch: JSON, or binary when :attr:`columnar`."""
        return self._put("points", body, points)

    def put_update(self, body: bytes) -> int:
        """A change of the run's fields (the JSON body of ``PATCH /runs/{id}``), from the training thread."""
        return self._put("update", body, 0)

    def put_finish(self, status: str) -> int:
        """The run's end: once it is delivered and nothing is left, the thread ends on its own (no
        heartbeats for a finished run); :meth:`close` then only closes the transport and the spool."""
        return self._put("finish", status.encode(), 0)

    def _put(self, kind: str, payload: bytes, points: int) -> int:
        with self.cv:
            self.seq += 1
            item = (self.seq, kind, payload, points)
            if kind == "finish":
                self._finish_seq = self.seq
            if not (self._disk and self._to_spool([item])):
                self._outbox.append(item)
                self._outbox_bytes += len(payload)
                if self._outbox_bytes > self._max_buffer and not self._move_to_disk("memory"):
                    self._drop_oldest()
            self.cv.notify_all()
            return self.seq

    # ---- state under the lock -----------------------------------------------------------------

    def _payload(self, item: _Item) -> bytes:
        seq, kind, payload, _ = item
        if kind == "points":
            return spool.points_payload(seq, payload)
        if kind == "update":
            return spool.update_payload(seq, payload)
        return spool.finish_payload(seq, payload.decode())

    def _to_spool(self, items: list[_Item]) -> bool:
        if self.spool is None or not self._spool_ok:
            return False
        opened = self.spool.is_open
        try:
            self.spool.append([self._payload(i) for i in items])
        except OSError as exc:
            self._spool_ok = False
            self._disk = False
            self._notices.report(
                "disk",
                f"losswatch: cannot write the spool file {self.spool.path} ({exc}). Points are kept in "
                f"memory only (up to {self._max_buffer >> 20} MiB of batches); if the server stays "
                "unreachable the oldest batches will be dropped. Free some disk space or pass "
                "spool_dir= (or LOSSWATCH_SPOOL_DIR) pointing to a writable directory.",
                LosswatchError(f"cannot write spool {self.spool.path}: {exc}"),
            )
            return False
        if not opened:
            self._read_pos = 0
        return True

    def _move_to_disk(self, why: str) -> bool:
        """Disk mode: the outbox (batch in flight included) goes to the spool, and every later batch."""
        if not self._to_spool(list(self._outbox)):
            return False
        if not self._disk:
            log.debug("losswatch: spooling to %s (%s)", self.spool.path if self.spool else None, why)
        self._disk = True
        self._outbox.clear()
        self._outbox_bytes = 0
        return True

    def _drop_oldest(self) -> None:
        dropped = 0
        while self._outbox_bytes > self._max_buffer and len(self._outbox) > 1:
            seq, kind, payload, points = self._outbox.popleft()
            self._outbox_bytes -= len(payload)
            dropped += points
            self.acked = max(self.acked, seq)
        self.dropped_points += dropped
        if dropped:
            self._notices.report(
                "dropped",
                f"losswatch: dropped {dropped} points: the server at {self._url} is unreachable, "
                f"the in-memory buffer ({self._max_buffer >> 20} MiB) is full and no spool file can be "
                "written. Make spool_dir writable to keep everything.",
                LosswatchError("points dropped: buffer full and spool unwritable"),
            )

    def _spool_unread(self) -> bool:
        return self.spool is not None and self.spool.is_open and self._read_pos < self.spool.committed

    def _ack(self, seq: int) -> None:
        self.acked = max(self.acked, seq)
        self._sent = max(self._sent, seq)

    # ---- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - the boundary: never let the thread die silently
            log.exception("losswatch: the sender thread failed")
            with self.cv:
                self._move_to_disk("sender failure")
                self.blocked = True
                self.cv.notify_all()
            self._notices.report(
                "internal",
                "losswatch: the sender thread failed (see the 'losswatch' log); points are kept in the "
                "spool for `losswatch sync`.",
                LosswatchError("sender thread failed"),
            )
        finally:
            with self.cv:
                self._halt = True
                self.cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cv:
                task = self._next_task()
            if task is None:
                return
            kind, item, next_pos = task
            if kind == "heartbeat":
                res = delivery.heartbeat(self._transport, self.run_id)
                self._next_heartbeat = time.monotonic() + self._heartbeat_interval
                if res.ok and res.data is not None:
                    self._on_answer(res.data)
                continue
            if kind == "create":
                res = delivery.create_run(self._transport, self.project, self._create_payload)
                with self.cv:
                    if res.ok:
                        self._created = True
                        self._online()
                    else:
                        self._failed(res, "create the run")
                    self.cv.notify_all()
                continue
            assert item is not None
            seq, what, payload, points = item
            if what == "points":
                res = delivery.send_points(self._transport, self.run_id, payload, self._limits)
            elif what == "update":
                res = delivery.update_run(self._transport, self.run_id, payload)
                if res.outcome == "dropped":  # refused for good (422): tell, and go on with the rest
                    self._notices.report(
                        "update",
                        f"losswatch: the server at {self._url} refused to update run {self.run_id} "
                        f"({res.describe()}); that change was dropped.",
                        res.error(),
                    )
            else:
                res = delivery.finish_run(self._transport, self.run_id, payload.decode())
                if res.outcome == "dropped":  # e.g. already finished: nothing more to do with it
                    log.info("losswatch: finish answered %s", res.describe())
                    res.outcome = "ok"
            if what == "points" and res.data:
                for answer in res.data:
                    self._on_answer(answer)
            self._report_notes(res)
            with self.cv:
                if res.outcome in ("ok", "dropped"):
                    self._missing = 0
                    self._online()
                    self._ack(seq)
                    if res.ok:
                        self.sent_points += points - res.dropped_points
                    self.dropped_points += res.dropped_points
                    if next_pos is not None:
                        self._read_pos = max(self._read_pos, next_pos)
                    elif self._outbox and self._outbox[0][0] == seq:
                        self._outbox.popleft()
                        self._outbox_bytes -= len(payload)
                        if len(self._outbox) <= 1:
                            self.on_drained()
                    self._maybe_leave_disk()
                elif res.outcome == "missing_run":
                    self._missing += 1
                    if self._missing > 2:
                        self._failed(res, "send points (the server keeps answering 404)")
                    else:
                        self._created = False
                else:
                    self._failed(res, "send points")
                self.cv.notify_all()

    def _next_task(self) -> tuple[str, _Item | None, int | None] | None:
        """Under the lock: wait for something to do; None when the thread should end."""
        while True:
            if self._halt:
                return None
            now = time.monotonic()
            work = self._spool_unread() or bool(self._outbox)
            if self.blocked:
                if self._final:
                    return None
                self.cv.wait()
                continue
            if self.offline and now < self._retry_at:
                self.cv.wait(self._retry_at - now)
                continue
            if not self._created:
                return ("create", None, None)
            if self._spool_unread():
                assert self.spool is not None
                got = self.spool.read(self._read_pos)
                if got is None:
                    continue
                record, next_pos = got
                if not self._replayable(record, self._read_pos):
                    self._read_pos = next_pos
                    self._maybe_leave_disk()
                    continue
                assert record is not None
                seq = int(record.get("seq") or 0)
                if record["t"] == "points":
                    body = spool.points_body(record)
                    assert body is not None  # checked by _replayable
                    item = (seq, "points", body, wire.count_points(body))
                elif record["t"] == "update":
                    item = (seq, "update", wire.dumps(record["body"]), 0)
                else:
                    item = (seq, "finish", str(record.get("status", "finished")).encode(), 0)
                return ("send", item, next_pos)
            if self._outbox:
                return ("send", self._outbox[0], None)
            if (self._final or self._finish_seq) and not work:
                return None
            if now >= self._next_heartbeat:
                return ("heartbeat", None, None)
            self.cv.wait(self._next_heartbeat - now)

    def _replayable(self, record: dict[str, Any] | None, pos: int) -> bool:
        if record is None:
            log.warning("losswatch: skipped a damaged line of %s", self.spool.path if self.spool else "")
            return False
        t = record.get("t")
        if (t == "points" and spool.points_body(record) is not None) or (
            t == "update" and isinstance(record.get("body"), dict)
        ):
            ours = self.spool is not None and pos >= self.spool.start
            return not (ours and int(record.get("seq") or 0) <= self._sent)  # already sent from memory
        if t == "finish":
            return self.spool is not None and pos >= self.spool.start  # an earlier process's finish: skip
        return False  # the "run" header

    def _maybe_leave_disk(self) -> None:
        """Back to memory mode once the spool is replayed (it is then deleted)."""
        if self.offline or self.blocked:
            return
        if self.spool is None or not self.spool.is_open:
            self._disk = False
        elif self._read_pos >= self.spool.committed:
            self.spool.delete()
            self._read_pos = 0
            self._disk = False

    def _online(self) -> None:
        if self.offline:
            log.info("losswatch: the server at %s answers again", self._url)
        self.offline = False
        self._backoff = self._retry_min
        self._final_failures = 0
        self._maybe_leave_disk()

    def _failed(self, res: delivery.Result, doing: str) -> None:
        where = self._where()
        if res.outcome in ("auth", "dropped", "missing_run"):
            self.blocked = True
            self._move_to_disk("refused")
            what = "refused the token" if res.outcome == "auth" else "refused to " + doing
            hint = (
                f"Set LOSSWATCH_TOKEN (or init(token=...)) to a token with 'write' scope on project "
                f"{self.project!r}, then run `losswatch sync {self._spool_dir()}`."
                if res.outcome == "auth"
                else f"Fix the problem, then run `losswatch sync {self._spool_dir()}`."
            )
            self._notices.report(
                "refused",
                f"losswatch: the server at {self._url} {what} ({res.describe()}). Training goes on, but "
                f"this process sends nothing more; points are kept {where}. {hint}",
                res.error(),
            )
            return
        self.offline = True
        self._move_to_disk("offline")
        if self._final:
            self._final_failures += 1
        delay = self._backoff * _JITTER.uniform(0.8, 1.2)
        if res.retry_after is not None:
            delay = max(delay, min(res.retry_after, 600.0))  # the server knows best, within reason
        if self._final:
            delay = min(delay, 0.5)
        self._retry_at = time.monotonic() + delay
        self._backoff = min(self._backoff * 2, self._retry_max)
        problem = (
            f"could not reach the server at {self._url} to {doing} ({res.describe()})"
            if res.status == 0
            else f"the server at {self._url} answered {res.describe()} to a request to {doing}"
        )
        self._notices.report(
            "unreachable",
            f"losswatch: {problem}. Training goes on; points "
            f"are kept {where} and sent when the server answers. If this process ends first, run "
            f"`losswatch sync {self._spool_dir()}`.",
            res.error(),
        )

    def _where(self) -> str:
        if self.spool is not None and self._spool_ok:
            return f"in the spool file {self.spool.path}"
        return f"in memory (up to {self._max_buffer >> 20} MiB; the spool directory is not writable)"

    def _spool_dir(self) -> str:
        return str(self.spool.path.parent) if self.spool is not None else "DIR"

    def _report_notes(self, res: delivery.Result) -> None:
        for kind, text in res.notes:
            if kind == "too_large":
                self._notices.report(
                    "too_large",
                    f"losswatch: the server at {self._url} refused a batch as too large ({text}); "
                    "losswatch split it and sends smaller batches from now on. To avoid this, lower "
                    "flush_every or raise the server's limit named above.",
                    None,
                )
            else:
                self._notices.report(
                    "invalid",
                    f"losswatch: the server at {self._url} refused a batch ({text}). That batch can "
                    "never succeed and was dropped; the other batches are not affected. Check the keys, "
                    "steps and values you log.",
                    res.error(),
                )

    # ---- called by the run ------------------------------------------------------------------------

    def wait_delivered(self, seq: int, timeout: float) -> bool:
        with self.cv:
            self.cv.wait_for(lambda: self.acked >= seq or self.offline or self.blocked or self._halt, timeout)
            return self.acked >= seq

    def close(self, timeout: float) -> bool:
        """Deliver what is left (one quick last try if offline), else leave it in the spool."""
        with self.cv:
            self._final = True
            self._retry_at = 0.0
            self.cv.notify_all()
        deadline = time.monotonic() + timeout
        with self.cv:
            while not self._halt and time.monotonic() < deadline:
                if self.offline and self._final_failures >= 3:
                    break
                self.cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._halt = True
            delivered = self.acked >= self.seq
            if not delivered:
                self._move_to_disk("finish")
            self.cv.notify_all()
        self.join(1.0)
        with self.cv:
            left = self.spool is not None and self.spool.is_open
            if left:
                assert self.spool is not None
                self.spool.close()
        try:
            self._transport.close()
        except Exception:  # noqa: BLE001
            log.debug("losswatch: closing the transport failed", exc_info=True)
        if not delivered and not self._notices.seen("unreachable", "refused", "disk"):
            self._notices.report(
                "undelivered",
                f"losswatch: the run ended before everything reached {self._url}; what is left is kept "
                f"{self._where()}. Run `losswatch sync {self._spool_dir()}` when the server is back.",
                LosswatchError("undelivered points left in the spool"),
            )
        return delivered
