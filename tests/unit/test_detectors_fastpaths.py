"""The numpy fast paths of the detectors (closed-form EMAs, hand-over to the per-point loop at the
points that need it: an LR restart, a clipped or winsorised value, an exceeding point, a metric logged
every step) give the same alerts, steps, severities and messages as the per-point loop alone.

A batch shorter than ``FAST_MIN`` points never takes a fast path, so one point per request is the
loop's verdict; the same run in large batches goes through the fast paths."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest

from losswatch.server.detectors import Finding, RuleConfig, driver, evaluate_run
from losswatch.server.detectors.base import FAST_MIN, Column, ema_last, ema_last2, ema_path, powers
from losswatch.server.detectors.driver import _finite_sum, _never_clipped
from losswatch.server.detectors.pointwise import _z, _zs

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


# --- the pieces that keep the fast paths cheap give the bits of the plain expressions (issue 13) -----------


@pytest.mark.parametrize(("a1", "a2"), [(2 / 31, 2 / 2001), (2 / 51, 2 / 129), (0.5, 1.0)])
def test_two_emas_in_one_pass_are_each_ema_last(a1: float, a2: float) -> None:
    """The level's two EMAs (its 30-point level and the 2,000-point baseline) share one division and one
    running sum; each is the single EMA's closed form, bit for bit, one block or several."""
    y = np.random.default_rng(3).lognormal(0.0, 1.0, 7000)
    if a2 < 1.0:  # (an EMA of weight 1 is its last value: none for no values)
        assert ema_last2(0.7, a1, -0.2, a2, y[:0]) == (0.7, -0.2)
    for n in (1, 2, 33, 1000, 2998, 2999, 7000):
        got = ema_last2(0.7, a1, -0.2, a2, y[:n])
        assert got == (ema_last(0.7, y[:n], a1), ema_last(-0.2, y[:n], a2))
        assert got[0] == float(ema_path(0.7, y[:n], a1)[-1])


@pytest.mark.parametrize("a", [2 / 51, 2 / 2001, 0.9, 1.0])
def test_an_ema_path_written_into_a_buffer_is_the_same_path(a: float) -> None:
    y = np.random.default_rng(4).lognormal(0.0, 1.0, 12_000)
    for n in (1, 500, 12_000):
        buf = np.full(n + 1, -1.0)
        got = ema_path(0.3, y[:n], a, out=buf[1:])
        assert got.base is buf or got is buf[1:] or np.shares_memory(got, buf)
        assert np.array_equal(buf[1:], ema_path(0.3, y[:n], a)) and buf[0] == -1.0
        assert np.array_equal(buf[1:], _ema_recurrence_closed_form(0.3, y[:n], a))


def _ema_recurrence_closed_form(e0: float, y: np.ndarray, a: float) -> np.ndarray:
    """The closed form as first written (np.cumsum, one block after another, copied into a result)."""
    b = 1.0 - a
    if b <= 0.0:
        return y.astype(float, copy=True)
    n = y.shape[0]
    out = np.empty(n)
    block = max(1, min(n, int(200.0 / -math.log(b))))
    for i in range(0, n, block):
        yb = y[i:i + block]
        pw = b ** np.arange(1, yb.shape[0] + 1, dtype=float)
        seg = pw * (e0 + a * np.cumsum(yb / pw))
        out[i:i + yb.shape[0]] = seg
        e0 = float(seg[-1])
    return out


def test_powers_from_zero_are_the_expression_and_read_only() -> None:
    b = 1.0 - 2.0 / 129.0
    got = powers(b, 1000, 0)
    assert np.array_equal(got, b ** np.arange(0, 1001, dtype=float)) and got[0] == 1.0
    assert powers(b, 1000, 0) is got and powers(b, 1000) is not got
    with pytest.raises(ValueError):
        got[0] = 2.0


