"""Comparable runs for the ``plateau`` rule: the levels a project's finished runs had at each step.

The rule judges a run that stopped improving against where the project's other runs were at the same
step (``detectors/peers.py``). Those levels are read rarely and cheaply: per (project, series key) the
latest :data:`~losswatch.server.detectors.peers.MAX_PEERS` ended runs' series, downsampled by the query
API's own path (``query.downsample``: chunk roll-ups, a few SELECTs, never the points), once, then
kept in memory for this process. An entry is read again when it is older than :data:`REFRESH_S`, or
when a run this process first saw after the entry was read asks for it (a run that starts after
others finished sees them). A cache only: a process without it reads the same thing.

The reference reaches the rule in the series' plateau state (``detectors.peers.attach``), written with
the points in the ingest transaction.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.detectors import STATE_VERSION, RuleConfig
from losswatch.server.detectors import peers as levels
from losswatch.server.services.query import downsample
from losswatch.server.services.runs import ENDED
from losswatch.server.storage.models import Run, Series

#: Seconds an entry is used before it is read again (runs that ended meanwhile join the reference).
REFRESH_S = 600.0
_RUNS_SEEN = 10_000  # runs whose first sight is remembered (a forgotten one reads its entry once more)


@dataclass
class _Entry:
    seq: int
    at: float
    per_run: dict[str, dict[int, float]]  # ended run id -> its levels at the grid steps
    ref: dict[str, list[Any]] | None  # the reference of all of them


@dataclass
class _Cache:
    entries: dict[tuple[int, str], _Entry] = field(default_factory=dict)
    first_seen: OrderedDict[str, int] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_CACHES: weakref.WeakKeyDictionary[Engine, _Cache] = weakref.WeakKeyDictionary()  # one per database
_SEQ = itertools.count()
_GUARD = threading.Lock()


def with_references(session: Session, run_id: str, project_id: int, config: RuleConfig,
                    states: Mapping[str, Any], kinds: Mapping[str, str], keys: Iterable[str]) -> dict[str, Any]:
    """``states`` (series key -> series state) with the comparable runs' reference attached to the
    plateau state of each of ``keys`` the plateau rule judges (``detectors.peers.attach``)."""
    judged = [k for k in keys if "plateau" in config.rules_for(k, kinds[k])]
    if not judged:
        return dict(states)
    refs = {k: reference(session, run_id, project_id, k) for k in judged}
    return levels.attach(states, refs, config, STATE_VERSION)


def reference(session: Session, run_id: str, project_id: int, key: str) -> dict[str, list[Any]] | None:
    """The reference of series ``key`` for run ``run_id``: from the project's ended runs other than it
    (None with fewer than ``detectors.peers.MIN_PEERS`` at every step)."""
    cache = _cache(session)
    now, seq = time.monotonic(), next(_SEQ)
    with cache.lock:
        first = cache.first_seen.setdefault(run_id, seq)
        cache.first_seen.move_to_end(run_id)
        if len(cache.first_seen) > _RUNS_SEEN:
            cache.first_seen.popitem(last=False)
        entry = cache.entries.get((project_id, key))
    if entry is None or entry.seq < first or now - entry.at > REFRESH_S:
        per_run = _read(session, project_id, key)
        entry = _Entry(seq, now, per_run, levels.reference(list(per_run.values())))
        with cache.lock:
            cache.entries[(project_id, key)] = entry
    if run_id in entry.per_run:  # an ended run that still sends points is not its own peer
        return levels.reference([v for r, v in entry.per_run.items() if r != run_id])
    return entry.ref


def _cache(session: Session) -> _Cache:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    with _GUARD:
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = _Cache()
    return cache


def _read(session: Session, project_id: int, key: str) -> dict[str, dict[int, float]]:
    """The latest ended runs' levels of series ``key``: their series downsampled to
    ``detectors.peers.BUCKETS`` buckets each (the value at each bucket's last step)."""
    rows = session.execute(
        select(Run.id, Series).join(Series, Series.run_id == Run.id)
        .where(Run.project_id == project_id, Run.status.in_(ENDED), Series.key == key)
        .order_by(Run.created_at.desc(), Run.id.desc()).limit(levels.MAX_PEERS)
    ).all()
    found = [(rid, s) for rid, s in rows if s.last_step is not None]
    out: dict[str, dict[int, float]] = {}
    for (rid, s), answer in zip(found, downsample(session, found, 0, wire.MAX_STEP, levels.BUCKETS), strict=True):
        last = answer["last"]
        values = last if isinstance(last, np.ndarray) else np.array([wire.decode_value(v) for v in last], dtype=float)
        out[rid] = levels.peer_levels(answer["last_step"], values, last=s.last_step)
    return out


def clear() -> None:
    """Forget every cached reference (tests)."""
    with _GUARD:
        _CACHES.clear()
