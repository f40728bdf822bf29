"""Detectors on parametrised curves: pure, O(1) state, JSON state, findings with a reason."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest

from losswatch.server.detectors import (
    Divergence,
    Finding,
    Misalignment,
    NonFinite,
    Overfitting,
    Plateau,
    RuleConfig,
    Spike,
    Stalled,
    build_context,
    check_stalled,
    evaluate_series,
    record_arrival,
    series_level,
    spearman,
)

CFG = RuleConfig.default()
N = 20_000


def _curve(n: int = N, seed: int = 0, noise: str = "lognormal", scale: float = 0.3) -> np.ndarray:
    """A healthy decaying loss with heavy-tailed minibatch noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = 0.4 + 2.0 * np.exp(-t / 2500) + 0.3 * (1 + t / 1000) ** -0.5
    if noise == "none":
        return base
    if noise == "lognormal":
        return base * rng.lognormal(0.0, scale, n)
    return np.maximum(base * (1 + scale * rng.standard_t(3, n)), 0.05 * base)


def _cosine_lr(n: int = N, warm: int = 1000, peak: float = 1e-3) -> list[float]:
    t = np.arange(n)
    lr = np.where(t < warm, peak * (t + 1) / warm, peak * 0.5 * (1 + np.cos(math.pi * (t - warm) / (n - warm))))
    return lr.tolist()


def _feed(values, steps=None, *, key="train/loss", kind="loss", batch=100, context=None, config=CFG, state=None):
    """Feed a series in batches like the server does, with a JSON round trip of the state between batches."""
    values = list(map(float, values))
    steps = list(range(len(values))) if steps is None else list(steps)
    findings: list[Finding] = []
    for i in range(0, len(steps), batch):
        ctx = {}
        for k, v in (context or {}).items():
            ctx[k] = v[i:i + batch] if isinstance(v, list) else v
        state, f = evaluate_series(state, key, kind, steps[i:i + batch], values[i:i + batch], config, ctx)
        state = json.loads(json.dumps(state, allow_nan=False))
        findings += f
    return state, findings


def _only(findings, rule=None, action=None):
    return [f for f in findings if (rule is None or f.rule == rule) and (action is None or f.action == action)]


# --- healthy runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(_curve(5000, noise="none"), id="smooth-decay"),
        pytest.param(2.0 * (1 + np.arange(5000) / 100) ** -0.3, id="power-law"),
        pytest.param(np.linspace(3.0, 0.5, 5000), id="linear"),
    ],
)
def test_steady_fall_has_no_finding(values):
    _, findings = _feed(values)
    assert findings == []


