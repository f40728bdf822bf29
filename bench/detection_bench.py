"""Labelled benchmark of the detectors (issue 4, item 7): recall, precision, detection delay and
false alarms per event type on synthetic curves and on real small torch trainings, and the ingest
cost of detection.

    .venv/bin/python bench/detection_bench.py            # prints the table (about 5 minutes; curves cached)
    .venv/bin/python bench/detection_bench.py --quick    # fewer seeds

The labelling rules are written in bench/DETECTION.md; :func:`label_run` implements them, and the
curves are fed to the real detectors exactly as the server feeds them (see :func:`replay_run`).
Curves are cached under bench/work/detection/ (git-ignored); delete that folder to regenerate.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losswatch.server.detectors import Finding, RuleConfig, evaluate_run

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "work" / "detection"
SYNTHETIC_VERSION, TORCH_VERSION, LABEL_VERSION = 4, 3, 1  # bump when a generator or a rule changes

TRAIN_LOSS, LR, VAL_LOSS = "train/loss", "lr", "val/loss"
HEALTHY = ("healthy_cosine", "healthy_step", "healthy_const")
EVENT_TYPES = ("non_finite", "spike", "divergence", "plateau", "overfitting", "misalignment")
HELD_OUT = 3  # seed % 4 == 3: held out (never looked at while tuning)


# =============================================================================================
# A run: its series and labels
# =============================================================================================


@dataclass
class Curve:
    name: str
    family: str
    source: str  # synthetic | torch
    seed: int
    series: dict[str, tuple[str, np.ndarray, np.ndarray]]  # key -> (kind, steps, values)
    batch_steps: int = 250  # steps per ingest batch (the client's flush)
    warmup_end: int = 0  # last step of the LR warm-up (0: none)
    lr_drops: list[int] = field(default_factory=list)  # steps of planned LR drops
    metric_key: str = "val/accuracy"

    @property
    def split(self) -> str:
        return "held-out" if self.seed % 4 == HELD_OUT else "train"

    @property
    def steps(self) -> int:
        return int(self.series[TRAIN_LOSS][1][-1]) + 1


@dataclass
class Label:
    type: str
    key: str
    onset: int
    recovered: bool | None = None  # spike only


# =============================================================================================
# Synthetic curves
# =============================================================================================


def _schedule(kind: str, n: int, peak: float, rng: np.random.Generator) -> tuple[np.ndarray, int, list[int]]:
    t = np.arange(n, dtype=float)
    if kind == "cosine":
        warm = int(rng.integers(200, 1000))
        lr = np.where(t < warm, peak * (t + 1) / warm, peak * 0.5 * (1 + np.cos(np.pi * (t - warm) / (n - warm))))
        return np.maximum(lr, peak * 1e-3), warm, []
    if kind == "step":
        drops = sorted({int(n * f) for f in (0.5, 0.75)} if rng.random() < 0.5 else {int(n * f) for f in (0.3, 0.6, 0.85)})
        lr = np.full(n, peak)
        for d in drops:
            lr[d:] *= 0.1
        return lr, 0, drops
    return np.full(n, peak), 0, []


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative heavy-tailed minibatch noise: log-normal or Student-t in the log."""
    sigma = rng.uniform(0.05, 0.35)
    if rng.random() < 0.5:
        z = rng.standard_normal(n)
    else:
        df = rng.uniform(3.0, 6.0)
        z = rng.standard_t(df, n) / math.sqrt(df / (df - 2.0))
    return np.exp(sigma * np.clip(z, -12, 12))


