"""Detectors: pure, O(1) per point, state in and out as JSON-serialisable dicts.

Nothing here imports the server, a database or the network. The server calls, inside the ingest
transaction that writes the points::

    from losswatch.server.detectors import RuleConfig, resolve_config, evaluate_series, build_context

    config = resolve_config(project_rules, run_rules, silenced)          # RuleConfig
    ctx = build_context(key, kind, config, series_kinds, levels, lr=latest_lr)
    new_state, findings = evaluate_series(old_state, key, kind, steps, values, config, ctx)

and, on a clock, :func:`check_stalled` per running run (:func:`record_arrival` at each request).
"""

from losswatch.server.detectors.base import Finding, decode_number, encode_number
from losswatch.server.detectors.driver import (
    STATE_VERSION,
    build_context,
    check_stalled,
    evaluate_run,
    evaluate_series,
    record_arrival,
    series_level,
)
from losswatch.server.detectors.pairs import Misalignment, Overfitting, spearman
from losswatch.server.detectors.plateau import Plateau
from losswatch.server.detectors.pointwise import NonFinite, Spike
from losswatch.server.detectors.rules import (
    REASONS,
    RULES,
    SERIES_RULES,
    RuleConfig,
    RuleSpec,
    defaults,
    make_detector,
    resolve_config,
)
from losswatch.server.detectors.stalled import Stalled
from losswatch.server.detectors.trend import Divergence

__all__ = [
    "Finding",
    "NonFinite",
    "Spike",
    "Divergence",
    "Plateau",
    "Overfitting",
    "Misalignment",
    "Stalled",
    "RuleConfig",
    "RuleSpec",
    "RULES",
    "SERIES_RULES",
    "REASONS",
    "defaults",
    "make_detector",
    "resolve_config",
    "evaluate_series",
    "evaluate_run",
    "build_context",
    "series_level",
    "record_arrival",
    "check_stalled",
    "spearman",
    "encode_number",
    "decode_number",
    "STATE_VERSION",
]