@pytest.mark.parametrize("noise", ["lognormal", "student-t"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_tailed_healthy_run_has_no_false_alarm(noise, seed):
    values = _curve(N, seed, noise, 0.3 if noise == "lognormal" else 0.1)
    _, findings = _feed(values, context={"lr": _cosine_lr()})
    # heavy-tailed noise does make a few real (if small) spikes: 3 of 5 points at 2x the median, the
    # benchmark's definition (bench/DETECTION.md); those may be reported, and a lone extreme batch (a
    # Student-t draw 4-5x the baseline) at most once as an info finding, not an alarm; nothing else
    other = [f for f in findings if not _is_real_spike(values, f)]
    single = [f for f in other if f.rule == "spike" and f.severity == "info"]
    assert [(f.rule, f.step) for f in other if f not in single] == []
    assert len([f for f in single if f.action == "fire"]) <= 1
    assert all(f.details.get("single_batch") for f in single if f.action == "fire")


def _is_real_spike(values: np.ndarray, f: Any) -> bool:
    if f.rule != "spike":
        return False
    onset = f.onset_step
    base = float(np.median(values[max(0, onset - 128):onset]))
    return bool(np.median(values[onset:onset + 5]) >= 1.9 * base)


# --- non_finite --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_fires_on_the_exact_step_and_resolves(bad):
    values = list(_curve(3000, noise="none"))
    values[1234] = bad
    values[1235] = math.nan
    _, findings = _feed(values)
    fired = _only(findings, "non_finite", "fire")
    assert [f.step for f in fired] == [1234]
    assert fired[0].severity == "critical"
    assert fired[0].reason.startswith("train/loss is ") and "step 1,234" in fired[0].reason
    assert "last finite value" in fired[0].reason
    assert json.loads(json.dumps(fired[0].to_dict(), allow_nan=False))["value"] in ("NaN", "Infinity", "-Infinity")
    resolved = _only(findings, "non_finite", "resolve")
    assert [f.step for f in resolved] == [1245]  # 10 finite points after the last non-finite one
    assert [f.rule for f in findings] == ["non_finite", "non_finite"]  # the other rules skip it


def test_non_finite_first_point():
    _, f = NonFinite().update(None, 0, math.nan, key="train/loss")
    assert f[0].action == "fire" and "no finite value before it" in f[0].reason


# --- spike and divergence ----------------------------------------------------------------------------


def test_single_spike_fires_and_resolves_without_divergence():
    values = _curve(6000, seed=3)
    values[4000:4012] *= 4.0
    _, findings = _feed(values)
    assert [(f.rule, f.action) for f in findings] == [("spike", "fire"), ("spike", "resolve")]
    fire, resolve = findings
    assert 4000 <= fire.step <= 4002 and fire.onset_step == 4000
    assert 4012 <= resolve.step <= 4020
    assert "spiked" in fire.reason and "baseline" in fire.reason and "step 4,00" in fire.reason


def test_extreme_single_point_is_an_info_spike_by_default():
    # one huge minibatch (a bad batch) is reported at its own lower severity (info: not an alarm); a
    # spike alarm (warning) needs 3 of 5 points
    values = _curve(3000, seed=4)
    values[2500] *= 30.0
    no_plateau = CFG.merge({"plateau": False})  # a spike test: the synthetic slow decay is not judged here
    _, findings = _feed(values, config=no_plateau)
    assert [(f.rule, f.action, f.step, f.severity) for f in findings if f.action == "fire"] == [
        ("spike", "fire", 2500, "info")]
    assert "a single batch" in findings[0].reason and findings[0].details == {"single_batch": True}
    assert [f.action for f in findings] == ["fire", "resolve"]
    values[2501] *= 30.0
    values[2503] *= 30.0  # 3 of 5: the single batch was the start of a real spike, raised to warning
    _, findings = _feed(values, config=no_plateau)
    assert [(f.action, f.severity) for f in findings if f.rule == "spike"][:2] == [("fire", "info"), ("fire", "warning")]


def test_extreme_single_point_fires_at_once_with_single_rtol():
    values = _curve(3000, seed=4)
    values[2500] *= 30.0
    det = Spike(single_rtol=9.0)
    _, findings = det.run(None, list(range(3000)), values.tolist(), key="train/loss")
    assert [(f.rule, f.action, f.step) for f in findings][0] == ("spike", "fire", 2500)


def test_spike_fires_on_three_of_five_points_with_onset_at_the_first():
    values = _curve(3000, seed=4, noise="none")
    values[2000] *= 3.0
    values[2002] *= 3.0
    values[2004] *= 3.0  # 3 of the 5 points 2000..2004 at 3x: a spike, judged at its third point
    det = Spike()
    _, findings = det.run(None, list(range(3000)), values.tolist(), key="train/loss")
    # on a noise-free curve the first 3x point is already far outside its noise: a single-batch info at
    # once, raised to warning by the third
    fired = [(f.step, f.onset_step, f.severity) for f in findings if f.action == "fire"]
    assert fired == [(2000, 2000, "info"), (2004, 2000, "warning")]
    values[2004] /= 3.0  # only 2 of 5: no warning
    _, findings = det.run(None, list(range(3000)), values.tolist(), key="train/loss")
    assert [f.severity for f in findings if f.action == "fire"] == ["info"]
    _, findings = Spike(single_rtol=0.0).run(None, list(range(3000)), values.tolist(), key="train/loss")
    assert findings == []


def test_lasting_jump_is_one_divergence_incident():
    values = _curve(8000, seed=5)
    values[4000:] *= 1.8  # a lasting 1.8x jump (+0.8): a divergence (1.5x the best, issue 10)
    values[4000:] += 0.8
    _, findings = _feed(values)
    # one incident: no spike alert left open beside the divergence
    spikes = _only(findings, "spike", "fire")
    assert len(spikes) == len(_only(findings, "spike", "escalate")) + len(_only(findings, "spike", "resolve"))
    div = _only(findings, "divergence", "fire")
    assert len(div) == 1 and div[0].severity == "critical"
    assert div[0].onset_step is not None and 4000 <= div[0].onset_step <= 4050
    assert not _only(findings, "spike", "resolve")
    assert not _only(findings, "divergence", "resolve")


def test_spike_that_does_not_recover_hands_its_alert_to_divergence():
    # the divergence rule alone would not fire; plateau silenced: this test is about the hand-over
    config = CFG.merge({"divergence": {"rtol": 3.0}, "plateau": False})
    values = _curve(9000, seed=5)
    values[4000:7000] *= 3.0
    _, findings = _feed(values, config=config)
    assert [(f.rule, f.action) for f in findings] == [
        ("spike", "fire"), ("spike", "escalate"), ("divergence", "fire"), ("divergence", "resolve"),
    ]
    esc, div, back = findings[1:]
    assert esc.step == div.step and 4500 <= div.step <= 4510 and div.onset_step == findings[0].onset_step
    assert div.severity == "critical" and "has stayed there for 500 steps" in div.reason
    assert 7000 < back.step < 7100


def test_divergence_of_a_sustained_rise():
    values = _curve(8000, seed=6)
    values[5000:] *= np.linspace(1.0, 6.0, 3000)  # the loss climbs for 3000 steps
    _, findings = _feed(values)
    div = _only(findings, "divergence", "fire")
    assert len(div) == 1
    f = div[0]
    assert f.severity == "critical" and f.value > 1.5 * f.reference
    assert 5000 < f.step < 6500
    assert f.reason.startswith("train/loss diverged: smoothed ")
    assert "× its best" in f.reason and "for " in f.reason and " steps" in f.reason


def test_divergence_resolves_when_the_loss_comes_back():
    values = np.concatenate([np.full(1000, 1.0), np.linspace(1.0, 5.0, 100), np.full(400, 5.0), np.full(500, 1.0)])
    det = Divergence()
    state, findings = det.run(None, list(range(len(values))), values.tolist(), key="x")
    assert [f.action for f in findings] == ["fire", "resolve"]
    assert findings[0].reason.startswith("x diverged")


# --- plateau -----------------------------------------------------------------------------------------


def _flat(n: int, level: float = 1.0, seed: int = 7) -> np.ndarray:
    return level * np.random.default_rng(seed).lognormal(0.0, 0.2, n)


def test_plateau_fires_when_a_run_stops_early():
    # learning (3.0 -> 2.0), then stuck at 2/3 of its initial loss: patience scales with the run
    # (a share of its steps), so the rule fires within about as many steps again, once
    values = np.concatenate([np.linspace(3.0, 2.0, 3000) * _flat(3000, seed=1), _flat(12000, 2.0)])
    _, findings = _feed(values, context={"lr": 1e-4})
    fired = _only(findings, "plateau", "fire")
    assert len(fired) == 1 and _only(findings, "plateau", "resolve") == []
    assert 3000 < fired[0].step <= 6000 and fired[0].onset_step >= 2000
    assert "plateaued" in fired[0].reason and "lr 0.0001" in fired[0].reason and "stuck early" in fired[0].reason


@pytest.mark.parametrize("n", [500, 50_000])
def test_plateau_at_every_run_length(n):
    t = np.arange(n)
    stop = n // 10
    clean = np.where(t < stop, 3.0 - 1.5 * t / stop, 1.5)  # learns for a tenth of the run, then stuck
    values = clean * np.random.default_rng(3).lognormal(0.0, 0.1, n)
    state, findings = None, []
    for i in range(0, n, 250):
        state, f = Plateau().run(state, list(range(i, min(n, i + 250))), values[i:i + 250].tolist(), key="k",
                                 context={"lr": 1e-3})
        findings += f
    fired = _only(findings, "plateau", "fire")
    assert len(fired) == 1 and stop < fired[0].step < n


def test_a_converged_run_is_not_a_plateau():
    # a power-law fall that flattens gradually: no plateau warning (an info hint only when asked)
    n = 20_000
    values = (0.3 + 2.0 * (1 + np.arange(n) / 50) ** -0.7) * np.random.default_rng(5).lognormal(0.0, 0.2, n)
    _, findings = Plateau().run(None, list(range(n)), values.tolist(), key="k", context={"lr": 1e-3})
    assert _only(findings, "plateau") == []


def test_no_plateau_while_the_lr_warms_up():
    values = _flat(12000)
    lr = (np.linspace(1e-6, 1e-3, 12000)).tolist()  # a very long warm-up over a flat loss
    _, findings = _feed(values, context={"lr": lr})
    assert _only(findings, "plateau") == []


def test_no_plateau_right_after_a_planned_lr_drop():
    values = np.concatenate([_flat(9000, 1.0), _flat(4900, 0.8, seed=8)])
    lr = [1e-3] * 9000 + [1e-4] * 4900  # step decay at 9000
    # the loss never learned: the rule fires before the drop, which closes it; nothing right after it
    _, findings = _feed(values[:9000], context={"lr": lr[:9000]})
    assert [f.step for f in _only(findings, "plateau", "fire")]
    fired_before = _only(findings, "plateau", "fire")[0].step
    state, findings = _feed(values, context={"lr": lr})
    resolved = _only(findings, "plateau", "resolve")
    assert [f.step for f in resolved] == [9000] and "dropped" in resolved[0].reason
    assert [f.step for f in _only(findings, "plateau", "fire")] == [fired_before]


def test_lr_drop_restarts_patience():
    det = Plateau(patience=1000, warmup=10)
    values = _flat(2500).tolist()
    lr = [1e-3] * 900 + [1e-4] * 1600
    _, findings = det.run(None, list(range(2500)), values, context={"lr": lr})
    fired = [f.step for f in findings if f.action == "fire"]
    assert fired and all(s >= 900 + 0.25 * 900 for s in fired)  # the drop at 900 restarted patience


# --- overfitting and misalignment -----------------------------------------------------------------------


def _evals(val, train):
    steps = [1000 * (i + 1) for i in range(len(val))]
    return steps, list(map(float, val)), list(map(float, train))


def test_overfitting_fires_after_patience_evaluations():
    val = [2.0, 1.6, 1.4, 1.35, 1.38, 1.42, 1.47, 1.55, 1.6]
    train = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    steps, v, t = _evals(val, train)
    _, findings = _feed(v, steps, key="val/loss", context={"train_loss": t, "train_key": "train/loss"}, batch=1)
    fired = _only(findings, "overfitting", "fire")
    # above the best (step 4,000) by more than 2% and 1.3σ of the evaluations' own noise (from the evaluations
    # before the rise): 1.47 counts once, 1.55 (beyond 3 margins) twice, so patience 3 is reached at step 8,000
    assert [f.step for f in fired] == [8000]
    assert fired[0].onset_step == 7000
    assert "overfitting" in fired[0].reason and "train/loss fell from 1.00 to 0.600" in fired[0].reason


def test_no_overfitting_when_both_fall_or_train_stalls():
    steps, v, t = _evals([2.0, 1.6, 1.4, 1.3, 1.25, 1.2, 1.18], [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7])
    assert _feed(v, steps, key="val/loss", context={"train_loss": t}, batch=1)[1] == []
    steps, v, t = _evals([2.0, 1.6, 1.4, 1.5, 1.6, 1.7, 1.8], [2.0, 1.5, 1.2, 1.2, 1.25, 1.3, 1.35])
    assert _feed(v, steps, key="val/loss", context={"train_loss": t}, batch=1)[1] == []


def test_misalignment_fires_when_the_metric_stagnates():
    rng = np.random.default_rng(9)
    loss = np.linspace(2.0, 1.0, 20)
    metric = 0.30 + 0.001 * rng.standard_normal(20)
    steps = [500 * (i + 1) for i in range(20)]
    ctx = {"loss": loss.tolist(), "loss_key": "train/loss"}
    _, findings = _feed(metric, steps, key="val/mAP50-95", kind="metric", context=ctx, batch=5)
    fired = _only(findings, "misalignment", "fire")
    # the first full window ends at evaluation 8; patience 3 evaluations in a row
    assert len(fired) == 1 and fired[0].step <= steps[12]
    assert "val/mAP50-95 is not following train/loss" in fired[0].reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_misalignment_when_they_move_together(seed):
    rng = np.random.default_rng(seed)
    loss = 2.0 * (1 + np.arange(30)) ** -0.5
    metric = 0.6 - 0.25 * loss + 0.003 * rng.standard_normal(30)
    steps = [500 * (i + 1) for i in range(30)]
    _, findings = _feed(metric, steps, key="val/mAP50-95", kind="metric", context={"loss": loss.tolist()}, batch=3)
    assert findings == []


# --- issue 10: single batches, a collapsed LR, sharp overfitting, a label-mapping jump --------------------


def _quiet_curve(n: int, seed: int = 4, sigma: float = 0.05) -> np.ndarray:
    """A healthy decaying loss with mild (lognormal) batch noise."""
    return _curve(n, seed=seed, noise="none") * np.random.default_rng(seed).lognormal(0.0, sigma, n)


@pytest.mark.parametrize(("factor", "fires"), [(4.0, True), (2.3, True), (1.7, False)])
def test_single_batch_far_outside_its_noise_is_an_info_spike(factor, fires):
    # issue 10: one bad batch that returns at once; past 2x its (geometric) baseline and 8 of its own
    # mean absolute deviations of log loss (lognormal sigma 0.05: about 1.4x)
    values = _quiet_curve(3000)
    values[2500] *= factor
    _, findings = Spike().run(None, list(range(3000)), values.tolist(), key="train/loss")
    fired = [(f.step, f.severity, f.details.get("single_batch")) for f in findings if f.action == "fire"]
    assert fired == ([(2500, "info", True)] if fires else [])


@pytest.mark.parametrize(("noise", "scale", "factor", "fires"), [
    ("student-t", 0.3, 4.0, False), ("student-t", 0.3, 40.0, True), ("student-t", 0.1, 6.0, True),
    ("lognormal", 0.1, 4.0, True)])
def test_single_batch_must_pass_twice_the_runs_own_largest_excursions(noise, scale, factor, fires):
    # the run's noise envelope is the largest ratio of its recent batches to their baseline: Student-t(3)
    # batch noise at scale 0.3 reaches about 4x, so a lone 4x batch is the run's own noise and 40x is not;
    # at scale 0.1 it reaches about 2x and a lone 6x batch is reported, as on lognormal noise
    values = _curve(N, 0, noise, scale)
    values[15_000] *= factor
    _, findings = Spike().run(None, list(range(N)), values.tolist(), key="train/loss")
    fired = [(f.step, f.severity) for f in findings if f.action == "fire" and f.step >= 14_000]
    assert ((15_000, "info") in fired) is fires


def test_single_batch_that_runs_into_inf_is_raised_to_warning():
    # a lone batch is reported at once (info); when Inf follows it the incident is real: warning, peak +Inf
    values = _quiet_curve(600).tolist()
    values[500] *= 3.0
    values[501] = math.inf
    _, findings = Spike().run(None, list(range(600)), values, key="train/loss")
    fired = [(f.step, f.onset_step, f.severity) for f in findings if f.action == "fire"]
    assert fired == [(500, 500, "info"), (501, 500, "warning")]
    assert "ran into" in findings[1].reason
    resolved = [f for f in findings if f.action == "resolve"]
    assert resolved and "peak +Inf" in resolved[0].reason


def test_spike_state_from_the_former_linear_rule_is_learned_anew():
    # states stored by the linear rule (no "log" entry) hold a baseline on another scale: start again,
    # keeping the run's first loss, and judge as a fresh state would
    values = _quiet_curve(3000)
    values[2500] *= 4.0
    old = {"n": 500, "em": 0.9, "ed": 0.05, "p": 0.0, "k": 450, "ex": [], "active": False, "onset": None,
           "base": None, "rec_level": None, "peak": None, "ea": 0.0, "pa": 1.0, "thr": None, "seg": 0,
           "last": 999, "l0": float(values[0])}
    det = Spike()
    st, _ = det.run(old, list(range(1000, 3000)), values[1000:].tolist(), key="train/loss")
    fresh, _ = det.run({**det.initial_state(), "l0": float(values[0])}, list(range(1000, 3000)),
                       values[1000:].tolist(), key="train/loss")
    assert st == fresh and st["log"] is True and st["l0"] == float(values[0])
    assert json.loads(json.dumps(st, allow_nan=False)) == st


def test_single_batch_on_a_near_zero_loss_is_not_reported():
    # a loss at 1 % of where it started: a 5x batch is far outside its noise but the scale is linear
    # below `floor` (0.25) of the first loss, where a 5x move is small; with no floor it is reported
    values = 0.02 + 2.0 * np.exp(-np.arange(3000) / 40.0)
    values = values * np.random.default_rng(5).lognormal(0.0, 0.02, 3000)
    values[2500] *= 5.0
    _, findings = Spike().run(None, list(range(3000)), values.tolist(), key="train/loss")
    assert [f for f in findings if f.action == "fire"] == []
    _, findings = Spike(floor=0.0).run(None, list(range(3000)), values.tolist(), key="train/loss")
    assert [(f.step, f.severity) for f in findings if f.action == "fire"] == [(2500, "info")]


def _collapse(n: int, at: int, collapsed: bool) -> tuple[list[float], list[float]]:
    """A loss that falls fast until ``at``; then flat (the LR cut to 1e-4x, collapsed) or still falling;
    a cosine schedule throughout."""
    t = np.arange(n)
    lr = 1e-3 * 0.5 * (1 + np.cos(math.pi * t / n))
    fall = 0.3 + 1.7 * np.exp(-t / 80.0)
    if collapsed:
        lr[at:] *= 1e-4
        fall[at:] = fall[at]
    noise = np.random.default_rng(6).lognormal(0.0, 0.05, n)
    return (fall * noise).tolist(), lr.tolist()


def test_plateau_when_the_lr_collapses_under_a_decaying_schedule():
    # the schedule keeps decaying the collapsed LR by more than `lr_drop` every few steps: those falls are
    # no planned drops, so patience runs and the stuck run is found
    values, lr = _collapse(1500, 200, collapsed=True)
    _, findings = _feed(values, context={"lr": lr}, config=CFG.merge({"spike": False}))
    fired = _only(findings, "plateau", "fire")
    assert len(fired) == 1 and 200 <= fired[0].step <= 900
    values, lr = _collapse(1500, 200, collapsed=False)
    _, findings = _feed(values, context={"lr": lr}, config=CFG.merge({"spike": False}))
    assert _only(findings, "plateau") == []


def _feed_val(val, train, **params):
    steps, v, t = _evals(val, train)
    config = CFG.merge({"overfitting": params}) if params else CFG
    _, findings = _feed(v, steps, key="val/loss", context={"train_loss": t}, batch=1, config=config)
    return [f.step for f in _only(findings, "overfitting", "fire")]


def test_sharp_overfitting_fires_at_its_second_evaluation():
    val = [2.0, 1.6, 1.4, 1.35, 1.34, 1.6, 2.4, 2.6, 2.8]
    train = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    # 2.4 is beyond 3 margins of the best: it counts twice, so the rule fires at the second evaluation
    assert _feed_val(val, train) == [7000]
    assert _feed_val(val, train, strong=1000.0) == [8000]


def test_no_overfitting_for_a_tiny_rise_after_a_large_fall():
    # a long quiet stretch (the noise of the early fall forgotten), then a creep of 0.027 -> 0.031: beyond
    # 2 % and beyond the evaluations' noise, but 0.2 % of the fall from 2.0
    val = [2.0, 0.5, 0.1, 0.03] + [0.027] * 30 + [0.028, 0.029, 0.030, 0.031]
    train = np.geomspace(2.0, 0.001, len(val)).tolist()
    assert _feed_val(val, train) == []
    assert _feed_val(val, train, giveback=0.0) == [36000]  # 0.029 is beyond 3 margins: counts twice


def _jump(metric_follows: bool) -> tuple[list[int], list[float], list[float]]:
    """Evaluations of a loss that falls, jumps at evaluation 12 and is learned again, and of its metric:
    collapsed from the jump on (a label-mapping bug) or back where it was (a spike that recovered)."""
    rng = np.random.default_rng(3)
    loss = np.concatenate([np.linspace(1.0, 0.5, 12), [3.0, 1.5, 0.8, 0.6, 0.5, 0.45, 0.42, 0.4]])
    metric = np.concatenate([np.linspace(0.5, 0.8, 12), [0.1] * 8]) + 0.005 * rng.standard_normal(20)
    if metric_follows:
        metric[12:] = 0.8 + 0.005 * rng.standard_normal(8)
    return [100 * (i + 1) for i in range(20)], metric.tolist(), loss.tolist()


def test_misalignment_fires_within_3_evaluations_of_a_loss_jump():
    steps, metric, loss = _jump(metric_follows=False)
    _, findings = _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": loss}, batch=4)
    fired = _only(findings, "misalignment", "fire")
    assert len(fired) == 1 and steps[12] < fired[0].step <= steps[15]
    steps, metric, loss = _jump(metric_follows=True)
    _, findings = _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": loss}, batch=4)
    assert _only(findings, "misalignment") == []


def test_a_climb_into_nan_is_a_divergence_even_inside_warmup():
    # (issue 10) a loss that explodes (LR ×1,000, no clipping) and overflows 3 points later: too fast for
    # `patience`, and here inside the 50-point warm-up; non_finite reports the NaN, divergence the blow-up
    rng = np.random.default_rng(5)
    head = (0.05 * rng.lognormal(0.0, 0.3, 40)).tolist()
    values = head + [7.6e4, 2.1e12, 6.0e26, math.nan, math.nan]
    _, findings = _feed(values, batch=1)
    fired = _only(findings, "divergence", "fire")
    assert [(f.step, f.onset_step) for f in fired] == [(43, 40)]
    assert "ran into NaN" in fired[0].reason and fired[0].severity == "critical"
    assert [f.step for f in _only(findings, "non_finite", "fire")] == [43]
    assert list(map(_verdict, _feed(values, batch=100)[1])) == list(map(_verdict, findings))  # one request


def test_a_lone_overflow_is_no_divergence():
    # fp16-style: one Inf loss (a skipped step) between normal ones is non_finite's alone
    values = _quiet_curve(300).tolist()
    values[200] = math.inf
    _, findings = _feed(values)
    assert [(f.rule, f.step) for f in _only(findings, action="fire")] == [("non_finite", 200)]


def test_overfitting_noise_comes_from_the_evaluations_before_the_rise():
    # a steep early fall, then the validation loss jumps 67 % above its best and stays: the rise's own second
    # differences must not raise the bar it is judged against (it fired 5 evaluations late on such a curve)
    val = [0.41, 0.20, 0.144, 0.1025, 0.1712, 0.1793, 0.1812, 0.1826, 0.1837]
    train = [0.34, 0.19, 0.13, 0.093, 0.063, 0.0018, 0.0005, 0.0004, 0.0003]
    assert _feed_val(val, train) == [6000]  # the second evaluation after the rise


def test_misalignment_is_judged_from_a_jump_even_when_the_window_starts_higher():
    # a run with few evaluations: the window still holds the first, high losses, yet the jump (a label-mapping
    # bug) is where it is judged from; and the metric at the jump's own evaluation (still 0.70) does not hide
    # its fall after it
    steps = [50 * (i + 1) for i in range(10)]
    loss = [1.2, 0.9, 0.84, 0.79, 0.76, 2.11, 1.54, 1.29, 1.11, 1.05]
    metric = [0.52, 0.63, 0.69, 0.66, 0.66, 0.70, 0.41, 0.31, 0.27, 0.20]
    _, findings = _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": loss}, batch=1)
    fired = _only(findings, "misalignment", "fire")
    assert len(fired) == 1 and steps[5] < fired[0].step <= steps[8]
    assert _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": loss}, batch=10)[1] == findings


def test_a_collapsed_metric_wobbling_near_zero_has_not_risen():
    # after a jump the accuracy sits at 0.044-0.046: a 4 % relative "rise" of a metric that fell from 0.47
    steps = [27 * (i + 1) for i in range(10)]
    loss = [1.74, 1.70, 1.65, 1.63, 1.60, 1.83, 1.69, 1.64, 1.59, 1.60]
    metric = [0.445, 0.435, 0.476, 0.468, 0.465, 0.0442, 0.0461, 0.045, 0.0418, 0.0513]
    _, findings = _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": loss}, batch=1)
    fired = _only(findings, "misalignment", "fire")
    assert len(fired) == 1 and steps[5] < fired[0].step <= steps[8]


def test_no_overfitting_when_the_training_loss_only_comes_back_after_a_blow_up():
    # a warm-up blow-up after the first evaluation (a corpus run): the validation loss stays above its best
    # while the training loss comes back to about its level at the best (0.537 → 0.531, 1 %), which is a
    # recovery, not overfitting; the training loss must fall by `min_delta` of its level at the best
    val = [0.5074, 0.9469, 0.7891, 0.6062, 0.6821, 0.7165, 0.7301, 0.7402]
    train = [0.5374, 0.8835, 0.5720, 0.5324, 0.5306, 0.5300, 0.5296, 0.5290]
    assert _feed_val(val, train) == []
    # the same validation curve while the training loss falls well below its level at the best is overfitting
    assert _feed_val(val, [0.5374, 0.8835, 0.5720, 0.5324, 0.45, 0.40, 0.36, 0.33]) != []


def test_no_misalignment_while_the_loss_comes_back_from_a_blow_up():
    # a divergence (a corpus run with the gradient clipping removed): the loss blows up by orders of
    # magnitude, the accuracy falls to chance, and the loss then comes back down, still above where the run
    # started; a recovery with nothing learnt that the metric could show, not a metric failing to follow
    steps = [20 * (i + 1) for i in range(22)]
    loss = [1.79, 1.76, 1.58, 1.43, 1.21, 1.10, 1.01, 0.92, 0.92, 0.82, 0.66, 0.55, 3.4e14, 1.1e7, 3.23, 2.68,
            2.70, 2.48, 2.37, 2.42, 2.22, 2.22]
    metric = [0.27, 0.20, 0.54, 0.44, 0.60, 0.60, 0.68, 0.66, 0.71, 0.70, 0.81, 0.86, 0.156, 0.156, 0.152, 0.156,
              0.152, 0.159, 0.176, 0.152, 0.159, 0.152]
    for batch in (1, 5, 22):
        _, findings = _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": loss}, batch=batch)
        assert _only(findings, "misalignment") == []
    # the same metric while the loss goes on below where the run started is misaligned (a label-mapping bug)
    learnt = loss[:14] + [1.5, 1.2, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5]
    _, findings = _feed(metric, steps, key="val/accuracy", kind="metric", context={"loss": learnt}, batch=1)
    assert [f.action for f in _only(findings, "misalignment")] == ["fire"]


def test_an_lr_rise_inside_a_batch_restarts_plateau_patience_however_batched():
    from losswatch.server.detectors import evaluate_run

    kinds = {"train/loss": "loss", "lr": "lr"}
    loss = _quiet_curve(600).tolist()
    lr = {0: 0.003, 288: 0.06}  # LR ×20 for good at step 288, logged where it moved

    def run(per: int) -> dict[str, Any]:
        states: dict[str, Any] = {}
        for i in range(0, 600, per):
            batch = {"train/loss": (list(range(i, min(600, i + per))), loss[i:i + per])}
            pts = [(s, v) for s, v in lr.items() if i <= s < i + per]
            if pts:
                batch["lr"] = ([s for s, _ in pts], [v for _, v in pts])
            states, _ = evaluate_run(states, kinds, batch, CFG, lr=pts[-1][1] if pts else None)
        return states["train/loss"]["plateau"]

    runs = [run(per) for per in (1, 250, 600)]
    assert {(p["since"], p["lr_ref"]) for p in runs} == {(288, 0.06)}


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 1, 1, 1]) == 0.0


