"""The pure entry points the server calls inside its ingest transaction.

Per series the server keeps one JSON document, the *series state*::

    {"v": 1,                                  # state format version
     "last": [41200, 4.81],                   # last point seen (value JSON-safe: "NaN", "Infinity")
     "level": {"n": .., "e": .., "p": .., "last": ..},   # smoothed level, read by paired series
     "non_finite": {...}, "spike": {...}, ...}           # one entry per rule that ran, opaque

and per run one *stalled state* (``record_arrival`` / ``check_stalled``). Both are plain dicts
that ``json.dumps(..., allow_nan=False)`` accepts. Nothing here does I/O or keeps state between calls
(``base.powers`` memoises ``b ** [0 or 1..n]`` and ``base.ema_last2`` pairs of them, pure functions of
their arguments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from losswatch.server.detectors.base import (
    FAST_MIN,
    HANDOVERS,
    PER_POINT,
    Column,
    Finding,
    alpha_of,
    decode_number,
    ema_last,
    ema_last2,
    ema_path,
    encode_number,
    increasing,
    powers,
)
from losswatch.server.detectors.incidents import EXPLAINED, chain, explain, series_level
from losswatch.server.detectors.pointwise import resolve_level
from losswatch.server.detectors.rules import SERIES_RULES, RuleConfig

STATE_VERSION = 1
#: the smoothed level paired rules read: 30 points (50 made a label-mapping bug's jump peak 3-6 evaluations late;
#: docs/alerts.md gives the corpus figures)
LEVEL_WINDOW = 30
_ORDER = {r: i for i, r in enumerate(SERIES_RULES)}
_LEVEL_KINDS = ("loss", "loss_component", "grad_norm")
BASE_WINDOW = 2000  # the slow level an alert's explanation compares with
_INDEXED = frozenset(("overfitting", "misalignment"))  # rules that read a batch point by point even when fast


#: values beyond this magnitude take the rules' loops, not their closed forms (which divide by (1 - a)^k down to
#: e^-200 and would overflow to ±Inf, a state JSON cannot hold); no loss or gradient norm comes near it
_HUGE = 1e200


def evaluate_series(
    rule_states: Mapping[str, Any] | None,
    key: str,
    kind: str,
    steps: Sequence[int],
    values: Sequence[float],
    config: RuleConfig,
    context: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """Run every applicable rule over a batch of one series' points.

    ``steps``/``values`` are the batch's points of this series in the order they were logged
    (values as floats, NaN/±Inf included): sequences, or numpy arrays (int64 steps, float64 values) as
    the server parses them, which the rules then see as :class:`~.base.Column` views (plain Python
    numbers, no per-point objects made on the numpy fast paths); both give the same result, bit for
    bit. ``context``: ``lr`` (plateau), ``train_loss`` and ``train_key`` (overfitting), ``loss`` and
    ``loss_key`` (misalignment): one value for the batch or one per point; :func:`build_context` makes it. Returns the new series state (the one passed in is
    not modified) and the findings in step order.

    A batch that re-sends points already seen (a retry whose answer was lost) is recognised when it
    contains the last point seen with the same value, and those points are skipped. Any other step
    that goes backwards starts a new segment. The server can also pass only new or changed points.
    """
    st, findings, _ = _evaluate(rule_states, key, kind, steps, values, config, context, False)
    return st, findings


def _evaluate(
    rule_states: Mapping[str, Any] | None,
    key: str,
    kind: str,
    steps: Sequence[int],
    values: Sequence[float],
    config: RuleConfig,
    context: Mapping[str, Any] | None,
    want_path: bool,
    rules: tuple[str, ...] | None = None,
) -> tuple[dict[str, Any], list[Finding], tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray] | None]:
    ctx = context or {}
    st: dict[str, Any] = {"v": STATE_VERSION} if not rule_states else dict(rule_states)
    n0 = len(steps)
    steps, values = _skip_replay(st.get("last"), steps, values)
    if not len(steps):
        return st, [], None
    if len(steps) < n0:  # points already seen were skipped: so are their per-point context values
        cut = n0 - len(steps)
        ctx = {k: (v[cut:] if isinstance(v, PER_POINT) and len(v) == n0 else v) for k, v in ctx.items()}
    arr: np.ndarray | None = None
    bounds: tuple[float, float] | None = None
    if rules is None:
        rules = config.rules_for(key, kind)
    if isinstance(steps, np.ndarray):  # the parsed columns (the server): checked without per-point objects
        cols = np.asarray(values, dtype=float)
        if len(steps) >= FAST_MIN:
            lo, hi = float(cols.min()), float(cols.max())  # NaN if any value is NaN
            if _finite_sum(cols, lo, hi) and increasing(st["last"][0] if st.get("last") else None, steps):
                arr = cols  # all finite, no resume inside: numpy fast paths
                bounds = (lo, hi)
        # the rules see plain Python numbers, as from lists: views where the rules read a few of them (the
        # fast paths), lists where they read every point (the loops; the paired rules index point by point)
        if arr is not None and _INDEXED.isdisjoint(rules):
            steps, values = Column(steps), Column(cols)
        else:
            steps, values = steps.tolist(), cols.tolist()
    elif len(steps) >= FAST_MIN:
        total = sum(values)
        if total - total == 0.0 and -_HUGE < min(values) and max(values) < _HUGE and increasing(
                st["last"][0] if st.get("last") else None, steps):
            arr = np.array(values, dtype=float)  # all finite, no resume inside: numpy fast paths
    path = None
    if kind in _LEVEL_KINDS:  # only losses are read by the paired rules (overfitting, misalignment)
        st["level"], path = _level(st.get("level"), steps, values, arr, want_path, clip=kind != "grad_norm",
                                   bounds=bounds)
    findings: list[Finding] = []
    divergence = None
    first = steps[0]
    for rule in rules:
        det = config.detector(rule)
        prev = st.get(rule)
        sub = det.initial_state() if prev is None else det._copy(prev)
        if arr is not None and sub["last"] is not None and first <= sub["last"]:
            det.run_into(sub, steps, values, key, ctx, findings)  # the rule's own view disagrees: be safe
        else:
            det.run_into(sub, steps, values, key, ctx, findings, arr)
        st[rule] = sub
        if rule == "divergence":
            divergence = det
    st["last"] = [steps[-1], encode_number(values[-1])]
    if not findings:  # the usual batch
        return st, findings, path
    if any(f.rule == "divergence" and f.details.get("escalated_from") for f in findings):
        findings = _hand_over(findings, st, divergence)
    findings.sort(key=lambda f: (f.step, _ORDER.get(f.rule, 99)))
    if findings and (st.get("superseded") or any(
            f.action == "fire" and f.rule in ("divergence", "non_finite") for f in findings)):
        # which alerts were open before the batch (the rules updated copies: the states passed in are as they were)
        was = rule_states or {}
        before = {r: ((was.get(r) or {}).get("active"), (was.get(r) or {}).get("onset")) for r in ("spike", "divergence")}
        findings = chain(findings, st, before)
    return st, findings, path


def build_context(
    key: str,
    kind: str,
    config: RuleConfig,
    series_kinds: Mapping[str, str],
    levels: Mapping[str, float | None],
    lr: float | Sequence[float] | None = None,
) -> dict[str, Any]:
    """The ``context`` of :func:`evaluate_series` for one series of a run.

    ``series_kinds``: the run's series (key -> kind); ``levels``: their :func:`series_level` (the
    server evaluates training series before evaluation series so that levels are current);
    ``lr``: the latest learning rate the run logged (or one per point of the batch).
    """
    ctx: dict[str, Any] = {}
    if lr is not None:
        ctx["lr"] = lr
    rules = config.rules_for(key, kind)
    if "overfitting" in rules:
        train = config.pair("overfitting", key, series_kinds)
        if train is not None:
            ctx["train_key"], ctx["train_loss"] = train, levels.get(train)
    if "misalignment" in rules:
        loss = config.pair("misalignment", key, series_kinds)
        if loss is not None:
            ctx["loss_key"], ctx["loss"] = loss, levels.get(loss)
    return ctx


def evaluate_run(
    states: Mapping[str, Mapping[str, Any] | None],
    series_kinds: Mapping[str, str],
    batch: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    config: RuleConfig,
    lr: float | Sequence[float] | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """One ingest batch of a run, all its series: what the server does per batch, without storage.

    ``states``: series key -> series state (missing: new series); ``series_kinds``: every series of
    the run (key -> kind); ``batch``: key -> (steps, values) of this batch (sequences or numpy arrays,
    as for :func:`evaluate_series`); ``lr``: the run's latest
    learning rate after the batch. Training-side series are evaluated before metrics, so paired rules
    read current levels. Returns the new states (all keys of ``states`` plus the batch's) and the
    findings.

    Batch invariance: what the rules find does not depend on how the run's points were cut into
    batches. When the batch carries the run's ``lr`` series, each point gets the LR logged at or before
    its step (points before the batch's first LR point keep the LR the rule saw last); an evaluation
    point gets the paired training series' level at its own step, not the level at the end of the batch.
    """
    levels = {k: series_level(states.get(k)) for k in series_kinds}
    paths: dict[str, tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]] = {}
    levels_before: dict[str, float | None] = {}
    rules_of = {k: config.rules_for(k, series_kinds[k]) for k in batch}  # each key's rules, looked up once
    lr_points = _lr_points(series_kinds, batch) if any("plateau" in r for r in rules_of.values()) else None
    paired = not all(_INDEXED.isdisjoint(r) for r in rules_of.values())
    new = dict(states)
    findings: list[Finding] = []
    def order(k: str) -> int:  # training side, then evaluation losses (overfitting reads a training loss),
        kind = series_kinds[k]  # then metrics: whatever a key's name sorts as (eval_loss comes before loss)
        return 2 if kind == "metric" else 1 if "overfitting" in rules_of[k] else 0

    for key in sorted(batch, key=order):
        steps, values = batch[key]
        rules = rules_of[key]
        if not rules or not len(steps):
            continue
        kind = series_kinds[key]
        if lr_points is None or "plateau" not in rules:  # plateau is the only rule that reads the LR
            point_lr = lr
        else:
            point_lr = _per_point_lr(lr_points, steps)
        ctx = build_context(key, kind, config, series_kinds, levels, lr=point_lr)
        for name, pair in (("train_loss", "train_key"), ("loss", "loss_key")):
            if pair in ctx and ctx[pair] in paths:
                ctx[name] = _level_at(paths[ctx[pair]], steps, levels_before.get(ctx[pair]))
        want = paired and kind != "metric"
        state, found, path = _evaluate(states.get(key), key, kind, steps, values, config, ctx, want, rules)
        new[key] = state
        if path is not None:
            levels_before[key] = levels.get(key)
            paths[key] = path
        levels[key] = series_level(state)
        if found:
            findings.extend(found)
    if any(f.action == "fire" and f.rule in EXPLAINED for f in findings):
        if lr_points is None:  # (looked up above only where plateau reads it)
            lr_points = _lr_points(series_kinds, batch)
        lrp = (lr_points[0].tolist(), lr_points[1].tolist()) if lr_points is not None else None
        findings = [explain(f, new, series_kinds, lrp, lr) if f.action == "fire" and f.rule in EXPLAINED
                    else f for f in findings]
    return new, findings



def _lr_points(series_kinds: Mapping[str, str], batch: Mapping[str, tuple[Sequence[int], Sequence[float]]]
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """The batch's LR points as arrays (steps increasing), or None (no LR series in the batch, or a
    resume inside it)."""
    for k, (st, vs) in batch.items():
        if series_kinds.get(k) == "lr" and len(st):
            ls, lv = np.asarray(st, dtype=np.int64), np.asarray(vs, dtype=float)
            return (ls, lv) if increasing(None, ls) else None
    return None


def _per_point_lr(lr_points: tuple[np.ndarray, np.ndarray], steps: Sequence[int] | np.ndarray
                  ) -> float | Column | list[Any]:
    """The LR in force at each step (the last LR point at or before it; None before the first): one
    value, a :class:`~.base.Column` (plateau reads it as an array; the loop gets the same Python floats a
    list holds) or a list where some point has none."""
    ls, lv = lr_points
    if len(steps) and steps[0] >= ls[0] and (lv.shape[0] == 1 or bool((lv == lv[0]).all())):
        return lv.item(0)  # one LR (as a set of the values would say: NaN never equals NaN)
    sa = np.asarray(steps)
    if sa.shape == ls.shape and bool((sa == ls).all()):
        return Column(lv)  # the usual batch: the LR logged at the very steps of the series
    if increasing(None, sa):  # no resume inside the batch: one binary search per point, in numpy
        idx = np.searchsorted(ls, sa, side="right") - 1
        if idx[0] >= 0:
            return Column(lv[idx])
        return [v if k >= 0 else None for k, v in zip(idx.tolist(), lv[idx].tolist(), strict=True)]
    out: list[Any] = []
    j = -1
    prev = None
    lsl, lvl = ls.tolist(), lv.tolist()
    for s in sa.tolist():
        if prev is not None and s < prev:
            j = -1  # a resume inside the batch: look up from the start
        while j + 1 < len(lsl) and lsl[j + 1] <= s:
            j += 1
        out.append(lvl[j] if j >= 0 else None)
        prev = s
    return out


def _level_at(path: tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray], steps: Sequence[int] | np.ndarray,
              before: float | None) -> list[Any]:
    """The paired series' level at each evaluation step: after its last point at or before the step."""
    ps, pv = path
    sa = np.asarray(steps)
    if len(ps) and increasing(None, ps) and increasing(None, sa):
        idx = np.searchsorted(np.asarray(ps), sa, side="right") - 1
        at = np.asarray(pv, dtype=float)[idx].tolist()
        if idx[0] >= 0:  # steps increasing: so are the indices, all found
            return at
        return [v if k >= 0 else before for k, v in zip(idx.tolist(), at, strict=True)]
    if isinstance(pv, np.ndarray):  # the loop below hands out plain Python numbers
        ps, pv = np.asarray(ps).tolist(), pv.tolist()
    out: list[Any] = []
    j = -1
    for s in sa.tolist():
        while j + 1 < len(ps) and ps[j + 1] <= s:
            j += 1
        out.append(pv[j] if j >= 0 else before)
    return out


def record_arrival(
    state: Mapping[str, Any] | None, now: float, config: RuleConfig, step: int | None = None,
    label: str = "the run",
) -> tuple[dict[str, Any], list[Finding]]:
    """A run sent points or a heartbeat at ``now`` (server time, seconds). Resolves a stall."""
    spec = config.rules["stalled"]
    st, out = spec.detector().arrive(dict(state) if state else None, now, step, label=label)
    return st, (out if spec.enabled else [])


def check_stalled(
    state: Mapping[str, Any] | None, now: float, config: RuleConfig, label: str = "the run"
) -> tuple[dict[str, Any], Finding | None]:
    """Periodic check of a running run; a finding at most once per silence."""
    spec = config.rules["stalled"]
    if not spec.enabled:
        return dict(state) if state else spec.detector().initial_state(), None
    return spec.detector().check(dict(state) if state else None, now, label=label)


def _skip_replay(
    last: list[Any] | None, steps: Sequence[int], values: Sequence[float]
) -> tuple[Sequence[int], Sequence[float]]:
    if not last or not len(steps) or steps[0] > last[0]:
        return steps, values
    last_step, last_value = last[0], last[1]
    for j, s in enumerate(steps):
        if s > last_step:
            break
        if s == last_step and encode_number(values[j]) == last_value:
            return steps[j + 1:], values[j + 1:]
    return steps, values


def _finite_sum(cols: np.ndarray, lo: float, hi: float) -> bool:
    """Whether the fast paths may take the values, given their smallest and largest: every value finite
    and within ±1e200 (the closed forms divide by up to e^200), and their sum added left to right finite
    (certain below 1e307 / n per value)."""
    if lo - lo != 0.0 or hi - hi != 0.0:
        return False  # a NaN or ±Inf among them
    if not -_HUGE < lo <= hi < _HUGE:
        return False  # the closed forms divide by (1 - a)^k down to e^-200: the loops take such values
    if max(-lo, hi) * cols.shape[0] < 1e307:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.cumsum(cols)[-1])
    return total - total == 0.0


