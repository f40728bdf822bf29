"""Detectors that judge one series against another: ``overfitting`` and ``misalignment``.

Both run on the evaluation series (a validation loss, a metric) and take the level of the paired
training loss at that step from the context (``context["train_loss"]`` for overfitting,
``context["loss"]`` for misalignment; one value or one per point; the driver fills them from the
smoothed level of the paired series). Points without the paired level are skipped.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from losswatch.server.detectors.base import (
    HANDOVERS,
    Detector,
    Finding,
    check_choice,
    check_float,
    check_int,
    num,
    per_point,
    series_label,
)

#: second differences the evaluation noise is the median of (the last evaluations: a curve's bends are outliers)
_NOISE_EVALS = 5


@dataclass(frozen=True)
class Overfitting(Detector):
    """The training loss keeps falling while the validation loss rises, for ``patience`` evaluations.

    An evaluation counts when the validation loss is worse than its best by more than a margin (the
    largest of ``min_delta``·|best|, ``deviations`` noise scales of the evaluations themselves and
    ``giveback`` of the fall from the first evaluation to the best) while the (smoothed) training loss
    fell since the previous evaluation and is below its level at the best by more than ``min_delta`` of
    that level; one beyond ``strong`` margins
    counts twice. An evaluation at the
    same training level as the previous one (no training points in between) neither counts nor breaks
    the streak. Fires when the streak reaches ``patience`` if the validation loss also rose over it.
    Resolves at a new best validation loss.

    Parameters:
        patience: consecutive counting evaluations (EarlyStopping's patience).
        min_delta: relative margin over the best validation loss (and under the training loss at the best).
        deviations: noise scales (from second differences of the evaluations before) in the margin.
        giveback: share of the validation loss's fall so far that a rise must give back.
        strong: margins beyond which an evaluation counts twice.
        warmup: evaluations per segment before the rule can fire.
    """

    rule = "overfitting"
    severity = "warning"
    keep = ("first_val",)  # the run's first evaluation, kept across a resume
    patience: int = 3
    min_delta: float = 0.02
    deviations: float = 1.3
    giveback: float = 0.03
    strong: float = 3.0
    warmup: int = 2

    def __post_init__(self) -> None:
        check_int(self, "patience", 1)
        check_float(self, "giveback", 0.0)
        check_float(self, "strong", 1.0)
        check_float(self, "min_delta", 0.0)
        check_float(self, "deviations", 0.0)
        check_int(self, "warmup", 0)

    def _fresh(self) -> dict[str, Any]:
        return {
            "n": 0, "best": None, "best_step": None, "train_at_best": None, "prev_train": None,
            "prev_val": None, "streak": 0, "before": None, "first": None, "active": False, "onset": None,
        }

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        trains = per_point(context, "train_loss", len(steps))
        train_key = context.get("train_key") or "the training loss"
        for s, v, tr in zip(steps, values, trains, strict=True):
            if v - v != 0.0 or tr is None or tr - tr != 0.0:
                continue
            st["n"] += 1
            if st.get("first_val") is None:
                st["first_val"] = v
            # evaluation noise σ from second differences (a trend does not inflate them): for independent
            # noise, v − 2v' + v'' is N(0, 6σ²), whose absolute value has median 0.674·√6·σ ≈ 1.65σ. The median
            # of the last `_NOISE_EVALS` (a bend of the curve is one outlier, not the scale), from the
            # evaluations before the one judged (its own rise is not noise yet), and none from a rise under
            # suspicion (a streak): the overfitting cannot raise its own bar
            pv, pp = st["prev_val"], st.get("prev2")
            self._judge(st, s, v, tr, key, train_key, out)
            if pv is not None and pp is not None and not st["streak"]:
                d2s = st.setdefault("d2", [])
                d2s.append(abs(v - 2.0 * pv + pp) / 1.65)
                if len(d2s) > _NOISE_EVALS:
                    del d2s[0]
                st["noise"] = sorted(d2s)[(len(d2s) - 1) // 2]
            st["prev2"] = pv
            st["prev_val"] = v

    def _judge(self, st: dict[str, Any], s: int, v: float, tr: float, key: str, train_key: str,
               out: list[Finding]) -> None:
        best, prev_train = st["best"], st["prev_train"]
        st["prev_train"] = tr
        if best is None or v < best:
            st.update(best=v, best_step=s, train_at_best=tr, streak=0)
            if st["active"]:
                st["active"] = False
                out.append(
                    Finding(
                        self.rule, "resolve", s, v, best, self.severity,
                        f"{series_label(key)} reached a new best {num(v)} at step {s:,}: no longer overfitting",
                        key, st["onset"],
                    )
                )
            return
        if tr == prev_train:
            # the training level has not moved since the previous evaluation (no training points in
            # between): no news about the training loss, so the streak stands still
            return
        # the rise must be beyond the evaluations' own noise, `min_delta` of the best, and a share
        # `giveback` of what the validation loss had gained since its first evaluation (a val loss at
        # 0.027 creeping to 0.029 after falling from 2.0 is not worth a warning)
        # (no noise estimate yet, before the fourth evaluation: nothing is beyond a noise not yet known)
        noise = st.get("noise")
        scatter = 0.0 if not self.deviations else math.inf if noise is None else self.deviations * noise
        margin = max(self.min_delta * abs(best), scatter,
                     self.giveback * (st["first_val"] - best))
        # the training loss must be below its level at the best by `min_delta` of it, as the validation loss
        # must be above its best: after a blow-up the validation loss rises and the training loss falls back
        # to about where it was (a warm-up blow-up: 0.537 → 0.883 → 0.531), which is not overfitting
        tb = st["train_at_best"]
        if v > best + margin and prev_train is not None and tr < prev_train and tr < tb - self.min_delta * abs(tb):
            if st["streak"] == 0:
                st["before"] = st["prev_val"]
                st["first"] = s
            # a rise far beyond the margin is stronger evidence: it counts twice
            st["streak"] += 2 if v > best + self.strong * margin else 1
        else:
            st["streak"] = 0
        if not st["active"] and st["streak"] >= self.patience and st["n"] > self.warmup and v > st["before"]:
            st["active"] = True
            st["onset"] = st["first"]
            out.append(
                Finding(
                    self.rule, "fire", s, v, best, self.severity,
                    f"{series_label(key)} is overfitting: it rose to {num(v)} at step {s:,} (best "
                    f"{num(best)} at step {st['best_step']:,}) while {train_key} fell from "
                    f"{num(st['train_at_best'])} to {num(tr)}",
                    key, st["first"], {"train_loss": tr},
                )
            )


def _learn_noise(st: dict[str, Any], v: float) -> None:
    """The metric's evaluation noise from second differences of its closed evaluations (a trend does not
    inflate them; for independent noise σ, |v − 2v' + v''| has mean ≈ 1.95σ), an EWMA in ``st``."""
    fin = st.setdefault("mfin", [])
    fin.append(v)
    if len(fin) > 3:
        del fin[0]
    if len(fin) == 3:
        d2 = abs(fin[2] - 2.0 * fin[1] + fin[0]) / 1.95
        st["mnoise"] = d2 if st.get("mnoise") is None else 0.7 * st["mnoise"] + 0.3 * d2


def _noise_trace(st: dict[str, Any], xs: list[float]) -> list[float | None]:
    """The metric's noise (``st["mnoise"]``) after each of ``xs`` were learned in turn by :func:`_learn_noise`,
    without changing ``st``: the same arithmetic, so the same bits (:func:`_learnt` stores the outcome)."""
    fin = (st.get("mfin") or [])[-2:]
    mn = st.get("mnoise")
    out: list[float | None] = []
    for x in xs:
        if len(fin) == 2:
            d2 = abs(x - 2.0 * fin[1] + fin[0]) / 1.95
            mn = d2 if mn is None else 0.7 * mn + 0.3 * d2
            fin = [fin[1], x]
        else:
            fin.append(x)
        out.append(mn)
    return out


def _learnt(st: dict[str, Any], xs: list[float], trace: list[float | None]) -> None:
    """The state :func:`_learn_noise` leaves after learning ``xs`` in turn (``trace``: :func:`_noise_trace`'s)."""
    if xs:
        st["mfin"] = (st.get("mfin", []) + xs[-3:])[-3:]
        if trace[len(xs) - 1] is not None:
            st["mnoise"] = trace[len(xs) - 1]


def _leave(st: dict[str, Any], losses: list[float], w: int) -> None:
    """Keep the last ``w`` losses that left the window (the evaluations before it)."""
    st["before"] = (st.get("before") or [])[-w:] + losses[-w:]
    del st["before"][:-w]


def _worst(ls: list[float], lsign: float, jump: float) -> int:
    """Where the window is judged from: the loss's largest jump above its best before it, when one rose by
    more than ``jump`` (relative; the first of equals, as numpy's argmax), else its worst point (the first on
    a falling loss). A jump counts even when the window starts higher (the run's first evaluations)."""
    k, kr = 0, -math.inf
    best = lsign * ls[0]
    for i in range(1, len(ls)):
        y = lsign * ls[i]
        r = (y - best) / (abs(best) or 1.0)
        if r > kr:
            k, kr = i, r
        if y < best:
            best = y
    if kr > jump:
        return k
    k = 0
    for i in range(1, len(ls)):
        if lsign * ls[i] > lsign * ls[k]:
            k = i
    return k


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    n = len(x)
    mx = my = (n + 1) / 2.0
    sxy = sxx = syy = 0.0
    for a, b in zip(rx, ry, strict=True):
        da, db = a - mx, b - my
        sxy += da * db
        sxx += da * da
        syy += db * db
    if sxx == 0.0 or syy == 0.0:
        return 0.0
    return sxy / (sxx * syy) ** 0.5


def _ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=v.__getitem__)
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        r = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = r
        i = j + 1
    return ranks


