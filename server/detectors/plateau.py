"""The ``plateau`` detector: a run that stops improving early, judged on its own history.

Patience and smoothing scale with the run: a 300-step run and a 50,000-step run are judged alike.
The question is not "no new best for N steps" (every run that converges meets it) but "it was still
improving fast and then stopped": the improvement over the ``patience`` steps before the last real
improvement is compared with the level, and only a run that was still improving by more than
``rate`` of its level there is *stuck* (a ``warning``). A run whose improvement faded gradually has
converged: an ``info`` finding under the rule name ``converged`` says it could stop, once per segment.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from losswatch.server.detectors.base import (
    HANDOVERS,
    NO_DEBIAS,
    PER_POINT,
    Column,
    Detector,
    Finding,
    alpha_of,
    check_bool,
    check_choice,
    check_float,
    check_int,
    ema_path,
    num,
    per_point,
    powers,
    series_label,
)

_HIST = 32  # history checkpoints kept (thinned by half when full): window ends within ~3 % of the run
#: an LR below this share of its peak has collapsed (not a schedule's drop): its further falls give no patience
_COLLAPSED = 1e-3
#: an LR that falls below this share of the LR just before it, in one step, was cut (no schedule's drop: step
#: decay and ReduceLROnPlateau cut by 0.1–0.5)
_CUT = 0.01
#: stuck whatever its own start: a loss more than this many times the level comparable runs of the project had at
#: the same step (the reference in ``st["peers"]``, ``detectors/peers.py``; docs/alerts.md gives the corpus figures)
PEERS_FACTOR = 3.0


#: values beyond this magnitude are no level to judge (no loss is 1e290): their running sums would overflow
#: to ±Inf, which a saved state (JSON; PostgreSQL's JSONB refuses Infinity) cannot hold
_HUGE = 1e290
_EVERY = np.empty(0, dtype=np.int64)  # (a marker: every point has its own LR)


@dataclass(frozen=True)
class Plateau(Detector):
    """No improvement beyond the noise for a share of the run's own length, after fast progress.

    The smoothed value is a debiased EMA whose span grows with the run (``share_window`` of the points
    seen, at least 10, at most ``window``). An improvement must beat the reference (the last
    improvement) by more than ``min_delta``·|reference| and by ``deviations`` standard errors of the
    smoothed value. Patience is ``share`` of the steps since the segment started (at least
    ``min_patience``, at most ``patience``). When it runs out, the improvement over the same span
    before the reference decides: above ``rate``·|reference| the run stopped while still learning (a
    ``plateau`` warning), otherwise it has converged (one ``converged`` info finding).

    The learning rate (``context["lr"]``, one value or one per point) is followed: while it rises
    (warm-up) and whenever it has fallen by ``lr_drop`` (relative) since the last restart (step decay,
    ReduceLROnPlateau acting), patience restarts; an open plateau alert resolves on such a drop.

    Parameters:
        mode: ``min`` or ``max``.
        window: the longest EMA span, in points.
        share_window: EMA span as a share of the points seen.
        patience: the longest patience, in steps.
        share: patience as a share of the steps since the segment started.
        min_patience: the shortest patience, in steps.
        min_delta: relative improvement that counts (torch's threshold_mode="rel").
        deviations: standard errors of the smoothed value an improvement must also exceed.
        rate: relative improvement over the patience span before the stall that makes it "stuck".
        lr_drop: relative fall of the LR that counts as a planned drop.
        warmup: points per segment before the rule can fire.
        finite_only: skip NaN/±Inf; False counts them as points without improvement.
    """

    rule = "plateau"
    severity = "warning"
    keep = ("l0", "l0n", "peers")
    mode: str = "min"
    window: int = 200
    patience: int = 20000
    share: float = 0.25
    min_patience: int = 100
    min_delta: float = 1e-4
    deviations: float = 3.0
    rate: float = 0.02
    ratio: float = 0.1
    flat: float = 0.25
    level: float = 0.5
    lr_drop: float = 0.1
    hint: bool = False
    warmup: int = 50
    finite_only: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check_int(self, "window", 1)
        check_int(self, "patience", 1)
        check_float(self, "share", 0.0, 10.0, strict=True)
        check_int(self, "min_patience", 1)
        check_float(self, "min_delta", 0.0)
        check_float(self, "deviations", 0.0)
        check_float(self, "rate", 0.0)
        check_float(self, "ratio", 0.0)
        check_float(self, "flat", 0.0)
        check_float(self, "level", 0.0)
        check_float(self, "lr_drop", 0.0, 1.0, strict=True)
        check_int(self, "warmup", 1)
        check_bool(self, "hint")
        check_bool(self, "finite_only")

    def _fresh(self) -> dict[str, Any]:
        return {
            "n": 0, "e": 0.0, "ed": 0.0, "p": 1.0, "cum": 0.0, "ref": None, "active": False, "onset": None,
            "lr": None, "lr_ref": None, "start": None, "since": None, "hs": [], "hc": [], "hn": [], "gap": 1,
            "done": None, "lr_max": None,
        }

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        if arr is None or st["n"] < 10 or st["start"] is None or not -_HUGE < arr.min() <= arr.max() < _HUGE:
            self._loop(st, steps, values, key, context, out)
            return
        lr = context.get("lr")
        # one LR per point: as floats (None -> NaN: no LR there); the driver's Column is its array already
        lrs = (np.asarray(lr, dtype=float) if isinstance(lr, Column) else np.array(lr, dtype=float)
               ) if isinstance(lr, PER_POINT) else None
        m = len(steps)
        i = 0
        for _ in range(HANDOVERS):
            if i >= m:
                return
            # numpy up to the next point the loop must see (an LR restart, a winsorised value), then that point
            r = self._next_event(st, lrs, lr, i, m)
            if r > i:
                i += self._fast(st, steps[i:r], arr[i:r], lrs[i:r] if lrs is not None else lr, key, out)
            if i < m:
                self._loop(st, steps[i:i + 1], values[i:i + 1], key, {"lr": lr[i] if lrs is not None else lr}, out)
                i += 1
        if i < m:
            self._loop(st, steps[i:], values[i:], key, {"lr": lr[i:] if lrs is not None else lr}, out)

    def _next_event(self, st: dict[str, Any], lrs: np.ndarray | None, lr: Any, i: int, m: int) -> int:
        """The first index at or after ``i`` where the LR sets or restarts patience (rises, falls by
        ``lr_drop`` since the last restart, or is the first LR seen); ``m`` when none."""
        last_lr, lr_ref = st["lr"], st["lr_ref"]
        if lrs is None:
            if lr is None or lr - lr != 0.0:
                return m
            return i if (last_lr is not None and lr > last_lr) or lr_ref is None or (lr < lr_ref * (
                1.0 - self.lr_drop) and not lr_ref < _COLLAPSED * st["lr_max"]) else m
        seg = lrs[i:]
        # (before the batch's first LR point: the LR seen last, as the loop has it)
        before = np.nan if last_lr is None else last_lr
        total = float(np.add.reduce(seg)) if lr_ref is not None else math.nan
        if total - total == 0.0:
            # every point has a finite LR (the usual batch): the LR before each is the one before it
            prev = np.concatenate(([before], seg[:-1]))
            with np.errstate(invalid="ignore"):
                event = seg > prev
                if not lr_ref < _COLLAPSED * st["lr_max"]:  # collapsed: only a rise restarts patience
                    event |= seg < lr_ref * (1.0 - self.lr_drop)
            k = int(np.argmax(event))
            return i + k if event[k] else m
        valid = np.isfinite(seg)
        if not valid.any():
            return m
        if lr_ref is None:
            return i + int(np.argmax(valid))
        # the LR before each point: the last finite one (forward fill), NaN before any
        pos = np.where(valid, np.arange(seg.shape[0]), -1)
        np.maximum.accumulate(pos, out=pos)
        prev = np.concatenate(([before], np.where(pos >= 0, seg[pos], before)[:-1]))
        with np.errstate(invalid="ignore"):
            event = valid & ((seg > prev) | (seg < lr_ref * (1.0 - self.lr_drop)))
        if lr_ref < _COLLAPSED * st["lr_max"]:  # collapsed: only a rise restarts patience
            event = valid & (seg > prev)
        return i + int(np.argmax(event)) if event.any() else m

    def _fast(self, st: dict[str, Any], steps: Any, arr: np.ndarray, lr: Any, key: str, out: list[Finding]) -> int:
        """numpy path (all finite, steps increasing, no LR restart among these points): the accumulators
        in closed form, the verdicts at the history checkpoints. ``lr``: one LR for the points or one per
        point (NaN: none). Returns how many points it took: it stops before the first point that would be
        winsorised (the loop does that one exactly)."""
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        y = arr if sign > 0 else -arr
        m = y.shape[0]
        e0, ed0, p0 = st["e"], st["ed"], st["p"]
        pwb = powers(b, m)  # b ** [1..m] (cached); p after each point is pwb · p0
        # 1 - p before each point, the debiasing divisor: exactly 1.0 everywhere once p < 2^-54 (a run past its
        # first few thousand points), where dividing by it changes no bit: skipped
        c = None if p0 < NO_DEBIAS else 1.0 - np.concatenate(([p0], pwb[:-1] * p0))
        if 0.0 < b and m <= int(200.0 / -math.log(b)):
            # both EMAs in one closed form (ema_path's single block, the same operations in the same order)
            # over a two-row array that also holds each EMA's value before the batch (row k: [k0, k1, ..])
            ee = np.empty((2, m + 1))
            ee[0, 0], ee[1, 0] = e0, ed0
            t = ee[:, 1:]
            d = t[1]  # |y - the point before it| (the noise's EMA input)
            np.subtract(y[1:], y[:-1], out=d[1:])
            d[0] = y[0] - st["y"]
            np.abs(d, out=d)
            t[0] = y
            np.divide(t, pwb, out=t)
            np.add.accumulate(t, axis=1, out=t)
            t *= a
            t += np.array([[e0], [ed0]])
            t *= pwb
            e, ed = ee[0, 1:], ee[1, 1:]
            hi = ee[0, :-1] + 5.0 * ee[1, :-1]
        else:
            e = ema_path(e0, y, a)
            d = np.abs(y - np.concatenate(([st["y"]], y[:-1])))
            ed = ema_path(ed0, d, a)
            hi = np.concatenate(([e0], e[:-1])) + 5.0 * np.concatenate(([ed0], ed[:-1]))
        if c is not None:
            hi /= c
        over = y > hi
        k = int(np.argmax(over))
        if over[k]:  # the EMAs up to that point do not depend on it: keep them, stop there
            m = k
            if m == 0:
                return 0
            y, steps, e, ed = y[:m], steps[:m], e[:m], ed[:m]
        path = None
        if isinstance(lr, np.ndarray):
            lr = lr[:m]
            total = float(np.add.reduce(lr))
            if total - total == 0.0:  # an LR at every point (the usual batch): each point's own
                top = float(lr.max())
                if st["lr_max"] is None or top > st["lr_max"]:
                    st["lr_max"] = top
                path = _EVERY
            elif (ok := np.isfinite(lr)).any():
                top = float(lr[ok].max())
                if st["lr_max"] is None or top > st["lr_max"]:
                    st["lr_max"] = top
                pos = np.where(ok, np.arange(m), -1)
                np.maximum.accumulate(pos, out=pos)
                path = pos  # the last LR at or before each point (-1: the one before these points)
        elif lr is not None and lr - lr == 0.0:
            st["lr"] = lr
            if st["lr_max"] is None or lr > st["lr_max"]:
                st["lr_max"] = lr
        lr0 = st["lr"]
        cum = st["cum"] + np.cumsum(y)
        n0 = st["n"]
        hs, hc, hn = st["hs"], st["hc"], st["hn"]
        sa = np.asarray(steps)
        label = series_label(key)
        i = 0
        while True:
            j = i + int(np.searchsorted(sa[i:], hs[-1] + st["gap"], side="left"))
            if j >= m:
                break
            s = int(sa[j])
            hs.append(s)
            hc.append(float(cum[j]))
            hn.append(n0 + j + 1)
            if len(hs) > _HIST:
                del hs[1::2], hc[1::2], hn[1::2]
                st["gap"] *= 2
            if n0 + j + 1 > self.warmup:
                if path is _EVERY:
                    st["lr"] = float(lr[j])
                elif path is not None:
                    st["lr"] = float(lr[path[j]]) if path[j] >= 0 else lr0
                self._judge(st, s, n0 + j + 1, float(e[j]), float(ed[j]), float(pwb[j] * p0), float(cum[j]), key,
                            label, out)
            i = j + 1
        if path is _EVERY:
            st["lr"] = float(lr[-1])
        elif path is not None:
            st["lr"] = float(lr[path[-1]]) if path[-1] >= 0 else lr0
        st.update(n=n0 + m, e=float(e[-1]), ed=float(ed[-1]), p=float(pwb[m - 1] * p0), cum=float(cum[-1]),
                  y=float(y[-1]))
        return m

    def _loop(self, st, steps, values, key, context, out) -> None:  # type: ignore[no-untyped-def]
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        warmup, keep = self.warmup, 1.0 - self.lr_drop
        n, e, ed, p, cum = st["n"], st["e"], st["ed"], st["p"], st["cum"]
        ref, active = st["ref"], st["active"]
        last_lr, lr_ref, start, since = st["lr"], st["lr_ref"], st["start"], st["since"]
        hs, hc, hn, gap = st["hs"], st["hc"], st["hn"], st["gap"]
        lrs = per_point(context, "lr", len(steps))
        label = series_label(key)
        for s, v, lr in zip(steps, values, lrs, strict=True):
            if start is None:
                start = since = s
            restart = ""
            if lr is not None and lr - lr == 0.0:
                if last_lr is not None and lr > last_lr:
                    restart = "rose"
                    lr_ref = lr
                elif lr_ref is None or (lr < lr_ref * keep and not lr_ref < _COLLAPSED * st["lr_max"]):
                    if lr_ref is not None:
                        restart = f"dropped from {num(lr_ref)} to {num(lr)}"
                        if last_lr is not None and lr < _CUT * last_lr and lr < _COLLAPSED * st["lr_max"]:
                            st["cut"] = s  # cut at once to below 0.1 % of its peak: a collapse, no schedule
                    lr_ref = lr
                last_lr = lr
                if st["lr_max"] is None or lr > st["lr_max"]:
                    st["lr_max"] = lr
            if v - v != 0.0 or not -_HUGE < v < _HUGE:  # non-finite, or so huge that its sums would overflow
                if restart:
                    since = s
                continue
            y = sign * v
            if n >= 10:  # winsorise heavy-tailed batches at 5 noise scales above the level
                hi = e / (1.0 - p) + 5.0 * ed / (1.0 - p)
                if y > hi:
                    y = hi
            n += 1
            if n > 1:  # noise from successive differences: a falling trend does not inflate it
                ed = (1.0 - a) * ed + a * abs(y - st["y"])
                p *= 1.0 - a
                e = (1.0 - a) * e + a * y
            else:
                e, ed, p = a * y, 0.0, 1.0 - a
            st["y"] = y
            cum += y
            ck = not hs or s - hs[-1] >= gap
            if ck:
                hs.append(s)
                hc.append(cum)
                hn.append(n)
                if len(hs) > _HIST:
                    del hs[1::2], hc[1::2], hn[1::2]
                    gap *= 2
            if restart:
                since = s
                if active:
                    active = False
                    out.append(Finding(
                        self.rule, "resolve", s, v, sign * ref, self.severity,
                        f"{label}: the learning rate {restart} at step {s:,}; plateau alert closed",
                        key, st["onset"],
                    ))
                continue
            if n <= warmup or not ck:
                continue  # judged at the history checkpoints only (every `gap` steps: cheap, batch-invariant)
            st.update(active=active, ref=ref, since=since, start=start, lr=last_lr)
            self._judge(st, s, n, e, ed, p, cum, key, label, out)
            active, ref = st["active"], st["ref"]
        st.update(n=n, e=e, ed=ed, p=p, cum=cum, ref=ref, active=active, lr=last_lr, lr_ref=lr_ref,
                  start=start, since=since, hs=hs, hc=hc, hn=hn, gap=gap)

    def _judge(self, st: dict[str, Any], s: int, n: int, e: float, ed: float, p: float, cum: float, key: str,
               label: str, out: list[Finding]) -> None:
        """The verdict at a history checkpoint (state in ``st``; ``n``, ``e``, ``ed``, ``p``, ``cum``: the
        accumulators after the point at step ``s``)."""
        sign = 1.0 if self.mode == "min" else -1.0
        min_delta, dev, rate, ratio = self.min_delta, self.deviations, self.rate, self.ratio
        pmin, pmax, share = self.min_patience, self.patience, self.share
        hs, hc, hn = st["hs"], st["hc"], st["hn"]
        start, since, last_lr, active, ref = st["start"], st["since"], st["lr"], st["active"], st["ref"]
        # the step where the LR was cut at once below _COLLAPSED of its peak (``cut``, set by the loop: no
        # schedule does that; a chain of ReduceLROnPlateau cuts or the end of an LR burst is no such cut);
        # forgotten once the LR is back above (checked at the checkpoints, as the verdicts are: batch-invariant)
        lr_max = st["lr_max"]
        if st.get("cut") is not None and not (
                last_lr is not None and lr_max is not None and last_lr < _COLLAPSED * lr_max):
            st["cut"] = None
        span = (s - start) * share
        span = pmin if span < pmin else (pmax if span > pmax else span)
        if s - since < span or s - start < 3.0 * span:
            return
        m2, c2 = _mean(hs, hc, hn, s - span, cum, n)
        m1, c1 = _mean(hs, hc, hn, s - 2.0 * span, None, None, s - span)
        if m2 is None or m1 is None:
            return
        sigma = 0.886 * ed / (1.0 - p)  # σ ≈ √(π/2)·E|Δy|/√2 for independent batch noise
        need = max(min_delta * abs(m2), self.flat * sigma * math.sqrt(1.0 / c1 + 1.0 / c2))
        if active:
            if m2 < ref - max(need, dev * sigma * math.sqrt(1.0 / c1 + 1.0 / c2)):  # a real improvement
                active = False
                out.append(Finding(
                    self.rule, "resolve", s, sign * m2, sign * ref, self.severity,
                    f"{label} is improving again: mean {num(sign * m2)} over the last {int(span):,} steps "
                    f"beats {num(sign * ref)}", key, st["onset"],
                ))
                st["active"] = False
            return
        lo = st.get("lo")
        if lo is None or m2 < lo:
            st["lo"] = lo = m2
        noise = dev * sigma * math.sqrt(1.0 / c1 + 1.0 / c2)
        # the latest quarter span against the last span: a rise at the end (the EMA would still carry the
        # fall before the span when its window is longer than the span)
        mq, cq = _mean(hs, hc, hn, s - 0.25 * span, cum, n)
        late = mq is not None and mq - m2 >= dev * sigma * math.sqrt(1.0 / cq + 1.0 / c2)
        if m1 - m2 >= noise or m2 - m1 >= noise or late or m2 - lo >= 3.0 * noise:
            st["cand"] = None  # improving or rising beyond its noise: no stall
            return
        m0, c0 = _mean(hs, hc, hn, s - 3.0 * span, None, None, s - 2.0 * span)
        if m0 is None:
            return
        gain = (m0 - m1) / (abs(m2) or 1.0)
        need0 = dev * sigma * math.sqrt(1.0 / c0 + 1.0 / c1)
        first, cf = _mean(hs, hc, hn, start, None, None, start + span)
        if st.get("l0") is None:  # the run's starting level, kept across a resume (a new segment)
            st["l0"], st["l0n"] = _mean(hs, hc, hn, start, None, None, start + pmin)
        start_level, cf = (st["l0"], st["l0n"]) if st.get("l0") is not None else (first, cf)
        # it never learned at all: no better than its first span, judged after 10 minimal patiences
        settled = s - start >= 10.0 * pmin
        never = first is not None and settled and abs(start_level - m2) < max(
            0.5 * rate * abs(m2), 2.0 * sigma * math.sqrt(1.0 / cf + 1.0 / c2))
        # it stopped: the fall of the span before is significantly larger than the last one's
        slowed = m0 - 2.0 * m1 + m2 > dev * sigma * math.sqrt(1.0 / c0 + 4.0 / c1 + 1.0 / c2)
        at_lr = f" at lr {num(last_lr)}" if last_lr is not None else ""
        onset = int(s - 2.0 * span)
        # far above where the project's comparable runs were at this step (losses only; None without them)
        peer = _far_above(st.get("peers"), s, m2) if sign > 0 else None
        # still far above its start or its peers, or its LR collapsed (< 0.1 % of its peak: not a
        # schedule's drop)
        # with comparable runs at this step, its own start is no measure of "high": a run that sits within
        # their spread (at or below their upper quartile) is where the project's runs are, not stuck
        within = _within_peers(st.get("peers"), s, m2) if sign > 0 else False
        high = (start_level is not None and abs(m2) > self.level * abs(start_level) and not within) or (
            last_lr is not None and st["lr_max"] is not None and last_lr < _COLLAPSED * st["lr_max"]
        ) or peer is not None
        flat = m1 - m2 < need
        # its LR has stayed collapsed for a whole span and the loss did not improve beyond its noise since:
        # it cannot learn any more, whatever it reached before
        dead = st.get("cut") is not None and s - st["cut"] >= span
        stuck = (never and flat) or dead or (high and gain > rate and slowed and m1 - m2 < ratio * (m0 - m1))
        if stuck and st.get("cand") is None:
            st["cand"], st["why"] = s, [gain, never] + ([list(peer)] if peer is not None else [])
            st["cand_dead"] = st["cut"] if dead else None
        if st.get("cand") is not None:
            # the flat stretch must hold for a quarter span after the evidence (a stall persists,
            # noise in sliding windows does not)
            if s - st["cand"] < 0.25 * span:
                return
            gain, never = st["why"][:2]
            if peer is None and len(st["why"]) > 2:
                peer = tuple(st["why"][2])  # the comparable runs' evidence, when it was seen
            stuck = True
        if stuck:
            if st.get("cand_dead") is not None and not never:
                how = (f"and its learning rate has stayed below {_COLLAPSED:.1%} of its peak ({num(lr_max)}) "
                       f"since step {st['cand_dead']:,}: it cannot learn any more")
            elif never:
                gain = (first - m2) / (abs(m2) or 1.0)
                how = f"and only {gain:.0%} better than its first {int(span):,} steps: it is not learning"
            else:
                how = f"after improving {gain:.0%} in the {int(span):,} steps before that: stuck early, not converged"
            st["active"], st["ref"] = True, m2
            st["cand"] = None
            st["onset"] = onset
            details = {"lr": last_lr, "gain_before": gain}
            beside = ""
            if peer is not None:
                beside = (f"; {label} {num(sign * m2)} at step {s:,} where {peer[1]} comparable runs of this "
                          f"project were at {num(peer[0])}")
                details.update(peer_level=peer[0], peers=peer[1])
            out.append(Finding(
                self.rule, "fire", s, sign * m2, sign * m1, self.severity,
                f"{label} plateaued: its mean over steps {int(s - span):,}–{s:,} ({num(sign * m2)}) is no "
                f"better than over the {int(span):,} steps before ({num(sign * m1)}){at_lr}, {how}{beside}",
                key, onset, details,
            ))
        elif self.hint and settled and flat and m1 - m2 < 0.5 * need and m0 - m1 < need0 and (st["done"] is None or st["done"] < since):  # flat for two spans, reached gradually: a hint
            st["done"] = s
            out.append(Finding(
                "converged", "fire", s, sign * m2, sign * m1, "info",
                f"{label} has converged: its mean over steps {int(s - span):,}–{s:,} ({num(sign * m2)}) "
                f"is within its noise of the {int(span):,} steps before, after a gradual slowdown "
                f"({gain:.1%} before that){at_lr}; the run could stop",
                key, onset, {"lr": last_lr, "gain_before": gain},
            ))


def _far_above(ref: dict[str, Any] | None, step: int, level: float) -> tuple[float, int] | None:
    """(the peers' level, how many runs) when ``level`` is more than :data:`PEERS_FACTOR` times the level
    of the reference (``detectors/peers.py``) at its last step at or before ``step``, else None. The
    level only falls with the steps, so an earlier reference step is the cautious choice."""
    if not ref:
        return None
    i = bisect.bisect_right(ref["s"], step) - 1
    if i < 0:
        return None
    at, n = ref["v"][i], ref["n"][i]
    return (at, n) if at > 0.0 and level > PEERS_FACTOR * at else None


def _within_peers(ref: dict[str, Any] | None, step: int, level: float) -> bool:
    """True when the comparable runs (``detectors/peers.py``) have a level at or before ``step`` and
    ``level`` is at most their upper quartile there (a reference without one: their median)."""
    if not ref:
        return False
    i = bisect.bisect_right(ref["s"], step) - 1
    if i < 0:
        return False
    top = (ref.get("u") or ref["v"])[i]
    return level <= top


def _mean(hs: list[int], hc: list[float], hn: list[int], lo: float, cum: float | None, n: int | None,
          hi: float | None = None) -> tuple[float | None, int]:
    """Mean of the (winsorised) values between the history checkpoints at or before ``lo`` and ``hi``
    (``hi`` None: up to now, ``cum``/``n``). None when the window holds fewer than 3 points."""
    i = bisect.bisect_right(hs, lo) - 1
    if i < 0:
        i = 0
    if hi is None:
        c_hi, n_hi = cum, n
    else:
        j = bisect.bisect_right(hs, hi) - 1
        if j < 0:
            return None, 0
        c_hi, n_hi = hc[j], hn[j]
    cnt = n_hi - hn[i]  # type: ignore[operator]
    if cnt < 3:
        return None, 0
    return (c_hi - hc[i]) / cnt, cnt  # type: ignore[operator]
