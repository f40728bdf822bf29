"""``losswatch.init()`` and :class:`Run`: what a training script calls.

The training thread only ever appends to a deque (``run.log`` costs about a microsecond); a
collector thread turns the queue into columnar batches and a sender thread delivers them (see
``batching.py`` and ``sender.py``, and ``docs/client.md`` for the guarantees).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import platform
import re
import socket
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from losswatch.client import delivery, settings, spool, system, wire
from losswatch.client.batching import Collector
from losswatch.client.errors import LosswatchError, LosswatchWarning, StopTraining
from losswatch.client.sender import Notices, Sender
from losswatch.client.system import SystemSampler
from losswatch.client.transport import HTTPTransport, Transport

log = logging.getLogger("losswatch")

_RUN_ID = re.compile(wire.RUN_ID_PATTERN)
RUN_STATUSES = wire.END_STATUSES
_modules = sys.modules
_now = time.time
_exit_status: str | None = None  # set by our excepthook: the interpreter is exiting on an exception
ALERT_RULES = wire.ALERT_RULES  # the server's rules: stop_on names are checked against them


_exit_code: Any = None  # the argument of the last sys.exit() call (a non-zero one marks the run failed)
_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()  # runs with sender threads, for the fork handler


def _exit_status_at_exit() -> str | None:
    """The status a run still open at interpreter exit gets: the excepthook's verdict, else
    ``failed`` after ``sys.exit(n)`` with ``n`` not 0/None, else None (finished or stopped)."""
    if _exit_status is not None:
        return _exit_status
    if _exit_code not in (None, 0):
        return "failed"
    return None


def _after_fork_in_child() -> None:
    """``os.fork()`` copied the runs but not their threads: in the child each run drops what it is
    given, warns once, and does nothing at exit (no wait on a sender that does not exist). A child
    that wants to log calls ``losswatch.init()`` itself and gets its own run and sender."""
    for run in list(_live_runs):
        run._forked()
    _live_runs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _install_excepthook() -> None:
    previous = sys.excepthook
    if getattr(previous, "_losswatch", False):
        return
    exit_fn = sys.exit

    def record_exit(code: Any = None) -> None:
        global _exit_code
        _exit_code = code
        exit_fn(code)

    record_exit._losswatch = True  # type: ignore[attr-defined]
    if not getattr(exit_fn, "_losswatch", False):
        sys.exit = record_exit

    def hook(tp: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        global _exit_status
        _exit_status = "stopped" if issubclass(tp, (StopTraining, KeyboardInterrupt)) else "failed"
        previous(tp, value, tb)

    hook._losswatch = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _rank() -> tuple[int, int]:
    """(rank, world size): torch.distributed if the script imported and initialised it, else $RANK."""
    dist = _modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank()), int(dist.get_world_size())
        except Exception:  # noqa: BLE001
            log.debug("losswatch: torch.distributed did not tell its rank", exc_info=True)
    rank = settings.rank()
    return (0 if rank is None else rank), settings.world_size()


def _shared_run_id(run_id: str, world: int) -> str:
    """Every rank takes rank 0's id (a collective: call init() on every rank, as documented)."""
    dist = _modules.get("torch.distributed")
    if world < 2 or dist is None:
        return run_id
    try:
        if not dist.is_initialized():
            return run_id
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])
    except Exception:  # noqa: BLE001
        log.warning(
            "losswatch: could not share the run id across ranks; pass id= on every rank", exc_info=True
        )
        return run_id


