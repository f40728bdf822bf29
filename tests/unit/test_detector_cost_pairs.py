"""Misalignment's numpy path for a metric logged every step (``Misalignment._quiet``) against the point-by-point
loop it stands for: the same findings and the same state, bit for bit (issue 13)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from losswatch.server.detectors.pairs import Misalignment, _learn_noise, _learnt, _noise_trace


def _curves(kind: str, n: int, seed: int) -> tuple[list[int], list[float], list[float]]:
    """steps, metric values and the loss level at each step (what the driver passes as ``context["loss"]``)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level = 0.5 + 2.0 * np.exp(-t / (n / 4))
    acc = 1 - level / 3 + rng.normal(0, 0.01, n)
    if kind == "noisy_level":
        level = level * rng.lognormal(0, 0.05, n)
    elif kind == "metric_falls":  # the metric loses ground while the loss keeps falling fast: misaligned
        level = 0.1 + 2.0 * np.exp(-t / 200)
        acc = 0.5 + rng.normal(0, 0.01, n)
        acc[n // 20:] -= np.linspace(0.0, 0.3, n - n // 20)
    elif kind == "falls_noisy":  # the same with a noisy level: evaluations handed back and forth
        level = (0.1 + 2.0 * np.exp(-t / 200)) * rng.lognormal(0, 0.1, n)
        acc = 0.5 + rng.normal(0, 0.01, n)
        acc[n // 20:] -= np.linspace(0.0, 0.3, n - n // 20)
    elif kind == "jump":  # the loss jumps and is learned again, the metric stays down
        level[n // 2:] += 1.5 * np.exp(-(t[n // 2:] - n // 2) / (n / 10))
        acc[n // 2:] -= 0.3
    elif kind == "plateau_metric":
        acc = 0.6 + rng.normal(0, 0.02, n)
    elif kind == "min_mode":
        acc = level / 3 + rng.normal(0, 0.01, n)
    return t.tolist(), acc.tolist(), level.tolist()


def _feed(det: Misalignment, steps: list[int], values: list[float], losses: list[float], per: int,
          fast: bool) -> tuple[str, str]:
    st = det.initial_state()
    out: list = []
    for i in range(0, len(steps), per):
        s, v, lv = steps[i:i + per], values[i:i + per], losses[i:i + per]
        det.run_into(st, s, v, "train/accuracy", {"loss": lv}, out, np.asarray(v) if fast else None)
        st = json.loads(json.dumps(st))  # the server saves the state between batches
    return json.dumps([f.__dict__ if hasattr(f, "__dict__") else repr(f) for f in out], sort_keys=True, default=repr), \
        json.dumps(st, sort_keys=True)


@pytest.mark.parametrize("kind", ["steady", "noisy_level", "metric_falls", "falls_noisy", "jump", "plateau_metric", "min_mode"])
@pytest.mark.parametrize("per", [37, 625, 5000])
def test_fast_path_matches_the_loop(kind: str, per: int) -> None:
    steps, values, losses = _curves(kind, 5000, seed=len(kind))
    det = Misalignment(mode="min") if kind == "min_mode" else Misalignment()
    assert _feed(det, steps, values, losses, per, fast=True) == _feed(det, steps, values, losses, per, fast=False)


def test_misaligned_run_fires_on_both_paths() -> None:
    steps, values, losses = _curves("metric_falls", 5000, seed=3)
    for fast in (True, False):
        found, _ = _feed(Misalignment(), steps, values, losses, 625, fast=fast)
        assert '"action": "fire"' in found


@pytest.mark.parametrize("start", [{}, {"mfin": [0.5]}, {"mfin": [0.5, 0.52]}, {"mfin": [0.5, 0.52, 0.49], "mnoise": 0.01}])
def test_noise_trace_is_learn_noise(start: dict) -> None:
    rnd = random.Random(1)
    xs = [rnd.gauss(0.7, 0.05) for _ in range(40)]
    for stop in (0, 1, 2, 3, 17, 40):
        ref = json.loads(json.dumps(start))
        seen = []
        for x in xs[:stop]:
            _learn_noise(ref, x)
            seen.append(ref.get("mnoise"))
        st = json.loads(json.dumps(start))
        trace = _noise_trace(st, xs)
        assert st == start  # the trace leaves the state alone
        assert trace[:stop] == seen
        _learnt(st, xs[:stop], trace)
        assert st == ref
    assert all(t is None or math.isfinite(t) for t in _noise_trace({}, xs))