# --- segments, replays, purity, JSON ---------------------------------------------------------------------


def test_step_going_backwards_starts_a_new_segment_without_finding():
    values = _curve(6000, seed=10)
    steps = list(range(4000)) + list(range(3000, 5000))  # resumed from the checkpoint at step 3000
    resumed = np.concatenate([values[:4000], values[3000:5000] * 1.05])
    state, findings = _feed(resumed, steps, context={"lr": 1e-4})
    assert findings == []
    assert state["spike"]["seg"] == 1 and state["divergence"]["seg"] == 1 and state["last"][0] == 4999


def test_new_segment_closes_an_open_alert():
    det = NonFinite()
    state, f1 = det.run(None, [0, 1, 2], [1.0, math.nan, math.nan], key="train/loss")
    state, f2 = det.run(state, [1, 2], [0.9, 0.8], key="train/loss")
    assert [f.action for f in f1 + f2] == ["fire", "resolve"]
    assert f2[0].details["segment_reset"] and "went back from step 2 to 1" in f2[0].reason


def test_a_retried_batch_is_skipped():
    values = _curve(1000, seed=11).tolist()
    state, _ = evaluate_series(None, "train/loss", "loss", list(range(500)), values[:500], CFG)
    again, findings = evaluate_series(state, "train/loss", "loss", list(range(400, 500)), values[400:500], CFG)
    assert findings == [] and again == state