def _clean_loss(lr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Loss as a function of the cumulative LR, plus an LR-proportional noise-floor term (so an LR
    drop lowers the loss, as in real training)."""
    l0 = rng.uniform(1.5, 6.0)
    floor = l0 * rng.uniform(0.05, 0.4)
    progress = np.cumsum(lr) / lr.max()
    scale = rng.uniform(300, 3000)
    alpha = rng.uniform(0.5, 1.5)
    clean = floor + (l0 - floor) * (1.0 + progress / scale) ** (-alpha)
    return clean * (1.0 + 0.3 * lr / lr.max()), floor


def _evals(n: int, every: int) -> np.ndarray:
    return np.arange(every - 1, n, every)


def _with_evals(
    name: str, family: str, seed: int, rng: np.random.Generator, loss: np.ndarray, lr: np.ndarray,
    val_clean: np.ndarray, metric_clean: np.ndarray, warm: int, drops: list[int],
) -> Curve:
    n = len(loss)
    every = int(rng.choice([100, 200, 250, 500]))
    ev = _evals(n, every)
    val = val_clean[ev] * (1 + rng.normal(0, rng.uniform(0.002, 0.01), len(ev)))
    metric = metric_clean[ev] + rng.normal(0, rng.uniform(0.001, 0.005), len(ev))
    steps = np.arange(n, dtype=np.int64)
    return Curve(
        name, family, "synthetic", seed,
        {
            TRAIN_LOSS: ("loss", steps, loss),
            LR: ("lr", steps, lr),
            VAL_LOSS: ("loss", ev.astype(np.int64), val),
            "val/accuracy": ("metric", ev.astype(np.int64), metric),
        },
        batch_steps=int(rng.choice([100, 250, 625])), warmup_end=warm, lr_drops=drops,
    )


def _metric_of(val: np.ndarray, floor: float, l0: float) -> np.ndarray:
    """An accuracy that follows the validation loss (aligned) from the first step on."""
    return 0.95 - 0.85 * np.clip((val - floor) / (max(float(val[0]), l0) - floor), 0, 1) ** 0.7


def synthetic(family: str, seed: int) -> Curve:
    rng = np.random.default_rng([zlib.crc32(family.encode()), seed])
    sched = {"healthy_cosine": "cosine", "healthy_step": "step"}.get(family, str(rng.choice(["cosine", "step", "const"])))
    n = 20_000 if family in HEALTHY else int(rng.integers(8_000, 14_000))
    if family == "plateau":
        n = int(rng.integers(12_000, 16_000))
    peak = 1e-3 * rng.uniform(0.3, 3)
    lr, warm, drops = _schedule(sched if family not in ("plateau",) else "const", n, peak, rng)
    clean, floor = _clean_loss(lr, rng)
    l0 = float(clean[0])
    val_clean = clean * rng.uniform(1.0, 1.1)
    metric = _metric_of(val_clean, floor, l0)
    mult = np.ones(n)
    t = np.arange(n)
    t0 = int(rng.integers(int(0.3 * n), int(0.7 * n)))
    if family == "nan":
        ramp = int(rng.integers(0, 30))
        mult[t0 - ramp:t0] = np.exp(np.linspace(0, rng.uniform(0.5, 4), ramp)) if ramp else 1
        loss = clean * _noise(n, rng) * mult
        loss[t0:] = math.nan if rng.random() < 0.7 else math.inf
        if rng.random() < 0.3:  # sometimes isolated non-finite batches, then finite again
            loss[t0 + 1:] = (clean * _noise(n, rng))[t0 + 1:]
        return _with_evals(f"{family}-{seed}", family, seed, rng, loss, lr, val_clean, metric, warm, drops)
    if family == "divergence":
        double = rng.uniform(30, 1500)  # steps to double
        top = rng.uniform(3, 30)
        mult = np.where(t >= t0, np.minimum(np.exp((t - t0) * math.log(2) / double), top), 1.0)
    elif family == "spike_recover":
        amp, tau = math.exp(rng.uniform(math.log(2.5), math.log(25))), rng.uniform(2, 60)
        mult = np.where(t >= t0, 1 + (amp - 1) * np.exp(-np.maximum(t - t0, 0) / tau), 1.0)
    elif family == "spike_stay":
        amp = math.exp(rng.uniform(math.log(2.5), math.log(15)))
        mult = np.where(t >= t0, amp * (1 + 0.2 * np.exp(-(t - t0) / 30)), 1.0)
    elif family == "plateau":
        if rng.random() < 0.5:  # too low an LR from the start: almost nothing happens
            lr = lr * 1e-3
            clean, _ = _clean_loss(np.maximum(lr, 1e-12), rng)
            clean = clean[0] * (1 - rng.uniform(0, 0.005) * t / n)
        else:  # learns, then the LR collapses to ~0 (a schedule bug): flat from t0
            t0 = int(rng.integers(1500, 4000))
            lr = lr.copy()
            lr[t0:] = lr[t0] * 1e-4
            clean = np.concatenate([clean[:t0], np.full(n - t0, clean[t0])])
        val_clean = clean * 1.05
        metric = _metric_of(val_clean, floor, l0)
    elif family == "overfitting":
        tmin = t0
        val_clean = np.where(t < tmin, val_clean, val_clean[tmin] * (1 + rng.uniform(0.1, 1.0) * (np.maximum(t - tmin, 0) / (n - tmin)) ** rng.uniform(0.7, 1.3)))
        clean = clean * np.where(t < tmin, 1.0, np.exp(-rng.uniform(0.2, 1.5) * (t - tmin) / n))
        metric = _metric_of(np.minimum(val_clean, val_clean[tmin]), floor, l0) - np.where(t < tmin, 0, rng.uniform(0.0, 0.05) * (t - tmin) / n)
    elif family == "misalignment":
        # the loss keeps falling (it learns the majority class) while the metric stalls at t0, then drifts
        clean = clean * np.where(t < t0, 1.0, np.exp(-rng.uniform(0.3, 1.0) * (t - t0) / (n - t0)))
        val_clean = clean * 1.05
        stall = float(metric[t0])
        metric = np.where(t < t0, metric, stall - rng.uniform(0, 0.03) * (t - t0) / (n - t0))
    loss = clean * _noise(n, rng) * mult
    return _with_evals(f"{family}-{seed}", family, seed, rng, loss, lr, val_clean, metric, warm, drops)


SYNTHETIC_FAMILIES = (*HEALTHY, "nan", "divergence", "spike_recover", "spike_stay", "plateau", "overfitting",
                      "misalignment")


# =============================================================================================
# Real torch trainings (CPU, a few seconds each)
# =============================================================================================

MISALIGN_LR, MISALIGN_SHIFT = 3e-4, 0.3
TORCH_FAMILIES = ("healthy_cosine", "healthy_step", "healthy_const", "nan", "divergence", "spike_recover",
                  "spike_stay", "plateau", "overfitting", "misalignment")


def torch_run(family: str, seed: int) -> Curve:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed * 7919 + TORCH_FAMILIES.index(family))
    rng = np.random.default_rng([seed, TORCH_FAMILIES.index(family), 17])
    torch.manual_seed(seed * 104729 + TORCH_FAMILIES.index(family))
    dim, classes, hidden = 16, 5, 64
    n_steps, batch, every = (8000 if family == "plateau" else 4000), 32, 100
    imbalanced = family == "misalignment"
    if imbalanced:
        classes = 3
    centres = torch.randn(classes, dim, generator=g) * 1.2
    if imbalanced:
        centres[1:] = centres[0] + MISALIGN_SHIFT * torch.randn(classes - 1, dim, generator=g)  # minority close to majority
        prior = torch.tensor([0.93, 0.05, 0.02])
    else:
        prior = torch.full((classes,), 1.0 / classes)
    noise = 0.15

    def sample(m: int) -> tuple[Any, Any]:
        y = torch.multinomial(prior, m, replacement=True, generator=g)
        x = centres[y] + torch.randn(m, dim, generator=g) * 1.5
        flip = torch.rand(m, generator=g) < noise
        y = torch.where(flip, torch.randint(0, classes, (m,), generator=g), y)
        return x, y

    xv, yv = sample(1000)
    tiny = sample(48) if family == "overfitting" else sample(1024) if imbalanced else None
    if family == "overfitting":
        hidden, every = 256, 50
    if imbalanced:
        hidden = 256
    model = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, classes))
    if family == "divergence":
        for p in model.parameters():
            p.data.mul_(1.0)
    adam = family in ("overfitting", "divergence", "misalignment")
    peak = {"plateau": 2e-6, "overfitting": 3e-3, "divergence": 2e-3, "misalignment": MISALIGN_LR}.get(family, 0.05)
    opt = torch.optim.Adam(model.parameters(), lr=peak) if adam else torch.optim.SGD(
        model.parameters(), lr=peak, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    warm, drops = 0, []
    t0 = int(rng.integers(1200, 2800))
    if family == "divergence":
        ramp = float(rng.choice([100.0, 400.0, 1200.0]))
    if family == "healthy_cosine":
        warm = 200
    if family == "healthy_step":
        drops = [2000, 3000]
    losses = np.empty(n_steps)
    lrs = np.empty(n_steps)
    ev_steps, ev_loss, ev_metric = [], [], []
    for step in range(n_steps):
        lr = peak
        if family == "healthy_cosine":
            lr = peak * (step + 1) / warm if step < warm else peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (n_steps - warm)))
        elif family == "healthy_step":
            lr = peak * 0.1 ** sum(step >= d for d in drops)
        elif family == "nan" and step >= t0:
            lr = peak * 10 ** min(4.0, (step - t0) / 20)  # an LR schedule that runs away
        elif family == "divergence" and step >= t0:
            lr = peak * 10 ** min(2.0, (step - t0) / ramp)  # an LR that runs away with Adam: finite
        elif family == "spike_recover" and t0 <= step < t0 + 1:
            lr = peak * float(rng.uniform(15, 40))  # one bad step
        elif family == "spike_stay" and t0 <= step < t0 + 3:
            lr = peak * 200  # a few very bad steps: dead ReLUs, the net does not come back
        for gr in opt.param_groups:
            gr["lr"] = lr
        if tiny is not None:
            idx = torch.randint(0, tiny[0].shape[0], (batch,), generator=g)
            x, y = tiny[0][idx], tiny[1][idx]
        else:
            x, y = sample(batch)
        out = model(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[step] = float(loss.detach())
        lrs[step] = lr
        if (step + 1) % every == 0:
            with torch.no_grad():
                out = model(xv)
                vl = float(loss_fn(out, yv))
                pred = out.argmax(1)
                if imbalanced:
                    f1s = []
                    for c in range(classes):
                        tp = float(((pred == c) & (yv == c)).sum())
                        fp = float(((pred == c) & (yv != c)).sum())
                        fn = float(((pred != c) & (yv == c)).sum())
                        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
                    m = sum(f1s) / classes
                else:
                    m = float((pred == yv).float().mean())
            ev_steps.append(step)
            ev_loss.append(vl)
            ev_metric.append(m)
        if not math.isfinite(losses[step]) and family == "nan":
            losses[step + 1:] = math.nan  # the weights are NaN now: every later loss is NaN
            lrs[step + 1:] = lr
            break
    steps = np.arange(n_steps, dtype=np.int64)
    mkey = "val/macro_f1" if imbalanced else "val/accuracy"
    return Curve(
        f"torch-{family}-{seed}", family, "torch", seed,
        {
            TRAIN_LOSS: ("loss", steps, losses),
            LR: ("lr", steps, lrs),
            VAL_LOSS: ("loss", np.array(ev_steps, dtype=np.int64), np.array(ev_loss)),
            mkey: ("metric", np.array(ev_steps, dtype=np.int64), np.array(ev_metric)),
        },
        batch_steps=int(rng.choice([100, 250, 625])), warmup_end=warm, lr_drops=drops, metric_key=mkey,
    )


# =============================================================================================
# Labels: the objective rules of bench/DETECTION.md
# =============================================================================================


def _trailing_median(x: np.ndarray, w: int) -> np.ndarray:
    """m[t] = median of x[t-w+1..t]; NaN where fewer than w points exist (or a window holds a NaN)."""
    n = len(x)
    out = np.full(n, np.nan)
    if n >= w:
        win = np.lib.stride_tricks.sliding_window_view(x, w)
        out[w - 1:] = np.median(win, axis=1)  # a window with a NaN gives NaN
    return out


def label_run(c: Curve) -> list[Label]:
    labels: list[Label] = []
    # non_finite: the first non-finite value of each series (NaN weights make every later value NaN)
    for key, (kind, s_, v_) in c.series.items():
        bad = ~np.isfinite(v_)
        if kind != "lr" and bad.any():
            labels.append(Label("non_finite", key, int(s_[np.argmax(bad)])))
    steps, y = c.series[TRAIN_LOSS][1], c.series[TRAIN_LOSS][2]
    fin = np.isfinite(y)
    end = int(np.argmin(fin)) if not fin.all() else len(y)
    yf = y[:end]
    # spike: first t with y[t] >= 2x median(prev 128) and median(y[t..t+4]) >= 2x that median
    if end > 140:
        base = _trailing_median(yf, 128)
        nxt5 = _trailing_median(yf, 5)
        for t in np.nonzero(yf[128:end - 5] >= 2 * base[127:end - 6])[0] + 128:
            b = base[t - 1]
            if nxt5[t + 4] >= 2 * b:
                m20 = _trailing_median(yf[t:t + 520], 20)
                rec = bool(np.any(m20[20:500] < 1.5 * b)) if len(m20) > 40 else None
                if rec is None and t + 500 > end:
                    rec = None
                labels.append(Label("spike", TRAIN_LOSS, int(steps[t]), recovered=rec))
                break
    # divergence: first t after which the trailing-50 median stays >= 2x the best trailing-50 median before t
    if end > 250:
        m50 = _trailing_median(yf, 50)
        best = np.fmin.accumulate(np.where(np.arange(end) >= 199, m50, np.inf))
        above = m50[200:] >= 2 * best[199:-1]
        if above.any() and above[-1]:
            last_below = np.nonzero(~above)[0]
            t = (last_below[-1] + 1 if len(last_below) else 0) + 200
            if end - t >= 20:
                labels.append(Label("divergence", TRAIN_LOSS, int(steps[t])))
    # plateau: only on the plateau family (a healthy run that has converged is not a too-low-LR plateau)
    if c.family == "plateau":
        m200 = _trailing_median(yf, 200)
        start = max(500, c.warmup_end + 200)
        for t in range(start, end - 5000, 50):
            if m200[t:t + 5000].min() > 0.99 * m200[t]:
                labels.append(Label("plateau", TRAIN_LOSS, int(steps[t])))
                break
    # overfitting and misalignment: judged on the evaluations
    _, ev, val = c.series[VAL_LOSS]
    _, evm, met = c.series[c.metric_key]
    m200 = np.concatenate([_trailing_median(yf, 200), np.full(len(y) - end, np.nan)])
    tr = m200[np.minimum(ev, len(y) - 1)]
    lbl = _overfit_onset(ev, val, tr)
    if lbl is not None:
        labels.append(Label("overfitting", VAL_LOSS, lbl))
    lbl = _misaligned_onset(evm, met, m200[np.minimum(evm, len(y) - 1)])
    if lbl is not None:
        labels.append(Label("misalignment", c.metric_key, lbl))
    return labels


def _overfit_onset(ev: np.ndarray, val: np.ndarray, tr: np.ndarray) -> int | None:
    """The evaluation after the best validation loss, when from then on the validation loss stays
    above that best, ends >= 5 % above it, while the training loss (trailing-200 median) falls >= 5 %."""
    ok = np.isfinite(val) & np.isfinite(tr)
    if ok.sum() < 6:
        return None
    ev, val, tr = ev[ok], val[ok], tr[ok]
    b = int(np.argmin(val))
    if b >= len(val) - 3:
        return None
    if val[-1] >= 1.05 * val[b] and tr[-1] <= 0.95 * tr[b]:
        return int(ev[b + 1])
    return None


def _misaligned_onset(ev: np.ndarray, met: np.ndarray, loss: np.ndarray, w: int = 8) -> int | None:
    """The first window of 8 evaluations, from which on to the end of the run, every window of 8 has the
    loss (trailing-200 median) falling >= 5 % while the metric's best in the window is not more than
    0.01 above its value at the window's start; the onset is that first window's first evaluation."""
    ok = np.isfinite(met) & np.isfinite(loss)
    ev, met, loss = ev[ok], met[ok], loss[ok]
    if len(ev) < w + 2:
        return None
    bad = []
    for i in range(len(ev) - w + 1):
        j = i + w - 1
        bad.append(loss[j] <= 0.95 * loss[i] and met[i:j + 1].max() <= met[i] + 0.01)
    bad_a = np.array(bad)
    if not bad_a[-1]:
        return None
    good = np.nonzero(~bad_a)[0]
    i = int(good[-1] + 1) if len(good) else 0
    if len(bad_a) - i < 3:  # at least 3 windows in a row
        return None
    return int(ev[i])


# =============================================================================================
# Replay through the detectors, as the server does
# =============================================================================================


def replay_run(c: Curve, config: RuleConfig) -> list[Finding]:
    """Feed the run in ingest batches of ``c.batch_steps`` steps (every series' points of those steps
    in one batch) through :func:`losswatch.server.detectors.evaluate_run`, the pure part of
    ``monitor.evaluate_batch``: training series before metrics, the run's latest LR, current levels."""
    kinds = {k: v[0] for k, v in c.series.items()}
    states: dict[str, Any] = {}
    findings: list[Finding] = []
    lr: float | None = None
    n = c.steps
    cuts = {k: np.searchsorted(s, np.arange(0, n + c.batch_steps, c.batch_steps)) for k, (_, s, _) in c.series.items()}
    for bi in range(len(next(iter(cuts.values()))) - 1):
        batch: dict[str, tuple[list[int], list[float]]] = {}
        for k, (_, s, v) in c.series.items():
            i, j = cuts[k][bi], cuts[k][bi + 1]
            if j > i:
                batch[k] = (s[i:j].tolist(), v[i:j].tolist())
        if LR in batch:
            lr = batch[LR][1][-1]  # the lr row's last value after recording the batch
        if not batch:
            continue
        states, found = evaluate_run(states, kinds, batch, config, lr=lr)
        findings.extend(found)
    return findings


# =============================================================================================
# Scoring
# =============================================================================================

#: (steps a fire may precede the label's onset, steps after the onset within which it counts)
WINDOWS = {
    "non_finite": (0, 50), "spike": (3, 100), "divergence": (200, 3000), "plateau": (1000, 12000),
    "overfitting": (1000, 6000), "misalignment": (2500, 8000),
}


#: events whose labelling rule makes them last to the end of the run
PERSISTENT = ("divergence", "plateau", "overfitting", "misalignment")


def score_run(c: Curve, labels: list[Label], findings: list[Finding]) -> dict[str, Any]:
    fires = [f for f in findings if f.action == "fire"]
    res: dict[str, Any] = {"labels": [], "fires": {}, "fp": {}}
    used: set[int] = set()
    for lb in labels:
        pre, post = WINDOWS[lb.type]
        if lb.type in PERSISTENT:
            post = 10**12  # the event lasts to the end of the run: a later re-fire is the same event
        cand = [f for f in fires if f.rule == lb.type and f.key == lb.key and lb.onset - pre <= f.step <= lb.onset + post]
        hit = min(cand, key=lambda f: f.step) if cand else None
        entry: dict[str, Any] = {"type": lb.type, "onset": lb.onset, "hit": hit is not None,
                                 "delay": None if hit is None else hit.step - lb.onset, "recovered": lb.recovered}
        for f in cand:
            used.add(id(f))
        if lb.type == "spike" and hit is not None:
            entry["predicted_recovered"] = _spike_outcome(findings, hit)
            if entry["delay"] is not None:
                ys = c.series[TRAIN_LOSS][1]
                entry["delay_points"] = int(np.searchsorted(ys, hit.step) - np.searchsorted(ys, lb.onset))
        res["labels"].append(entry)
    for f in fires:
        res["fires"][f.rule] = res["fires"].get(f.rule, 0) + 1
        if id(f) not in used:
            res["fp"].setdefault(f.rule, []).append(f.step)
    return res


def _spike_outcome(findings: list[Finding], fire: Finding) -> bool | None:
    """True: the spike alert resolved (recovered); False: it escalated (or was still open at the end)."""
    for f in findings:
        if f.rule == "spike" and f.step >= fire.step and f.action in ("resolve", "escalate") and f is not fire:
            if f.details.get("segment_reset"):
                return None
            return f.action == "resolve"
    return False


def _pct(num: int, den: int) -> float | None:
    return None if den == 0 else round(100.0 * num / den, 1)


def summarise(runs: list[tuple[Curve, list[Label], dict[str, Any]]]) -> list[dict[str, Any]]:
    healthy = [(c, lb, r) for c, lb, r in runs if c.family in HEALTHY]
    healthy_steps = sum(c.steps for c, _, _ in healthy)
    rows = []
    for et in EVENT_TYPES:
        ent = [e for _, _, r in runs for e in r["labels"] if e["type"] == et]
        hits = [e for e in ent if e["hit"]]
        delays = sorted(e["delay"] for e in hits)
        if et == "plateau":  # judged on runs that may plateau; healthy runs have their own goal
            pool = [r for c, _, r in runs if c.family not in HEALTHY]
        else:
            pool = [r for _, _, r in runs]
        n_fires = sum(r["fires"].get(et, 0) for r in pool)
        n_fp = sum(len(r["fp"].get(et, [])) for r in pool)
        fa_healthy = sum(len(r["fp"].get(et, [])) for c, _, r in healthy)
        row: dict[str, Any] = {
            "event": et,
            "labelled": len(ent),
            "recall_%": _pct(len(hits), len(ent)),
            "precision_%": _pct(n_fires - n_fp, n_fires),
            "median_delay_steps": None if not delays else float(np.median(delays)),
            "p90_delay_steps": None if not delays else float(np.percentile(delays, 90)),
            "false_alarms_per_100k_healthy_steps": round(fa_healthy / healthy_steps * 1e5, 2) if healthy_steps else None,
        }
        if et == "spike":
            pts = sorted(e["delay_points"] for e in hits if "delay_points" in e)
            row["median_delay_points"] = float(np.median(pts)) if pts else None
            row["p90_delay_points"] = float(np.percentile(pts, 90)) if pts else None
            judged = [e for e in hits if e["recovered"] is not None]
            row["recovered_vs_not_told_apart_%"] = _pct(
                sum(e.get("predicted_recovered") == e["recovered"] for e in judged), len(judged))
        if et == "divergence":
            row["healthy_runs_without_divergence_alarm_%"] = _pct(
                sum(1 for _, _, r in healthy if not r["fires"].get("divergence")), len(healthy))
        if et == "plateau":
            per_run = [r["fires"].get("plateau", 0) for _, _, r in healthy]
            row["healthy_runs_max_plateau_warnings"] = max(per_run) if per_run else None
            row["healthy_plateau_warnings_in_warmup_or_after_lr_drop"] = sum(
                1 for c, _, r in healthy for s in r["fp"].get("plateau", [])
                if s <= c.warmup_end + 500 or any(d <= s < d + 5000 for d in c.lr_drops))
        rows.append(row)
    return rows


GOALS = {
    "non_finite": "recall 100 %, delay 0, no false alarm",
    "spike": "recall ≥ 95 %, delay ≤ 2 points, ≤ 5 FA/100k healthy steps, told apart ≥ 90 %",
    "divergence": "recall ≥ 95 %, median delay ≤ 100 steps, ≥ 98 % healthy runs free",
    "plateau": "recall ≥ 80 %, ≤ 1 warning per healthy run, none in warm-up / after an LR drop",
    "overfitting": "recall ≥ 90 %, precision ≥ 80 %",
    "misalignment": "recall ≥ 70 %, precision ≥ 70 %",
}


def goals_met(row: dict[str, Any]) -> bool:
    et = row["event"]
    r, p = row["recall_%"] or 0, row["precision_%"]
    md = row["median_delay_steps"]
    if et == "non_finite":
        return r == 100 and md == 0 and row["p90_delay_steps"] == 0 and (p is None or p == 100)
    if et == "spike":
        return (r >= 95 and (row["p90_delay_points"] or 0) <= 2 and row["false_alarms_per_100k_healthy_steps"] <= 5
                and (row["recovered_vs_not_told_apart_%"] or 0) >= 90)
    if et == "divergence":
        return r >= 95 and md is not None and md <= 100 and row["healthy_runs_without_divergence_alarm_%"] >= 98
    if et == "plateau":
        return r >= 80 and row["healthy_runs_max_plateau_warnings"] <= 1 and not row[
            "healthy_plateau_warnings_in_warmup_or_after_lr_drop"]
    if et == "overfitting":
        return r >= 90 and (p or 0) >= 80
    return r >= 70 and (p or 0) >= 70


# =============================================================================================
# The labelled set, cached
# =============================================================================================


def _cached(path: Path, make: Any) -> Any:
    if path.exists():
        try:
            with path.open("rb") as fh:
                return pickle.load(fh)
        except Exception:  # noqa: BLE001 - a broken cache file is rebuilt
            pass
    obj = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(obj, fh)
    os.replace(tmp, path)
    return obj


def build_set(quick: bool = False, torch_runs: bool = True) -> list[Curve]:
    seeds = 8 if quick else 24
    tseeds = 3 if quick else 6
    curves: list[Curve] = []
    for fam in SYNTHETIC_FAMILIES:
        path = CACHE / f"synthetic-v{SYNTHETIC_VERSION}" / f"{fam}-{seeds}.pkl"
        curves += _cached(path, lambda fam=fam: [synthetic(fam, s) for s in range(seeds)])
    if torch_runs:
        for fam in TORCH_FAMILIES:
            for s in range(tseeds):
                curves.append(_cached(CACHE / f"torch-v{TORCH_VERSION}" / f"{fam}-{s}.pkl",
                                      lambda fam=fam, s=s: torch_run(fam, s)))
    return curves


_LABELS: dict[str, list[Label]] = {}


def labels_of(c: Curve) -> list[Label]:
    if c.name not in _LABELS:
        ver = SYNTHETIC_VERSION if c.source == "synthetic" else TORCH_VERSION
        _LABELS[c.name] = _cached(CACHE / f"labels-v{LABEL_VERSION}" / f"{c.source}-v{ver}-{c.name}.pkl",
                                  lambda: label_run(c))
    return _LABELS[c.name]


def evaluate(curves: Iterable[Curve], config: RuleConfig | None = None) -> list[tuple[Curve, list[Label], dict[str, Any]]]:
    config = config or RuleConfig.default()
    out = []
    for c in curves:
        labels = labels_of(c)
        out.append((c, labels, score_run(c, labels, replay_run(c, config))))
    return out


def detection_tables(results: list[tuple[Curve, list[Label], dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    tables = {}
    for split in ("train", "held-out"):
        rows = summarise([r for r in results if r[0].split == split])
        for row in rows:
            row["goal"] = GOALS[row["event"]]
            row["met"] = goals_met(row)
        tables[split] = rows
    for src in ("synthetic", "torch"):
        tables[f"{src} only, all seeds"] = summarise([r for r in results if r[0].source == src])
    return tables


# =============================================================================================
# Ingest cost of detection
# =============================================================================================

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


def ingest_cost(quick: bool = False) -> dict[str, Any]:
    """Points per second through the real ingest use case (``services.ingest.ingest``: parse, record,
    detect, alerts) on SQLite, with the detectors and with ``monitor.evaluate_batch`` replaced by a
    no-op; batches of 10,000 points (1,250 steps of the 8 series of MIX). Rounds alternate."""
    from losswatch.server.db import Database, upgrade
    from losswatch.server.schemas import RunCreate
    from losswatch.server.services import ingest, monitor, runs
    from losswatch.server.settings import Settings

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
    }


# =============================================================================================
# measure()
# =============================================================================================


def _rules_notes() -> list[str]:
    path = BENCH / "DETECTION.md"
    try:
        text = path.read_text()
    except OSError:
        return ["bench/DETECTION.md is missing"]
    part = text.split("## Labelling rules", 1)[-1].split("\n## ", 1)[0]
    notes = [ln[2:].strip() for ln in part.splitlines() if ln.startswith("- ")]
    return ["Labelling rules (bench/DETECTION.md):", *notes]


def measure(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    curves = build_set(quick)
    t_build = time.perf_counter() - t0
    results = evaluate(curves)
    t_eval = time.perf_counter() - t0 - t_build
    tables = detection_tables(results)
    n_steps = sum(c.steps for c in curves)
    counts = {}
    for c in curves:
        counts[f"{c.source} {c.family}"] = counts.get(f"{c.source} {c.family}", 0) + 1
    data: dict[str, Any] = {
        "title": "Detection: labelled benchmark",
        "notes": [
            f"{len(curves)} runs ({sum(c.source == 'synthetic' for c in curves)} synthetic, "
            f"{sum(c.source == 'torch' for c in curves)} real torch trainings), {n_steps:,} training steps; "
            "held-out = seeds with seed % 4 == 3, never looked at while tuning.",
            "Runs fed to the real detectors in ingest batches of 100/250/625 steps (per run), training series "
            "before metrics, the run's latest LR and the paired series' levels, as monitor.evaluate_batch does.",
            *_rules_notes(),
        ],
        "runs": len(curves),
        "steps": n_steps,
        "build_s": round(t_build, 1),
        "evaluate_s": round(t_eval, 1),
        "detection (train seeds)": tables["train"],
        "detection (held-out seeds)": tables["held-out"],
        "detection (synthetic only, all seeds)": tables["synthetic only, all seeds"],
        "detection (torch only, all seeds)": tables["torch only, all seeds"],
        "runs per family": [{"family": k, "runs": v} for k, v in sorted(counts.items())],
    }
    try:
        data["ingest cost"] = ingest_cost(quick)
    except Exception as exc:  # noqa: BLE001 - the ingest path is shared; report and keep the table
        data["ingest cost"] = {"error": f"{type(exc).__name__}: {exc}"}
    return data


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c)) for c in cols))


if __name__ == "__main__":
    out = measure(quick="--quick" in sys.argv)
    for k, v in out.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            print(f"\n## {k}")
            _print_table(v)
        elif k != "notes":
            print(k, v)
