"""The plateau rule judged against comparable runs (issue 10): the reference rule
(``detectors/peers.py``) and how the rule uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from losswatch.server.detectors import STATE_VERSION, Plateau, RuleConfig, evaluate_run
from losswatch.server.detectors import peers as P
from losswatch.server.detectors.plateau import PEERS_FACTOR

CFG = RuleConfig.default()


def _curve(n: int, floor: float, seed: int, stop: int | None = None, tau: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """A loss falling from ~2 to ``floor`` (time constant ``tau`` steps), lognormal batch noise; frozen at
    its level at step ``stop`` when given (a stuck run)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = floor + 2.0 * np.exp(-t / tau)
    if stop is not None:
        base[stop:] = base[stop]
    return t, base * rng.lognormal(0.0, 0.1, n)


def _peers(n: int = 2, floor: float = 0.02, length: int = 1000) -> dict:
    levels = []
    for seed in range(1, n + 1):
        t, v = _curve(length, floor, seed)
        levels.append(P.peer_levels(t, v))
    ref = P.reference(levels)
    assert ref is not None
    return ref


def _run(values: np.ndarray, peers: dict | None, batch: int | None = None) -> list:
    det = Plateau()
    state = det.initial_state()
    if peers is not None:
        state["peers"] = peers
    steps = list(range(len(values)))
    per = batch or len(values)
    out = []
    for i in range(0, len(values), per):
        state, f = det.run(state, steps[i:i + per], values[i:i + per].tolist(), key="train/loss",
                           context={"lr": 1e-3})
        out += f
    return out


# --- the reference rule ----------------------------------------------------------------------------


def test_grid_is_geometric_from_64_and_stops_at_the_last_step():
    g = P.grid(1000)
    assert g[0] == 64 and g[-1] <= 1000 and all(b > a for a, b in zip(g, g[1:], strict=False))
    assert all(1.1 <= b / a <= 1.15 for a, b in zip(g[5:], g[6:], strict=False))
    assert P.grid(63) == []
    assert len(P.grid(1_000_000)) < 90  # a million-step project: a small reference


def test_peer_level_is_the_mean_over_the_span_ending_at_the_step():
    steps = np.arange(0, 2000, 8)  # 250 buckets of 8 steps
    values = np.where(steps < 1000, 1.0, 0.1)
    lv = P.peer_levels(steps, values)
    assert lv[64] == pytest.approx(1.0)
    g = max(s for s in lv if s <= 1000)
    assert lv[g] == pytest.approx(1.0)
    late = max(lv)  # the span ending there (a quarter of the steps) lies after step 1,000
    assert late > 1400 and lv[late] == pytest.approx(0.1)
    # non-finite values are left out; a window with fewer than 3 values has no level
    assert P.peer_levels(steps, np.where(steps == 800, np.nan, values)).keys() == lv.keys()
    assert P.peer_levels([10, 70, 2000], [1.0, 1.0, 1.0]) == {}