def _jsonable(obj: Any, depth: int = 0) -> Any:
    """Config values as JSON: non-finite floats with the wire spellings, unknown objects as str()."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return wire.encode_value(obj)
    if depth > 20:
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj), depth + 1)
    if type(obj).__name__ == "Namespace":
        return _jsonable(vars(obj), depth + 1)
    tolist = getattr(obj, "tolist", None)  # numpy / torch
    if callable(tolist):
        try:
            return _jsonable(tolist(), depth + 1)
        except Exception:  # noqa: BLE001
            pass
    return str(obj)


def _stop_rules(stop_on: Iterable[str] | str | None) -> frozenset[str]:
    rules = frozenset([stop_on] if isinstance(stop_on, str) else (stop_on or ()))
    unknown = sorted(r for r in rules if r not in ALERT_RULES)
    if unknown:
        raise ValueError(f"losswatch: unknown rule(s) in stop_on: {unknown}; known: {ALERT_RULES}")
    return rules


def _alert_key(alert: dict[str, Any]) -> Any:
    if alert.get("id") is not None:
        return ("id", str(alert["id"]))
    return (
        alert.get("rule") or alert.get("kind"),
        alert.get("key") or alert.get("series"),
        alert.get("onset_step", alert.get("step")),
    )


def _own(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the caller's values that the sender may keep: tensors that carry a graph are
    detached (no copy, no sync); an lr or a no_grad value is kept as it is, since a detached view
    would share its storage anyway, which saves ~0.5 µs a tensor. torch is looked up, never imported."""
    values = dict(metrics)
    torch = _modules.get("torch")
    if torch is not None:
        tensor = torch.Tensor
        for key, value in values.items():
            if type(value) is not float and isinstance(value, tensor) and value.requires_grad:
                values[key] = value.detach()
    return values


def _wall(value: Any) -> float:
    """A caller's ``wall_time=``: seconds since the epoch, finite (checked on the training thread)."""
    wall = float(value)
    if not math.isfinite(wall) or wall < 0:
        raise ValueError(f"losswatch: wall_time must be finite seconds since the epoch, got {value!r}")
    return wall


