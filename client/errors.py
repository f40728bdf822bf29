"""Errors and warnings of the losswatch client.

The tree, in the manner of httpx::

    LosswatchError                 base of everything the client raises
    ├── TransportError             the request did not get an HTTP answer (refused, reset, timeout, DNS)
    └── ServerError                the server answered with an error status (.status, .code, .message)

By default the client never raises these in the training loop: it warns once with
:class:`LosswatchWarning` and keeps going (points are spooled to disk when they cannot be sent).
With ``losswatch.init(..., strict=True)`` the same problems are raised instead, from the next
``run.log()``, ``run.log_eval()`` or ``run.finish()`` call on the training thread.

Apart from the tree, :class:`StopTraining` is raised on purpose: with ``losswatch.init(stop_on=...,
raise_on_stop=True)`` it ends the training loop at the next ``run.log()`` after an alert whose rule
is in ``stop_on`` came back from the server (it is not a ``LosswatchError``: nothing went wrong
with losswatch).

Arguments that are wrong in themselves (an unknown series kind, a malformed run id) raise
``ValueError`` at once, as any Python function would.
"""

from __future__ import annotations

from typing import Any


class LosswatchError(Exception):
    """Base class of the errors raised by the losswatch client."""


class TransportError(LosswatchError):
    """The request got no HTTP answer: connection refused or reset, timeout, name resolution."""


class ServerError(LosswatchError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``code`` and ``message`` come from the server's error envelope
    (``{"error": {"code": ..., "message": ..., "details": ...}}``) when it sent one.
    """

    def __init__(self, status: int, code: str = "", message: str = "", details: Any = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        text = f"HTTP {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message}"
        super().__init__(text)


class LosswatchWarning(UserWarning):
    """A delivery problem the client handled without stopping training (each kind is warned once)."""


class StopTraining(Exception):
    """Raised by ``run.log()``/``run.log_eval()`` once an alert whose rule is in ``stop_on`` arrived
    (only with ``raise_on_stop=True``; otherwise ``run.should_stop`` is the signal).

    ``alert`` is the alert (a dict as the server sent it: ``rule``, ``series``, ``onset_step``,
    ``message``...) and ``run_id`` the run. Raised once per run. Leaving a ``with losswatch.init(...)``
    block, it is swallowed and the run is marked ``stopped``; uncaught elsewhere, the run is marked
    ``stopped`` at exit.
    """

    def __init__(self, alert: dict[str, Any], run_id: str = "") -> None:
        self.alert = alert
        self.run_id = run_id
        rule = alert.get("rule") or alert.get("kind") or "?"
        where = alert.get("series") or alert.get("key") or "the run"
        step = alert.get("onset_step", alert.get("step"))
        text = str(alert.get("message") or f"{rule} on {where}")
        super().__init__(
            f"losswatch: stopping training of run {run_id}: {rule} alert on {where}"
            + (f" at step {step}" if step is not None else "")
            + f" ({text})"
        )
