"""Detectors that judge the smoothed trend: ``divergence`` and ``plateau``.

Both smooth with a debiased EMA (Adam's bias correction): the EMA of the first points is not
pulled towards zero, so the smoothed value is usable from the first point on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from losswatch.server.detectors.base import (
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
    ratio_text,
    series_label,
)


@dataclass(frozen=True)
class Divergence(Detector):
    """A sustained rise of the smoothed value above its best so far.

    Fires when the smoothed value stays above ``best + rtol·|best| + atol`` for ``patience`` steps
    (``mode="min"``; mirrored for ``max``). Each raw point is clipped at best + 3× that margin before
    it enters the EMA, so one enormous outlier batch cannot carry the smoothed value over the
    threshold (sustained rises still do). Resolves when the smoothed value is back below the midpoint
    between best and threshold.

    Parameters:
        mode: ``min`` (losses) or ``max``.
        window: EMA span in points.
        rtol: relative rise over the best (1.0: twice the best).
        atol: absolute rise added to the relative one (for losses that approach 0).
        patience: steps the smoothed value must stay above the threshold.
        warmup: points per segment before the best is tracked (early training is not compared).
        finite_only: skip NaN/±Inf; False counts them as points at the clip level.
    """

    rule = "divergence"
    severity = "critical"
    mode: str = "min"
    window: int = 50
    rtol: float = 1.0
    atol: float = 0.0
    patience: int = 50
    warmup: int = 200
    finite_only: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check_int(self, "window", 1)
        check_float(self, "rtol", 0.0)
        check_float(self, "atol", 0.0)
        check_int(self, "patience", 0)
        check_int(self, "warmup", 1)
        check_bool(self, "finite_only")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("divergence: rtol and atol cannot both be 0")

    def _fresh(self) -> dict[str, Any]:
        return {
            "n": 0, "e": 0.0, "p": 1.0, "best": None, "best_step": None, "above": None,
            "active": False, "onset": None, "resolve_below": None,
        }

    def level(self, st: dict[str, Any]) -> float | None:
        """The current smoothed value (in the series' own sign), or None before the first point."""
        if st["n"] == 0:
            return None
        return (1.0 if self.mode == "min" else -1.0) * st["e"] / (1.0 - st["p"])

    def adopt(self, st: dict[str, Any], onset: int, resolve_below: float) -> None:
        """Mark an alert opened by another detector (a spike that did not recover) as this one's."""
        st.update(active=True, onset=onset, resolve_below=resolve_below, above=None)

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        if (
            arr is not None and not st["active"] and st["above"] is None and st["best"] is not None
            and st["n"] >= self.warmup and self._quiet(st, steps, arr)
        ):
            return
        self._loop(st, steps, values, key, out)

    def _quiet(self, st: dict[str, Any], steps: Any, arr: np.ndarray) -> bool:
        """numpy path: True (state updated) when no point is clipped and the smoothed value never
        goes above the threshold in this batch; False (nothing changed) otherwise."""
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        y = arr if sign > 0 else -arr
        n = y.shape[0]
        e = ema_path(st["e"], y, a)
        pw = st["p"] * b ** np.arange(1, n + 1, dtype=float)
        sm = e / (1.0 - pw)
        best = np.minimum(np.minimum.accumulate(sm), st["best"])
        margin = self.rtol * np.abs(best) + self.atol
        if (sm > best + margin).any():
            return False
        best_prev = np.concatenate(([st["best"]], best[:-1]))
        if (y > best_prev + 3.0 * (self.rtol * np.abs(best_prev) + self.atol)).any():
            return False  # a point would have been clipped: let the loop do it exactly
        if best[-1] < st["best"]:
            st["best_step"] = steps[int(np.argmin(sm))]
        st.update(n=st["n"] + n, e=float(e[-1]), p=float(pw[-1]), best=float(best[-1]))
        return True

    def _loop(self, st, steps, values, key, out) -> None:  # type: ignore[no-untyped-def]
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        rtol, atol, warmup, patience = self.rtol, self.atol, self.warmup, self.patience
        n, e, p, best, above, active = st["n"], st["e"], st["p"], st["best"], st["above"], st["active"]
        clip = math.inf if best is None else best + 3.0 * (rtol * abs(best) + atol)
        for s, v in zip(steps, values, strict=True):
            if v - v == 0.0:
                y = sign * v
                if y > clip:
                    y = clip
            elif self.finite_only or v != v or clip == math.inf:
                continue
            else:
                y = clip
            n += 1
            e = b * e + a * y
            p *= b
            sm = e / (1.0 - p)
            if active:
                if sm < st["resolve_below"]:
                    active = False
                    above = None
                    out.append(
                        Finding(
                            self.rule, "resolve", s, sign * sm, sign * st["resolve_below"], self.severity,
                            f"{series_label(key)} recovered from divergence: smoothed {num(sign * sm)} at "
                            f"step {s:,} is back below {num(sign * st['resolve_below'])}"
                            + (f" (best {num(sign * best)})" if best is not None else ""),
                            key, st["onset"],
                        )
                    )
                elif best is not None and sm < best:
                    best = sm
                    st["best_step"] = s
                continue
            if n < warmup:
                continue
            if best is None or sm < best:
                best = sm
                st["best_step"] = s
                clip = best + 3.0 * (rtol * abs(best) + atol)
            margin = rtol * abs(best) + atol
            if sm > best + margin:
                if above is None:
                    above = s
                if s - above >= patience:
                    active = True
                    st["onset"] = above
                    st["resolve_below"] = best + 0.5 * margin
                    out.append(self._fire(s, sm, best, above, st["best_step"], key, sign))
            else:
                above = None
        st.update(n=n, e=e, p=p, best=best, above=above, active=active)

    def _fire(self, s: int, sm: float, best: float, above: int, best_step: int, key: str, sign: float) -> Finding:
        value, ref = sign * sm, sign * best
        if sign > 0:
            how = f"is {ratio_text(value, ref)} its best {num(ref)} (step {best_step:,})"
        else:
            how = f"fell from its best {num(ref)} (step {best_step:,})"
        return Finding(
            self.rule, "fire", s, value, ref, self.severity,
            f"{series_label(key)} diverged: smoothed {num(value)} at step {s:,} {how} "
            f"for {s - above:,} steps",
            key, above,
        )


@dataclass(frozen=True)
class Plateau(Detector):
    """No relative improvement greater than ``min_delta`` within ``patience`` steps, aware of the LR.

    The smoothed value (debiased EMA) is compared with a reference, as EarlyStopping and
    ReduceLROnPlateau compare with their best: an improvement must beat the reference by more than
    ``min_delta``·|reference| *and* by more than ``deviations`` standard errors of the smoothed value
    (estimated from the EW mean absolute deviation), so the random wobble of a flat noisy curve is
    not taken for progress. Each improvement moves the reference and restarts patience.

    The learning rate (``context["lr"]``, one value or one per point) is followed: while it rises
    (warm-up) and whenever it has fallen by ``lr_drop`` (relative) since the last restart (a planned
    step or cosine decay, or ReduceLROnPlateau acting), patience restarts; an open plateau alert
    resolves on such a drop.

    Parameters:
        mode: ``min`` or ``max``.
        window: EMA span in points.
        patience: steps without improvement before firing.
        min_delta: relative improvement that counts (torch's threshold_mode="rel").
        deviations: standard errors of the smoothed value an improvement must also exceed.
        lr_drop: relative fall of the LR that counts as a planned drop.
        warmup: points per segment before the rule can fire.
        finite_only: skip NaN/±Inf; False counts them as points without improvement.
    """

    rule = "plateau"
    severity = "warning"
    mode: str = "min"
    window: int = 200
    patience: int = 5000
    min_delta: float = 1e-4
    deviations: float = 3.0
    lr_drop: float = 0.1
    warmup: int = 500
    finite_only: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check_int(self, "window", 1)
        check_int(self, "patience", 1)
        check_float(self, "min_delta", 0.0)
        check_float(self, "deviations", 0.0)
        check_float(self, "lr_drop", 0.0, 1.0, strict=True)
        check_int(self, "warmup", 1)
        check_bool(self, "finite_only")

    def _fresh(self) -> dict[str, Any]:
        return {
            "n": 0, "e": 0.0, "ed": 0.0, "p": 1.0, "ref": None, "ref_step": None, "active": False,
            "onset": None, "lr": None, "lr_ref": None,
        }

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        lr = context.get("lr")
        if (
            arr is not None and st["n"] >= self.warmup and st["ref"] is not None
            and not isinstance(lr, (list, tuple))
        ):
            restart, lr_ref = self._lr_change(st, lr)
            if self._quiet(st, steps, arr, restart):
                if lr is not None and lr - lr == 0.0:
                    st["lr"], st["lr_ref"] = lr, lr_ref
                return
        self._loop(st, steps, values, key, context, out)

    def _lr_change(self, st: dict[str, Any], lr: Any) -> tuple[bool, Any]:
        """What one LR value for the whole batch does at its first point, as in :meth:`_loop`:
        a rise (warm-up) or a drop beyond ``lr_drop`` since the reference restarts patience and
        becomes the new reference; a smaller move (cosine, linear decay) only updates the last LR."""
        last, ref = st["lr"], st["lr_ref"]
        if lr is None or lr - lr != 0.0:
            return False, ref
        if last is not None and lr > last:
            return True, lr
        if ref is None:
            return False, lr
        if lr < ref * (1.0 - self.lr_drop):
            return True, lr
        return False, ref

    def _quiet(self, st: dict[str, Any], steps: Any, arr: np.ndarray, restart: bool = False) -> bool:
        """numpy path: the EMAs in closed form, and improvements
        looked for at every k-th point (and the last) — a best found up to k-1 points late is
        immaterial against a patience of thousands of steps, and a steadily falling loss then costs
        n/k Python steps, not n. True (state updated) when nothing happens in this batch: patience
        does not run out, or, with the alert open, nothing improves. False (nothing changed: the
        per-point loop takes over, fires or resolves) otherwise. A restart with the alert open goes
        to the loop too (it resolves the alert)."""
        active = st["active"]
        if active and restart:
            return False
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        y = arr if sign > 0 else -arr
        n = y.shape[0]
        e = ema_path(st["e"], y, a)
        pw = st["p"] * b ** np.arange(1, n + 1, dtype=float)
        c = 1.0 - pw
        sm = e / c
        ed = ema_path(st["ed"], np.abs(y - sm), a)
        noise = (self.deviations * 1.25 * math.sqrt(a / (2.0 - a))) * ed / c
        ref, ref_step = st["ref"], st["ref_step"]
        if restart:  # the LR restarted patience at the first point: it is the new reference
            ref, ref_step = float(sm[0]), steps[0]
        k = max(1, min(16, self.patience // 200))
        idx = np.arange(k - 1, n, k) if k > 1 else np.arange(n)
        if idx.shape[0] == 0 or idx[-1] != n - 1:
            idx = np.append(idx, n - 1)
        min_delta, patience = self.min_delta, self.patience
        for v, nz, s in zip(sm[idx].tolist(), noise[idx].tolist(), np.asarray(steps)[idx].tolist(), strict=True):
            if v < ref - max(min_delta * abs(ref), nz):
                if active or s - ref_step >= patience:
                    return False  # an improvement resolves the alert, or patience ran out first: the loop
                ref, ref_step = v, s
        if not active and steps[-1] - ref_step >= patience:
            return False
        st.update(n=st["n"] + n, e=float(e[-1]), ed=float(ed[-1]), p=float(pw[-1]), ref=ref, ref_step=ref_step)
        return True

    def _loop(self, st, steps, values, key, context, out) -> None:  # type: ignore[no-untyped-def]
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        se_factor = self.deviations * 1.25 * math.sqrt(a / (2.0 - a))  # σ ≈ 1.25·MAD; σ_EMA = σ·√(a/(2-a))
        min_delta, patience, warmup, keep = self.min_delta, self.patience, self.warmup, 1.0 - self.lr_drop
        n, e, ed, p = st["n"], st["e"], st["ed"], st["p"]
        ref, ref_step, active = st["ref"], st["ref_step"], st["active"]
        last_lr, lr_ref = st["lr"], st["lr_ref"]
        lrs = per_point(context, "lr", len(steps))
        label = series_label(key)
        for s, v, lr in zip(steps, values, lrs, strict=True):
            restart = ""
            if lr is not None and lr - lr == 0.0:
                if last_lr is not None and lr > last_lr:
                    restart = "rising"
                    lr_ref = lr
                elif lr_ref is None or lr < lr_ref * keep:
                    if lr_ref is not None:
                        restart = f"dropped from {num(lr_ref)} to {num(lr)}"
                    lr_ref = lr
                last_lr = lr
            if v - v == 0.0:
                y = sign * v
                n += 1
                e = b * e + a * y
                p *= b
                sm = e / (1.0 - p)
                ed = b * ed + a * abs(y - sm)
            elif self.finite_only or n == 0:
                if restart:
                    ref_step = s
                continue
            else:
                sm = e / (1.0 - p)
            if restart or n <= warmup:
                if active and restart:
                    active = False
                    out.append(
                        Finding(
                            self.rule, "resolve", s, sign * sm, sign * ref, self.severity,
                            f"{label}: the learning rate {restart} at step {s:,}; plateau alert closed",
                            key, st["onset"],
                        )
                    )
                ref, ref_step = sm, s
                continue
            need = max(min_delta * abs(ref), se_factor * ed / (1.0 - p))
            if sm < ref - need:
                if active:
                    active = False
                    out.append(
                        Finding(
                            self.rule, "resolve", s, sign * sm, sign * ref, self.severity,
                            f"{label} is improving again: smoothed {num(sign * sm)} at step {s:,} beats "
                            f"{num(sign * ref)} (step {ref_step:,})",
                            key, st["onset"],
                        )
                    )
                ref, ref_step = sm, s
            elif not active and s - ref_step >= patience:
                active = True
                st["onset"] = ref_step
                at_lr = f" at lr {num(last_lr)}" if last_lr is not None else ""
                out.append(
                    Finding(
                        self.rule, "fire", s, sign * sm, sign * ref, self.severity,
                        f"{label} plateaued: smoothed {num(sign * sm)} at step {s:,} has not improved by "
                        f"more than {need / abs(ref) if ref else need:.2%} on {num(sign * ref)} "
                        f"(step {ref_step:,}) for {s - ref_step:,} steps{at_lr}",
                        key, ref_step, {"lr": last_lr},
                    )
                )
        st.update(n=n, e=e, ed=ed, p=p, ref=ref, ref_step=ref_step, active=active, lr=last_lr, lr_ref=lr_ref)