def _level(
    lv: Mapping[str, Any] | None, steps: Sequence[int], values: Sequence[float], arr: np.ndarray | None = None,
    want_path: bool = False, clip: bool = True, bounds: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray] | None]:
    """Debiased EMA of the finite values, each clipped at three times the level before it (for a
    positive level; ``level + 2·|level|`` in general), so that one huge minibatch loss does not move
    the level that paired rules read (a single 40× batch would otherwise shift a 50-point EMA by
    1.6×). Per point, so the level does not depend on how points were batched. With ``want_path``
    also the (steps, levels) after each point, for evaluation points of the same batch. ``clip=False``
    (gradient norms: no paired rule reads them, only an alert's explanation): a plain EMA. ``bounds``: the
    smallest and largest of ``arr``, when known."""
    a = alpha_of(LEVEL_WINDOW)
    b = 1.0 - a
    a2 = alpha_of(BASE_WINDOW)
    if lv:
        n, e, p, last = lv["n"], lv["e"], lv["p"], lv["last"]
        sb, pb = lv.get("b", 0.0), lv.get("pb", 1.0)
    else:
        n, e, p, last = 0, 0.0, 1.0, None
        sb, pb = 0.0, 1.0
    if arr is not None and (last is None or steps[0] > last):
        m = arr.shape[0]
        if not clip or _never_clipped(n, e, p, arr, bounds):  # the usual batch: one closed form, nothing clipped
            pb *= (1.0 - a2) ** m
            if want_path:
                sb = ema_last(sb, arr, a2)
                path = ema_path(e, arr, a)
                pw = powers(b, m) * p
                lev = path / (1.0 - pw)
                n, e, p = n + m, float(path[m - 1]), float(pw[m - 1])
            else:  # the last element of each closed form, the same bits as the path's
                e, sb = ema_last2(e, a, sb, a2, arr)
                n, p = n + m, float(p * powers(b, m)[m - 1])
            out = {"n": n, "e": e, "p": p, "last": steps[-1], "b": sb, "pb": pb}
            return out, ((np.asarray(steps), lev) if want_path else None)
        # the closed form up to the next point to clip, that point as the loop does it, and so on
        levs: list[np.ndarray] = []
        i = 0
        for _ in range(HANDOVERS):
            if i >= m:
                break
            y = arr[i:]
            k = y.shape[0]
            if not want_path and (not clip or _never_clipped(n, e, p, y)):  # no path needed: the last
                # element of each closed form, the same bits as the path's
                sb = ema_last(sb, y, a2)
                pb *= (1.0 - a2) ** k
                n, e, p = n + k, ema_last(e, y, a), float(p * powers(b, k)[k - 1])
                i += k
                break
            path = ema_path(e, y, a)
            pw = p * powers(b, k)
            lev = path / (1.0 - pw)
            if clip:
                prev = np.concatenate(([e / (1.0 - p) if n else np.inf], lev[:-1]))
                over = y > prev + 2.0 * np.abs(prev)
                if over.any():
                    k = int(np.argmax(over))
            if k:
                sb = ema_last(sb, y[:k], a2)
                pb *= (1.0 - a2) ** k
                n, e, p = n + k, float(path[k - 1]), float(pw[k - 1])
                if want_path:
                    levs.append(lev[:k])
                i += k
            if i < m:  # a value above three times the level: clipped there
                lvl = e / (1.0 - p)
                v = lvl + 2.0 * abs(lvl)
                n += 1
                e = b * e + a * v
                p *= b
                sb = (1.0 - a2) * sb + a2 * v
                pb *= 1.0 - a2
                if want_path:
                    levs.append(np.array([e / (1.0 - p)]))
                i += 1
        if i >= m:
            out = {"n": n, "e": e, "p": p, "last": steps[-1], "b": sb, "pb": pb}
            return out, ((np.asarray(steps), np.concatenate(levs)) if want_path else None)
        ps: list[int] = list(steps[:i]) if want_path else []  # many points to clip: the loop takes the rest
        pl: list[float] = np.concatenate(levs).tolist() if want_path and levs else []
        last = steps[i - 1] if i else last
        steps, values = steps[i:], values[i:]
    else:
        ps, pl = [], []
    for s, v in zip(steps, values, strict=True):
        if last is not None and s <= last:
            n, e, p, sb, pb = 0, 0.0, 1.0, 0.0, 1.0
        last = s
        if v - v == 0.0:
            if n and clip:
                lvl = e / (1.0 - p)
                hi = lvl + 2.0 * abs(lvl)
                if v > hi:
                    v = hi
            n += 1
            e = b * e + a * v
            p *= b
            sb = (1.0 - a2) * sb + a2 * v
            pb *= 1.0 - a2
        if want_path and n:
            ps.append(s)
            pl.append(e / (1.0 - p))
    return {"n": n, "e": e, "p": p, "last": last, "b": sb, "pb": pb}, ((ps, pl) if want_path else None)


