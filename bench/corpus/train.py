"""The labelled corpus: real small torch trainings (CPU) with a cause injected at a known step.

    .venv/bin/python bench/corpus/train.py            # regenerate bench/corpus/data/ (a few minutes, 1 core)
    .venv/bin/python bench/corpus/train.py --only blobs-mlp

Each run is a real training loop (MLP / CNN / GRU / regression, SGD+momentum, Adam, AdamW, RMSprop;
constant, warm-up+cosine, warm-up+linear, step decay, ReduceLROnPlateau; 300 to 20,000 steps; an
evaluation every 10 to 2,000 steps). A problem run has one *cause* injected at step ``t`` and its label is
the cause and ``t``, written here at generation, never derived from the curve by a detector-like rule:

- ``spike``: the LR multiplied ×k for 1–20 steps, or one corrupted batch (inputs ×100);
- ``divergence``: the LR multiplied ×k from ``t`` for good (gradient clipping removed in some runs, the
  "gradient explosion"), or a warm-up that climbs to a peak k× too high (``t`` = where the LR passes the
  healthy peak);
- ``plateau``: the LR dropped to ~0 or every layer frozen at ``t`` (early: the loss still far from what the
  project's healthy runs reach);
- ``overfitting``: from ``t`` the trainer draws its batches from a tiny subset (a broken sampler);
- ``misalignment``: from ``t`` the training labels go through a fixed permutation (a label-mapping bug);
- ``non_finite``: fp16-style overflow at ``t``: a few skipped steps with an Inf loss and grad norm (the
  grad scaler's behaviour), or Inf/NaN written into the weights (every later value NaN).

The only curve-derived fields are facts, kept apart from the label: ``first_non_finite`` (the first
NaN/±Inf step of each training series) and, for spikes, ``recovered`` (a separate cross-check: the mean loss
of steps t+100..t+200 is within 1.3× the mean of t-100..t). Healthy runs record their schedule
(``warmup_end``, ``lr_drops``) and whether they were resumed from a checkpoint (steps go back).

Output: ``data/<project>.npz`` (series, float32 values, delta-encoded int32 steps) and
``data/manifest.json`` (runs, projects, labels). ``heldout.txt`` (a third of the runs, stratified by
project and cause, drawn with a fixed seed) was written once, before any detector was tuned, and is
never regenerated: ``--heldout`` rewrites it only when it is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
HELDOUT = HERE / "heldout.txt"
VERSION = 1


# ---------------------------------------------------------------------------------------------
# Tasks: data, model, loss, metric
# ---------------------------------------------------------------------------------------------


class Task:
    """A task draws training batches and evaluates on a fixed validation set."""

    metric = "val/accuracy"
    classification = True

    def __init__(self, name: str, seed: int, val_size: int, noise: str = "normal") -> None:
        import torch

        self.torch = torch
        self.g = torch.Generator().manual_seed(seed)
        self.name = name
        self.noise = noise
        self.setup()
        self.xv, self.yv = self.sample(val_size)

    def setup(self) -> None:  # pragma: no cover - per task
        raise NotImplementedError

    def sample(self, m: int) -> tuple[Any, Any]:  # pragma: no cover - per task
        raise NotImplementedError

    def model(self) -> Any:  # pragma: no cover - per task
        raise NotImplementedError

    def loss(self, out: Any, y: Any) -> Any:
        return self.torch.nn.functional.cross_entropy(out, y)

    def evaluate(self, model: Any) -> tuple[float, float]:
        torch = self.torch
        with torch.no_grad():
            out = model(self.xv)
            vl = float(self.loss(out, self.yv))
            if self.classification:
                m = float((out.argmax(-1) == self.yv).float().mean())
            else:
                y = self.yv
                m = float(1.0 - ((out - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        return vl, m


class Blobs(Task):
    """Gaussian mixture, 8 classes in 16 dimensions; an MLP reaches ~0.97 accuracy."""

    dim, classes, hidden, spread = 16, 8, 64, 1.0

    def setup(self) -> None:
        t = self.torch
        self.centres = t.randn(self.classes, self.dim, generator=self.g) * 1.4

    def sample(self, m: int) -> tuple[Any, Any]:
        t = self.torch
        y = t.randint(0, self.classes, (m,), generator=self.g)
        x = self.centres[y] + t.randn(m, self.dim, generator=self.g) * self.spread
        return x, y

    def model(self) -> Any:
        nn = self.torch.nn
        return nn.Sequential(nn.Linear(self.dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden),
                             nn.ReLU(), nn.Linear(self.hidden, self.classes))


class TinyBlobs(Blobs):
    """The long-run task: a tiny MLP, cheap enough for 20,000 steps."""

    dim, classes, hidden, spread = 8, 4, 16, 1.2


class Regression(Task):
    """y = a smooth function of 8 inputs + noise (Gaussian, or Student-t with 2.5 degrees of freedom:
    heavy-tailed batch losses); an MLP reaches r² ≈ 0.99 with Gaussian noise."""

    metric = "val/r2"
    classification = False

    def setup(self) -> None:
        t = self.torch
        self.w1 = t.randn(8, 4, generator=self.g) / math.sqrt(8)
        self.w2 = t.randn(4, generator=self.g)

    def sample(self, m: int) -> tuple[Any, Any]:
        t = self.torch
        x = t.randn(m, 8, generator=self.g)
        h = t.sin(2.0 * x @ self.w1)
        y = (h * self.w2).sum(1, keepdim=True) + 0.3 * (x[:, :1] ** 2)
        if self.noise == "heavy":
            nz = t.distributions.StudentT(2.5).sample((m, 1)) * 0.1
        else:
            nz = t.randn(m, 1, generator=self.g) * 0.1
        return x, y + nz

    def model(self) -> Any:
        nn = self.torch.nn
        return nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))

    def loss(self, out: Any, y: Any) -> Any:
        return self.torch.nn.functional.mse_loss(out, y)


class Digits(Task):
    """6 random 10×10 templates, shifted by up to 1 pixel, plus noise; a small CNN."""

    classes = 6

    def setup(self) -> None:
        t = self.torch
        self.templates = (t.rand(self.classes, 1, 10, 10, generator=self.g) > 0.6).float()

    def sample(self, m: int) -> tuple[Any, Any]:
        t = self.torch
        y = t.randint(0, self.classes, (m,), generator=self.g)
        x = self.templates[y]
        dx, dy = (int(v) for v in t.randint(-1, 2, (2,), generator=self.g))
        x = t.roll(x, shifts=(dx, dy), dims=(2, 3)) + t.randn(m, 1, 10, 10, generator=self.g) * 0.6
        return x, y

    def model(self) -> Any:
        nn = self.torch.nn
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, self.classes))


class Chars(Task):
    """Next-symbol prediction on sequences from a random sparse Markov chain over 12 symbols; a GRU."""

    symbols, seq = 12, 16

    def setup(self) -> None:
        t = self.torch
        logits = t.randn(self.symbols, self.symbols, generator=self.g) * 2.5
        self.trans = t.softmax(logits, 1)

    def sample(self, m: int) -> tuple[Any, Any]:
        t = self.torch
        s = t.randint(0, self.symbols, (m,), generator=self.g)
        out = [s]
        for _ in range(self.seq):
            s = t.multinomial(self.trans[s], 1, generator=self.g).squeeze(1)
            out.append(s)
        seq = t.stack(out, 1)
        return seq[:, :-1], seq[:, 1:]

    def model(self) -> Any:
        torch = self.torch
        nn = torch.nn
        symbols = self.symbols

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb = nn.Embedding(symbols, 24)
                self.rnn = nn.GRU(24, 32, batch_first=True)
                self.out = nn.Linear(32, symbols)

            def forward(self, x: Any) -> Any:
                if x.dtype.is_floating_point:  # a corrupted batch: garbage ids
                    x = x.long().clamp(0, symbols - 1)
                h, _ = self.rnn(self.emb(x))
                return self.out(h)

        return Net()

    def loss(self, out: Any, y: Any) -> Any:
        return self.torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


TASKS = {"blobs": Blobs, "tiny": TinyBlobs, "reg": Regression, "digits": Digits, "chars": Chars}


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def schedule(kind: str, n: int, peak: float, warm: int) -> tuple[list[float], int, list[int]]:
    """The planned LR per step (ReduceLROnPlateau acts during training: constant here)."""
    lrs, drops = [], []
    for s in range(n):
        if kind in ("cosine", "linear") and s < warm:
            lr = peak * (s + 1) / warm
        elif kind == "cosine":
            lr = peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, n - warm))))
        elif kind == "linear":
            lr = peak * max(0.02, 1.0 - (s - warm) / max(1, n - warm))
        elif kind == "step":
            lr = peak * 0.1 ** sum(s >= d for d in (int(n * 0.5), int(n * 0.8)))
        else:
            lr = peak
        lrs.append(lr)
    if kind == "step":
        drops = [int(n * 0.5), int(n * 0.8)]
    return lrs, (warm if kind in ("cosine", "linear") else 0), drops


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one training as ``spec`` says; return its series (key -> kind, steps, values) and facts."""
    import torch

    torch.set_num_threads(1)
    seed = spec["seed"]
    torch.manual_seed(seed)
    rnd = random.Random(seed)
    task = TASKS[spec["task"]](spec["task"], seed, spec["val_size"], spec.get("noise", "normal"))
    model = task.model()
    n, every = spec["steps"], spec["eval_every"]
    peak = spec["lr"]
    opt_name = spec["optimizer"]
    params = list(model.parameters())
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=peak, momentum=0.9)
    elif opt_name == "adam":
        opt = torch.optim.Adam(params, lr=peak)
    elif opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01)
    else:
        opt = torch.optim.RMSprop(params, lr=peak)
    lrs, warm, drops = schedule(spec["schedule"], n, peak, spec.get("warmup", 0))
    plateau_sched = spec["schedule"] == "rlrop"
    rlrop_mult, rlrop_best, rlrop_bad = 1.0, math.inf, 0
    cause = spec.get("cause")
    t0 = spec.get("t", -1)
    k = spec.get("k", 1.0)
    dur = spec.get("dur", 0)
    clip = spec.get("clip", 1.0)
    batch = spec["batch"]
    subset = task.sample(spec.get("subset", 32)) if cause == "overfit_subset" else None
    perm = None
    if cause == "label_permutation" and task.classification:
        classes = getattr(task, "classes", getattr(task, "symbols", 2))
        perm = torch.roll(torch.arange(classes), 1)
    resume_at = spec.get("resume_at")  # (checkpoint step, crash step): the job dies and resumes
    ckpt = None
    log: dict[str, tuple[list[int], list[float]]] = {"train/loss": ([], []), "grad_norm": ([], []), "lr": ([], []),
                                                      "val/loss": ([], []), task.metric: ([], [])}
    last_lr_logged = None
    s = 0
    dead = False
    crashed = False
    while s < n:
        if resume_at and not crashed and s == resume_at[0]:
            ckpt = ({k2: v.clone() for k2, v in model.state_dict().items()}, _opt_state(opt), rnd.getstate(),
                    (rlrop_mult, rlrop_best, rlrop_bad))
        if resume_at and not crashed and s == resume_at[1]:
            crashed = True
            model.load_state_dict(ckpt[0])
            opt.load_state_dict(ckpt[1])
            rnd.setstate(ckpt[2])
            rlrop_mult, rlrop_best, rlrop_bad = ckpt[3]
            s = resume_at[0]
            last_lr_logged = None
        lr = lrs[s] * rlrop_mult
        if cause in ("lr_burst", "lr_forever", "explode") and s >= t0 and (cause != "lr_burst" or s < t0 + dur):
            lr *= k
        if cause == "warmup_too_high" and warm:
            lr *= 1.0 + (k - 1.0) * min(1.0, s / warm)
        if cause == "lr_to_zero" and s >= t0:
            lr *= 1e-4
        for gr in opt.param_groups:
            gr["lr"] = lr
        if cause == "freeze" and s == t0:
            for p in params:
                p.requires_grad_(False)
        if subset is not None and s >= t0:
            idx = torch.randint(0, subset[0].shape[0], (batch,))
            x, y = subset[0][idx], subset[1][idx]
        else:
            x, y = task.sample(batch)
        if cause == "label_permutation" and s >= t0:
            y = perm[y] if perm is not None else 1.0 - y  # a label-mapping bug (regression: a flipped target)
        if cause == "corrupt_batch" and s == t0:
            x = x * 100.0 if x.dtype.is_floating_point else (x.float() * 100.0)
        overflow = cause in ("fp16_skip", "fp16_nan") and t0 <= s < t0 + max(1, dur)
        if dead:
            loss_v, gn = math.nan, math.nan
        else:
            out = model(x)
            loss = task.loss(out, y)
            opt.zero_grad()
            if loss.requires_grad:
                loss.backward()
                max_norm = math.inf if (cause == "explode" and s >= t0) or clip is None else clip
                gn = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            else:
                gn = 0.0
            loss_v = float(loss.detach())
            if overflow:  # the scaled fp16 loss overflowed: Inf loss, Inf grads
                loss_v, gn = math.inf, math.inf
                if cause == "fp16_nan":  # no grad scaler to skip the step: Inf/NaN land in the weights
                    with torch.no_grad():
                        for p in params:
                            p.add_(math.inf).sub_(math.inf)
                    dead = True
            elif loss.requires_grad and math.isfinite(gn):
                opt.step()
            if not math.isfinite(loss_v) or not math.isfinite(gn):
                if not overflow and any(not bool(torch.isfinite(p).all()) for p in params):
                    dead = True
        log["train/loss"][0].append(s)
        log["train/loss"][1].append(loss_v)
        log["grad_norm"][0].append(s)
        log["grad_norm"][1].append(gn)
        if last_lr_logged is None or abs(lr - last_lr_logged) > 0.005 * last_lr_logged or s % 500 == 0:
            log["lr"][0].append(s)
            log["lr"][1].append(lr)
            last_lr_logged = lr
        if (s + 1) % every == 0:
            vl, m = (math.nan, math.nan) if dead else task.evaluate(model)
            log["val/loss"][0].append(s)
            log["val/loss"][1].append(vl)
            log[task.metric][0].append(s)
            log[task.metric][1].append(m)
            if plateau_sched and math.isfinite(vl):
                if vl < rlrop_best * (1 - 1e-4):
                    rlrop_best, rlrop_bad = vl, 0
                else:
                    rlrop_bad += 1
                    if rlrop_bad > spec.get("rlrop_patience", 5):
                        rlrop_mult *= 0.3
                        rlrop_bad = 0
                        drops.append(s + 1)
        s += 1
    kinds = {"train/loss": "loss", "grad_norm": "grad_norm", "lr": "lr", "val/loss": "loss", task.metric: "metric"}
    series = {key: (kinds[key], np.asarray(st, dtype=np.int64), np.asarray(v, dtype=np.float64))
              for key, (st, v) in log.items() if st}
    return {"series": series, "warmup_end": warm, "lr_drops": sorted(drops), "metric": task.metric}


