"""The ``plateau`` rule on a run whose LR collapses after it has converged (issue 10, task F)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from losswatch.server.detectors import Finding, RuleConfig, evaluate_series

CFG = RuleConfig.default().merge({"spike": False})


def _run(n: int, at: int | None) -> tuple[list[float], list[float]]:
    """A loss that has converged by a tenth of the run (no gain left to judge a stop by), with a cosine
    schedule; from ``at`` on the LR is cut to 1e-4 of itself (None: never)."""
    t = np.arange(n)
    lr = 1e-3 * (0.02 + 0.98 * 0.5 * (1 + np.cos(math.pi * t / n)))
    if at is not None:
        lr[at:] *= 1e-4
    fall = 0.3 + 1.7 * np.exp(-t / (n / 60.0))
    noise = np.random.default_rng(11).lognormal(0.0, 0.05, n)
    return (fall * noise).tolist(), lr.tolist()


def _feed(values: list[float], lr: list[float], batch: int) -> list[Finding]:
    state, out = None, []
    steps = list(range(len(values)))
    for i in range(0, len(values), batch):
        state, f = evaluate_series(state, "train/loss", "loss", steps[i:i + batch], values[i:i + batch], CFG,
                                   {"lr": lr[i:i + batch]})
        state = json.loads(json.dumps(state, allow_nan=False))  # plain JSON, no NaN/Inf
        out += f
    return out


@pytest.mark.parametrize("n", [600, 6000])
def test_a_collapsed_lr_on_a_converged_run_is_a_plateau(n):
    at = n // 5
    fired = [f for f in _feed(*_run(n, at), batch=50) if f.rule == "plateau" and f.action == "fire"]
    assert len(fired) == 1 and at < fired[0].step < n
    assert fired[0].severity == "warning" and "cannot learn" in fired[0].reason


@pytest.mark.parametrize("n", [600, 6000])
def test_the_same_converged_run_with_its_lr_is_not_a_plateau(n):
    assert [f for f in _feed(*_run(n, None), batch=50) if f.rule == "plateau"] == []


def test_the_collapse_verdict_does_not_depend_on_batching():
    values, lr = _run(3000, 700)
    prints = {b: sorted((f.rule, f.action, f.step, f.onset_step) for f in _feed(values, lr, b))
              for b in (1, 37, 250, 3000)}
    assert prints[1] and all(p == prints[1] for p in prints.values())


def test_a_chain_of_planned_cuts_below_the_collapse_line_is_no_plateau():
    # ReduceLROnPlateau cutting by 0.3 again and again ends below 0.1 % of the peak on a converged run:
    # every cut is a planned drop, none a collapse
    n = 3000
    values, lr = _run(n, None)
    lr = [v * 0.3 ** min(8, max(0, (i - 600) // 100 + 1)) for i, v in enumerate(lr)]
    assert lr[-1] < 1e-3 * max(lr)
    assert [f for f in _feed(values, lr, batch=50) if f.rule == "plateau"] == []
