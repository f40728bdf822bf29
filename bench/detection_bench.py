"""The detection scorer: replays every corpus run through the real detectors and scores the alerts
against the injected causes (issue 10). Corpus and labels: bench/corpus/ (train.py writes them, load.py
reads them); the rules of scoring: bench/DETECTION.md. This module knows nothing of how a run was made.

    .venv/bin/python bench/detection_bench.py             # prints the tables (about a minute)
    .venv/bin/python bench/detection_bench.py --split tuning

A run is fed as the server feeds it: ``losswatch.server.detectors.evaluate_run`` (the pure part of
``services/monitor.evaluate_batch``) once per ingest batch, a batch being every point the training script
logged in the next N iterations (the client's flush: N of 50, 100, 250 or 625 per run), with the run's
latest LR after the batch, and the plateau reference of the runs of its project that precede it in the
corpus order (:func:`peer_references`). Each run is also replayed one step per request and all in one
request, and the alerts compared (batch invariance).
"""

from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from anchors import ANCHORS  # noqa: E402
from corpus.load import CorpusRun, load_corpus  # noqa: E402

from losswatch.server.detectors import STATE_VERSION, Finding, RuleConfig, evaluate_run  # noqa: E402
from losswatch.server.detectors import peers as peer_ref  # noqa: E402
from losswatch.server.services.query import bucket_width  # noqa: E402

TYPES = ("non_finite", "spike", "divergence", "plateau", "overfitting", "misalignment")
#: label type -> (steps a fire may come before the injection, steps after it within which it counts;
#: None: the problem lasts to the end of the run)
WINDOWS: dict[str, tuple[int, int | None]] = {
    "non_finite": (0, 50), "spike": (2, 30), "divergence": (50, None), "plateau": (0, None),
    "overfitting": (0, None), "misalignment": (0, None),
}
INCIDENT = ("non_finite", "spike", "divergence")  # one loss incident: fires after the cause are its own
# permuted labels make the validation loss rise while the training loss falls (overfitting's symptom) and a
# tiny training subset makes the metric fall while the loss falls (misalignment's): after an evaluation
# cause, a fire of the other evaluation rule is counted apart, neither true nor false
EVAL_RULES = ("overfitting", "misalignment")


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


def client_flush(run: CorpusRun) -> int:
    """Iterations per ingest batch for this run: the client flushes every N steps (or T seconds)."""
    return (50, 100, 250, 625)[zlib.crc32(run.id.encode()) % 4]


