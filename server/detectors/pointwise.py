"""Detectors that judge single points: ``non_finite`` and ``spike``."""

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
    decode_number,
    ema_path,
    encode_number,
    num,
    powers,
    ratio_text,
    series_label,
)

_TINY = 1e-12  # the scale unit when the first loss is 0 (or floor is 0): pure log
_LOG2 = math.log(2.0)
_ASINH, _LOG = np.arcsinh, np.log
_FMAX = 1.7976931348623157e308


def _z(y: float, u: float) -> float:
    """asinh(y / u), finite for every y (±Inf and values whose ratio to u overflows included): past
    1e300 it is log(2|y|/u), which asinh equals there, computed without the overflowing ratio. An
    infinite point must not make the baseline infinite (and the state, JSON, unwritable)."""
    q = y / u
    # numpy's functions, not math's: the numpy path (:func:`_zs`) must give the same bits, and numpy's SIMD
    # arcsinh differs from libm's in the last bit for about 1 value in 6 on AVX-512 machines
    if -1e300 < q < 1e300:
        return float(_ASINH(q))
    return math.copysign(_LOG2 + float(_LOG(min(abs(y), _FMAX))) - math.log(u), y)


def _zs(arr: np.ndarray, u: float) -> np.ndarray:
    """:func:`_z` of every value of ``arr`` (NaN stays NaN)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = np.arcsinh(arr / u)
        total = float(np.add.reduce(z))  # finite (each |z| < 711) unless some z is ±Inf (or NaN)
    if total - total != 0.0:
        big = np.isinf(z)
        if big.any():
            z[big] = np.copysign(_LOG2 + np.log(np.minimum(np.abs(arr[big]), _FMAX)) - math.log(u), arr[big])
    return z


def _unz(z: float, u: float) -> float:
    """The value back from the judging scale, u·sinh(z), saturating at the largest float."""
    if abs(z) < 700.0:
        return u * math.sinh(z)
    return math.copysign(math.exp(min(abs(z) - _LOG2 + math.log(u), 709.7)), z)


@dataclass(frozen=True)
class NonFinite(Detector):
    """NaN or ±Inf: fires on the very point that carries it.

    Parameters:
        resolve_after: consecutive finite points that close the alert. NaN weights make every later
            loss NaN, so a handful of finite values proves the model itself is still finite.
    """

    rule = "non_finite"
    severity = "critical"
    resolve_after: int = 10

    def __post_init__(self) -> None:
        check_int(self, "resolve_after", 1)

    def _fresh(self) -> dict[str, Any]:
        return {"active": False, "onset": None, "bad": 0, "ok": 0, "lf": None, "lf_step": None}

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        if arr is not None and not st["active"]:  # all finite, nothing open: only the last finite value
            st.update(lf=values[-1], lf_step=steps[-1])
            return
        active = st["active"]
        ok = st["ok"]
        lf = st["lf"]
        lf_step = st["lf_step"]
        for s, v in zip(steps, values, strict=True):
            if v - v == 0.0:  # finite
                lf = v
                lf_step = s
                if active:
                    ok += 1
                    if ok >= self.resolve_after:
                        active = False
                        out.append(
                            Finding(
                                self.rule, "resolve", s, v, None, self.severity,
                                f"{series_label(key)} is finite again: {ok} finite values up to step {s:,} "
                                f"after {st['bad']} non-finite from step {st['onset']:,}",
                                key, st["onset"],
                            )
                        )
                continue
            ok = 0
            if active:
                st["bad"] += 1
                continue
            active = True
            st["onset"] = s
            st["bad"] = 1
            before = (
                f"last finite value {num(lf)} at step {lf_step:,}"
                if lf is not None
                else "no finite value before it in this segment"
            )
            out.append(
                Finding(
                    self.rule, "fire", s, v, lf, self.severity,
                    f"{series_label(key)} is {num(v)} at step {s:,} ({before})",
                    key, s,
                )
            )
        st.update(active=active, ok=ok, lf=lf, lf_step=lf_step)


@dataclass(frozen=True)
class Spike(Detector):
    """A transient jump above the local baseline, judged in log space against the series' own noise.

    Points are judged on the scale ``asinh(y / u)``, ``u`` = ``floor`` × |the run's first loss|: the log of
    the loss for losses well above ``u`` (a jump is a ratio, and heavy-tailed minibatch noise, which is
    multiplicative, becomes symmetric), linear below it (a loss at 0.1 % of where it started moving 10×
    moves by little). The baseline is an exponentially weighted mean on that scale (a geometric mean,
    which a few huge batches cannot drag up as they drag an arithmetic one) and the noise scale an
    exponentially weighted mean absolute deviation around it (both debiased, O(1), the streaming stand-ins
    for a rolling median and MAD of log loss). Exceeding points enter both winsorised at the threshold.

    A point exceeds when it is more than ``1 + rtol`` × the baseline *and* ``deviations`` mean absolute
    deviations above it (on the log scale). The alert fires when ``min_points`` of the last
    ``min_points + 2`` points exceed (3 of 5 by default), with the onset at the first exceeding point; a
    single point beyond ``1 + single_rtol`` × the baseline and ``single_envelope`` × the largest excursion
    of the run's recent batches (its noise envelope) fires at once at ``single_severity`` (a bad batch that
    returns at once), raised to warning when ``min_points`` follow. The envelope is the largest log ratio of
    a judged batch to its baseline, lowered by ``envelope_decay`` per point since (a decaying maximum: a
    run whose batches often reach 5× needs a lone batch past 10×, a smooth one only 2×). It resolves when a fast EMA (10-point span) of the points since onset is back below the
    baseline plus half the jump threshold (a smoothed test: one low noisy point does not end it). When it
    has not recovered ``recovery`` steps after onset it escalates: the spike alert is superseded by a
    critical ``divergence`` finding and the baseline is learned anew.

    Batches whose points are all finite take a numpy path while no point exceeds (the EMAs in closed
    form); the loop takes over at the first exceeding point.

    Parameters:
        mode: ``min`` (a loss: a jump up is bad) or ``max`` (a metric: a drop is bad).
        window: span of the baseline EMAs, in points.
        rtol: relative jump over the (geometric) baseline for a point to exceed (0.9: 1.9×).
        deviations: ... and this many mean absolute deviations of log loss above it (its own noise).
        min_points: exceeding points among the last ``min_points + 2`` before firing.
        single_rtol: a single point this far above fires at once, at ``single_severity`` (0: off).
        single_envelope: ... when also this many times the run's noise envelope above its baseline.
        envelope_decay: how fast the envelope forgets an excursion (log units per point).
        floor: share of the run's first loss below which the scale turns linear (near-zero losses).
        recovery: steps after onset within which the series must recover, else escalate.
        warmup: points learned per segment before the rule can fire.
        finite_only: skip NaN/±Inf (the ``non_finite`` rule reports them); False counts them as exceeding.
    """

    rule = "spike"
    severity = "warning"
    keep = ("l0",)
    mode: str = "min"
    window: int = 128
    rtol: float = 0.9
    deviations: float = 4.0
    min_points: int = 3
    single_rtol: float = 1.0
    single_envelope: float = 2.0
    envelope_decay: float = 0.001
    single_severity: str = "info"
    floor: float = 0.25
    recovery: int = 500
    warmup: int = 50
    finite_only: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check_int(self, "window", 1)
        check_float(self, "rtol", 0.0, strict=True)
        check_float(self, "deviations", 0.0)
        check_int(self, "min_points", 1)
        check_float(self, "single_rtol", 0.0)
        check_float(self, "single_envelope", 1.0)
        check_float(self, "envelope_decay", 0.0)
        check_choice(self, "single_severity", ("info", "warning", "critical"))
        check_float(self, "floor", 0.0)
        check_int(self, "recovery", 1)
        check_int(self, "warmup", 1)
        check_bool(self, "finite_only")

    def _fresh(self) -> dict[str, Any]:
        return {
            "n": 0, "em": 0.0, "ed": 0.0, "p": 1.0, "k": 0, "env": None, "ex": [], "active": False,
            "log": True, "onset": None, "base": None, "rec_level": None, "peak": None, "ea": 0.0, "pa": 1.0,
            "thr": None,
        }

    def _unit(self, st: dict[str, Any]) -> float:
        """``u``: below it the judging scale asinh(y / u) is linear, above it logarithmic."""
        return max(self.floor * abs(st.get("l0") or 0.0), _TINY)

    def _run(self, st, steps, values, key, context, out, arr=None) -> None:  # type: ignore[no-untyped-def]
        if not st.get("log"):  # a state from the former linear scale: learn the baseline anew
            kept = {k: st[k] for k in ("seg", "last", "l0") if k in st}
            st.clear()
            st.update(self._fresh(), **kept)
        m = len(steps)
        i = 0
        chunk = self.min_points + 3  # an exceeding point is remembered for min_points + 2 points
        for h in range(m):
            if i >= m:
                break
            end = m
            if arr is not None and not st["active"] and st["n"] >= self.warmup and h < HANDOVERS:
                if not st.get("ex"):
                    j = self._quiet(st, steps[i:], arr[i:])
                    if j is None:
                        return
                    i += j
                end = min(m, i + chunk)  # the loop until nothing is remembered, then numpy again
            self._loop(st, steps[i:end], values[i:end], key, out)
            i = end

    def _quiet(self, st: dict[str, Any], steps: Any, arr: np.ndarray) -> int | None:
        """numpy path while no point exceeds: the EMAs in closed form. Returns None when no point of
        the batch exceeds (state updated), else the index of the first that does, with the state
        advanced to just before it (the loop takes over there)."""
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        u = self._unit(st)
        y = _zs(arr if sign > 0 else -arr, u)
        n = y.shape[0]
        em0, ed0, p0, k0 = st["em"], st["ed"], st["p"], st.get("k", 0)
        # each expression as the closed form point by point has it (the same bits), the EMAs written after
        # their value before the batch (em[i], ed[i]: before point i) instead of concatenated to it
        em = np.empty(n + 1)
        em[0] = em0
        ema_path(em0, y, a, out=em[1:])  # the baseline's EMA
        pb = powers(b, n, 0)  # p before each point, and after the last: pb · p0
        # the debiasing divisor before each point, 1 - p: exactly 1.0 everywhere once p < 2^-54 (a run past its
        # first few thousand points), where dividing by it changes no bit: skipped
        c = None if p0 < NO_DEBIAS else 1.0 - pb[:-1] * p0
        m_prev = em[:-1] if c is None else em[:-1] / c  # the debiased baseline before each point
        d = np.subtract(y, m_prev)
        np.abs(d, out=d)
        ed = np.empty(n + 1)
        ed[0] = ed0
        ema_path(ed0, d, a, out=ed[1:])  # its mean absolute deviation
        dev = ed[:-1] * self.deviations
        if c is not None:
            dev /= c
        dev += m_prev  # m_prev + deviations · ed / c
        thr = m_prev + math.log1p(self.rtol)
        np.maximum(thr, dev, out=thr)
        over = y > thr
        # the noise envelope before each point: the running largest of (log ratio + decay × the point's count),
        # the loop's expressions; a point past it (and past single_rtol) is a lone-batch candidate
        r = y - m_prev
        dk = np.arange(k0 + 1, k0 + n + 1, dtype=float)
        dk *= self.envelope_decay  # the decay at each point's count
        top = r + dk
        env0 = st.get("env")
        before = np.empty(n)
        before[0] = -math.inf if env0 is None else env0
        np.maximum.accumulate(top[:-1], out=before[1:])
        np.maximum(before[1:], before[0], out=before[1:])
        if self.single_rtol > 0.0:
            lone = before - dk
            lone += math.log(self.single_envelope)
            np.maximum(lone, math.log1p(self.single_rtol), out=lone)
            over |= r > lone
        # an exceeding point is winsorised in the loop: hand over exactly there
        j = int(over.argmax())
        if not over[j]:
            j = n
        if j:
            st["env"] = float(max(before[j - 1], top[j - 1]))
        st.update(em=float(em[j]), ed=float(ed[j]), p=float(pb[j] * p0), k=k0 + j)
        return j if j < n else None

    def _loop(self, st, steps, values, key, out) -> None:  # type: ignore[no-untyped-def]
        sign = 1.0 if self.mode == "min" else -1.0
        a = alpha_of(self.window)
        b = 1.0 - a
        fa = alpha_of(10)
        fb = 1.0 - fa
        jump, dev, warmup = math.log1p(self.rtol), self.deviations, self.warmup
        single = math.log1p(self.single_rtol) if self.single_rtol > 0.0 else math.inf
        margin, decay = math.log(self.single_envelope), self.envelope_decay
        n, em, ed, p, env = st["n"], st["em"], st["ed"], st["p"], st.get("env")
        active = st["active"]
        k, ex, span = st.get("k", 0), st.setdefault("ex", []), self.min_points + 2
        u = self._unit(st)
        for s, v in zip(steps, values, strict=True):
            if v - v == 0.0:
                y = sign * v
            elif not active and ex and n >= warmup:
                # a jump that runs straight into Inf/NaN: report the spike too (non_finite has the point)
                active = True
                m = em / (1.0 - p)
                st.update(onset=ex[0][1], base=m, peak="Infinity", ea=0.0, pa=1.0, sev="warning",
                          rec_level=self._back(m, m + jump, u), thr=m + jump, nex=0)
                ex.clear()
                out.append(self._finding("fire", s, v, st, key, sign, u, into=True))
                continue
            elif active and (v != v or v * sign > 0.0):
                # an open spike runs into Inf/NaN: its peak is infinite, and a single batch is an incident now
                st["peak"] = "Infinity"
                if st.get("sev") == "info":
                    st["sev"] = "warning"
                    out.append(self._finding("fire", s, v, st, key, sign, u, into=True))
                continue
            elif self.finite_only or v != v:
                continue
            else:
                y = sign * v  # ±Inf counts as exceeding in the bad direction only
                if y < 0:
                    continue
            if n == 0 and st.get("l0") is None:  # the run's first level sets the scale (kept across a resume)
                st["l0"] = y
                u = self._unit(st)
            z = _z(y, u)
            if active:
                ea = st["ea"] = fb * st["ea"] + fa * z  # fast level since onset
                pa = st["pa"] = st["pa"] * fb
                level = ea / (1.0 - pa)
                if y > decode_number(st["peak"]):  # state holds an infinite peak as "Infinity" (JSON)
                    st["peak"] = encode_number(y)
                if st.get("sev") == "info" and z > st["thr"]:
                    st["nex"] = st.get("nex", 1) + 1
                    if st["nex"] >= self.min_points:  # the single batch was the start of a real spike
                        st["sev"] = "warning"
                        out.append(self._finding("fire", s, v, st, key, sign, u))
                if level < st["rec_level"]:
                    active = False
                    out.append(self._finding("resolve", s, v, st, key, sign, u))
                elif s - st["onset"] >= self.recovery:
                    active = False
                    out.extend(self._escalation(s, v, level, st, key, sign, u))
                    n, em, ed, p, env = 0, 0.0, 0.0, 1.0, None  # learn the new level as the baseline
                continue
            if n < warmup:
                n += 1
                em = b * em + a * z
                p *= b
                m = em / (1.0 - p)
                ed = b * ed + a * abs(z - m)
                continue
            c = 1.0 - p
            m = em / c
            d = ed / c
            thr = m + max(jump, dev * d)
            k += 1
            while ex and k - ex[0][0] >= span:
                del ex[0]
            r = z - m
            # a single batch: far above the baseline as a ratio and beyond the largest excursions of the run's
            # own recent batches, so the heavy tail of healthy minibatch losses stays below it
            lone = r > max(single, -math.inf if env is None else env - decay * k + margin)
            if z > thr or lone:
                ex.append([k, s])
                many = len(ex) >= self.min_points
                if many or lone:
                    active = True
                    st.update(
                        onset=ex[0][1], base=m, rec_level=self._back(m, thr, u), peak=encode_number(y),
                        ea=z * fa, pa=fb, thr=thr, sev="warning" if many else self.single_severity,
                        nex=len(ex),
                    )
                    ex.clear()
                    out.append(self._finding("fire", s, v, st, key, sign, u))
                    continue
            top = r + decay * k  # the envelope: the largest log ratio, lowered by decay per point since
            if env is None or top > env:
                env = top
            zw = z if z < thr else thr  # an exceeding point enters the baseline winsorised at the threshold
            em = b * em + a * zw
            p *= b
            ed = b * ed + a * abs(zw - m)
        st.update(n=n, em=em, ed=ed, p=p, k=k, env=env, active=active)

    def _back(self, m: float, thr: float, u: float) -> float:
        """The level (judging scale) below which a spike has recovered: halfway to the threshold, and no
        more than ``rtol`` / 2 above the baseline *value* (below ``u`` the scale is linear, so the halfway
        mark alone would call a near-zero loss that stays 10× up recovered)."""
        base = _unz(m, u)
        return min(m + 0.5 * (thr - m), _z(base + 0.5 * self.rtol * abs(base), u))

    def _finding(
        self, action: str, s: int, v: float, st: dict[str, Any], key: str, sign: float, u: float,
        into: bool = False,
    ) -> Finding:
        base = sign * _unz(st["base"], u)
        label = series_label(key)
        sev = st.get("sev") or self.severity
        if action == "fire" and into:
            reason = (
                f"{label} spiked from step {st['onset']:,} and ran into {num(v)} at step {s:,} (baseline "
                f"{num(base)})"
            )
        elif action == "fire":
            direction = "jumped to" if sign > 0 else "dropped to"
            one = " (a single batch)" if sev == "info" else ""
            reason = (
                f"{label} spiked{one}: {direction} {num(v)} at step {s:,}, {ratio_text(v, base)} its baseline "
                f"{num(base)} (threshold {num(sign * _unz(st['thr'], u))})"
            )
        else:
            reason = (
                f"{label} recovered from the spike at step {st['onset']:,}: {num(v)} at step {s:,} is "
                f"back near its baseline {num(base)} (peak {num(sign * decode_number(st['peak']))})"
            )
        return Finding(self.rule, action, s, v, base, sev, reason, key, st["onset"],
                       {"single_batch": True} if sev == "info" else {})

    def _escalation(
        self, s: int, v: float, level: float, st: dict[str, Any], key: str, sign: float, u: float
    ) -> list[Finding]:
        base = sign * _unz(st["base"], u)
        smooth = sign * _unz(level, u)
        onset = st["onset"]
        label = series_label(key)
        lasted = f"{s - onset:,} steps"
        spike = Finding(
            self.rule, "escalate", s, v, base, "critical",
            f"{label} did not recover from the spike at step {onset:,} within {lasted}: smoothed "
            f"{num(smooth)} at step {s:,} vs baseline {num(base)}; escalated to divergence",
            key, onset, {"escalated_to": "divergence"},
        )
        divergence = Finding(
            "divergence", "fire", s, smooth, base, "critical",
            f"{label} diverged: jumped at step {onset:,} and has stayed there for {lasted}: smoothed "
            f"{num(smooth)} at step {s:,} is {ratio_text(smooth, base)} its baseline {num(base)}",
            key, onset,
            {"escalated_from": "spike", "resolve_below": encode_number(_unz(st["rec_level"], u)),
             "sign": sign},
        )
        return [spike, divergence]


def resolve_level(finding: Finding) -> float | None:
    """The direction-adjusted level below which an escalated divergence counts as recovered."""
    v = finding.details.get("resolve_below")
    return None if v is None else decode_number(v)


__all__ = ["NonFinite", "Spike", "resolve_level"]
