"""Comparable runs: the level a project's other runs had at each step, for the ``plateau`` rule.

A run that stops improving while its loss is far above where the project's comparable runs were at
the same step is stuck, even when its own history says it has converged (issue 10). The server reads
each finished comparable run's series once, downsampled (``services/peers.py``: the query API's
buckets, never the points), and hands the rule a *reference*: for a geometric grid of steps, the
median over the comparable runs that reached that step of their level there. The reference travels
in the series' plateau state (:func:`attach`), so the rule stays pure and its verdict can be replayed.

Pure: numpy and plain data in, plain JSON-safe data out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from losswatch.server.detectors.plateau import Plateau

#: Comparable runs needed at a step for a reference there. With two, the higher of the two is taken
#: (the *higher* median, :func:`reference`): one run that learned unusually well cannot make the others
#: look stuck.
MIN_PEERS = 2
#: The most comparable runs read (the project's latest finished ones).
MAX_PEERS = 50
#: Buckets read per comparable run (one value each: the value at the bucket's last step).
BUCKETS = 256
#: The reference's steps: 64, then 12.5 % further each (about 80 points up to a million steps).
_GRID_FIRST, _GRID_RATIO = 64, 1.125
#: A peer's level at step g is the median of its bucket values in the span that ends at g, the span the
#: rule itself judges over (a share of the steps, at least its minimal patience; the rule's defaults).
_RULE = Plateau()
_MIN_BUCKETS = 3


def grid(last: int) -> list[int]:
    """The reference's steps up to ``last``."""
    out: list[int] = []
    g = float(_GRID_FIRST)
    while round(g) <= last:
        s = int(round(g))
        if not out or s > out[-1]:
            out.append(s)
        g *= _GRID_RATIO
    return out


def peer_levels(steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray,
                last: int | None = None) -> dict[int, float]:
    """One comparable run's level at the grid steps it reached: the median of its finite values (one
    per downsampled bucket, at the bucket's last step; steps ascending) over the span ending at each
    grid step. ``last``: the run's last step (default: the last of ``steps``)."""
    st = np.asarray(steps, dtype=np.int64)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    st, v = st[ok], v[ok]
    if not st.shape[0]:
        return {}
    end = int(st[-1]) if last is None else last
    out: dict[int, float] = {}
    for g in grid(end):
        w = max(_RULE.share * g, float(_RULE.min_patience))
        lo = int(np.searchsorted(st, g - w, side="right"))
        hi = int(np.searchsorted(st, g, side="right"))
        if hi - lo >= _MIN_BUCKETS:
            out[g] = float(np.mean(v[lo:hi]))
    return out


def reference(peers: Sequence[Mapping[int, float]], min_peers: int = MIN_PEERS) -> dict[str, list[Any]] | None:
    """The reference curve of several comparable runs' :func:`peer_levels`: at each grid step where at
    least ``min_peers`` of them have a level, the higher median of those levels (the middle one, or the
    higher of the two middle ones), how many they were and their upper quartile ``u`` (the higher one at
    a quarter from the top: the highest of two to four runs), the level a run can sit at without being
    behind its peers. None when there is no such step."""
    steps: set[int] = set()
    for p in peers:
        steps.update(p)
    out: dict[str, list[Any]] = {"s": [], "v": [], "n": [], "u": []}
    for g in sorted(steps):
        vals = sorted(p[g] for p in peers if g in p)
        if len(vals) >= min_peers:
            out["s"].append(g)
            out["v"].append(vals[len(vals) // 2])
            out["n"].append(len(vals))
            out["u"].append(vals[3 * len(vals) // 4])
    return out if out["s"] else None


def attach(states: Mapping[str, Any], refs: Mapping[str, Mapping[str, Any] | None], config: Any,
           version: int) -> dict[str, Any]:
    """``states`` (series key -> series state, as :func:`~.driver.evaluate_run` takes them) with the
    plateau state of each series of ``refs`` carrying its reference (None: none). The states passed in
    are not modified; a series without a plateau state yet gets the rule's initial state. ``config``:
    the run's :class:`~.rules.RuleConfig`; ``version``: the series state format
    (:data:`~.driver.STATE_VERSION`)."""
    out = dict(states)
    for key, ref in refs.items():
        st = out.get(key)
        sub = (st or {}).get("plateau")
        if sub is None and ref is None:
            continue
        if sub is not None and sub.get("peers") == ref:
            continue
        new_st = dict(st) if st else {"v": version}
        new_sub = dict(sub) if sub is not None else config.detector("plateau").initial_state()
        if ref is None:
            new_sub.pop("peers", None)
        else:
            new_sub["peers"] = ref
        new_st["plateau"] = new_sub
        out[key] = new_st
    return out


__all__ = ["MIN_PEERS", "MAX_PEERS", "BUCKETS", "grid", "peer_levels", "reference", "attach"]