def _stored(run: CorpusRun, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A series as the server stores it: one value per step, the later write winning (a resumed run
    logs some steps again), steps ascending."""
    _, st, v = run.series[key]
    last = st.shape[0] - 1 - np.unique(st[::-1], return_index=True)[1]  # each step's last write
    return st[last], v[last]


def _bucket_lasts(steps: np.ndarray, values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """What the query API answers for a finished series downsampled to ``buckets`` over its whole range
    (services/query.py): per aligned bucket, its last step and the value there."""
    width = bucket_width(int(steps[0]), int(steps[-1]), buckets)
    b = steps // width
    ends = np.append(np.flatnonzero(b[1:] != b[:-1]), b.shape[0] - 1)
    return steps[ends], values[ends]


def peer_references(runs: list[CorpusRun], config: RuleConfig) -> dict[str, dict[str, Any]]:
    """run id -> {series key: plateau reference} from the runs of its project that precede it in the
    corpus order (finished before it started, problem runs included: a robust median copes with them),
    as the server builds it (services/peers.py) from their downsampled series."""
    levels: dict[tuple[str, str], dict[int, float]] = {}
    done: dict[str, list[CorpusRun]] = {}
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        refs = {}
        for key, (kind, _, _) in r.series.items():
            if "plateau" not in config.rules_for(key, kind):
                continue
            per = []
            for p in done.get(r.project, [])[-peer_ref.MAX_PEERS:]:
                if key not in p.series or not p.series[key][1].shape[0]:
                    continue
                if (p.id, key) not in levels:
                    st, v = _stored(p, key)
                    bs, bv = _bucket_lasts(st, v, peer_ref.BUCKETS)
                    levels[(p.id, key)] = peer_ref.peer_levels(bs, bv, last=int(st[-1]))
                per.append(levels[(p.id, key)])
            refs[key] = peer_ref.reference(per)
        out[r.id] = refs
        done.setdefault(r.project, []).append(r)
    return out


def replay(run: CorpusRun, config: RuleConfig, per_batch: int | None = None,
           peers: dict[str, Any] | None = None) -> list[Finding]:
    """All findings of the run fed in batches of ``per_batch`` logged iterations (None: the client's).
    ``peers``: series key -> the plateau reference from comparable runs (:func:`peer_references`),
    attached to the series' state before every batch as services/monitor.py does."""
    per = per_batch or client_flush(run)
    kinds = {k: v[0] for k, v in run.series.items()}
    lr_key = next((k for k, kind in kinds.items() if kind == "lr"), None)  # the server's: kind lr (learning_rate)
    total = run.length
    cuts = {k: np.searchsorted(run.pos[k], np.arange(0, total + per, per), side="left") for k in run.series}
    states: dict[str, Any] = {}
    findings: list[Finding] = []
    lr: float | None = None
    for bi in range(len(cuts[run.key("train/loss")]) - 1):
        batch: dict[str, tuple[list[int], list[float]]] = {}
        for k, (_, st, v) in run.series.items():
            i, j = cuts[k][bi], cuts[k][bi + 1]
            if j > i:
                batch[k] = (st[i:j].tolist(), v[i:j].tolist())
        if not batch:
            continue
        if lr_key in batch:
            lr = batch[lr_key][1][-1]  # what the server passes: the lr row's last value after the batch
        if peers:
            states = peer_ref.attach(states, {k: v for k, v in peers.items() if k in batch}, config,
                                     STATE_VERSION)
        states, found = evaluate_run(states, kinds, batch, config, lr=lr)
        findings.extend(found)
    return findings


def fingerprint(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return sorted((f.rule, f.key, f.action, f.step, f.onset_step, f.severity) for f in findings)


# ---------------------------------------------------------------------------------------------
# Scoring one run
# ---------------------------------------------------------------------------------------------


def _in_window(label: dict[str, Any], step: int) -> bool:
    pre, post = WINDOWS[label["type"]]
    return label["step"] - pre <= step and (post is None or step <= label["step"] + post)


def score_run(run: CorpusRun, fires: list[tuple[str, str, int, str]]) -> dict[str, Any]:
    """``fires``: (rule, series key, step) of every alarm (info findings excluded). Each label: hit or
    not, delay; each fire: tp, neutral (a consequence of the injected cause: the loss incident that
    follows it) or fp."""
    labels = run.labels()
    cause = run.label
    res: dict[str, Any] = {"labels": [], "tp": {}, "fp": {}, "neutral": {}, "info": 0}
    matched: set[int] = set()
    for lb in labels:
        cand = [i for i, (r, k, s, _) in enumerate(fires)
                if r == lb["type"] and k == lb["key"] and _in_window(lb, s)]
        matched.update(cand)
        first = min((fires[i][2] for i in cand), default=None)
        e = {"type": lb["type"], "key": lb["key"], "step": lb["step"], "hit": first is not None,
             "delay": None if first is None else first - lb["step"], "visible": lb.get("visible", True),
             "recovered": lb.get("recovered")}
        if lb["type"] in EVAL_RULES and first is not None:
            est = run.series[lb["key"]][1]
            e["delay_evals"] = int(((est > lb["step"]) & (est <= first)).sum())
        res["labels"].append(e)
    for i, (r, _k, s, sev) in enumerate(fires):
        if i in matched:
            bucket = "tp"
        elif cause is None and sev == "info":
            res["info"] += 1  # a single-batch spike on a healthy run: reported, not an alarm
            continue
        elif cause is not None and s >= cause["step"] - WINDOWS[cause["type"]][0] and (
                r in INCIDENT or (r in EVAL_RULES and cause["type"] in EVAL_RULES)):
            bucket = "neutral"
        else:
            bucket = "fp"
        res[bucket][r] = res[bucket].get(r, 0) + 1
    return res


def _spike_recovered(findings: list[Finding], label_step: int, key: str = "train/loss") -> bool | None:
    """Our verdict on a detected spike: its alert resolved (recovered) or escalated / still open."""
    fire = next((f for f in findings if f.rule == "spike" and f.action == "fire" and f.key == key
                 and _in_window({"type": "spike", "step": label_step}, f.step)), None)
    if fire is None:
        return None
    for f in findings:
        if f.rule == "spike" and f.key == key and f.step >= fire.step and f.action in ("resolve", "escalate") \
                and f is not fire:
            return f.action == "resolve" and not f.details.get("segment_reset")
    return False


def alarms(findings: list[Finding]) -> list[tuple[str, str, int, str]]:
    """Fires that count: every severity for the spike rule (a single-batch spike is an ``info`` fire of
    it), warning and critical for the others (a ``converged`` hint is not an alarm)."""
    return [(f.rule, f.key, f.step, f.severity) for f in findings
            if f.action == "fire" and (f.severity != "info" or f.rule == "spike")]





# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _pct(a: float, b: float) -> float | None:
    return None if b == 0 else round(100.0 * a / b, 1)


def _healthy_steps(runs: list[CorpusRun]) -> int:
    return sum(r.length for r in runs if r.label is None)


def table(scored: list[tuple[CorpusRun, dict[str, Any], list[Finding]]]) -> list[dict[str, Any]]:
    healthy = [(r, s) for r, s, _ in scored if r.label is None]
    hsteps = _healthy_steps([r for r, _, _ in scored])
    rows = []
    for t in TYPES:
        ents = [e for _, s, _ in scored for e in s["labels"] if e["type"] == t]
        vis = [e for e in ents if e["visible"]]
        tp = sum(s["tp"].get(t, 0) for _, s, _ in scored)
        fp = sum(s["fp"].get(t, 0) for _, s, _ in scored)
        delays = [e["delay"] for e in ents if e["hit"]]
        fa = sum(s["fp"].get(t, 0) for _, s in healthy)
        row: dict[str, Any] = {
            "rule": t, "labels": len(ents), "recall_%": _pct(sum(e["hit"] for e in ents), len(ents)),
            "recall_visible_%": _pct(sum(e["hit"] for e in vis), len(vis)),
            "precision_%": _pct(tp, tp + fp),
            "median_delay_steps": float(np.median(delays)) if delays else None,
            "p90_delay_steps": float(np.percentile(delays, 90)) if delays else None,
            "false_alarms_per_10k_healthy_steps": round(fa / hsteps * 1e4, 2) if hsteps else None,
            "after_cause_not_counted": sum(s["neutral"].get(t, 0) for _, s, _ in scored),
        }
        if t in EVAL_RULES:
            de = [e["delay_evals"] for e in ents if e.get("delay_evals") is not None]
            row["median_delay_evals"] = float(np.median(de)) if de else None
            row["within_3_evals_%"] = _pct(sum(d <= 3 for d in de), len(ents))
        if t == "spike":
            judged = [(e, _spike_recovered(f, e["step"], e["key"])) for r, s, f in scored for e in s["labels"]
                      if e["type"] == "spike" and e["hit"] and e["recovered"] is not None]
            row["recovered_vs_not_told_apart_%"] = _pct(sum(p == e["recovered"] for e, p in judged), len(judged))
        if t == "plateau":
            row["healthy_runs_with_plateau"] = sum(1 for _, s in healthy if s["fp"].get("plateau"))
        rows.append(row)
    fa_all = sum(sum(s["fp"].values()) for _, s in healthy)
    rows[1]["healthy_single_batch_info_per_10k_steps"] = round(
        sum(s["info"] for _, s in healthy) / hsteps * 1e4, 2) if hsteps else None
    rows.append({
        "rule": "all rules, healthy runs", "labels": len(healthy),
        "false_alarms_per_10k_healthy_steps": round(fa_all / hsteps * 1e4, 2) if hsteps else None,
        "healthy_runs_alert_free_%": _pct(sum(1 for _, s in healthy if not sum(s["fp"].values())), len(healthy)),
    })
    return rows


def anchor_table(runs: list[CorpusRun]) -> list[dict[str, Any]]:
    """The anchors on the same runs: per anchor and label type it is compared with."""
    hsteps = _healthy_steps(runs)
    rows = []
    for name, (key, types, fn) in ANCHORS.items():
        per_run = {}
        for r in runs:
            if r.key(key) not in r.series:
                per_run[r.id] = []
                continue
            _, st, v = r.series[r.key(key)]
            per_run[r.id] = fn(st, v)
        fa = sum(len(per_run[r.id]) for r in runs if r.label is None)
        free = _pct(sum(1 for r in runs if r.label is None and not per_run[r.id]),
                    sum(1 for r in runs if r.label is None))
        for t in types:
            hits, delays, tp, fp, n = 0, [], 0, 0, 0
            for r in runs:
                lbs = [lb for lb in r.labels() if lb["type"] == t and (t != "non_finite" or lb["key"] == r.key(key))]
                n += len(lbs)
                used = set()
                for lb in lbs:
                    c = [s for s in per_run[r.id] if _in_window(lb, s)]
                    used.update(c)
                    if c:
                        hits += 1
                        delays.append(min(c) - lb["step"])
                for s in per_run[r.id]:
                    if s in used:
                        tp += 1
                    elif not (r.label and (r.label["type"] in types or r.label["type"] in INCIDENT)
                              and s >= r.label["step"] - WINDOWS[r.label["type"]][0]):
                        fp += 1
            rows.append({
                "anchor": name, "vs": t, "series": key, "labels": n, "recall_%": _pct(hits, n),
                "precision_%": _pct(tp, tp + fp), "median_delay_steps": float(np.median(delays)) if delays else None,
                "false_alarms_per_10k_healthy_steps": round(fa / hsteps * 1e4, 2) if hsteps else None,
                "healthy_runs_alert_free_%": free,
            })
    return rows


def invariance(runs: list[CorpusRun], config: RuleConfig, sample: int | None = None,
               refs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Rules × runs whose alerts are identical one step per request, in the client's batches and all
    in one request (each run with its comparable runs' references, as in the scoring)."""
    same = total = 0
    diff: list[str] = []
    refs = refs if refs is not None else peer_references(runs, config)
    chosen = runs if sample is None else runs[:: max(1, len(runs) // sample)]
    for r in chosen:
        base = replay(r, config, peers=refs.get(r.id))
        variants = [replay(r, config, 1, peers=refs.get(r.id)), replay(r, config, r.length + 1, peers=refs.get(r.id))]
        rules = {f.rule for f in base} | {f.rule for v in variants for f in v} | set(TYPES)
        for rule in rules:
            total += 1
            fb = fingerprint([f for f in base if f.rule == rule])
            if all(fingerprint([f for f in v if f.rule == rule]) == fb for v in variants):
                same += 1
            else:
                diff.append(f"{r.id}:{rule}")
    return {"runs": len(chosen), "rule_x_run_checked": total, "identical_%": _pct(same, total),
            "differ": ", ".join(diff[:12]) or "none"}


# ---------------------------------------------------------------------------------------------
# measure()
# ---------------------------------------------------------------------------------------------


def evaluate(runs: list[CorpusRun], config: RuleConfig | None = None,
             refs: dict[str, dict[str, Any]] | None = None) -> list[tuple[CorpusRun, dict[str, Any], list[Finding]]]:
    """Every run replayed and scored; ``refs``: the comparable runs' references per run (default: from
    ``runs`` themselves, in their order)."""
    config = config or RuleConfig.default()
    refs = refs if refs is not None else peer_references(runs, config)
    out = []
    for r in runs:
        f = replay(r, config, peers=refs.get(r.id))
        out.append((r, score_run(r, alarms(f)), f))
    return out


def measure(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    runs = load_corpus()
    t_load = time.perf_counter() - t0
    config = RuleConfig.default()
    refs = peer_references(runs, config)
    scored = evaluate(runs, config, refs)
    t_eval = time.perf_counter() - t0 - t_load
    by = {s: [x for x in scored if x[0].split == s] for s in ("tuning", "held-out")}
    counts: dict[str, int] = {}
    for r in runs:
        k = f"{r.split}: {r.label['type'] if r.label else 'healthy'}"
        counts[k] = counts.get(k, 0) + 1
    data: dict[str, Any] = {
        "title": "Detection: the labelled corpus (issue 10)",
        "notes": [
            f"{len(runs)} real torch trainings in {len({r.project for r in runs})} projects, "
            f"{sum(r.length for r in runs):,} training steps; labels are the injected causes "
            "(bench/corpus/train.py); held-out = bench/corpus/heldout.txt, fixed before tuning.",
            "Framework curves (bench/corpus/frameworks.py): PyTorch Lightning and Hugging Face Trainer runs logged "
            "by losswatch's integrations into a real server and read back with losswatch.Api, under the keys the "
            "framework gives them (loss, eval_loss, eval_accuracy, train_ce...); added after tuning, all held out.",
            "Replayed through detectors.evaluate_run in the client's batches (50/100/250/625 steps per run), "
            "the run's latest LR per batch, as services/monitor.evaluate_batch does; rules with their defaults.",
            "Comparable runs: each run's plateau rule gets the reference of the runs of its project that precede "
            "it in the corpus order (problem runs included), from their series downsampled as the query API "
            "answers them (detectors/peers.py, services/peers.py).",
            "Scoring rules: bench/DETECTION.md. recall_visible: labels whose cause showed in the curve "
            "(a cross-check apart from the label).",
        ],
        "runs": len(runs),
        "load_s": round(t_load, 1),
        "replay_s": round(t_eval, 1),
        "held-out split (goals judged here)": table(by["held-out"]),
        "tuning split": table(by["tuning"]),
        "anchors on the held-out split": anchor_table([r for r, _, _ in by["held-out"]]),
        "anchors on the tuning split": anchor_table([r for r, _, _ in by["tuning"]]),
        "held-out: framework curves only (Lightning, Hugging Face Trainer)": table(
            [x for x in by["held-out"] if x[0].meta.get("framework")]),
        "held-out: hand-written loops only": table([x for x in by["held-out"] if not x[0].meta.get("framework")]),
        "batch invariance (1 step per request / client batches / one request)": invariance(
            runs, config, sample=12 if quick else None, refs=refs),
        "runs per split and label": [{"split and label": k, "runs": v} for k, v in sorted(counts.items())],
    }
    return data


def _print(rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    if "--split" in sys.argv:
        split = sys.argv[sys.argv.index("--split") + 1]
        every = load_corpus()
        runs = [r for r in every if r.split == split]
        sc = evaluate(runs, refs=peer_references(every, RuleConfig.default()))  # peers: the whole project
        _print(table(sc))
        print()
        _print(anchor_table(runs))
        if "--fires" in sys.argv:
            for r, s, f in sc:
                if s["fp"] or any(not e["hit"] for e in s["labels"]):
                    print(r.id, r.label, [e for e in s["labels"] if not e["hit"]], s["fp"],
                          [(x.rule, x.key, x.step) for x in f if x.action == "fire"][:8])
    else:
        out = measure(quick=quick)
        for k, v in out.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                print(f"\n## {k}")
                _print(v)
            elif k != "notes":
                print(k, v)
