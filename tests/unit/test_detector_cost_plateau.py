"""The cheaper plateau and spike fast paths (issue 13: detector cost on the ingest path) keep their
results bit for bit: the per-point LR handed over as a :class:`~.base.Column` (no list made) reads as
the list did, the finite-LR branch of plateau's restart search finds the general branch's index, and
the debiasing divisions skipped once ``p < 2^-54`` are the identity they skip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from losswatch.server.detectors import RuleConfig, evaluate_run, evaluate_series
from losswatch.server.detectors.base import Column, per_point
from losswatch.server.detectors.plateau import _COLLAPSED, Plateau

CFG = RuleConfig.default()
KINDS = {"train/loss": "loss", "lr": "lr", "grad_norm": "grad_norm"}


def _lr_run(n: int = 20_000, seed: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A loss that stalls early under an LR logged every step (a warm-up, a slow decay, a step drop)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = 0.3 + 2.0 * np.exp(-t / 500.0)
    base[300:] = base[300]  # stuck early, far above where it would go: plateau fires
    lr = 1e-3 * (1.0 - 0.08 * t / n)  # a slow decay, logged every step: never 10 % below the last restart
    lr[:200] = 1e-3 * (t[:200] + 1) / 200  # warm-up: rising
    lr[15_000:] *= 0.1  # a step drop: patience restarts, the alert closes
    return {"train/loss": (t, base * rng.lognormal(0.0, 0.2, n)), "lr": (t, lr),
            "grad_norm": (t, rng.lognormal(0.0, 0.5, n))}


def _replay(run: dict[str, tuple[np.ndarray, np.ndarray]], per: int, lists: bool) -> tuple[list, dict]:
    states: dict = {}
    found = []
    n = run["train/loss"][0].shape[0]
    for i in range(0, n, per):
        batch = {k: ((s[i:i + per].tolist(), v[i:i + per].tolist()) if lists else (s[i:i + per], v[i:i + per]))
                 for k, (s, v) in run.items()}
        states, f = evaluate_run(states, KINDS, batch, CFG, lr=float(run["lr"][1][min(n, i + per) - 1]))
        found += [(x.rule, x.action, x.step, x.severity, x.reason, repr(x.value)) for x in f]
    return found, json.loads(json.dumps(states, allow_nan=False))


@pytest.mark.parametrize("per", [1000, 777])
def test_numpy_columns_and_lists_find_the_same_with_a_per_point_lr(per: int) -> None:
    cols = _replay(_lr_run(), per, lists=False)
    lists = _replay(_lr_run(), per, lists=True)
    assert any(f[0] == "plateau" and f[1] == "fire" for f in cols[0])
    assert cols == lists
    # and one point per request (the loop alone): the same plateau verdicts (the closed forms' last bits and
    # the explanations' levels aside)
    run = {k: (s[:6000], v[:6000]) for k, (s, v) in _lr_run().items()}
    one = [f[:4] for f in _replay(run, 1, lists=True)[0] if f[0] == "plateau"]
    big = [f[:4] for f in _replay(run, 1000, lists=False)[0] if f[0] == "plateau"]
    assert one == big and one


def test_a_column_lr_reads_as_its_list() -> None:
    lr = np.linspace(1e-3, 1e-5, 300)
    n = 300
    steps = np.arange(n)
    values = 1.0 + np.random.default_rng(0).random(n)
    a = evaluate_series(None, "train/loss", "loss", steps, values, CFG, {"lr": Column(lr)})
    b = evaluate_series(None, "train/loss", "loss", steps, values, CFG, {"lr": lr.tolist()})
    assert a == b
    assert list(per_point({"lr": Column(lr)}, "lr", n)) == lr.tolist()


def _next_event_general(det: Plateau, st: dict, lrs: np.ndarray, i: int, m: int) -> int:
    """The general branch of ``Plateau._next_event`` (any LR may be missing), as it was written."""
    last_lr, lr_ref = st["lr"], st["lr_ref"]
    seg = lrs[i:]
    valid = np.isfinite(seg)
    if not valid.any():
        return m
    if lr_ref is None:
        return i + int(np.argmax(valid))
    pos = np.where(valid, np.arange(seg.shape[0]), -1)
    np.maximum.accumulate(pos, out=pos)
    before = np.nan if last_lr is None else last_lr
    prev = np.concatenate(([before], np.where(pos >= 0, seg[pos], before)[:-1]))
    with np.errstate(invalid="ignore"):
        event = valid & ((seg > prev) | (seg < lr_ref * (1.0 - det.lr_drop)))
    if lr_ref < _COLLAPSED * st["lr_max"]:
        event = valid & (seg > prev)
    return i + int(np.argmax(event)) if event.any() else m


def test_the_restart_search_over_finite_lrs_is_the_general_one() -> None:
    det = Plateau()
    rng = np.random.default_rng(7)
    for trial in range(400):
        m = int(rng.integers(1, 60))
        kind = trial % 4
        if kind == 0:  # falling slowly, sometimes by more than lr_drop
            lrs = 1e-3 * np.cumprod(rng.uniform(0.97, 1.0, m))
        elif kind == 1:  # with rises
            lrs = 1e-3 * rng.uniform(0.5, 1.5, m)
        elif kind == 2:  # constant
            lrs = np.full(m, 1e-4)
        else:  # collapsed
            lrs = 1e-9 * np.cumprod(rng.uniform(0.9, 1.0, m))
        st = {"lr": [None, 1e-3, 5e-4][trial % 3], "lr_ref": [1e-3, 9e-4, 1e-3, 1.1e-9][kind],
              "lr_max": [1e-3, 2e-3, 1e-3, 1e-3][kind]}
        for i in (0, m // 2):
            if i < m:
                assert det._next_event(st, lrs, None, i, m) == _next_event_general(det, st, lrs, i, m)


def test_one_minus_p_below_two_to_the_minus_54_is_one() -> None:
    """The premise of skipping the debiasing divisions: 1 - p == 1.0 exactly for every p < 2^-54 (and
    x / 1.0 == x), so the skipped divisions change no bit."""
    top = np.nextafter(2.0 ** -54, 0.0)
    ps = np.concatenate(([0.0, 5e-324, 1e-300, 1e-17, top], np.random.default_rng(1).uniform(0.0, top, 1000)))
    assert (1.0 - ps == 1.0).all()
    assert 1.0 - 2.0 ** -54 == 1.0 and 1.0 - np.nextafter(2.0 ** -54, 1.0) < 1.0  # the bound is tight
    x = np.random.default_rng(2).normal(0.0, 1e3, ps.shape[0])
    assert (x / (1.0 - ps) == x).all()


def test_the_fast_paths_just_above_the_bound_still_debias() -> None:
    """A state whose ``p`` sits on either side of 2^-54 gives the loop's findings and a finite state."""
    rng = np.random.default_rng(5)
    n = 4000
    steps = np.arange(n)
    values = (0.4 + 2.0 * np.exp(-steps / 300.0)) * rng.lognormal(0.0, 0.3, n)
    fast = evaluate_series(None, "train/loss", "loss", steps, values, CFG, {"lr": 1e-3})
    st = None
    found = []
    for i in range(n):
        st, f = evaluate_series(st, "train/loss", "loss", [int(steps[i])], [float(values[i])], CFG, {"lr": 1e-3})
        found += f
    assert [(f.rule, f.action, f.step) for f in fast[1]] == [(f.rule, f.action, f.step) for f in found]
    assert math.isfinite(fast[0]["plateau"]["p"]) and fast[0]["plateau"]["p"] < 2.0 ** -54


def test_spike_in_a_noisy_run_finds_what_one_point_per_request_finds() -> None:
    """Heavy-tailed noise: many hand-overs per batch between the closed forms (the debiasing skipped) and
    the loop."""
    rng = np.random.default_rng(11)
    n = 5000
    steps = np.arange(n)
    values = (0.5 + 2.0 * np.exp(-steps / 20_000)) * rng.lognormal(0.0, 0.6, n)
    values[3000:3004] *= 30.0
    fast = evaluate_series(None, "train/loss", "loss", steps, values, CFG, {"lr": 1e-3})
    st = None
    found = []
    for i in range(0, n, 25):  # below FAST_MIN: the loop alone
        st, f = evaluate_series(st, "train/loss", "loss", steps[i:i + 25].tolist(), values[i:i + 25].tolist(), CFG,
                                {"lr": 1e-3})
        found += f
    key = [(f.rule, f.action, f.step, f.severity) for f in fast[1] if f.rule == "spike"]
    assert key and key == [(f.rule, f.action, f.step, f.severity) for f in found if f.rule == "spike"]