@pytest.mark.parametrize("values", [
    [0.5, 1.5, 2.5], [1e308, 1e308], [1.7e308, -1.7e308, 1.7e308], [1e300] * 40, [1e306] * 40,
    [0.5, math.nan, 1.0], [0.5, math.inf], [-math.inf, 1.0], [math.inf, -math.inf], [-1e308, -1e308],
])
def test_the_finiteness_check_is_the_left_to_right_sums(values: list[float]) -> None:
    """The fast paths need every value finite and their running sum too (the former check added them
    left to right), and no value beyond 1e200 (their closed forms divide by up to e^200); the check from
    the smallest and largest value says the same."""
    cols = np.array(values)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.cumsum(cols)[-1])
        lo, hi = float(cols.min()), float(cols.max())
        small = bool(np.all(np.abs(cols) < 1e200))
    assert _finite_sum(cols, lo, hi) == (total - total == 0.0 and small)


def test_partial_sums_that_overflow_leave_columns_and_lists_alike() -> None:
    """Finite values whose sum overflows (a loss at 1e308 twice) take the per-point loop, from columns as
    from lists: the same findings and states."""
    n = 200
    steps = np.arange(n, dtype=np.int64)
    values = 1.0 + 0.1 * np.random.default_rng(5).standard_normal(n)
    values[120:122] = 1e308
    kinds = {"train/loss": "loss"}
    cols = evaluate_run({}, kinds, {"train/loss": (steps, values)}, CFG, lr=1e-3)
    lists = evaluate_run({}, kinds, {"train/loss": (steps.tolist(), values.tolist())}, CFG, lr=1e-3)
    assert [f.to_dict() for f in cols[1]] == [f.to_dict() for f in lists[1]]
    assert json.dumps(cols[0], sort_keys=True) == json.dumps(lists[0], sort_keys=True)


def test_the_spike_scale_of_values_whose_ratio_overflows_is_finite() -> None:
    u = 1e-12
    arr = np.array([1.0, 1e300, -1e300, 1.7e308, 3.0])
    z = _zs(arr, u)
    assert np.isfinite(z).all()
    assert z.tolist() == [_z(v, u) for v in arr.tolist()]
    plain = np.array([0.5, 2.0, 40.0])
    assert _zs(plain, 0.25).tolist() == np.arcsinh(plain / 0.25).tolist()


@pytest.mark.parametrize("want_path", [False, True])
def test_the_level_skips_the_clipping_test_only_where_nothing_can_be_clipped(want_path: bool) -> None:
    """A batch whose values all stay below three times the smallest level it can reach is never clipped:
    the level then takes the closed form in one go, with or without the path the paired rules read, and
    gives what the point-by-point clipping test gives (forced here with bounds that can't pass)."""
    rng = np.random.default_rng(6)
    st_a: dict[str, Any] | None = None
    st_b: dict[str, Any] | None = None
    quiet = 0
    for lo in range(0, 6000, 1000):
        arr = np.exp(-np.arange(lo, lo + 1000) / 4000.0) * rng.lognormal(0.0, 0.1, 1000)
        steps = Column(np.arange(lo, lo + 1000, dtype=np.int64))
        if st_a is None or _never_clipped(st_a["n"], st_a["e"], st_a["p"], arr):
            quiet += 1
        st_a, path_a = driver._level(st_a, steps, Column(arr), arr, want_path, True)
        st_b, path_b = driver._level(st_b, steps, Column(arr), arr, want_path, True,
                                     bounds=(float(arr.min()), math.inf))
        assert st_a == st_b
        if want_path:
            assert np.array_equal(path_a[0], path_b[0]) and np.array_equal(path_a[1], path_b[1])
    assert quiet >= 5


def test_a_rules_detector_is_made_once_per_configuration() -> None:
    cfg = RuleConfig.default().merge({"spike": {"window": 64}})
    assert cfg.detector("spike") is cfg.detector("spike")
    assert cfg.detector("spike").window == 64 and RuleConfig.default().detector("spike").window == 128
    assert cfg.silence(["spike"]).detector("divergence") == cfg.detector("divergence")