@pytest.mark.parametrize(("levels", "expected"), [
    ([0.1], None),  # one comparable run is not enough
    ([0.1, 0.5], (0.5, 2)),  # two: the higher one (a run that learned unusually well sets no bar)
    ([0.1, 0.5, 9.0], (0.5, 3)),  # three: the middle one (a diverged run does not move it)
    ([0.1, 0.2, 0.5, 9.0], (0.5, 4)),  # even: the higher of the two middle ones
])
def test_reference_is_the_higher_median_of_at_least_two_runs(levels, expected):
    ref = P.reference([{100: v, 200: v} for v in levels])
    if expected is None:
        assert ref is None
    else:
        assert {k: ref[k] for k in ("s", "v", "n")} == {"s": [100, 200], "v": [expected[0]] * 2, "n": [expected[1]] * 2}
        assert ref["u"] == [sorted(levels)[3 * len(levels) // 4]] * 2  # the upper quartile


def test_reference_only_where_enough_runs_reached_the_step():
    ref = P.reference([{100: 1.0, 200: 0.5, 300: 0.2}, {100: 2.0, 200: 0.7}, {100: 3.0}])
    assert ref == {"s": [100, 200], "v": [2.0, 0.7], "n": [3, 2], "u": [3.0, 0.7]}  # step 300: one run only


def test_attach_puts_the_reference_in_the_plateau_state_without_touching_the_input():
    ref = _peers()
    states: dict = {"train/loss": None}
    out = P.attach(states, {"train/loss": ref}, CFG, STATE_VERSION)
    assert states == {"train/loss": None}
    sub = out["train/loss"]["plateau"]
    assert sub["peers"] == ref and sub["last"] is None and out["train/loss"]["v"] == STATE_VERSION
    assert P.attach(out, {"train/loss": ref}, CFG, STATE_VERSION)["train/loss"] is out["train/loss"]  # unchanged
    gone = P.attach(out, {"train/loss": None}, CFG, STATE_VERSION)
    assert "peers" not in gone["train/loss"]["plateau"] and "peers" in out["train/loss"]["plateau"]
    assert P.attach({}, {"train/loss": None}, CFG, STATE_VERSION) == {}  # nothing to say: no state made
    json.dumps(out, allow_nan=False)  # still plain JSON


# --- the rule with a reference ---------------------------------------------------------------------


def test_a_run_stuck_far_above_its_peers_is_a_plateau_it_would_call_converged_alone():
    t, v = _curve(800, 0.02, 7, stop=120)  # stops at ~0.29, below half its start (~1.0): "converged" alone
    assert _run(v, None) == []
    fired = [f for f in _run(v, _peers(3)) if f.action == "fire"]
    assert len(fired) == 1 and fired[0].rule == "plateau" and fired[0].severity == "warning"
    f = fired[0]
    assert f.details["peers"] == 3 and f.details["peer_level"] * PEERS_FACTOR < f.value
    assert f"at step {f.step:,} where 3 comparable runs of this project were at" in f.reason
    assert "stuck early" in f.reason


def test_a_healthy_run_at_its_peers_level_is_not_a_plateau():
    _, v = _curve(1500, 0.02, 11)
    assert [f for f in _run(v, _peers(3)) if f.rule == "plateau"] == []


def test_a_run_that_converged_near_its_peers_is_not_a_plateau():
    # stops at 2.5x the peers' final level: above them, but not far above
    _, v = _curve(900, 0.05, 5, tau=30.0)
    assert [f for f in _run(v, _peers(3, floor=0.02)) if f.rule == "plateau"] == []


def test_without_peers_the_rule_is_unchanged():
    t, v = _curve(800, 0.02, 7, stop=120)
    alone = _run(v, None)
    with_empty = _run(v, {"s": [], "v": [], "n": []})
    assert [(f.step, f.reason) for f in alone] == [(f.step, f.reason) for f in with_empty]


def test_peers_do_not_fire_in_warmup_or_right_after_an_lr_drop():
    t, v = _curve(800, 0.02, 7, stop=120)
    det = Plateau()
    state = {**det.initial_state(), "peers": _peers(3)}
    lr = [1e-3 if s < 330 else 1e-4 for s in range(800)]  # a planned drop just before it would fire
    _, found = det.run(state, list(range(800)), v.tolist(), key="train/loss", context={"lr": lr})
    fires = [f.step for f in found if f.action == "fire"]
    assert fires and all(s >= 330 + 100 for s in fires)  # patience restarted at the drop (336 without it)
    # and nothing during the first points (the rule's warm-up), however far above its peers they are
    _, early = det.run({**det.initial_state(), "peers": _peers(3)}, list(range(120)), v[:120].tolist(),
                       key="train/loss", context={"lr": 1e-3})
    assert early == []


def test_the_reference_survives_a_resume():
    t, v = _curve(800, 0.02, 7, stop=120)
    ref = _peers(3)
    det = Plateau()
    steps = list(range(400)) + list(range(300, 800))  # resumed from a checkpoint at step 300
    vals = v[:400].tolist() + v[300:].tolist()
    state, _ = det.run({**det.initial_state(), "peers": ref}, steps, vals, key="train/loss", context={"lr": 1e-3})
    assert state["seg"] == 1 and state["peers"] == ref


def test_the_same_plateau_however_the_run_is_batched():
    t, v = _curve(800, 0.02, 7, stop=120)
    ref = _peers(3)
    kinds = {"train/loss": "loss"}

    def replay(per: int) -> list:
        states: dict = {}
        out = []
        for i in range(0, len(v), per):
            states = P.attach(states, {"train/loss": ref}, CFG, STATE_VERSION)
            states, f = evaluate_run(states, kinds, {"train/loss": (t[i:i + per], v[i:i + per])}, CFG, lr=1e-3)
            out += [(x.rule, x.action, x.step, x.onset_step, x.reason) for x in f if x.rule == "plateau"]
        return out

    base = replay(len(v))
    assert base and base == replay(1) == replay(37) == replay(250)


def test_within_peers_is_at_or_below_their_upper_quartile_at_the_last_reference_step():
    from losswatch.server.detectors.plateau import _within_peers

    ref = P.reference([{100: 1.0, 200: 0.5}, {100: 2.0, 200: 0.7}, {100: 3.0, 200: 0.9}, {100: 4.0, 200: 1.1}])
    assert ref["u"] == [4.0, 1.1]
    assert _within_peers(ref, 250, 1.1) and not _within_peers(ref, 250, 1.2)
    assert _within_peers(ref, 150, 3.9)  # step 100's level until step 200
    assert not _within_peers(ref, 50, 0.1) and not _within_peers(None, 250, 0.1)  # no reference there
    # a reference stored before "u" existed: the median is the bar
    assert _within_peers({"s": [100], "v": [0.5], "n": [2]}, 100, 0.5)
