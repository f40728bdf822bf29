"""What every detector shares: the :class:`Finding`, the state contract and number formatting.

A detector is a frozen dataclass whose fields are its parameters. It is pure: ``run`` takes the
previous state (a JSON-serialisable dict, or ``None`` for a new series) and a batch of points in
arrival order, and returns a new state and the findings; the state passed in is never modified.

Segments: a step that is not greater than the last step seen means the job was resumed from an
earlier checkpoint and re-logs steps it had already sent. The detector then closes its active alert
(a ``resolve`` finding that says so), forgets everything learned on the old segment and starts
learning again, so a resume never trips a detector.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

ACTIONS = ("fire", "resolve", "escalate")
SEVERITIES = ("info", "warning", "critical")
INF = math.inf


@dataclass(frozen=True)
class Finding:
    """One verdict of a detector about one series (or, for ``stalled``, one run).

    ``action``: ``fire`` opens an alert for (series, rule); ``resolve`` closes it; ``escalate``
    closes it as superseded: a ``fire`` of a stronger rule (``divergence``) follows in the same list.
    ``step`` is where the verdict was reached, ``onset_step`` where the condition began (an alert's
    onset). ``value`` is the number judged (may be NaN/±Inf), ``reference`` the number it was compared
    with (a best, a baseline, a threshold). ``details`` holds machine-readable extras (JSON-safe).
    """

    rule: str
    action: str
    step: int
    value: float | None
    reference: float | None
    severity: str
    reason: str
    key: str = ""
    onset_step: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: non-finite numbers spelled ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
        d = asdict(self)
        d["value"] = encode_number(self.value)
        d["reference"] = encode_number(self.reference)
        return d


def encode_number(v: float | None) -> float | str | None:
    """A float as stored in state or JSON: itself, ``None``, or the wire's non-finite spelling."""
    if v is None:
        return None
    if v != v:
        return "NaN"
    if v == INF:
        return "Infinity"
    if v == -INF:
        return "-Infinity"
    return v


def decode_number(v: float | str | None) -> float | None:
    if isinstance(v, str):
        return {"NaN": math.nan, "Infinity": INF, "-Infinity": -INF}[v]
    return v


def is_finite(v: float) -> bool:
    return v - v == 0.0


def num(v: float | None) -> str:
    """A number for a human: 3 significant digits, ``4.81``, ``1.50``, ``0.000123``, ``2.5e+06``."""
    if v is None:
        return "n/a"
    if v != v:
        return "NaN"
    if v in (INF, -INF):
        return "+Inf" if v > 0 else "-Inf"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.3g}"
    s = f"{v:#.3g}"
    return s[:-1] if s.endswith(".") else s


def ratio_text(value: float, reference: float) -> str:
    """``3.2×`` when both are positive, otherwise the signed difference."""
    if reference > 0 and value > 0:
        return f"{value / reference:.1f}×"
    return f"{num(value - reference)} away from"


def series_label(key: str) -> str:
    return key or "the series"


# --- parameter validation (used by the dataclasses' __post_init__) -------------------------------