def _opt_state(opt: Any) -> Any:
    import copy

    return copy.deepcopy(opt.state_dict())


# ---------------------------------------------------------------------------------------------
# The projects: a task, several seeds and settings, causes injected into some runs
# ---------------------------------------------------------------------------------------------

#: project -> (task, steps range, eval-every choices, optimizers, peak LR per optimizer, batch)
PROJECTS: dict[str, dict[str, Any]] = {
    "blobs-mlp": {"task": "blobs", "steps": (300, 3000), "every": (10, 25, 50, 100), "batch": 32,
                  "lr": {"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3}, "runs": 40},
    "regression": {"task": "reg", "steps": (800, 5000), "every": (20, 50, 100, 250), "batch": 32,
                   "lr": {"sgd": 0.02, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3}, "runs": 32},
    "digits-cnn": {"task": "digits", "steps": (400, 1500), "every": (20, 50, 100), "batch": 32,
                   "lr": {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3}, "runs": 24},
    "chars-gru": {"task": "chars", "steps": (300, 900), "every": (10, 25, 50), "batch": 16,
                  "lr": {"sgd": 0.5, "adam": 5e-3, "adamw": 5e-3, "rmsprop": 2e-3}, "runs": 18},
    "long-tiny": {"task": "tiny", "steps": (8000, 20000), "every": (500, 1000, 2000), "batch": 16,
                  "lr": {"sgd": 0.02, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 5e-4}, "runs": 14},
}

#: cause -> (label type, share of a project's runs); the rest are healthy
CAUSES: dict[str, tuple[str, float]] = {
    "lr_burst": ("spike", 0.07), "corrupt_batch": ("spike", 0.07),
    "lr_forever": ("divergence", 0.07), "explode": ("divergence", 0.05), "warmup_too_high": ("divergence", 0.04),
    "lr_to_zero": ("plateau", 0.06), "freeze": ("plateau", 0.04),
    "overfit_subset": ("overfitting", 0.07), "label_permutation": ("misalignment", 0.07),
    "fp16_skip": ("non_finite", 0.03), "fp16_nan": ("non_finite", 0.03),
}


def plan(project: str) -> list[dict[str, Any]]:
    """The run specs of a project, deterministic."""
    p = PROJECTS[project]
    rnd = random.Random(f"{project}-{VERSION}")
    total = p["runs"]
    causes: list[str | None] = []
    for c, (_, share) in CAUSES.items():
        causes += [c] * max(1, round(share * total))
    causes += [None] * max(total // 3, total - len(causes))
    rnd.shuffle(causes)
    specs = []
    for i, cause in enumerate(causes):
        lo, hi = p["steps"]
        n = int(math.exp(rnd.uniform(math.log(lo), math.log(hi))))
        opt = rnd.choice(("sgd", "adam", "adamw", "rmsprop"))
        sched = rnd.choice(("const", "cosine", "linear", "step", "rlrop"))
        if cause == "warmup_too_high":
            sched = rnd.choice(("cosine", "linear"))
        warm = int(n * rnd.uniform(0.03, 0.1)) if sched in ("cosine", "linear") else 0
        every = rnd.choice(p["every"])
        every = min(every, max(10, n // 12))
        spec: dict[str, Any] = {
            "id": f"{project}-{i:03d}", "project": project, "task": p["task"], "seed": rnd.randrange(1 << 30),
            "steps": n, "eval_every": every, "optimizer": opt, "schedule": sched, "warmup": warm,
            "lr": p["lr"][opt] * rnd.choice((0.5, 1.0, 1.0, 2.0)), "batch": p["batch"],
            "val_size": rnd.choice((64, 256, 2048)), "clip": rnd.choice((1.0, 5.0, None)),
            "noise": "heavy" if p["task"] == "reg" and rnd.random() < 0.4 else "normal",
        }
        if cause is None and rnd.random() < 0.2 and n >= 600:
            a = int(n * rnd.uniform(0.3, 0.6))
            spec["resume_at"] = (a, a + int(n * rnd.uniform(0.05, 0.15)))
        if cause is not None:
            spec["cause"] = cause
            first = max(warm + n // 20, n // 10)
            t = int(rnd.uniform(first, n * (0.45 if cause in ("lr_to_zero", "freeze") else 0.7)))
            if cause in ("lr_to_zero", "freeze"):
                t = int(rnd.uniform(max(warm, n * 0.04), n * 0.2))  # stuck early
            spec["t"] = t
            if cause == "lr_burst":
                spec["k"], spec["dur"] = rnd.choice((30.0, 100.0, 300.0)), rnd.randint(1, 20)
            elif cause in ("lr_forever", "explode"):
                spec["k"] = rnd.choice((20.0, 50.0, 200.0)) if cause == "lr_forever" else rnd.choice((100.0, 1000.0))
            elif cause == "warmup_too_high":
                spec["k"] = rnd.choice((30.0, 100.0, 300.0))
                kk = spec["k"]  # t: where the climbing warm-up LR passes the healthy peak
                spec["t"] = next(s for s in range(warm) if (s + 1) / warm * (1 + (kk - 1) * s / warm) >= 1.0)
            elif cause in ("fp16_skip", "fp16_nan"):
                spec["dur"] = rnd.randint(1, 3)
            elif cause == "overfit_subset":
                spec["subset"] = rnd.choice((16, 32, 64))
                spec["val_size"] = max(spec["val_size"], 256)
        specs.append(spec)
    return specs


def _facts(spec: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    series = out["series"]
    first_nf = {}
    for key in ("train/loss", "grad_norm"):
        _, st, v = series[key]
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            first_nf[key] = int(st[bad[0]])
    run: dict[str, Any] = {k: v for k, v in spec.items() if k not in ("noise",)}
    run.update(warmup_end=out["warmup_end"], lr_drops=out["lr_drops"], metric=out["metric"],
               first_non_finite=first_nf, noise=spec.get("noise", "normal"))
    cause = spec.get("cause")
    if cause:
        ltype = CAUSES[cause][0]
        label: dict[str, Any] = {"type": ltype, "step": spec["t"], "cause": cause}
        if ltype == "spike":
            _, st, v = series["train/loss"]
            t = spec["t"]
            before = v[(st >= t - 100) & (st < t)]
            after = v[(st >= t + 100) & (st < t + 200)]
            ok = before[np.isfinite(before)]
            label["recovered"] = bool(after.size and np.isfinite(after).all() and ok.size
                                      and after.mean() <= 1.3 * ok.mean())
        label["visible"] = _visible(ltype, spec, series, out["metric"])
        run["label"] = label
    else:
        run["label"] = None
    return run


def _visible(ltype: str, spec: dict[str, Any], series: dict[str, Any], metric: str) -> bool:
    """Cross-check, apart from the label: did the injected cause show in the curves at all? (A run whose
    cause left no trace cannot be detected by anyone; the scorer reports recall with and without them.)"""
    t = spec["t"]
    _, st, v = series["train/loss"]
    pre = v[(st < t) & (st >= t - 200)]
    pre = pre[np.isfinite(pre)]
    base = float(np.median(pre)) if pre.size else float(np.nanmedian(v[:50]))
    post = v[st >= t]
    if ltype == "non_finite":
        return bool((~np.isfinite(post)).any())
    if ltype == "spike":
        w = post[: spec.get("dur", 1) + 10]
        return bool((~np.isfinite(w)).any() or np.nanmax(w) >= 2.0 * base)
    if ltype == "divergence":
        tail = post[len(post) // 2:]
        return bool((~np.isfinite(post)).any() or np.nanmedian(tail) >= 1.3 * base)
    if ltype == "plateau":
        return True  # the loss stops moving by construction (LR ~0 or nothing trainable)
    _, est, ev = series["val/loss" if ltype == "overfitting" else metric]
    after = ev[est >= t]
    if after.size < 2:
        return False
    if ltype == "overfitting":
        return bool(after[-1] >= 1.05 * after.min())
    before = ev[est < t]
    return bool(before.size and after[-1] < before[-1] - 0.02)


def generate(projects: list[str]) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    man_path = DATA / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {"version": VERSION, "runs": {}}
    for project in projects:
        arrays: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        for spec in plan(project):
            out = train(spec)
            manifest["runs"][spec["id"]] = _facts(spec, out)
            for key, (kind, st, v) in out["series"].items():
                base = f"{spec['id']}|{key}|{kind}"
                arrays[base + "|s"] = np.diff(st, prepend=0).astype(np.int32)
                arrays[base + "|v"] = v.astype(np.float32)
        np.savez_compressed(DATA / f"{project}.npz", **arrays)
        print(f"{project}: {len(plan(project))} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        manifest["runs"] = dict(sorted(manifest["runs"].items()))
        man_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_heldout() -> None:
    """A third of the runs of each (project, label type), drawn with a fixed seed. Written once."""
    if HELDOUT.exists():
        print(f"{HELDOUT} exists: kept (it was fixed before tuning)", file=sys.stderr)
        return
    rnd = random.Random(20261202)
    groups: dict[tuple[str, str], list[str]] = {}
    for project in PROJECTS:
        for spec in plan(project):
            cause = spec.get("cause")
            groups.setdefault((project, CAUSES[cause][0] if cause else "healthy"), []).append(spec["id"])
    held = []
    for _, ids in sorted(groups.items()):
        rnd.shuffle(ids)
        held += ids[: round(len(ids) / 3)]
    HELDOUT.write_text("# held-out runs: fixed before any tuning; never tune on them (bench/corpus/train.py)\n"
                       + "\n".join(sorted(held)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="projects to (re)generate")
    ap.add_argument("--heldout", action="store_true", help="write heldout.txt if it is missing, then stop")
    args = ap.parse_args()
    if args.heldout:
        write_heldout()
        return
    generate(args.only or list(PROJECTS))


if __name__ == "__main__":
    main()
