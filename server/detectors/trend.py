"""The detector that judges the smoothed trend: ``divergence`` (``plateau`` is in plateau.py).

Both smooth with a debiased EMA (Adam's bias correction): the EMA of the first points is not
pulled towards zero, so the smoothed value is usable from the first point on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from losswatch.server.detectors.base import (
    HANDOVERS,
    NO_DEBIAS,
    Detector,
    Finding,
    alpha_of,
    check_bool,
    check_choice,
    check_float,
    check_int,
    ema_path,
    num,
    powers,
    ratio_text,
    series_label,
)

_SETTLE = 10  # points of EMA before the best is tracked
#: raw points in a row beyond 3 margins above the best, then a NaN/Inf: a blow-up (one is a spike's business)
_RUNUP = 2


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
    keep = ("l0",)
    mode: str = "min"
    window: int = 50
    rtol: float = 0.5
    atol: float = 0.0
    floor: float = 0.05
    patience: int = 50
    warmup: int = 50
    finite_only: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check_int(self, "window", 1)
        check_float(self, "rtol", 0.0)
        check_float(self, "atol", 0.0)
        check_float(self, "floor", 0.0)
        check_int(self, "patience", 0)
        check_int(self, "warmup", 1)
        check_bool(self, "finite_only")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("divergence: rtol and atol cannot both be 0")

    def _fresh(self) -> dict[str, Any]:
        return {
            "n": 0, "e": 0.0, "p": 1.0, "best": None, "best_step": None, "above": None,
            "active": False, "onset": None, "resolve_below": None, "up": 0, "up_at": None,
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
        m = len(steps)
        i = 0
        for _ in range(HANDOVERS if arr is not None else 0):
            if i >= m or st["active"] or st["above"] is not None or st["best"] is None or st["n"] < self.warmup:
                break
            i += self._quiet(st, steps[i:], arr[i:])
            if i < m:  # the point the loop must see (a clipped value, a rise above the threshold)
                self._loop(st, steps[i:i + 1], values[i:i + 1], key, out)
                i += 1
        if i < m:
            self._loop(st, steps[i:], values[i:], key, out)

    def _quiet(self, st: dict[str, Any], steps: Any, arr: np.ndarray) -> int:
        """numpy path while no point is clipped and the smoothed value stays below the threshold: the
        state advanced over those points; returns how many (the next one, if any, is for the loop)."""
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        y = arr if sign > 0 else -arr
        n = y.shape[0]
        best0 = st["best"]
        e = ema_path(st["e"], y, a)
        p0 = st["p"]
        pb = powers(b, n)  # p after each point: pb · p0
        sm = e if p0 < NO_DEBIAS else e / (1.0 - pb * p0)  # (dividing by 1.0: skipped)
        # the best before each point and after the last (bst[i + 1]: after point i), and its margin, computed
        # once for both tests (each element the same expression as point by point: the same bits)
        bst = np.empty(n + 1)
        bst[0] = best0
        np.minimum.accumulate(sm, out=bst[1:])
        np.minimum(bst[1:], best0, out=bst[1:])
        margin = np.abs(bst)
        margin *= self.rtol
        margin += self.atol + self.floor * abs(st.get("l0") or 0.0)
        # a point that would be clipped, or where the smoothed value goes above the threshold: the loop's
        stop = sm > bst[1:] + margin[1:]
        clip = margin[:-1] * 3.0
        clip += bst[:-1]
        stop |= y > clip
        k = int(stop.argmax())
        if stop[k]:
            if k == 0:
                return 0
            n = k
        if bst[n] < best0:
            st["best_step"] = steps[int(sm[:n].argmin())]
        st.update(up=0, n=st["n"] + n, e=float(e[n - 1]), p=float(pb[n - 1] * p0), best=float(bst[n]))
        return n

    def _loop(self, st, steps, values, key, out) -> None:  # type: ignore[no-untyped-def]
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        rtol, warmup, patience = self.rtol, self.warmup, self.patience
        atol = self.atol + self.floor * abs(st.get("l0") or 0.0)
        n, e, p, best, above, active = st["n"], st["e"], st["p"], st["best"], st["above"], st["active"]
        clip = math.inf if best is None else best + 3.0 * (rtol * abs(best) + atol)
        up, up_at = st.get("up", 0), st.get("up_at")
        for s, v in zip(steps, values, strict=True):
            if v - v == 0.0:
                y = sign * v
                if y > clip:
                    y = clip
                    if not active:  # a raw point beyond 3 margins above the best: the run-up of a blow-up
                        up, up_at = up + 1, (up_at if up else s)
                else:
                    up = 0
            elif not active and up >= _RUNUP and n >= _SETTLE:
                # a climb that runs straight into Inf/NaN: too fast for `patience` (and often inside
                # `warmup`), the divergence nobody may miss; non_finite reports the point itself
                active = True
                st["onset"] = up_at
                st["resolve_below"] = best + 0.5 * (rtol * abs(best) + atol)
                above, up = None, 0
                out.append(self._fire(s, sign * v, best, up_at, st["best_step"], key, sign, into=True))
                continue
            elif self.finite_only or v != v or clip == math.inf:
                continue
            else:
                y = clip
            if n == 0 and st.get("l0") is None:  # the level the run started from
                st["l0"] = y
                atol = self.atol + self.floor * abs(y)
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
            if n < _SETTLE:
                continue
            # the best is tracked from the first points, so a climb that starts during warm-up is
            # judged against the early loss; firing waits for `warmup` points
            if best is None or sm < best:
                best = sm
                st["best_step"] = s
                clip = best + 3.0 * (rtol * abs(best) + atol)
            margin = rtol * abs(best) + atol
            if sm > best + margin:
                if above is None:
                    above = s
                if n >= warmup and s - above >= patience:
                    active = True
                    st["onset"] = above
                    st["resolve_below"] = best + 0.5 * margin
                    out.append(self._fire(s, sm, best, above, st["best_step"], key, sign))
            else:
                above = None
        st.update(n=n, e=e, p=p, best=best, above=above, active=active, up=up, up_at=up_at)

    def _fire(self, s: int, sm: float, best: float, above: int, best_step: int, key: str, sign: float,
              into: bool = False) -> Finding:
        value, ref = sign * sm, sign * best
        if into:
            return Finding(
                self.rule, "fire", s, value, ref, self.severity,
                f"{series_label(key)} diverged: it climbed far above its best {num(ref)} (step {best_step:,}) "
                f"from step {above:,} and ran into {num(value)} at step {s:,}",
                key, above, {"into_non_finite": True},
            )
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