def test_state_round_trip_mid_stream_gives_identical_results():
    values = _curve(12000, seed=12)
    values[3000] = math.nan
    values[6000:6010] *= 5.0
    values[9000:] *= 3.0
    steps = list(range(12000))
    lr = _cosine_lr(12000)
    whole, f_whole = evaluate_series(None, "train/loss", "loss", steps, values.tolist(), CFG, {"lr": lr})
    state, f_parts = None, []
    for i in range(0, 12000, 777):
        state, f = evaluate_series(state, "train/loss", "loss", steps[i:i + 777], values[i:i + 777].tolist(), CFG,
                                   {"lr": lr[i:i + 777]})
        state = json.loads(json.dumps(state, allow_nan=False))
        f_parts += f
    # the numpy fast paths compute the EMAs in closed form: equal up to rounding, same verdicts
    assert [_verdict(f) for f in f_parts] == [_verdict(f) for f in f_whole] and len(f_whole) >= 4
    assert [f.value for f in f_parts] == pytest.approx([f.value for f in f_whole], rel=1e-9, nan_ok=True)
    whole = json.loads(json.dumps(whole))
    # the level clips each point at twice the level at the start of its batch: batching moves it a little
    assert state.pop("level")["e"] == pytest.approx(whole.pop("level")["e"], rel=1e-2)
    assert _approx_state(state) == _approx_state(whole)


