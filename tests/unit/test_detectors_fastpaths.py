"""The numpy fast paths of the detectors (closed-form EMAs, hand-over to the per-point loop at the
points that need it: an LR restart, a clipped or winsorised value, an exceeding point, a metric logged
every step) give the same alerts, steps, severities and messages as the per-point loop alone.

A batch shorter than ``FAST_MIN`` points never takes a fast path, so one point per request is the
loop's verdict; the same run in large batches goes through the fast paths."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from losswatch.server.detectors import Finding, RuleConfig, evaluate_run
from losswatch.server.detectors.base import FAST_MIN

CFG = RuleConfig.default()
_EXPLAIN = re.compile(r"; (moved most: |lr |grad_norm ).*$")
KINDS = {"train/loss": "loss", "train/loss/box": "loss_component", "train/loss/cls": "loss_component",
         "grad_norm": "grad_norm", "lr": "lr", "train/accuracy": "metric", "val/loss": "loss",
         "val/accuracy": "metric"}


def _run(seed: int, n: int = 6000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A run with heavy-tailed batch noise and rare huge batches, a cosine LR logged every step with a
    step drop, a stall early on, a burst, a divergence, and metrics logged every step and every 100."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = 0.3 + 2.0 * np.exp(-t / 400.0)
    base[300:2600] = base[300]  # stuck early: far above what it reaches later
    base[2600:] = base[300] * (0.3 + 0.7 * np.exp(-(t[2600:] - 2600) / 500.0))
    noise = rng.lognormal(0.0, 0.35, n)
    noise[rng.random(n) < 0.002] *= 6.0  # rare huge batches: clipped, winsorised, single-batch spikes
    loss = base * noise
    loss[3500:3512] *= 5.0  # a burst that recovers
    loss[5000:] *= np.linspace(1.0, 3.0, n - 5000)  # a divergence that stays
    lr = 1e-3 * 0.5 * (1 + np.cos(np.pi * t / n))
    lr[4000:] *= 0.1
    acc = np.clip(1.0 - base / 3.0 + rng.normal(0, 0.01, n), 0, 1)
    acc[2800:4200] = acc[2800] - 0.0001 * (t[2800:4200] - 2800)  # falls while the loss improves
    ev = t[::100]
    val = base[::100] * (1.0 + 0.02 * rng.standard_normal(len(ev)))
    val[30:] *= np.linspace(1.0, 1.6, len(ev) - 30)  # overfitting
    return {"train/loss": (t, loss), "train/loss/box": (t, loss * 0.6), "train/loss/cls": (t, loss * 0.4),
            "grad_norm": (t, rng.lognormal(0.0, 0.5, n)), "lr": (t, lr), "train/accuracy": (t, acc),
            "val/loss": (ev, val), "val/accuracy": (ev, acc[::100])}


def _replay(series: dict[str, tuple[np.ndarray, np.ndarray]], per: int) -> list[Finding]:
    n = len(series["train/loss"][0])
    states: dict[str, Any] = {}
    out: list[Finding] = []
    lr = None
    for a in range(0, n, per):
        batch = {}
        for k, (s, v) in series.items():
            lo, hi = np.searchsorted(s, [a, a + per])
            if hi > lo:
                batch[k] = (s[lo:hi].tolist(), v[lo:hi].tolist())
        if "lr" in batch:
            lr = batch["lr"][1][-1]
        states, found = evaluate_run(states, KINDS, batch, CFG, lr=lr)
        out += found
    return out


def _key(findings: list[Finding]) -> list[tuple[Any, ...]]:
    """Everything but an alert's explanation (components, LR and gradient norm read from the series'
    levels after the batch: batch-dependent by design, see detectors.incidents.explain)."""
    return sorted((f.rule, f.key, f.action, f.step, f.onset_step, f.severity, _EXPLAIN.sub("", f.reason))
                  for f in findings)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_paths_give_the_loops_alerts_and_messages(seed):
    series = _run(seed)
    loop = _replay(series, 1)  # below FAST_MIN: the per-point loop only
    assert FAST_MIN > 1
    fired = {(f.rule, f.key) for f in loop if f.action == "fire"}
    assert {("plateau", "train/loss"), ("spike", "train/loss"), ("divergence", "train/loss")} <= fired
    assert ("misalignment", "train/accuracy") in fired
    for per in (100, 250, 1000, 6000):
        assert _key(_replay(series, per)) == _key(loop)


def test_a_batch_that_resends_a_point_already_seen_keeps_its_context_aligned():
    """A batch that starts with the last evaluation point already seen (a resumed job re-evaluating at the
    same step, a retry that overlaps) skips that point, and the per-point paired levels of the batch with
    it: once a ValueError ("context 'loss' has 3 values for 2 points"), found by replaying the corpus in
    batches of 1,000 iterations."""
    kinds = {"train/loss": "loss", "val/accuracy": "metric"}
    first = {"train/loss": (list(range(100)), [1.0 - i / 200 for i in range(100)]),
             "val/accuracy": ([50, 99], [0.5, 0.6])}
    states, _ = evaluate_run({}, kinds, first, CFG, lr=0.1)
    again = {"train/loss": (list(range(100, 200)), [0.5 - i / 1000 for i in range(100)]),
             "val/accuracy": ([99, 150, 199], [0.6, 0.62, 0.65])}
    states, _ = evaluate_run(states, kinds, again, CFG, lr=0.1)
    assert states["val/accuracy"]["misalignment"]["steps"] == [50, 99, 150, 199]  # step 99 judged once
    assert states["val/accuracy"]["last"] == [199, 0.65]