@dataclass(frozen=True)
class Misalignment(Detector):
    """The loss keeps improving while the evaluation metric it should drive does not.

    Over the last ``window`` evaluations, from the loss's worst point among them on (the first on a
    falling loss; after a jump of the loss that is being learned again, the jump), the rank correlation
    between the loss's improvement and the metric's improvement (directions from ``loss_mode`` and
    ``mode``) is computed. An evaluation is misaligned when the correlation is below ``threshold``, the
    loss improved by more than ``min_delta`` (relative) and the metric's best beats its first value by
    no more than ``metric_delta`` (relative) nor by more than ``deviations`` noise scales of its own
    evaluations; judged from a jump, the metric must also have lost more than both since before the
    jump. A loss still no better than at the run's first evaluation (coming back from a blow-up) is never
    misaligned. Fires after ``patience`` misaligned evaluations in a row (one judged from a jump counts
    twice). Resolves when the correlation is back above ``threshold + 0.4`` and the metric improves by more
    than ``metric_delta`` over the window, or when the loss stops improving.
    Consecutive points with the same loss level (the server passes one level per ingest batch, so a
    metric logged every step has many) are one evaluation: the latest metric value wins.
    State: the last ``window`` (loss, metric) pairs.

    Parameters:
        mode: direction of the metric: ``max`` (accuracy, mAP) or ``min`` (error rates, WER).
        loss_mode: direction of the loss: ``min``.
        window: evaluations in the correlation.
        threshold: rank correlation below which the pair is misaligned.
        min_delta: relative loss improvement over the window that counts as "improving".
        metric_delta: relative improvement of the metric over the window that counts as following.
        patience: misaligned evaluations in a row before firing.
        ceiling: a metric on [0, 1] within this of its bound has no room to follow.
        deviations: noise scales of the metric's evaluations (from second differences) a change must pass.
        spacing: metric points closer than this to an evaluation's first point are that evaluation.
    """

    rule = "misalignment"
    severity = "warning"
    keep = ("first_loss",)  # the loss at the run's first evaluation, kept across a resume
    mode: str = "max"
    loss_mode: str = "min"
    window: int = 6
    threshold: float = 0.3
    min_delta: float = 0.1
    metric_delta: float = 0.02
    patience: int = 2
    ceiling: float = 0.05
    deviations: float = 3.0
    spacing: int = 10

    def __post_init__(self) -> None:
        check_float(self, "ceiling", 0.0, 1.0)
        check_int(self, "spacing", 1)
        check_float(self, "deviations", 0.0)
        check_choice(self, "mode", ("min", "max"))
        check_choice(self, "loss_mode", ("min", "max"))
        check_int(self, "window", 3)
        check_float(self, "threshold", -1.0, 1.0)
        check_float(self, "min_delta", 0.0)
        check_float(self, "metric_delta", 0.0)
        check_int(self, "patience", 1)

    def _fresh(self) -> dict[str, Any]:
        return {"loss": [], "metric": [], "steps": [], "active": False, "onset": None}

    def _quiet(self, st: dict[str, Any], steps: Any, values: Any, losses: Any, L: np.ndarray, arr: np.ndarray,
               firsts: list[int], lo: int) -> int:
        """numpy path for a metric logged at many points (no alert open, all values finite) from point ``lo``
        on: each evaluation's window judged at its first point (``firsts``) as the loop does, in arrays, up to
        the first evaluation whose pre-checks all hold (the loop's conditions for the rank correlation, the
        metric's noise traced as the loop learns it: only those can be misaligned). Returns how many
        of ``firsts`` it took (all: the points up to the end are done; else the state stands just before the
        candidate's first point, for the loop)."""
        n = len(steps)
        w = self.window
        lsign = 1.0 if self.loss_mode == "min" else -1.0
        msign = 1.0 if self.mode == "max" else -1.0
        ls, ms, ss = list(st["loss"]), list(st["metric"]), list(st["steps"])
        f0 = firsts[0] if firsts else n
        if f0 > lo:  # the points before the first new evaluation close the open one: the last wins
            ls[-1], ms[-1], ss[-1] = losses[f0 - 1], values[f0 - 1], steps[f0 - 1]
        ends = [f - 1 for f in firsts[1:]] + [n - 1] if firsts else []
        S, G = len(ls), len(firsts)
        closed = [ms[-1]] + [values[e] for e in ends[:G - 1]]  # the evaluations closed before each is judged
        trace = _noise_trace(st, closed)
        g1 = max(0, w - 1 - S)  # the first new evaluation with a full window
        stop = G
        if g1 < G:
            fin_l = np.concatenate((np.asarray(ls, dtype=float), L[ends]))
            fin_m = np.concatenate((np.asarray(ms, dtype=float), arr[ends]))
            gs = np.arange(g1, G)
            rows = (S + gs - (w - 1))[:, None] + np.arange(w - 1)
            fa = np.asarray(firsts)[gs]
            wl = np.concatenate((fin_l[rows], L[fa][:, None]), axis=1)
            wm = np.concatenate((fin_m[rows], arr[fa][:, None]), axis=1)
            # the same quantities as the loop's, from each window's worst loss on (see _judge)
            sl = lsign * wl
            pb = np.minimum.accumulate(sl, axis=1)[:, :-1]  # the best before each point (from the second)
            jr = (sl[:, 1:] - pb) / np.where(pb == 0.0, 1.0, np.abs(pb))
            jk = np.argmax(jr, axis=1)
            k = np.where(jr[np.arange(jr.shape[0]), jk] > self.min_delta, jk + 1, np.argmax(sl, axis=1))
            r = np.arange(wl.shape[0])
            l0, m0 = wl[r, k], wm[r, k]
            since = np.arange(w)[None, :] >= k[:, None]
            hi, lo_m = np.where(since, wm, -np.inf).max(axis=1), np.where(since, wm, np.inf).min(axis=1)
            # judged from a jump: the metric's best *after* it (the evaluation at the loss's worst point may
            # predate the metric's fall)
            after = since & ~((np.arange(w)[None, :] == k[:, None]) & ((k > 0) & (k < w - 1))[:, None])
            top = np.where(after, wm, -np.inf).max(axis=1) if msign > 0 else np.where(after, wm, np.inf).min(axis=1)
            pre = (np.where(since, -np.inf, wm).max(axis=1) if msign > 0 else np.where(since, np.inf, wm).min(axis=1))
            den = np.where(m0 == 0.0, 1.0, np.abs(m0))
            den = np.where((k > 0) & (np.abs(pre) > den), np.abs(pre), den)
            # the metric's noise when each evaluation is judged: the evaluations closed before it learned
            mnoise = np.array([x or math.inf for x in trace[g1:]])
            up = msign * (top - m0)
            rise = np.where(up > self.deviations * mnoise, np.inf, up / den)
            near = ((1.0 - top <= self.ceiling) & (hi <= 1.0)) if msign > 0 else ((0.0 <= lo_m) & (top <= self.ceiling))
            with np.errstate(invalid="ignore"):
                gone = np.maximum(self.metric_delta * np.where(pre == 0.0, 1.0, np.abs(pre)),
                                  self.deviations * np.where(np.isinf(mnoise), 0.0, mnoise))
                lost = (k == 0) | (msign * (pre - top) > gone)
            # the loss's gain counted from the best of the `window` losses before the window when that is better
            # (a spike that recovered), and a loss no better than at the run's first evaluation (see _judge)
            pad = np.full(w, lsign * np.inf)
            ext = np.concatenate((pad, np.asarray(st.get("before") or [], dtype=float), fin_l))
            prev = ext[(len(ext) - len(fin_l) - w + S + gs - (w - 1))[:, None] + np.arange(w)]
            lb = prev.min(axis=1) if lsign > 0 else prev.max(axis=1)
            ref = np.where((k > 0) | (lsign * l0 < lsign * lb), l0, lb)
            new_gain = lsign * (ref - wl[:, -1]) / np.where(l0 == 0.0, 1.0, np.abs(l0))
            fl = st.get("first_loss")
            learnt = np.ones(len(gs), dtype=bool) if fl is None else lsign * wl[:, -1] < lsign * fl
            # exactly the loop's conditions for computing the rank correlation: the others are not misaligned
            cand = (new_gain > self.min_delta) & (rise <= self.metric_delta) & ~near & lost & learnt
            if cand.any():  # the loop judges it (rank correlation, streak)
                stop = g1 + int(np.argmax(cand))
            if stop > g1:
                st["streak"] = 0  # judged, not misaligned
        if stop:
            # the evaluations this path closed, in order, for the metric's noise (as the loop learns it)
            _learnt(st, closed[:stop], trace)
            full = ls + [losses[k] for k in ends[:stop]]
            if len(full) > w:  # the losses that leave the window
                _leave(st, full[:-w], w)
            ls = full[-w:]
            ms += [values[k] for k in ends[:stop][-w:]]
            ss += [steps[k] for k in ends[:stop][-w:]]
            st["g0"] = steps[firsts[stop - 1]]
        st.update(loss=ls[-w:], metric=ms[-w:], steps=ss[-w:])
        return stop

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        n = len(steps)
        losses = per_point(context, "loss", n)
        loss_key = context.get("loss_key") or "the loss"
        gap = self.spacing
        if arr is not None and n > 2 * gap and st["steps"] and None not in losses:
            # many points (a metric logged every step): only each evaluation's first point is judged and
            # its last one kept, so visit those (numpy finds them); the others cannot change anything
            firsts: list[int] = []
            g0 = st.get("g0", st["steps"][-1])
            i = bisect.bisect_left(steps, g0 + gap)  # steps increase: a binary search per evaluation
            while i < n:  # the first point of the next evaluation; the one before closed the last
                firsts.append(i)
                g0 = steps[i]
                i = bisect.bisect_left(steps, g0 + gap, i + 1)
            L = np.asarray(losses, dtype=float)
            lo = 0
            if np.isfinite(L).all():
                for _ in range(HANDOVERS):
                    if st["active"]:
                        break
                    firsts = firsts[self._quiet(st, steps, values, losses, L, arr, firsts, lo):]
                    if not firsts:
                        return
                    f = firsts.pop(0)  # a candidate: its evaluation (first and last point) through the loop
                    end = firsts[0] - 1 if firsts else n - 1
                    self._judge(st, [steps[f], steps[end]], [values[f], values[end]], [losses[f], losses[end]],
                                key, loss_key, out)
                    lo = end + 1
                    if not firsts:
                        return
            keep: list[int] = []
            for i in firsts:
                if i - 1 >= lo and (not keep or keep[-1] != i - 1):
                    keep.append(i - 1)
                keep.append(i)
            if not keep or keep[-1] != n - 1:
                keep.append(n - 1)
            steps = [steps[k] for k in keep]
            values = [values[k] for k in keep]
            losses = [losses[k] for k in keep]
        self._judge(st, steps, values, losses, key, loss_key, out)

    def _judge(self, st: dict[str, Any], steps: Any, values: Any, losses: Any, key: str, loss_key: str,
               out: list[Finding]) -> None:
        """The evaluations' verdicts, point by point."""
        ls, ms, ss = st["loss"], st["metric"], st["steps"]
        w = self.window
        lsign = 1.0 if self.loss_mode == "min" else -1.0
        msign = 1.0 if self.mode == "max" else -1.0
        gap = self.spacing
        for s, v, lv in zip(steps, values, losses, strict=True):
            if v - v != 0.0 or lv is None or lv - lv != 0.0:
                continue
            if ss and s - st.get("g0", ss[-1]) < gap:
                # within `spacing` steps of the evaluation's first point (a metric logged every step):
                # the same evaluation, the latest value wins; judged at its first point
                ls[-1], ms[-1], ss[-1] = lv, v, s
                continue
            st["g0"] = s
            if st.get("first_loss") is None:
                # the first evaluation's loss (a state saved before this entry existed: the worst it still holds)
                known = ls + (st.get("before") or []) + [lv]
                st["first_loss"] = max(known) if lsign > 0 else min(known)
            if ms:
                _learn_noise(st, ms[-1])  # the previous evaluation is final now
            ls.append(lv)
            ms.append(v)
            ss.append(s)
            if len(ls) > w:
                _leave(st, [ls[0]], w)  # the evaluations before the window
                del ls[0], ms[0], ss[0]
            if len(ls) < w:
                continue
            # judged from the loss's worst point in the window on (the window's start on a falling loss):
            # after a jump (a label-mapping bug makes the loss jump, then it is learned again) the loss
            # improves from its peak while the metric stays where the jump left it
            k = _worst(ls, lsign, self.min_delta)
            lw, mw = ls[k:], ms[k:]
            gain = lsign * (lw[0] - lw[-1]) / (abs(lw[0]) or 1.0)
            # on a loss that only comes back to where it was in the `window` evaluations before the window
            # (a spike that recovered, the metric never having moved) there is nothing for the metric to follow
            pl = st.get("before")
            lb = None if not pl else (min(pl) if lsign > 0 else max(pl))
            ref = lw[0] if k > 0 or lb is None or lsign * lw[0] < lsign * lb else lb
            new_gain = lsign * (ref - lw[-1]) / (abs(lw[0]) or 1.0)
            # judged from a jump, the metric's best after it: the evaluation at the loss's worst point may
            # predate the metric's fall (a 0.70 accuracy there would hide 0.41, 0.31, 0.27 after it)
            after = mw[1:] if k > 0 and len(mw) > 1 else mw
            top = max(after) if msign > 0 else min(after)
            # following: an improvement beyond `metric_delta` or beyond its own noise (a big validation
            # set's r² rising 0.878 → 0.891 follows the loss, slowly)
            pre = (max(ms[:k]) if msign > 0 else min(ms[:k])) if k > 0 else None
            # relative to where the metric stood, before the jump when judged from one (an accuracy that fell
            # from 0.47 to 0.044 and wobbles to 0.046 has not risen 4%)
            scale = abs(mw[0]) or 1.0
            if pre is not None and abs(pre) > scale:
                scale = abs(pre)
            rise = msign * (top - mw[0]) / scale
            if msign * (top - mw[0]) > self.deviations * (st.get("mnoise") or math.inf):
                rise = math.inf
            # a metric on [0, 1] within `ceiling` of its bound (accuracy 0.97, r² 0.99) has no room to follow
            near_bound = (1.0 - top <= self.ceiling and max(mw) <= 1.0) if msign > 0 else (
                0.0 <= min(mw) and top <= self.ceiling)
            if pre is not None:  # the metric must also have lost ground since before the peak (beyond its own
                # noise), and not regained it
                near_bound = near_bound or msign * (pre - top) <= max(
                    self.metric_delta * (abs(pre) or 1.0), self.deviations * (st.get("mnoise") or 0.0))
            # a loss still worse than at the run's first evaluation (coming back from a blow-up: a divergence,
            # an exploding gradient) has learned nothing yet that the metric could show
            fl = st.get("first_loss")
            unlearnt = fl is not None and lsign * lw[-1] >= lsign * fl
            rho = 1.0
            if (new_gain > self.min_delta and rise <= self.metric_delta and not near_bound and not unlearnt) \
                    or st["active"]:
                rho = spearman([-lsign * x for x in lw], [msign * x for x in mw])
            bad = (new_gain > self.min_delta and rho < self.threshold and rise <= self.metric_delta and not near_bound
                   and not unlearnt)
            # a metric that lost ground at a jump of the loss and stayed there while the loss recovered is
            # stronger evidence than a slow drift: it counts twice
            streak = st.get("streak", 0) + (2 if k > 0 else 1) if bad else 0
            if bad and not st.get("streak"):
                st["first"] = ss[k]
            st["streak"] = streak
            if not st["active"] and bad and streak >= self.patience:
                st["active"] = True
                st["onset"] = st["first"]
                out.append(
                    Finding(
                        self.rule, "fire", s, v, ms[0], self.severity,
                        f"{series_label(key)} is not following {loss_key}: over the last {w - k} evaluations "
                        f"(steps {ss[k]:,}–{s:,}) {loss_key} improved {gain:.0%} ({num(lw[0])} → "
                        f"{num(lw[-1])}) while {series_label(key)} went {num(mw[0])} → {num(v)} "
                        f"(best {num(max(ms) if msign > 0 else min(ms))}; rank correlation {rho:+.2f} < "
                        f"{self.threshold:+.2f})",
                        key, st["first"], {"rho": rho, "loss_gain": gain, "evaluations": streak},
                    )
                )
            elif st["active"] and ((rho >= self.threshold + 0.4 and rise > self.metric_delta) or gain <= 0.0):
                st["active"] = False
                why = f"rank correlation {rho:+.2f}" if gain > 0.0 else f"{loss_key} no longer improving"
                out.append(
                    Finding(
                        self.rule, "resolve", s, v, ms[0], self.severity,
                        f"{series_label(key)} follows {loss_key} again at step {s:,} ({why})",
                        key, st["onset"], {"rho": rho},
                    )
                )