def _verdict(f: Any) -> tuple[Any, ...]:
    return (f.rule, f.action, f.step, f.onset_step, f.severity, f.key)


def _approx_state(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _approx_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_approx_state(v) for v in state]
    if isinstance(state, float):
        return pytest.approx(state, rel=1e-9, abs=1e-12)
    return state


def test_evaluate_run_is_the_server_batch_step():
    from losswatch.server.detectors import evaluate_run

    kinds = {"train/loss": "loss", "lr": "lr", "val/acc": "metric"}
    states: dict[str, Any] = {}
    found = []
    loss = np.linspace(2.0, 1.0, 4000)
    for i in range(0, 4000, 250):
        batch = {"train/loss": (list(range(i, i + 250)), loss[i:i + 250].tolist()),
                 "lr": ([i + 249], [1e-3]), "val/acc": ([i + 249], [0.5])}
        states, f = evaluate_run(states, kinds, batch, CFG, lr=1e-3)
        found += f
    assert set(states) == {"train/loss", "val/acc"}  # lr has no rule: no state
    assert states["val/acc"]["misalignment"]["loss"][-1] == pytest.approx(series_level(states["train/loss"]))
    assert [(f.rule, f.action) for f in found] == [("misalignment", "fire")]
    json.dumps(states, allow_nan=False)