def check_int(obj: Any, name: str, minimum: int = 0) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{obj.rule}.{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{obj.rule}.{name} must be >= {minimum}, got {v}")


def check_float(obj: Any, name: str, minimum: float = 0.0, maximum: float = INF, strict: bool = False) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not is_finite(float(v)):
        raise ValueError(f"{obj.rule}.{name} must be a finite number, got {v!r}")
    if v < minimum or (strict and v == minimum) or v > maximum:
        lo = ">" if strict else ">="
        hi = f" and <= {maximum}" if maximum != INF else ""
        raise ValueError(f"{obj.rule}.{name} must be {lo} {minimum}{hi}, got {v}")
    object.__setattr__(obj, name, float(v))


def check_choice(obj: Any, name: str, choices: Sequence[str]) -> None:
    v = getattr(obj, name)
    if v not in choices:
        raise ValueError(f"{obj.rule}.{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")


def check_bool(obj: Any, name: str) -> None:
    v = getattr(obj, name)
    if not isinstance(v, bool):
        raise ValueError(f"{obj.rule}.{name} must be true or false, got {v!r}")


def alpha_of(window: int) -> float:
    """EMA weight whose centre of mass matches a ``window``-point moving average (pandas' span)."""
    return 2.0 / (window + 1.0)


#: Below this, ``1 - p`` (an EMA's debiasing divisor, ``p`` the weight left on its start) rounds to exactly 1.0, so
#: the fast paths skip dividing by it (the same bits): true of every run past its first few thousand points.
NO_DEBIAS = 2.0 ** -54
#: Batches at least this long (all steps increasing, all values finite) take the numpy fast paths.
FAST_MIN = 32
#: Points a fast path hands to the per-point loop in one batch before the loop takes the rest (each hand-over
#: costs a numpy pass over the points left: a series where every point needs the loop stays linear).
HANDOVERS = 16


_POWERS: dict[tuple[float, int, int], np.ndarray] = {}
_POWERS_HELD = 0  # elements in _POWERS
_POWERS_MAX = 1 << 21  # elements kept in all (16 MiB): enough for every (factor, batch length) a server sees


def powers(b: float, n: int, start: int = 1) -> np.ndarray:
    """``b ** [start, .., n]`` as floats (read-only; ``start`` 0 or 1). The same expression every time,
    kept per exact ``(b, n, start)``: ``pow`` is the slowest step of the closed forms, and a server sees
    few factors and batch lengths. (Kept per length, not sliced from a longer one, so each element is
    computed as the uncached expression computes it.)"""
    global _POWERS_HELD
    key = (b, n, start)
    out = _POWERS.get(key)
    if out is None:
        out = b ** np.arange(start, n + 1, dtype=float)
        out.flags.writeable = False
        if n <= _POWERS_MAX // 8:
            if _POWERS_HELD + n > _POWERS_MAX:  # (a running count: summing the lengths cost more than the pow)
                _POWERS.clear()
                _POWERS_HELD = 0
            _POWERS[key] = out
            _POWERS_HELD += out.shape[0]
    return out


def ema_path(e0: float, y: np.ndarray, a: float, out: np.ndarray | None = None) -> np.ndarray:
    """The EMA after each point, ``e[t] = (1-a)·e[t-1] + a·y[t]`` from ``e0``, computed in closed form
    (``e[t] = b^t·(e0 + a·Σ_k b^-k·y[k])``) in blocks short enough that ``b^-k`` stays in range.
    ``out``: a float array of ``y``'s length to write it into (returned)."""
    b = 1.0 - a
    n = y.shape[0]
    if b <= 0.0:
        if out is None:
            return y.astype(float, copy=True)
        out[:] = y
        return out
    block = max(1, min(n, int(200.0 / -math.log(b))))
    pw_full = powers(b, block)
    if block >= n:  # one block (the usual batch): every step in place
        pw = pw_full if n == block else pw_full[:n]
        seg = np.divide(y, pw, out=out)
        np.add.accumulate(seg, out=seg)  # np.cumsum without its Python wrapper: the same additions
        seg *= a
        seg += e0
        seg *= pw
        return seg
    if out is None:
        out = np.empty(n)
    for i in range(0, n, block):
        yb = y[i:i + block]
        m = yb.shape[0]
        pw = pw_full[:m]
        seg = pw * (e0 + a * np.cumsum(yb / pw))
        out[i:i + m] = seg
        e0 = float(seg[-1])
    return out


def ema_last(e0: float, y: np.ndarray, a: float) -> float:
    """``ema_path(e0, y, a)[-1]`` (bit for bit) without the path: only each block's last element."""
    b = 1.0 - a
    n = y.shape[0]
    if b <= 0.0:
        return float(y[-1])
    block = max(1, min(n, int(200.0 / -math.log(b))))
    pw_full = powers(b, block)
    for i in range(0, n, block):
        yb = y[i:i + block]
        m = yb.shape[0]
        t = np.divide(yb, pw_full if m == block else pw_full[:m])
        np.add.accumulate(t, out=t)
        e0 = float(pw_full[m - 1] * (e0 + a * t.item(m - 1)))
    return e0


def ema_last2(e1: float, a1: float, e2: float, a2: float, y: np.ndarray) -> tuple[float, float]:
    """``(ema_last(e1, y, a1), ema_last(e2, y, a2))`` bit for bit, both closed forms in one division and
    one running sum over a two-row array when each takes one block (a running sum adds each element to
    the one before it, whatever the array's shape: the same additions in the same order)."""
    n = y.shape[0]
    b1, b2 = 1.0 - a1, 1.0 - a2
    if not n or b1 <= 0.0 or b2 <= 0.0 or n > int(200.0 / -math.log(b1)) or n > int(200.0 / -math.log(b2)):
        return ema_last(e1, y, a1), ema_last(e2, y, a2)
    key = (b1, b2, n)
    pw = _PAIRS.get(key)
    if pw is None:
        pw = np.stack((powers(b1, n), powers(b2, n)))
        pw.flags.writeable = False
        if len(_PAIRS) >= 64:  # (each at most 2 x 2,998 floats: one block of the faster EMA)
            _PAIRS.clear()
        _PAIRS[key] = pw
    t = np.divide(y, pw)
    np.add.accumulate(t, axis=1, out=t)
    return (float(pw[0, n - 1] * (e1 + a1 * t.item(0, n - 1))),
            float(pw[1, n - 1] * (e2 + a2 * t.item(1, n - 1))))


_PAIRS: dict[tuple[float, float, int], np.ndarray] = {}


class Column(Sequence[Any]):
    """A read-only sequence view of a numpy column (the batch's steps or values as parsed) that hands
    out plain Python numbers, as a list would, without making one: an item is ``int``/``float``, a
    slice is another view, iterating makes the list once. ``numpy.asarray`` gets the array back.
    The driver passes batches to the rules in this form, so the numpy fast paths cost no per-point
    Python objects."""

    __slots__ = ("a",)

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __len__(self) -> int:
        return self.a.shape[0]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Column(self.a[i])
        return self.a.item(i)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.a.tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.a if dtype is None else self.a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"Column({self.a.tolist()!r})"


#: the context values that hold one value per point (a :class:`Column`: the driver's per-point LR, no list made)
PER_POINT = (list, tuple, Column)


# --- the detector contract -------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """Base class: parameters are the dataclass fields; subclasses implement ``_fresh`` and ``_run``."""

    rule: ClassVar[str] = ""
    severity: ClassVar[str] = "warning"
    #: state entries a new segment keeps (the run's starting level: a resumed run is judged against
    #: where the run started, not where it resumed)
    keep: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def initial_state(self) -> dict[str, Any]:
        st = self._fresh()
        st["seg"] = 0
        st["last"] = None
        return st

    def update(
        self, state: dict[str, Any] | None, step: int, value: float, *, key: str = "", **context: Any
    ) -> tuple[dict[str, Any], list[Finding]]:
        """One point. Same as :meth:`run` with a batch of one."""
        return self.run(state, (step,), (value,), key=key, context=context)

    def run(
        self,
        state: dict[str, Any] | None,
        steps: Sequence[int],
        values: Sequence[float],
        *,
        key: str = "",
        context: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[Finding]]:
        """A batch of points in arrival order -> (new state, findings in step order).

        ``context`` values are either one value for the whole batch or a sequence aligned with
        ``steps`` (e.g. the learning rate at each step).
        """
        st = self.initial_state() if state is None else self._copy(state)
        out: list[Finding] = []
        self.run_into(st, steps, values, key, context or {}, out)
        return st, out

    def run_into(
        self,
        st: dict[str, Any],
        steps: Sequence[int],
        values: Sequence[float],
        key: str,
        context: Mapping[str, Any],
        out: list[Finding],
        arr: np.ndarray | None = None,
    ) -> None:
        """Like :meth:`run` but updates ``st`` in place (the driver copies once per batch).

        ``arr``: the values as a float array, passed by the driver when the steps are increasing
        (past the last step seen) and every value is finite; detectors then may take a numpy path.
        """
        n = len(steps)
        if n != len(values):
            raise ValueError(f"{len(steps)} steps but {len(values)} values")
        last = st["last"]
        if arr is not None:
            self._run(st, steps, values, key, context, out, arr)
            st["last"] = steps[-1]
            return
        start = 0
        for i in range(n):
            s = steps[i]
            if last is not None and s <= last:
                if i > start:
                    self._run(st, steps[start:i], values[start:i], key, _slice(context, n, start, i), out)
                    last = steps[i - 1]
                self._new_segment(st, last, s, key, out)
                start = i
            last = s
        if start < n:
            self._run(st, steps[start:], values[start:], key, _slice(context, n, start, n), out)
            st["last"] = steps[-1]

    def _new_segment(self, st: dict[str, Any], last: int, step: int, key: str, out: list[Finding]) -> None:
        if st.get("active"):
            out.append(
                Finding(
                    rule=self.rule,
                    action="resolve",
                    step=step,
                    value=None,
                    reference=None,
                    severity=st.get("sev") or self.severity,
                    reason=(
                        f"{series_label(key)} went back from step {last:,} to {step:,} (resumed from a "
                        f"checkpoint): new segment, the {self.rule} alert no longer applies"
                    ),
                    key=key,
                    onset_step=st.get("onset"),
                    details={"segment_reset": True},
                )
            )
        seg = st["seg"] + 1
        kept = {k: st.get(k) for k in self.keep}
        st.clear()
        st.update(self._fresh())
        st.update(kept)
        st["seg"] = seg
        st["last"] = None

    def _copy(self, state: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(state)  # (then the lists, which the rules change in place: faster than a comprehension)
        for k, v in state.items():
            if isinstance(v, list):
                out[k] = list(v)
        return out

    # subclasses
    def _fresh(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(
        self,
        st: dict[str, Any],
        steps: Sequence[int],
        values: Sequence[float],
        key: str,
        context: Mapping[str, Any],
        out: list[Finding],
        arr: np.ndarray | None = None,
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _slice(context: Mapping[str, Any], n: int, i: int, j: int) -> Mapping[str, Any]:
    if i == 0 and j == n:
        return context
    return {
        k: (v[i:j] if isinstance(v, PER_POINT) and len(v) == n else v) for k, v in context.items()
    }


def increasing(last: int | None, steps: Sequence[int] | np.ndarray) -> bool:
    """Every step after ``last`` and after the one before it (no resume inside the batch)."""
    if not len(steps) or (last is not None and steps[0] <= last):
        return False
    if isinstance(steps, (np.ndarray, Column)):
        a = np.asarray(steps)
        return bool((a[1:] > a[:-1]).all())
    seq = steps if isinstance(steps, list) else list(steps)
    return all(map(operator.lt, seq, seq[1:]))  # strictly increasing, in C: no sort, no set


def per_point(context: Mapping[str, Any], name: str, n: int) -> Sequence[Any]:
    """A context entry as one value per point (``None`` where absent)."""
    v = context.get(name)
    if isinstance(v, PER_POINT):
        if len(v) != n:
            raise ValueError(f"context {name!r} has {len(v)} values for {n} points")
        return v
    return (v,) * n
