"""Anchors for the detection table: the checks other tools ship, run on the same corpus curves.

Each returns the steps at which it would act (stop, reduce the LR, flag a spike). They are written
from the tools' documented behaviour, with their defaults:

- Keras ``TerminateOnNaN``: stops at the first NaN/Inf batch loss.
- Lightning ``EarlyStopping(monitor="val/loss", patience=3, min_delta=0, check_finite=True,
  divergence_threshold=<the first evaluation's value>)``: stops after 3 evaluations without a new best,
  at a non-finite value, or when the value is worse than the divergence threshold (a user's choice;
  we take "worse than at the first evaluation").
- torch ``ReduceLROnPlateau(mode="min", patience=10, threshold=1e-4, threshold_mode="rel")`` on the
  validation loss: the evaluations where it would cut the LR (its plateau test).
- Megatron's 10× rule: a training loss more than 10× the largest of the previous 1,000... losses would be
  the rerun check; we take the practical form used for spike alarms: 10× the median of the previous 128
  losses.
- OLMo: a loss above the mean + 6σ of the previous 128 losses.
- ZClip: z-score of the gradient norm against an EMA (α 0.97) of its mean and variance; z > 2.5.
  Consecutive flagged steps are one event.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np


def terminate_on_nan(steps: np.ndarray, values: np.ndarray) -> list[int]:
    bad = np.flatnonzero(~np.isfinite(values))
    return [int(steps[bad[0]])] if bad.size else []


def early_stopping(steps: np.ndarray, values: np.ndarray, patience: int = 3) -> list[int]:
    best, wait, thr = math.inf, 0, None
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            return [s]
        if thr is None:
            thr = v
        elif v > thr:
            return [s]
        if v < best:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return [s]
    return []


def reduce_lr_on_plateau(steps: np.ndarray, values: np.ndarray, patience: int = 10) -> list[int]:
    best, bad, out = math.inf, 0, []
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        if v < best * (1 - 1e-4):
            best, bad = v, 0
        else:
            bad += 1
            if bad > patience:
                out.append(s)
                bad = 0  # cooldown 0: counting starts again
    return out


def _events(flags: list[tuple[int, bool]], gap: int = 10) -> list[int]:
    out: list[int] = []
    last = None
    for s, f in flags:
        if f:
            if last is None or s - last > gap:
                out.append(s)
            last = s
    return out


def megatron_10x(steps: np.ndarray, values: np.ndarray) -> list[int]:
    win: deque[float] = deque(maxlen=128)
    flags = []
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        flags.append((s, len(win) >= 32 and v > 10.0 * float(np.median(win))))
        win.append(v)
    return _events(flags)


def olmo_6sigma(steps: np.ndarray, values: np.ndarray) -> list[int]:
    win: deque[float] = deque(maxlen=128)
    flags = []
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        if len(win) >= 32:
            a = np.fromiter(win, float)
            flags.append((s, v > a.mean() + 6.0 * a.std()))
        win.append(v)
    return _events(flags)


def zclip(steps: np.ndarray, values: np.ndarray, alpha: float = 0.97, z: float = 2.5, warmup: int = 25) -> list[int]:
    mean = var = None
    n = 0
    flags = []
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        n += 1
        if mean is None:
            mean, var = v, 0.0
            continue
        sd = math.sqrt(var) if var > 0 else 0.0
        hit = n > warmup and sd > 0 and (v - mean) / sd > z
        flags.append((s, hit))
        if not hit:  # ZClip updates its statistics with the clipped value; leaving it out is close
            mean = alpha * mean + (1 - alpha) * v
            var = alpha * var + (1 - alpha) * (v - mean) ** 2
    return _events(flags)


#: anchor -> (the series it reads, the label types it is compared with, function)
ANCHORS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "Keras TerminateOnNaN": ("train/loss", ("non_finite",), terminate_on_nan),
    "Lightning EarlyStopping (+ divergence_threshold)": ("val/loss", ("divergence", "plateau", "overfitting"),
                                                         early_stopping),
    "torch ReduceLROnPlateau (plateau test)": ("val/loss", ("plateau",), reduce_lr_on_plateau),
    "Megatron 10×": ("train/loss", ("spike",), megatron_10x),
    "OLMo mean + 6σ / 128": ("train/loss", ("spike",), olmo_6sigma),
    "ZClip z 2.5, EMA 0.97 (grad norm)": ("grad_norm", ("spike",), zclip),
}