def test_a_metric_logged_every_step_is_one_evaluation_per_spacing():
    # evaluations are grouped by step (10 steps by default), not by ingest batch: batch-invariant
    det = Misalignment()
    state, _ = det.run(None, list(range(100)), [0.5] * 100, context={"loss": 1.0})
    state, _ = det.run(state, list(range(100, 200)), [0.6] * 100, context={"loss": 0.9})
    assert state["steps"] == [149, 159, 169, 179, 189, 199]  # the last 6 (the window), 10 steps apart
    assert state["metric"][-1] == 0.6 and state["loss"][-1] == 0.9


def test_update_is_pure_and_point_by_point_equals_batch():
    values = _curve(2000, seed=13)
    values[1500:1504] *= 6
    for det in (NonFinite(), Spike(), Divergence(), Plateau(patience=300, warmup=100)):
        state, point_findings = None, []
        for s, v in enumerate(values.tolist()):
            before = copy.deepcopy(state)
            state, f = det.update(state, s, v, key="k", lr=1e-3)
            assert state is not before and (before is None or before == copy.deepcopy(before))
            point_findings += f
        batch_state, batch_findings = det.run(None, list(range(2000)), values.tolist(), key="k", context={"lr": 1e-3})
        assert batch_findings == point_findings and batch_state == state


