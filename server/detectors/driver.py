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

import numpy as np

from losswatch.server.detectors.base import (
    FAST_MIN,
    Finding,
    alpha_of,
    decode_number,
    ema_path,
    encode_number,
    increasing,
)
from losswatch.server.detectors.pointwise import resolve_level
from losswatch.server.detectors.rules import SERIES_RULES, RuleConfig

STATE_VERSION = 1
LEVEL_WINDOW = 50
_ORDER = {r: i for i, r in enumerate(SERIES_RULES)}
_EVAL_LAST = {"metric": 1}  # training-side series first: paired rules read their current level


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
    arr = None
    if len(steps) >= FAST_MIN:
        total = sum(values)
        if total - total == 0.0 and increasing(st["last"][0] if st.get("last") else None, steps):
            arr = np.array(values, dtype=float)  # all finite, no resume inside: numpy fast paths
    st["level"] = _level(st.get("level"), steps, values, arr)
    findings: list[Finding] = []
    divergence = None
    for rule in config.rules_for(key, kind):
        det = config.detector(rule)
        prev = st.get(rule)
        sub = det.initial_state() if prev is None else det._copy(prev)
        if arr is not None and sub["last"] is not None and steps[0] <= sub["last"]:
            det.run_into(sub, steps, values, key, ctx, findings)  # the rule's own view disagrees: be safe
        else:
            det.run_into(sub, steps, values, key, ctx, findings, arr)
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


def evaluate_run(
    states: Mapping[str, Mapping[str, Any] | None],
    series_kinds: Mapping[str, str],
    batch: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    config: RuleConfig,
    lr: float | Sequence[float] | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """One ingest batch of a run, all its series: what the server does per batch, without storage.

    ``states``: series key -> series state (missing: new series); ``series_kinds``: every series of
    the run (key -> kind); ``batch``: key -> (steps, values) of this batch; ``lr``: the run's latest
    learning rate after the batch. Training-side series are evaluated before metrics, so paired rules
    read current levels. Returns the new states (all keys of ``states`` plus the batch's) and the
    findings.
    """
    levels = {k: series_level(states.get(k)) for k in series_kinds}
    new = dict(states)
    findings: list[Finding] = []
    for key in sorted(batch, key=lambda k: _EVAL_LAST.get(series_kinds[k], 0)):
        steps, values = batch[key]
        kind = series_kinds[key]
        if not len(steps) or not config.rules_for(key, kind):
            continue
        ctx = build_context(key, kind, config, series_kinds, levels, lr=lr)
        state, found = evaluate_series(states.get(key), key, kind, steps, values, config, ctx)
        new[key] = state
        levels[key] = series_level(state)
        findings.extend(found)
    return new, findings


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


def _level(
    lv: Mapping[str, Any] | None, steps: Sequence[int], values: Sequence[float], arr: np.ndarray | None = None
) -> dict[str, Any]:
    """Debiased EMA of the finite values, each clipped at twice the level at the start of the batch
    (for a positive level; ``level + |level|`` in general), so that one huge minibatch loss does not
    move the level that paired rules read (a single 40× batch would otherwise shift a 50-point EMA
    by 1.6×)."""
    a = alpha_of(LEVEL_WINDOW)
    b = 1.0 - a
    if lv:
        n, e, p, last = lv["n"], lv["e"], lv["p"], lv["last"]
    else:
        n, e, p, last = 0, 0.0, 1.0, None
    hi = math.inf if n == 0 else e / (1.0 - p) + abs(e / (1.0 - p))
    if arr is not None and (last is None or steps[0] > last):
        m = arr.shape[0]
        y = arr if hi == math.inf else np.minimum(arr, hi)
        return {"n": n + m, "e": float(ema_path(e, y, a)[-1]), "p": p * b**m, "last": steps[-1]}
    for s, v in zip(steps, values, strict=True):
        if last is not None and s <= last:
            n, e, p, hi = 0, 0.0, 1.0, math.inf
        last = s
        if v - v == 0.0:
            n += 1
            e = b * e + a * (v if v < hi else hi)
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
    "evaluate_run",
    "series_level",
    "build_context",
    "record_arrival",
    "check_stalled",
    "decode_number",
]
