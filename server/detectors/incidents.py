"""One incident per problem, and alerts that explain themselves.

- :func:`chain`: a divergence that fires while the series' spike alert is open supersedes it (one incident,
  rising severity), and a NaN/Inf during an open spike or divergence names the incident it ends.
- :func:`explain`: a loss alert names the components that moved and their share of the change, the LR and
  the gradient norm against their baselines, and the step range to zoom on.

Pure, like the rest of the detectors: findings and series states in, findings out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from losswatch.server.detectors.base import Finding, num, series_label


def series_level(rule_states: Mapping[str, Any] | None) -> float | None:
    """The smoothed level of a series (debiased EMA of its finite values), for paired rules."""
    lv = (rule_states or {}).get("level")
    if not lv or lv["n"] == 0:
        return None
    return lv["e"] / (1.0 - lv["p"])


EXPLAINED = ("spike", "divergence", "plateau")


def series_baseline(rule_states: Mapping[str, Any] | None) -> float | None:
    """The slow level of a series (debiased EMA over ``BASE_WINDOW`` points), what it was before a change."""
    lv = (rule_states or {}).get("level")
    if not lv or lv.get("pb", 1.0) >= 1.0:
        return None
    return lv["b"] / (1.0 - lv["pb"])


def explain(f: Finding, states: Mapping[str, Any], kinds: Mapping[str, str],
             lr_points: tuple[list[int], list[float]] | None, lr: Any) -> Finding:
    """A loss alert that explains itself: the components that moved and their share of the change, the
    LR and the gradient norm against their baselines, and the step range to look at (``details``)."""
    if kinds.get(f.key) != "loss":
        return f
    stage = f.key.split("/", 1)[0] + "/" if "/" in f.key else ""
    moved = []
    for k, kd in kinds.items():
        if kd == "loss_component" and (k.startswith(f.key + "/") or (stage and k.startswith(stage))):
            now, base = series_level(states.get(k)), series_baseline(states.get(k))
            if now is not None and base is not None:
                moved.append((k, now - base, base))
    total = sum(abs(d) for _, d, _ in moved)
    comps = [{"key": k, "change": d, "share": (abs(d) / total if total else 0.0), "baseline": b}
             for k, d, b in sorted(moved, key=lambda x: -abs(x[1]))]
    at = f.step
    lr_now = lr
    if lr_points is not None:
        ls, lv = lr_points
        before = [v for s, v in zip(ls, lv, strict=True) if s <= at]
        lr_now = before[-1] if before else (lr if not isinstance(lr, (list, tuple)) else None)
    if isinstance(lr_now, (list, tuple)) or (lr_now is not None and lr_now - lr_now != 0.0):
        lr_now = None
    peak = ((states.get(f.key) or {}).get("plateau") or {}).get("lr_max")
    grads = [(k, series_level(states.get(k)), series_baseline(states.get(k))) for k, kd in kinds.items()
             if kd == "grad_norm"]
    onset = f.onset_step if f.onset_step is not None else at
    explain: dict[str, Any] = {"components": comps[:5],
                               "zoom": {"from": max(0, onset - max(50, at - onset)), "to": at + max(50, at - onset)}}
    parts = []
    if comps:
        parts.append("moved most: " + ", ".join(f"{c['key']} {'+' if c['change'] >= 0 else ''}{num(c['change'])} "
                                                 f"({c['share']:.0%})" for c in comps[:3]))
    if lr_now is not None:
        explain["lr"] = {"value": lr_now, "peak": peak}
        parts.append(f"lr {num(lr_now)}" + (f" (peak {num(peak)})" if peak else ""))
    for k, now, base in grads:
        if now is not None and base:
            explain.setdefault("grad_norm", []).append({"key": k, "value": now, "baseline": base})
            parts.append(f"{k} {now / base:.1f}× its baseline {num(base)}")
    if not parts:
        return replace(f, details={**f.details, "explain": explain})
    return replace(f, reason=f"{f.reason}; {'; '.join(parts)}", details={**f.details, "explain": explain})



def chain(findings: list[Finding], st: dict[str, Any], before: Mapping[str, tuple[Any, Any]]) -> list[Finding]:
    """One incident, rising severity: a divergence that fires while the series' spike alert is open
    supersedes it (an ``escalate`` finding closes the spike alert, the divergence keeps the spike's onset,
    and the spike's later findings for that onset are dropped: the divergence owns the incident), and a
    non-finite value during an open spike or divergence says which incident it ends.

    Which alerts are open is followed through the findings in step order from the state before the
    batch, never read from the state after it, so the verdicts do not depend on the batching."""
    open_: dict[str, int | None] = {r: (o if a else None) for r, (a, o) in before.items()}
    sup = st.get("superseded")  # [spike onset, step] of the spike alert a divergence took over
    out: list[Finding] = []
    for f in findings:
        if f.rule == "spike" and sup and f.onset_step == sup[0] and f.step >= sup[1]:
            continue  # the spike alert of an incident the divergence owns
        if f.rule in open_:
            if f.action == "fire":
                open_[f.rule] = f.onset_step if open_[f.rule] is None else open_[f.rule]
            else:
                open_[f.rule] = None
        if f.action == "fire" and f.rule == "divergence" and not f.details.get("escalated_from"):
            onset = open_["spike"]
            if onset is not None and onset <= f.step:
                out.append(Finding(
                    "spike", "escalate", f.step, f.value, f.reference, "critical",
                    f"{series_label(f.key)}: the spike from step {onset:,} became a divergence at "
                    f"step {f.step:,}", f.key, onset, {"escalated_to": "divergence"},
                ))
                open_["spike"] = None
                st["superseded"] = sup = [onset, f.step]
                f = replace(f, onset_step=min(onset, f.onset_step or f.step),
                            details={**f.details, "escalated_from": "spike", "incident_onset": onset})
        elif f.action == "fire" and f.rule == "non_finite":
            chain = [(r, o) for r, o in open_.items() if o is not None and o <= f.step]
            if chain:
                onset = min(o for _, o in chain)
                f = replace(f, details={**f.details, "incident": {"rules": [r for r, _ in chain], "onset": onset}},
                            reason=f"{f.reason}; it ends the {' → '.join(r for r, _ in chain)} incident "
                                   f"that began at step {onset:,}")
        out.append(f)
    return out
