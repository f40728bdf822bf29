"""Per-point cost of the detectors (``evaluate_series`` with every default rule on a loss series), the
labelled detection corpus scored by bench/detection_bench.py, and the share of ingest time detection takes.

    python bench/detectors.py            # prints the dict of measure()
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from losswatch.server.detectors import RuleConfig, evaluate_series


def _series(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [(0.4 + 2.0 * math.exp(-t / 2500)) * rng.lognormvariate(0.0, 0.3) for t in range(n)]


def measure_detector_cost(points: int = 200_000, batch: int = 500, repeat: int = 3) -> dict[str, Any]:
    """µs per point of evaluate_series on ``train/loss`` (non_finite, spike, divergence, plateau),
    fed in batches of ``batch`` points with the LR in the context, the state JSON-encoded and decoded
    between batches as the server does (reported apart). The points are numpy columns (int64 steps,
    float64 values), as the server hands them over after parsing. Best of ``repeat``."""
    config = RuleConfig.default()
    values = np.array(_series(points))
    steps = np.arange(points, dtype=np.int64)
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
    """The labelled corpus scored (bench/detection_bench.py over bench/corpus/, rules in bench/DETECTION.md)."""
    import detection_bench

    return detection_bench.measure(quick=quick)


MIX = (("train/loss", "loss"), ("train/loss/box", "loss_component"), ("train/loss/cls", "loss_component"),
       ("train/loss/dfl", "loss_component"), ("lr", "lr"), ("grad_norm", "grad_norm"),
       ("train/accuracy", "metric"), ("train/precision", "metric"))


def _bodies(first_step: int, count: int, steps_per_batch: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for b in range(count):
        s0 = first_step + b * steps_per_batch
        t = np.arange(s0, s0 + steps_per_batch)
        base = 0.5 + 2.0 * np.exp(-t / 20_000)
        vals = {
            "train/loss": base * rng.lognormal(0, 0.3, len(t)),
            "train/loss/box": base / 3 * rng.lognormal(0, 0.3, len(t)),
            "train/loss/cls": base / 3 * rng.lognormal(0, 0.3, len(t)),
            "train/loss/dfl": base / 3 * rng.lognormal(0, 0.3, len(t)),
            "lr": np.full(len(t), 1e-3),
            "grad_norm": rng.lognormal(0, 0.5, len(t)),
            "train/accuracy": 1 - base / 3 + rng.normal(0, 0.01, len(t)),
            "train/precision": 1 - base / 4 + rng.normal(0, 0.01, len(t)),
        }
        out.append(json.dumps({"series": [{"key": k, "kind": kd, "steps": t.tolist(), "values": vals[k].tolist()}
                                          for k, kd in MIX]}).encode())
    return out


def measure_ingest_cost(quick: bool = False) -> dict[str, Any]:
    """Points per second through the real ingest use case (``services.ingest.ingest``: parse, record,
    detect, alerts) on SQLite, with the detectors and with ``monitor.evaluate_batch`` replaced by a
    no-op; batches of 10,000 points (1,250 steps of the 8 series of MIX). Rounds alternate."""
    from losswatch.server.api.schemas import RunCreate
    from losswatch.server.services import ingest, monitor, runs
    from losswatch.server.settings import Settings
    from losswatch.server.storage.db import Database, upgrade

    rounds, per_round = (3, 6) if quick else (7, 12)
    steps_per_batch = 10_000 // len(MIX)
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/bench.db"
        upgrade(url)
        db = Database(Settings(database_url=url, auth="off"))
        with db.write() as s:
            run_on = runs.create_run(s, "bench", RunCreate(name="with"), create_project=True)[0].id
            run_off = runs.create_run(s, "bench", RunCreate(name="without"), create_project=True)[0].id
        rng = np.random.default_rng(0)
        real = monitor.evaluate_batch
        times: dict[str, list[float]] = {"with": [], "without": []}
        step = {"with": 0, "without": 0}
        for r in range(rounds + 1):
            for mode, rid in (("without", run_off), ("with", run_on)):
                bodies = _bodies(step[mode], per_round, steps_per_batch, rng)
                step[mode] += per_round * steps_per_batch
                monitor.evaluate_batch = real if mode == "with" else (lambda *a, **k: [])  # type: ignore[assignment]
                try:
                    t0 = time.perf_counter()
                    for b in bodies:
                        ingest.ingest(db, rid, b)
                    dt = time.perf_counter() - t0
                finally:
                    monitor.evaluate_batch = real  # type: ignore[assignment]
                if r:  # the first round warms up caches and creates the series
                    times[mode].append(dt)
        db.dispose()
    pts = per_round * steps_per_batch * len(MIX)
    med = {m: float(np.median(v)) for m, v in times.items()}
    with_, without = pts / med["with"], pts / med["without"]
    return {
        "batch_points": steps_per_batch * len(MIX),
        "mix": ", ".join(f"{k} ({kd})" for k, kd in MIX) + "; every series every step",
        "without_detectors_points_per_s": round(without),
        "with_detectors_points_per_s": round(with_),
        "detection_cost_%": round(100 * (1 - with_ / without), 1),
        "rounds": f"{rounds} alternating rounds of {per_round} batches; medians",
        **_server_mix_cost(quick),
    }


def _server_mix_cost(quick: bool) -> dict[str, Any]:
    """The same share on the server benchmark's mix (bench/server_bench.py: 10 series, a cosine LR logged
    every step, binary columnar bodies of 10,000 points) through its in-process path, rounds alternating;
    best of each."""
    import server_bench

    bodies = server_bench.columnar_bodies(server_bench.make_bodies(11 if quick else 41))
    best = {"with": 0.0, "without": 0.0}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(2 if quick else 4):
            for mode in ("without", "with"):
                pps = server_bench.in_process_storage(Path(d), bodies, detectors=mode == "with")
                best[mode] = max(best[mode], pps)
    return {
        "server_mix_without_detectors_points_per_s": round(best["without"]),
        "server_mix_with_detectors_points_per_s": round(best["with"]),
        "server_mix_detection_cost_%": round(100 * (1 - best["with"] / best["without"]), 1),
    }


if __name__ == "__main__":
    print(json.dumps(measure_detector_cost(), indent=2))
