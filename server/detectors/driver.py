"""The pure entry points the server calls inside its ingest transaction.

Per series the server keeps one JSON document, the *series state*::

    {"v": 1,                                  # state format version
     "last": [41200, 4.81],                   # last point seen (value JSON-safe: "NaN", "Infinity")
     "level": {"n": .., "e": .., "p": .., "last": ..},   # smoothed level, read by paired series
     "non_finite": {...}, "spike": {...}, ...}           # one entry per rule that ran, opaque

and per run one *stalled state* (``record_arrival`` / ``check_stalled``). Both are plain dicts
that ``json.dumps(..., allow_nan=False)`` accepts. Nothing here does I/O or keeps globals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Finding, alpha_of, decode_number, encode_number
from .pointwise import resolve_level
from .rules import SERIES_RULES, RuleConfig

STATE_VERSION = 1
LEVEL_WINDOW = 50
_ORDER = {r: i for i, r in enumerate(SERIES_RULES)}


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
    (values as floats, NaN/±Inf included). ``context``: ``lr`` (plateau), ``train_loss`` and
    ``train_key`` (overfitting), ``loss`` and ``loss_key`` (misalignment): one value for the batch or
    one per point; :func:`build_context` makes it. Returns the new series state (the one passed in is
    not modified) and the findings in step order.

    A batch that re-sends points already seen (a retry whose answer was lost) is recognised when it
    contains the last point seen with the same value, and those points are skipped. Any other step
    that goes backwards starts a new segment. The server can also pass only new or changed points.
    """
    ctx = context or {}
    st: dict[str, Any] = {"v": STATE_VERSION} if not rule_states else dict(rule_states)
    steps, values = _skip_replay(st.get("last"), steps, values)
    if not steps:
        return st, []
    st["level"] = _level(st.get("level"), steps, values)
    findings: list[Finding] = []
    divergence = None
    for rule in config.rules_for(key, kind):
        det = config.detector(rule)
        prev = st.get(rule)
        sub = det.initial_state() if prev is None else det._copy(prev)
        det.run_into(sub, steps, values, key, ctx, findings)
        st[rule] = sub
        if rule == "divergence":
            divergence = det
    st["last"] = [steps[-1], encode_number(values[-1])]
    if any(f.rule == "divergence" and f.details.get("escalated_from") for f in findings):
        findings = _hand_over(findings, st, divergence)
    findings.sort(key=lambda f: (f.step, _ORDER.get(f.rule, 99)))
    return st, findings


def series_level(rule_states: Mapping[str, Any] | None) -> float | None:
    """The smoothed level of a series (debiased EMA of its finite values), for paired rules."""
    lv = (rule_states or {}).get("level")
    if not lv or lv["n"] == 0:
        return None
    return lv["e"] / (1.0 - lv["p"])


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
    if not last or not steps or steps[0] > last[0]:
        return steps, values
    last_step, last_value = last[0], last[1]
    for j, s in enumerate(steps):
        if s > last_step:
            break
        if s == last_step and encode_number(values[j]) == last_value:
            return steps[j + 1:], values[j + 1:]
    return steps, values


def _level(lv: Mapping[str, Any] | None, steps: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    a = alpha_of(LEVEL_WINDOW)
    b = 1.0 - a
    if lv:
        n, e, p, last = lv["n"], lv["e"], lv["p"], lv["last"]
    else:
        n, e, p, last = 0, 0.0, 1.0, None
    for s, v in zip(steps, values, strict=True):
        if last is not None and s <= last:
            n, e, p = 0, 0.0, 1.0
        last = s
        if v - v == 0.0:
            n += 1
            e = b * e + a * v
            p *= b
    return {"n": n, "e": e, "p": p, "last": last}


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
        earlier = [g for g in own if g.step <= f.step]
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
    "series_level",
    "build_context",
    "record_arrival",
    "check_stalled",
    "decode_number",
]