def test_evaluate_series_does_not_modify_its_input():
    state, _ = evaluate_series(None, "train/loss", "loss", [0, 1], [1.0, 0.9], CFG)
    frozen = copy.deepcopy(state)
    evaluate_series(state, "train/loss", "loss", [2, 3], [math.nan, 0.8], CFG)
    assert state == frozen


def test_series_level_and_build_context():
    state, _ = _feed(np.full(300, 0.7))
    assert series_level(state) == pytest.approx(0.7)
    kinds = {"train/loss": "loss", "val/loss": "loss", "val/mAP50-95": "metric", "lr": "lr"}
    levels = {"train/loss": 0.7}
    ctx = build_context("val/loss", "loss", CFG, kinds, levels, lr=1e-3)
    assert ctx == {"lr": 1e-3, "train_key": "train/loss", "train_loss": 0.7}
    ctx = build_context("val/mAP50-95", "metric", CFG, kinds, levels)
    assert ctx == {"loss_key": "train/loss", "loss": 0.7}


def test_pair_detectors_skip_points_without_the_paired_level():
    assert Overfitting().run(None, [1, 2], [1.0, 2.0], context={})[1] == []
    assert Misalignment().run(None, [1, 2], [1.0, 2.0], context={"loss": None})[1] == []


# --- stalled -----------------------------------------------------------------------------------------


