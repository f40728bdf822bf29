"""Per-point cost of the detectors (``evaluate_series`` with every default rule on a loss series), and
the labelled detection benchmark of bench/detection_bench.py.

    python bench/detectors.py            # prints the dict of measure()
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

from losswatch.server.detectors import RuleConfig, evaluate_series


def _series(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [(0.4 + 2.0 * math.exp(-t / 2500)) * rng.lognormvariate(0.0, 0.3) for t in range(n)]


def measure_detector_cost(points: int = 200_000, batch: int = 500, repeat: int = 3) -> dict[str, Any]:
    """µs per point of evaluate_series on ``train/loss`` (non_finite, spike, divergence, plateau),
    fed in batches of ``batch`` points with the LR in the context, the state JSON-encoded and decoded
    between batches as the server does (reported apart). Best of ``repeat``."""
    config = RuleConfig.default()
    values = _series(points)
    steps = list(range(points))
    rules = config.rules_for("train/loss", "loss")
    best_eval = best_json = math.inf
    findings = 0
    for _ in range(repeat):
        state = None
        t_eval = t_json = 0.0
        findings = 0
        for i in range(0, points, batch):
            t0 = time.perf_counter()
            state, f = evaluate_series(state, "train/loss", "loss", steps[i:i + batch], values[i:i + batch],
                                       config, {"lr": 1e-3})
            t1 = time.perf_counter()
            state = json.loads(json.dumps(state, allow_nan=False))
            t_json += time.perf_counter() - t1
            t_eval += t1 - t0
            findings += len(f)
        best_eval = min(best_eval, t_eval)
        best_json = min(best_json, t_json)
    return {
        "rules": list(rules),
        "points": points,
        "batch": batch,
        "us_per_point": round(best_eval / points * 1e6, 3),
        "us_per_point_per_rule": round(best_eval / points * 1e6 / len(rules), 3),
        "state_json_us_per_batch": round(best_json / (points / batch) * 1e6, 1),
        "state_bytes": len(json.dumps(state)),
        "findings": findings,
    }


def measure_detection(quick: bool = False) -> dict[str, Any]:
    """The labelled benchmark (bench/detection_bench.py, rules in bench/DETECTION.md): about 5 minutes
    with its curves cached under bench/work/detection/, plus about 4 minutes the first time (torch runs)."""
    import detection_bench

    return detection_bench.measure(quick=quick)


if __name__ == "__main__":
    print(json.dumps(measure_detector_cost(), indent=2))
