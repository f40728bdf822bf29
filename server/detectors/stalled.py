"""``stalled``: a running run that sends nothing for several times its own usual interval.

Unlike the other rules this one is judged on a clock. The server calls :meth:`Stalled.arrive` for
each ingest request or heartbeat of a run (server receive time, so client clocks do not matter)
and :meth:`Stalled.check` periodically for each running run. State is per run.

The limit is the largest of ``factor`` × the EWMA of the run's inter-arrival times, ``min_seconds``
and ``gap_factor`` × the longest gap seen so far while healthy (so a run that pauses for a long
evaluation every epoch is not reported at each evaluation once it has done one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from losswatch.server.detectors.base import Finding, alpha_of, check_float, check_int


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Stalled:
    """Parameters:
        factor: multiple of the usual interval (EWMA of inter-arrival times) that counts as silence.
        min_seconds: never report a silence shorter than this.
        gap_factor: multiple of the longest healthy gap seen so far that counts as silence.
        window: EWMA span, in arrivals.
        warmup: inter-arrival intervals seen before the rule can fire.
    """

    rule = "stalled"
    severity = "warning"
    factor: float = 10.0
    min_seconds: float = 60.0
    gap_factor: float = 1.5
    window: int = 20
    warmup: int = 3

    def __post_init__(self) -> None:
        check_float(self, "factor", 1.0)
        check_float(self, "min_seconds", 0.0)
        check_float(self, "gap_factor", 0.0)
        check_int(self, "window", 1)
        check_int(self, "warmup", 1)

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("factor", "min_seconds", "gap_factor", "window", "warmup")}

    def initial_state(self) -> dict[str, Any]:
        return {"last": None, "step": None, "n": 0, "mean": None, "max_gap": 0.0, "active": False, "since": None}

    def limit(self, state: dict[str, Any]) -> float | None:
        """Seconds of silence that count as stalled, or None while still learning the interval."""
        if state["n"] < self.warmup or state["mean"] is None:
            return None
        return max(self.factor * state["mean"], self.min_seconds, self.gap_factor * state["max_gap"])

    def arrive(
        self, state: dict[str, Any] | None, now: float, step: int | None = None, *, label: str = "the run"
    ) -> tuple[dict[str, Any], list[Finding]]:
        """The run sent something at ``now`` (seconds); ``step`` is its latest step when known."""
        st = self.initial_state() if state is None else dict(state)
        out: list[Finding] = []
        last = st["last"]
        if last is not None and now < last:
            return st, out  # an older request finishing late says nothing about silence
        if last is not None:
            gap = now - last
            if st["active"]:
                st["active"] = False
                out.append(
                    Finding(
                        self.rule, "resolve", st["step"] if step is None else step, gap, None, self.severity,
                        f"{label} is sending again after {duration(gap)} of silence", "", st["since"],
                    )
                )
            else:
                a = alpha_of(self.window)
                st["mean"] = gap if st["mean"] is None else (1.0 - a) * st["mean"] + a * gap
                st["n"] += 1
                if st["n"] > self.warmup:  # gaps of the first arrivals (start-up, first compile) don't count
                    st["max_gap"] = max(st["max_gap"], gap)
        st["last"] = now
        if step is not None:
            st["step"] = step
        return st, out

    def check(
        self, state: dict[str, Any] | None, now: float, *, label: str = "the run"
    ) -> tuple[dict[str, Any], Finding | None]:
        """Judge the silence at ``now``; fires once per silence (the state remembers)."""
        if state is None:
            return self.initial_state(), None
        limit = self.limit(state)
        if state["active"] or limit is None or state["last"] is None:
            return state, None
        silence = now - state["last"]
        if silence <= limit:
            return state, None
        st = dict(state, active=True, since=state["step"])
        step = state["step"] if state["step"] is not None else 0
        at = f" (last step {step:,})" if state["step"] is not None else ""
        return st, Finding(
            self.rule, "fire", step, silence, limit, self.severity,
            f"{label} has sent nothing for {duration(silence)}{at}; it usually sends every "
            f"{duration(state['mean'])} (limit {duration(limit)})",
            "", state["step"],
        )