class Run:
    """One training run. Create it with :func:`losswatch.init`."""

    _system: SystemSampler | None = None  # the system metrics thread (init's system_metrics=)

    def __init__(
        self,
        *,
        run_id: str,
        project: str,
        url: str,
        transport: Transport | None,
        create_payload: dict[str, Any],
        strict: bool,
        spool_path: Path | None,
        flush_every: int,
        flush_interval: float,
        max_queue: int,
        max_buffer_bytes: int,
        kinds: dict[str, str],
        key_suffix: str,
        rank: int,
        on_alert: Callable[[dict[str, Any]], Any] | None,
        stop_on: Iterable[str],
        raise_on_stop: bool,
        heartbeat_interval: float,
        finish_timeout: float,
        retry_min: float,
        retry_max: float,
        fsync: bool,
        enabled: bool = True,
    ) -> None:
        self.id = run_id
        self.project = project
        self.name = create_payload.get("name")
        self.url = url
        self.rank = rank
        self.enabled = enabled
        self.alerts: list[dict[str, Any]] = []
        self.should_stop = False
        self.spool_path = spool_path
        self._strict = strict
        self._finished = False
        self._closing = False  # finished with wait=False: the threads still deliver, _close() waits
        self._step = 0  # the default step of the next log(); 0 until the first log()
        self._config: Any = create_payload.get("config")  # the config as this client knows it (update())
        self._q: deque[tuple[Any, dict[Any, Any], float, bool]] = deque()
        self._n_in = 0  # points queued (written by the training thread only)
        self._n_out = 0  # points drained (written by the collector only)
        self._mark = 0  # log() takes its slow path once _n_in reaches this
        self._max_queue = max_queue
        self._dropping = False
        self.dropped_points = 0
        self._kinds = dict(kinds)
        self._finish_timeout = finish_timeout
        self._on_alert = on_alert
        self._stop_on = frozenset(stop_on)
        self._raise_on_stop = raise_on_stop
        self.stop_alert: dict[str, Any] | None = None  # the alert that set should_stop
        self._stop_raised = False
        self._seen_alerts: dict[Any, str] = {}  # alert -> the status last seen
        self._wake = threading.Event()
        self._notices = Notices()
        if not enabled:
            self.log = self.log_eval = self._disabled  # type: ignore[method-assign]
            self._finished = True
            return
        if transport is None:
            transport = HTTPTransport(url, None)
        spool_file = None
        if spool_path is not None:
            header = {
                "t": "run", "v": spool.SPOOL_VERSION, "project": project, "run_id": run_id,
                "create": create_payload, "url": url, "rank": rank, "key_suffix": key_suffix,
                "pid": os.getpid(), "created_at": time.time(),
            }  # fmt: skip
            spool_file = spool.Spool(spool_path, header, fsync=fsync)
        created = False
        if strict:
            res = delivery.create_run(transport, project, create_payload)
            if not res.ok:
                transport.close()
                raise res.error()
            created = True
            self._on_answer(res.data)
        self._sender = Sender(
            run_id=run_id, project=project, create_payload=create_payload, transport=transport, url=url,
            spool_file=spool_file, notices=self._notices, max_buffer_bytes=max_buffer_bytes,
            heartbeat_interval=heartbeat_interval, retry_min=retry_min, retry_max=retry_max,
            on_answer=self._on_answer, created=created,
        )  # fmt: skip
        self._collector = Collector(
            self, self._sender, self._notices, flush_every=flush_every, flush_interval=flush_interval,
            kinds=self._kinds, key_suffix=key_suffix,
        )  # fmt: skip
        self._mark = self._collector.wake_points
        self._notices.on_new = self._signal_notice
        self._sender.start()
        self._collector.start()
        atexit.register(self._atexit)
        _live_runs.add(self)

    # ---- the training thread's fast path ------------------------------------------------------

    def log(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        kinds: Mapping[str, str] | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Queue one value per key at ``step`` (default: one more than the last step) and return.

        Values: Python numbers, numpy scalars, one-element torch tensors (kept detached on their
        device until the sender fetches them in bulk). ``wall_time`` (seconds since the epoch)
        replaces the time of the call. Never blocks on the network.
        """
        if step is None:
            step = self._step
        self._step = step + 1
        values = _own(metrics)
        if kinds is not None:
            self._add_kinds(kinds)
        self._q.append((step, values, _now() if wall_time is None else _wall(wall_time), False))
        self._n_in += len(values)
        if self._n_in >= self._mark:
            self._slow_path()

    def log_eval(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        kinds: Mapping[str, str] | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Queue evaluation metrics at ``step`` (default: the last training step; the step counter
        does not move). A key's kind is ``metric`` unless its name says loss (``val/loss``) or
        bookkeeping (``eval_runtime``, ``epoch``: ``other``), see :func:`wire.guess_kind`.
        ``wall_time`` as in :meth:`log`."""
        if step is None:
            step = max(self._step - 1, 0)
        values = _own(metrics)
        if kinds is not None:
            self._add_kinds(kinds)
        self._q.append((step, values, _now() if wall_time is None else _wall(wall_time), True))
        self._n_in += len(values)
        if self._n_in >= self._mark:
            self._slow_path()

    # ---- slow paths ----------------------------------------------------------------------------

    def _slow_path(self) -> None:
        self._wake.set()
        if self._notices.pending:
            self._emit(stacklevel=4)
        if self._n_in - self._n_out > self._max_queue:
            self._backpressure()
        else:
            self._dropping = False
        stop = self._stop_due()
        if stop is not None:
            self._stop_raised = True
        if self._mark < 0 and not self._notices.pending:
            self._mark = self._n_out + self._collector.wake_points
        if stop is not None:
            raise StopTraining(stop, self.id)

    def _stop_due(self) -> dict[str, Any] | None:
        """The alert to raise StopTraining for at this log() call (raise_on_stop, once)."""
        if self._raise_on_stop and not self._stop_raised:
            return self.stop_alert
        return None

    def _backpressure(self) -> None:
        """The collector does not keep up: wait until it has drained half the queue (a burst), at
        most a second; if it is stuck, drop points instead of stalling training."""
        if not self._dropping:
            deadline = time.monotonic() + 1.0
            low = self._max_queue // 2
            while self._n_in - self._n_out > low and time.monotonic() < deadline:
                if not self._collector.is_alive():
                    break
                self._wake.set()
                time.sleep(0.001)
            if self._n_in - self._n_out <= self._max_queue:
                return
            self._dropping = True
        try:
            _, values, _, _ = self._q.pop()
        except IndexError:
            return
        self._n_in -= len(values)
        self.dropped_points += len(values)
        self._notices.report(
            "queue",
            f"losswatch: dropped points because more than {self._max_queue} were waiting for the "
            "sender thread, which is stuck (see the 'losswatch' log). Raise max_queue if this is "
            "a burst, or report a bug.",
            LosswatchError("queue full"),
        )

    def _signal_notice(self) -> None:
        self._mark = -1  # the next log() call takes the slow path and warns

    def _emit(self, stacklevel: int) -> None:
        pending = self._notices.pending
        while pending:
            _, message, error = pending.popleft()
            if self._strict and error is not None:
                raise error
            warnings.warn(message, LosswatchWarning, stacklevel=stacklevel)

    def _add_kinds(self, kinds: Mapping[str, str]) -> None:
        for key, kind in kinds.items():
            if kind not in wire.SERIES_KINDS:
                raise ValueError(f"losswatch: unknown kind {kind!r} for {key!r}; one of {wire.SERIES_KINDS}")
            self._kinds[key] = kind

    def _on_answer(self, data: Any) -> None:
        """An answer of the server (sender thread): keep its firing alerts, signal the new ones.

        Ingest and heartbeat answers list the run's firing alerts plus those the request changed
        (a NaN that fired and resolved within one batch is listed once, resolved). Each alert is
        signalled when first seen and again when it resolves; a ``stop_on`` rule stops the run even
        if its alert was already resolved when first seen."""
        if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
            return
        alerts = [a for a in data["alerts"] if isinstance(a, dict)]
        self.alerts = [a for a in alerts if a.get("status") != "resolved"]
        for alert in alerts:
            key = _alert_key(alert)
            status = str(alert.get("status") or "firing")
            before = self._seen_alerts.get(key)
            if before == status or before == "resolved":
                continue
            self._seen_alerts[key] = status
            rule = alert.get("rule") or alert.get("kind") or alert.get("type")
            if before is None and rule in self._stop_on and not self.should_stop:
                self.stop_alert = alert
                self.should_stop = True
                if self._raise_on_stop:
                    self._mark = -1  # the next log() takes its slow path and raises StopTraining
            if self._on_alert is not None:
                try:
                    self._on_alert(alert)
                except Exception:  # noqa: BLE001 - a user callback must not kill the sender
                    log.exception("losswatch: the on_alert callback failed")

    def _disabled(self, *args: Any, **kwargs: Any) -> None:
        return None

    def _after_finish(self, *args: Any, **kwargs: Any) -> None:
        self._notices.report(
            "closed", f"losswatch: run {self.id} is finished; later log() calls are ignored."
        )
        self._emit(stacklevel=3)

    @property
    def step(self) -> int | None:
        """The step of the last :meth:`log` call, ``None`` before the first: where :meth:`log_eval`
        puts its metrics by default (the next ``log()`` without ``step=`` uses ``step + 1``)."""
        return self._step - 1 if self._step else None

    # ---- changing the run ----------------------------------------------------------------------

    def update(
        self,
        config: Mapping[str, Any] | Any = None,
        tags: Iterable[str] | None = None,
        name: str | None = None,
        notes: str | None = None,
    ) -> None:
        """Change the run after :func:`init` and return at once; ``None`` leaves a field as it is.

        ``config`` (a mapping, dataclass or ``argparse.Namespace``) is merged into the run's config
        as this client knows it (the ``config`` of ``init()`` and of earlier ``update()`` calls): its
        top-level keys replace the same keys, the other keys stay. ``tags``
        replaces the tag list; ``name`` and ``notes`` replace theirs. The change goes to the server
        through the sender thread (``PATCH /api/v1/runs/{id}``) after the points logged before it,
        spooled, retried and replayed by ``losswatch sync`` like them. A change the server refuses (422) is
        dropped with a warning (with ``strict=True``, an exception at the next call).
        """
        if not self.enabled:
            return
        if self._finished:
            self._after_finish()
            return
        body: dict[str, Any] = {}
        if config is not None:
            new = _jsonable(config)
            if not isinstance(new, dict):
                raise ValueError(f"losswatch: update(config=...) takes a mapping, got {type(config).__name__}")
            if isinstance(self._config, dict):
                new = {**self._config, **new}
            self._config = body["config"] = new
        if tags is not None:
            body["tags"] = [str(tags)] if isinstance(tags, str) else [str(t) for t in tags]
        if name is not None:
            self.name = body["name"] = str(name)
        if notes is not None:
            body["notes"] = str(notes)
        if body:
            self._collector.put_update(wire.dumps(body))
        self._emit(stacklevel=3)

    # ---- lifecycle -----------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything logged so far and wait; True if the server has it all (False if offline)."""
        deadline = time.monotonic() + timeout
        if self._closing:  # finish(wait=False): wait for the run's end to be delivered, leave the threads
            self._collector.join(timeout)
            seq = self._collector.finish_seq
            return bool(seq) and self._sender.wait_delivered(seq, max(0.0, deadline - time.monotonic()))
        if self._finished:
            return True
        cut = self._collector.request_cut()
        cut.wait(timeout)
        done = cut.is_set() and self._sender.wait_delivered(cut.seq, max(0.0, deadline - time.monotonic()))
        self._emit(stacklevel=3)
        return done

    def finish(self, status: str | None = None, timeout: float | None = None, *, wait: bool = True) -> None:
        """Send what is left, mark the run ``status`` and stop the threads.

        ``status`` defaults to ``stopped`` when a ``stop_on`` alert stopped the run, else ``finished``.
        Waits up to ``timeout`` seconds (default ``finish_timeout``) until everything is delivered. When
        the server cannot be reached, what is left stays in the spool for ``losswatch sync`` and this
        returns at once.

        ``wait=False`` ends the run without waiting: later ``log()`` calls are ignored as after any
        finish, and the background threads deliver what is left and the status on their own. Nothing
        is lost: at interpreter exit losswatch waits for that delivery as ``finish()`` would, and a
        later ``finish()`` (or :meth:`flush`) waits for it too. The framework loggers end their run
        this way, so that ``trainer.fit()`` returns without a network round trip.
        """
        if status is None:
            status = "stopped" if self.should_stop else "finished"
        if status not in RUN_STATUSES:
            raise ValueError(f"losswatch: status must be one of {RUN_STATUSES}, got {status!r}")
        if not self._finished:
            self._finished = True
            self.log = self.log_eval = self._after_finish  # type: ignore[method-assign]
            if self._system is not None:
                self._system.stop()
            self._collector.finish(status)
            self._closing = True  # the threads deliver what is left; _close() waits for them (atexit too)
        if wait and self._closing:
            self._close(timeout)

    def _close(self, timeout: float | None) -> None:
        """Wait for the finished run's threads to deliver what is left (or spool it), then stop them."""
        self._closing = False
        atexit.unregister(self._atexit)
        deadline = time.monotonic() + (self._finish_timeout if timeout is None else timeout)
        self._collector.join(max(0.0, deadline - time.monotonic()))
        self._sender.close(max(0.5, deadline - time.monotonic()))
        self._emit(stacklevel=4)

    def _start_system(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"losswatch: system_metrics is a sampling interval in seconds (> 0), got {interval}")
        self._system = SystemSampler(self, interval)
        self._system.start()

    def _forked(self) -> None:
        """In a forked child (see :func:`_after_fork_in_child`)."""
        atexit.unregister(self._atexit)  # the parent's threads deliver; the child waits for none
        self._closing = False
        if self._finished:
            return
        self._finished = True
        parent = os.getppid()
        warned: list[bool] = []

        def drop(*args: Any, **kwargs: Any) -> None:
            if not warned:
                warned.append(True)
                warnings.warn(
                    f"losswatch: run {self.id} belongs to process {parent}; this forked child (pid "
                    f"{os.getpid()}) does not send its points, they are dropped. Log from the parent, or "
                    "call losswatch.init() in the child for a run of its own.",
                    LosswatchWarning, stacklevel=2,
                )

        self.log = self.log_eval = drop  # type: ignore[method-assign]
        self.flush = lambda timeout=30.0: False  # type: ignore[method-assign]

    def _atexit(self) -> None:
        try:
            self.finish(_exit_status_at_exit())
        except Exception:  # noqa: BLE001 - at exit, nothing left to protect but the exit itself
            log.exception("losswatch: finishing run %s at exit failed", self.id)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if tp is None:
            self.finish()
            return False
        ours = isinstance(exc, StopTraining) and exc.run_id == self.id
        status = "stopped" if ours or issubclass(tp, KeyboardInterrupt) else "failed"
        try:
            self.finish(status)
        except LosswatchError:  # strict mode: do not hide the training error behind ours
            log.exception("losswatch: finishing run %s failed", self.id)
        return ours  # our own StopTraining ends the with block cleanly: training stopped, script goes on

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for debugging and benchmarks."""
        if not self.enabled:
            return {"enabled": False}
        s = self._sender
        return {
            "queued_points": self._n_in - self._n_out,
            "sent_points": s.sent_points,
            "dropped_points": self.dropped_points + s.dropped_points,
            "offline": s.offline,
            "refused": s.blocked,
            "spool": str(self.spool_path) if self.spool_path and self.spool_path.exists() else None,
        }

    def __repr__(self) -> str:
        return f"<losswatch.Run {self.id} project={self.project!r} name={self.name!r}>"


def init(
    project: str | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | Any = None,
    tags: Iterable[str] | None = None,
    group: str | None = None,
    url: str | None = None,
    token: str | None = None,
    id: str | None = None,  # noqa: A002 - the name users expect
    strict: bool = False,
    transport: Transport | None = None,
    *,
    spool_dir: str | os.PathLike[str] | None = None,
    flush_every: int = 5000,
    flush_interval: float = 2.0,
    max_queue: int = 200_000,
    max_buffer_bytes: int = 24 << 20,
    rank_zero_only: bool = True,
    kinds: Mapping[str, str] | None = None,
    on_alert: Callable[[dict[str, Any]], Any] | None = None,
    stop_on: Iterable[str] | str = (),
    raise_on_stop: bool = False,
    alerts: Mapping[str, Any] | None = None,
    heartbeat_interval: float = 30.0,
    finish_timeout: float = 30.0,
    retry_min: float = 0.5,
    retry_max: float = 30.0,
    fsync: bool = True,
    system_metrics: float | bool | None = True,
) -> Run:
    """Start a run and its background sender; see ``docs/client.md`` for every option."""
    url, token, project = settings.url(url), settings.token(token), settings.project(project)
    if flush_every < 1 or flush_interval <= 0 or max_queue < flush_every or max_buffer_bytes < 1:
        raise ValueError("losswatch: need flush_every >= 1, flush_interval > 0, max_queue >= flush_every")
    for kind in (kinds or {}).values():
        if kind not in wire.SERIES_KINDS:
            raise ValueError(f"losswatch: unknown kind {kind!r}; one of {wire.SERIES_KINDS}")
    stop_rules = _stop_rules(stop_on)
    system_interval = system.interval_of(system_metrics)
    if alerts is not None and not isinstance(alerts, Mapping):
        raise ValueError(
            "losswatch: alerts= is a rule configuration such as {'plateau': False, 'silenced': ['stalled']}"
        )
    rank, world = _rank()
    run_id = settings.run_id(id) or uuid.uuid4().hex
    if not rank_zero_only and not settings.run_id(id):
        run_id = _shared_run_id(run_id, world)
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"losswatch: run ids are 1-64 of [A-Za-z0-9_-], got {run_id!r}")
    key_suffix = "" if rank_zero_only else f"@rank{rank}"
    enabled = not (rank_zero_only and rank != 0)
    torch = _modules.get("torch")
    client = {
        "losswatch": getattr(_modules.get("losswatch"), "__version__", "0"),
        "python": platform.python_version(),
    }
    if torch is not None:
        client["torch"] = str(getattr(torch, "__version__", ""))
    payload: dict[str, Any] = {"id": run_id, "host": socket.gethostname(), "client": client}
    if name is not None:
        payload["name"] = name
    if group is not None:
        payload["group"] = group
    if tags is not None:
        payload["tags"] = [str(t) for t in tags]
    if config is not None:
        payload["config"] = _jsonable(config)
    if alerts is not None:
        payload["alerts"] = _jsonable(alerts)
    if transport is None and enabled:
        transport = HTTPTransport(url, token)
    directory = Path(spool_dir) if spool_dir is not None else spool.default_dir()
    spool_path = directory / f"{run_id}{key_suffix}{spool.SUFFIX}"
    if enabled:
        _install_excepthook()
    run = Run(
        run_id=run_id, project=project, url=url, transport=transport, create_payload=payload,
        strict=strict, spool_path=spool_path, flush_every=flush_every, flush_interval=flush_interval,
        max_queue=max_queue, max_buffer_bytes=max_buffer_bytes, kinds=dict(kinds or {}),
        key_suffix=key_suffix, rank=rank, on_alert=on_alert, stop_on=stop_rules, raise_on_stop=raise_on_stop,
        heartbeat_interval=heartbeat_interval, finish_timeout=finish_timeout, retry_min=retry_min,
        retry_max=retry_max, fsync=fsync, enabled=enabled,
    )  # fmt: skip
    if enabled and system_interval:
        run._start_system(system_interval)
    return run