def test_stalled_fires_once_and_resolves_on_arrival():
    state = None
    t = 1_000_000.0
    for i in range(20):
        state, f = record_arrival(state, t + 5.0 * i, CFG, step=100 * i, label="run 'lr-3e-4'")
        assert f == []
    last = t + 95.0
    state, f = check_stalled(state, last + 59.0, CFG)
    assert f is None  # 10x 5 s = 50 s, but never less than 60 s
    state, f = check_stalled(state, last + 61.0, CFG, label="run 'lr-3e-4'")
    assert f is not None and f.rule == "stalled" and f.action == "fire" and f.step == 1900
    assert f.reason.startswith("run 'lr-3e-4' has sent nothing for 61 s (last step 1,900)")
    state = json.loads(json.dumps(state, allow_nan=False))
    assert check_stalled(state, last + 600.0, CFG)[1] is None  # once per silence
    state, f = record_arrival(state, last + 700.0, CFG, step=2000)
    assert [x.action for x in f] == ["resolve"] and state["mean"] == pytest.approx(5.0, rel=0.01)


def test_stalled_learns_the_evaluation_pause():
    det = Stalled()
    state, t = None, 0.0
    for epoch in range(3):
        for _ in range(50):
            t += 2.0
            state, _ = det.arrive(state, t)
        t += 300.0  # evaluation pause
        if epoch >= 1:
            assert det.check(state, t - 1.0)[1] is None
        state, _ = det.arrive(state, t)


def test_stalled_needs_warmup_and_can_be_silenced():
    state, _ = record_arrival(None, 0.0, CFG)
    assert check_stalled(state, 10_000.0, CFG)[1] is None
    quiet = CFG.merge({"stalled": False})
    state = None
    for i in range(10):
        state, _ = record_arrival(state, float(i), quiet)
    assert check_stalled(state, 10_000.0, quiet)[1] is None


def test_extreme_and_infinite_values_leave_the_spike_state_finite_json():
    # the log-space scale: asinh(y / u) of the largest float over a small unit overflows, and ±Inf counts as a
    # point in the bad direction; neither may make a baseline infinite (PostgreSQL's JSONB refuses Infinity,
    # which lost the whole batch with a 500), in the loop (batch=1) or the numpy path (one batch)
    values = [0.01 * (1 + 0.01 * (i % 7)) for i in range(200)]
    values += [1.7976931348623157e308, float("inf"), float("-inf"), -2.5, 0.01, 1e300, 0.0101, 0.0102]
    for batch in (1, 7, len(values)):
        state, _ = _feed(values, batch=batch)  # _feed round-trips the state through json.dumps(allow_nan=False)
        spike = state["rules"]["spike"] if "rules" in state else state
        assert json.dumps(spike, allow_nan=False)


@pytest.mark.parametrize("per_batch", [1, 250, 3000])
def test_huge_finite_losses_leave_a_state_plain_json_can_hold(per_batch):
    # a few finite losses near -1.8e308 once overflowed the plateau rule's running sums to -Inf, and huge
    # gradient norms the level's closed form: a state PostgreSQL's JSONB refuses (the batch would answer 500
    # and be retried for ever)
    import json

    from losswatch.server.detectors import RuleConfig, evaluate_run

    values = _curve(3000, 0, "lognormal", 0.2)
    values[1500:1505] = -1.7e308
    values[2000] = 1.79e308
    states: dict = {}
    for b in range(0, 3000, per_batch):
        steps = list(range(b, min(b + per_batch, 3000)))
        batch = {"train/loss": (steps, values[b:b + per_batch].tolist()),
                 "grad_norm": (steps, np.abs(values[b:b + per_batch]).tolist())}
        states, _ = evaluate_run(states, {"train/loss": "loss", "grad_norm": "grad_norm"}, batch,
                                 RuleConfig.default(), lr=1e-3)
        json.dumps(states, allow_nan=False)  # raises on ±Inf / NaN