def _never_clipped(n: int, e: float, p: float, y: np.ndarray, bounds: tuple[float, float] | None = None) -> bool:
    """True when no value of ``y`` can exceed three times the level before it, so the clipping
    test of :func:`_level` need not be run point by point. The debiased level after a point is a
    convex combination of the level before it and the point, so it never falls below the smallest of
    the starting level and the values; every value at most three times that bound (less a margin far
    above the closed form's rounding) is never clipped. ``bounds``: ``y``'s smallest and largest, if known."""
    lo, hi = bounds if bounds is not None else (float(y.min()), float(y.max()))
    if n:
        lo = min(lo, e / (1.0 - p))
    return lo > 0.0 and hi <= 3.0 * lo * (1.0 - 1e-9)


def _hand_over(findings: list[Finding], st: dict[str, Any], divergence: Any) -> list[Finding]:
    """A spike that did not recover opens the divergence alert, unless divergence already did."""
    own = [f for f in findings if f.rule == "divergence" and f.action == "fire" and not f.details.get("escalated_from")]
    out = []
    for f in findings:
        if not (f.rule == "divergence" and f.details.get("escalated_from")):
            out.append(f)
            continue
        if divergence is None:
            continue  # divergence is silenced for this series: the spike's escalate finding says it all
        dst = st["divergence"]
        # an earlier verdict of divergence's own in this batch, still open at the escalation (one resolved
        # before it is closed, as it would be had the points come in several batches)
        earlier = [g for g in own if g.step <= f.step and not any(
            r.rule == "divergence" and r.action == "resolve" and g.step <= r.step <= f.step for r in findings)]
        if earlier:
            continue
        later = [g for g in own if g.step > f.step]
        if later:  # keep the earlier verdict, drop the detector's own later one
            out = [g for g in out if g not in later]
            own = [g for g in own if g not in later]
            out.append(f)
            continue
        if dst.get("active"):
            continue  # already open from an earlier batch
        level = resolve_level(f)
        divergence.adopt(dst, f.onset_step, level if level is not None else math.inf)
        out.append(f)
    return out


__all__ = [
    "evaluate_series",
    "evaluate_run",
    "series_level",
    "build_context",
    "record_arrival",
    "check_stalled",
    "decode_number",
]
