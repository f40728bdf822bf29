"""The server hands the parsed numpy columns to ``evaluate_run`` (no per-point Python objects): the
findings and the new states are the same, bit for bit, as from the same points in lists, whatever
the batch holds (NaN and ±Inf, a resume from a checkpoint, a retried point, an LR logged every step,
metrics paired with losses). Also the pieces that make that path cheap: :class:`Column`, the cached
powers, ``ema_last`` and the level's never-clipped shortcut."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from losswatch.server.detectors import RuleConfig, driver, evaluate_run
from losswatch.server.detectors.base import Column, ema_last, ema_path, increasing, powers

CFG = RuleConfig.default()
KINDS = {"train/loss": "loss", "train/loss/box": "loss_component", "grad_norm": "grad_norm", "lr": "lr",
         "train/accuracy": "metric", "sys/gpu_mem": "other"}


def test_column_hands_out_what_a_list_would() -> None:
    a = np.array([3, 5, 8, 13], dtype=np.int64)
    c = Column(a)
    assert len(c) == 4
    assert c[0] == 3 and type(c[0]) is int and type(c[np.int64(2)]) is int and c[-1] == 13
    assert type(Column(np.array([1.5]))[0]) is float
    assert isinstance(c[1:3], Column) and list(c[1:3]) == [5, 8]
    assert list(c) == a.tolist() and all(type(x) is int for x in c)
    assert np.asarray(c) is a and np.asarray(c, dtype=float).dtype == np.float64
    assert 8 in c and c.index(8) == 2
    assert list(zip(c, Column(a * 2), strict=True)) == [(3, 6), (5, 10), (8, 16), (13, 26)]
    assert increasing(None, c) and increasing(2, c) and not increasing(3, c)
    assert not increasing(None, Column(np.array([1, 2, 2], dtype=np.int64)))


@pytest.mark.parametrize("a", [2 / 51, 2 / 2001, 0.5, 1.0])
def test_ema_last_is_the_last_of_the_path(a: float) -> None:
    y = np.random.default_rng(1).lognormal(0.0, 1.0, 12_000)
    for n in (1, 7, 1000, 12_000):
        assert ema_last(0.3, y[:n], a) == float(ema_path(0.3, y[:n], a)[-1])


def test_powers_are_the_expression_and_read_only() -> None:
    b = 1.0 - 2.0 / 51.0
    got = powers(b, 1000)
    assert np.array_equal(got, b ** np.arange(1, 1001, dtype=float))
    assert powers(b, 1000) is got  # kept
    with pytest.raises(ValueError):
        got[0] = 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("clip", [True, False])
def test_level_shortcut_gives_the_full_computation(seed: int, clip: bool) -> None:
    """Without a path the level skips the point-by-point clipping test when no value can be clipped;
    with a path it always runs it: the two must leave the same state, clipped points or not."""
    rng = np.random.default_rng(seed)
    for scale, sign in ((0.05, 1.0), (0.3, 1.0), (0.05, -1.0), (0.6, 1.0)):
        y = sign * np.exp(-np.arange(4000) / 3000.0) * rng.lognormal(0.0, scale, 4000)
        y[rng.random(4000) < 0.001] *= 8.0  # a few points to clip
        st_a: dict[str, Any] | None = None
        st_b: dict[str, Any] | None = None
        for lo in range(0, 4000, 500):
            steps = list(range(lo, lo + 500))
            arr = y[lo:lo + 500]
            st_a, _ = driver._level(st_a, Column(np.array(steps)), Column(arr), arr, False, clip)
            st_b, _ = driver._level(st_b, steps, arr.tolist(), arr.copy(), True, clip)
            assert st_a == st_b


def _stream(seed: int, n: int = 5000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.int64)
    base = 0.3 + 2.0 * np.exp(-t / 800.0)
    loss = base * rng.lognormal(0.0, 0.3, n)
    loss[rng.random(n) < 0.003] *= 10.0
    loss[1200] = math.nan
    loss[1201:1204] = math.inf
    loss[3000:] *= np.linspace(1.0, 4.0, n - 3000)
    box = loss * 0.5
    box[2000] = -math.inf
    lr = 1e-3 * 0.5 * (1.0 + np.cos(np.pi * t / n))
    lr[2500:] *= 0.1
    acc = np.clip(1.0 - base / 3.0 + rng.normal(0, 0.01, n), 0.0, 1.0)
    return {"train/loss": (t, loss), "train/loss/box": (t, box), "grad_norm": (t, rng.lognormal(0, 0.5, n)),
            "lr": (t, lr), "train/accuracy": (t[::50], acc[::50]), "sys/gpu_mem": (t, rng.random(n))}


def _batches(series: dict[str, tuple[np.ndarray, np.ndarray]], cuts: list[int]
             ) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Batches between the cuts; one batch goes back to an earlier step (a resume), one re-sends the
    last point of the batch before it (a retry)."""
    out = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        batch = {}
        for k, (s, v) in series.items():
            lo, hi = np.searchsorted(s, [a, b])
            if i == 5:  # resumed from a checkpoint 300 steps back
                lo = np.searchsorted(s, a - 300)
            if i == 7 and lo > 0:  # the previous batch's last point again, then the new ones
                lo -= 1
            if hi > lo:
                batch[k] = (s[lo:hi], v[lo:hi])
        out.append(batch)
    return out


def _replay(batches: list[dict[str, tuple[np.ndarray, np.ndarray]]], columns: bool) -> tuple[list[Any], Any]:
    states: dict[str, Any] = {}
    found: list[Any] = []
    for batch in batches:
        feed = batch if columns else {k: (s.tolist(), v.tolist()) for k, (s, v) in batch.items()}
        lr = float(batch["lr"][1][-1]) if "lr" in batch else None
        states, f = evaluate_run(states, KINDS, feed, CFG, lr=lr)
        json.dumps(states)  # plain Python numbers only (numpy integers would not serialise)
        found += [x.to_dict() for x in f]
    return found, states


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per", [7, 250, 1000])
def test_columns_and_lists_give_the_same_findings_and_states(seed: int, per: int) -> None:
    series = _stream(seed)
    batches = _batches(series, list(range(0, 5001, per)))
    by_list = _replay(batches, columns=False)
    by_columns = _replay(batches, columns=True)
    assert by_columns[0] == by_list[0]
    assert json.dumps(by_columns[1], sort_keys=True) == json.dumps(by_list[1], sort_keys=True)
    assert by_list[0], "the stream must make the rules fire"
