"""Rule configuration: which rule runs on which series, with which parameters, and why.

The configuration is plain JSON, layered: built-in defaults, then the project's configuration,
then the run's (``losswatch.init(alerts=...)``), then the rules silenced for the run::

    {"divergence": {"rtol": 1.0, "patience": 200},     # change parameters
     "plateau": false,                                  # silence a rule
     "spike": {"kinds": ["loss", "loss_component"]},   # where it applies
     "misalignment": {"pair": "val/loss", "mode": "max"},
     "silenced": ["overfitting"]}                       # another way to silence

Per rule, ``enabled``, ``kinds``, ``keys`` (glob patterns a key must match, empty: any),
``exclude`` (glob patterns that exclude a key) and ``pair`` (the paired series for overfitting and
misalignment) select where it runs; every other entry is a parameter of its detector.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from losswatch.client import wire
from losswatch.server.detectors.base import Detector
from losswatch.server.detectors.pairs import Misalignment, Overfitting
from losswatch.server.detectors.plateau import Plateau
from losswatch.server.detectors.pointwise import NonFinite, Spike
from losswatch.server.detectors.stalled import Stalled
from losswatch.server.detectors.trend import Divergence

#: Evaluation order within a series (it matters: a spike escalation is handed to divergence).
SERIES_RULES = ("non_finite", "spike", "divergence", "plateau", "overfitting", "misalignment")
RULES = (*SERIES_RULES, "stalled")
KINDS = wire.SERIES_KINDS
EVAL_PATTERNS = ("val/*", "valid/*", "validation/*", "eval/*", "test/*", "val_*", "eval_*", "test_*")
_SELECTORS = ("enabled", "kinds", "keys", "exclude", "pair")

DETECTORS: dict[str, type[Any]] = {
    "non_finite": NonFinite,
    "spike": Spike,
    "divergence": Divergence,
    "plateau": Plateau,
    "overfitting": Overfitting,
    "misalignment": Misalignment,
    "stalled": Stalled,
}

#: Why each default is what it is. docs/alerts.md repeats these; a test checks every default has one.
REASONS: dict[str, dict[str, str]] = {
    "non_finite": {
        "resolve_after": "NaN weights make every later loss NaN, so 10 finite values in a row prove the model "
        "is finite again (Keras' TerminateOnNaN stops at the first NaN; we report it and watch for recovery).",
    },
    "spike": {
        "mode": "min: applied to losses, where a jump up is bad.",
        "window": "128 points, the window OLMo uses for its loss-spike statistics (mean and σ of the last 128).",
        "rtol": "0.9, i.e. 1.9× the baseline, a geometric mean (the mean of log loss, which heavy-tailed batches "
        "cannot drag up as they drag an arithmetic one): about 2× the local median, the size of spike the goals ask "
        "to catch.",
        "deviations": "4 mean absolute deviations of log loss: minibatch noise is multiplicative, so in log space "
        "it is about symmetric and 4 deviations (3.2σ) is its 0.07 % tail for near-Gaussian noise. Corpus tuning "
        "split (spike and healthy runs): at 3, healthy spike warnings 0.12 per 10,000 steps and recall 67 %; at 4 "
        "and 5, 0 and 75 %; on the extra fresh-seed tuning runs recall 62.5 % at 3 and 4, 60 % at 5. The former 6 "
        "linear deviations hid an 18-step LR burst of 3-11× on Student-t regression targets, now caught.",
        "min_points": "3 of the last 5 points (the 5-point median above the threshold): one or two huge "
        "minibatches are heavy-tailed noise (2 in a row gave 6 false alarms per 100k healthy steps on the "
        "benchmark, 3 of 5 gives < 1) and a real spike is judged by its third point (delay 2 points).",
        "single_rtol": "1.0: a single batch 2× its baseline is reported at `single_severity` when it is also past "
        "`single_envelope` × the run's own largest recent excursion (issue 10: lone batches that return at once "
        "were missed, e.g. corrupted batches of 2.3-2.7× on a character model whose batches vary by 4 %). "
        "Megatron's rule is 10×.",
        "single_envelope": "2: a lone batch must be more than twice (in ratio) the largest ratio of the run's "
        "recent batches to their baseline (its noise envelope), so a smooth run reports a 2× batch and a run whose "
        "batches reach 5× needs 10×. It replaced a switch on the share of batches past 4 deviations (heavy tail: "
        "then 30×), which called smooth runs with a few 4-deviation wiggles heavy-tailed and missed 6-18× "
        "corrupted batches on noisy ones. Corpus tuning split: spike recall 75 % and healthy single-batch infos "
        "0.12 per 10,000 steps, as before; 54 extra fresh-seed spike runs (plan seeds 11-13, never held out): "
        "recall 57 % (31) with the former rule, 68.5 % (37) at 2, 61 % at 2.5, 57 % at 3; at 1.5, 72 % but 4.0 "
        "healthy infos per 10,000 steps.",
        "envelope_decay": "0.001 log units per point: an excursion is forgotten at 2× over about 700 points. "
        "Extra fresh-seed runs: recall 67 % at 0.0003, 68.5 % at 0.001 and 0.003; healthy infos 0.12 per 10,000 "
        "steps at 0.001 and 0.0003, 0.81 at 0.003.",
        "single_severity": "info: a lone batch is reported, not alarmed; 3 of 5 points raise it to warning.",
        "floor": "0.25 of the run's first loss (kept across a resume): the judging scale asinh(loss / unit) is "
        "linear below this unit and logarithmic above it, so a near-zero loss (0.005 after starting at 2) moving "
        "10× is no incident (corpus tuning split: healthy spike warnings 0.12 per 10,000 steps at 0.1 and 0.15, "
        "0 at 0.25; recall 75 % throughout, extra runs 60 % → 62.5 %).",
        "recovery": "500 steps: loss spikes in large-scale training that recover do so within a few hundred "
        "steps (PaLM restarted ~100 steps before a spike and skipped 200–500 batches).",
        "warmup": "50 points to learn the baseline and its deviation before judging.",
    },
    "divergence": {
        "mode": "min: applied to losses; EarlyStopping's mode.",
        "window": "50 points of EMA: short enough for the goal of a median delay ≤ 100 steps, long enough "
        "to average out minibatch noise.",
        "rtol": "0.5: 1.5× the best, sustained (issue 10: climbs to 1.6-1.9× were missed at 1.0); on the corpus "
        "tuning split 0.5 with `floor` found as many divergences as 1.0 and no healthy run fired. Before: 1.0, "
        "is where torch/Lightning users put a `divergence_threshold` by hand.",
        "atol": "0: scale-free by default; set it for losses that approach 0.",
        "patience": "50 steps above the threshold: the smoothed value of a one-off spike falls back within "
        "that (the spike rule reports it), a real divergence stays. A climb too fast for it (2 raw points in a row "
        "beyond 3 margins above the best, then NaN/Inf: an explosion that overflows within a few steps) fires at "
        "the non-finite point, inside warm-up too (corpus tuning split: divergence recall 8 → 9 of 15, all visible "
        "ones found; a lone fp16 overflow between normal points does not fire it).",
        "warmup": "50 points before firing; the best is tracked from the 10th point, so a climb that starts in "
        "warm-up is judged against the early loss (200 missed those, issue 10).",
        "floor": "5% of the run's first loss added to the margin: a loss near 0 (0.001) rising to 0.002 is not a "
        "divergence (corpus tuning split: 3 healthy runs fired without it, 0 with it).",
    },
    "plateau": {
        "mode": "min: applied to losses; EarlyStopping's and ReduceLROnPlateau's mode.",
        "window": "200 points at most: the smoothed value of a per-batch loss needs a long window for "
        "improvements of a fraction of a percent to be measurable on long runs.",
        "patience": "20,000 steps at most: only bounds the share on very long runs.",
        "share": "25% of the steps since the segment started: patience scales with the run (a fixed 5,000 "
        "steps found 0 of 7 stuck runs of 500-6,000 steps, issue 10); 0.25 beat 0.15-0.3 on the corpus tuning split.",
        "min_patience": "100 steps: shorter spans are too noisy for the window means (corpus tuning split: recall "
        "5/8 at 100 vs 4/8 at 60, with fewer healthy warnings); a 300-step run is therefore judged from step 300.",
        "min_delta": "1e-4 relative: torch ReduceLROnPlateau's default threshold (mode 'rel').",
        "deviations": "3 standard errors of the smoothed value: noise alone rarely makes a 3σ new best.",
        "rate": "2% of the level: a run that improved that much in the span before its stall was still learning "
        "(stuck), one that did not has converged (bench/corpus tuning split: 0.02 and 0.1 found the same runs).",
        "ratio": "0.1: the last span's improvement below a tenth of the one before is a stop, not a slowdown "
        "(a power-law curve keeps about half from one span to the next).",
        "flat": "0.25 standard errors: the last span must be flat, not merely within its noise (1 and 2 let "
        "slow healthy runs fire on the corpus: 10-17 healthy runs vs 1).",
        "level": "0.5: a stall below half the starting loss is taken as converged unless the LR collapsed "
        "(bench/corpus tuning split: healthy runs with a plateau warning 8 at 0.3, 1 at 0.5).",
        "hint": "off: the `converged` info finding (a hint that the run could stop) is opt-in.",
        "lr_drop": "a 10% fall of the LR since the last restart is a planned drop (step decay, cosine, "
        "ReduceLROnPlateau's factor 0.1–0.5), after which the loss is given patience again.",
        "warmup": "50 points: the first points (LR warm-up, the initial drop) are not a reference.",
    },
    "overfitting": {
        "patience": "3 evaluations: Lightning EarlyStopping's default patience.",
        "min_delta": "0.02: 2% above the best validation loss; with EarlyStopping's 0, evaluation noise of "
        "0.2–1% alone made half of the overfitting alarms on the benchmark's healthy runs false. The training loss "
        "must also be 2% below its level at the best: after a warm-up blow-up it only came back to about that level "
        "(0.537 → 0.531) while the validation loss stayed 35% above its best, which made the one overfitting alarm "
        "on a divergence run of the corpus tuning split (precision 67 → 80%, recall and delays unchanged).",
        "deviations": "1.3 σ of the evaluations' own noise: σ from the median of the last 5 second differences "
        "(|v − 2v' + v''| has median 1.65σ; a trend does not inflate them and the median ignores a bend of the "
        "curve), taken from the evaluations *before* the one judged and not from a rise under way, so an overfitting "
        "cannot raise its own bar (the former EWMA took in the rise itself: a val loss 67% above its best counted "
        "once and then not). A small validation set's scatter is still not a rise (issue 10: 2% alone gave most of "
        "the false overfitting alarms on healthy runs). Corpus tuning split: 1.0-1.6 gave the same healthy false "
        "alarms; within 3 evaluations of onset 3 → 4 of 6 at 1.3 (1.6 and 2.0: 3 of 6).",
        "giveback": "0.03: a rise must also give back 3% of the validation loss's fall from its first evaluation to "
        "its best (kept across a resume): a near-zero validation loss creeping 0.027 → 0.029 after a fall from 0.12 is "
        "not worth a warning, while the corpus tuning split's visible overfitting gave back 6-57% within 2 evaluations.",
        "strong": "3 margins: an evaluation that far above the best counts twice, so a sharp rise fires at its second "
        "evaluation (corpus tuning split: within 3 evaluations of onset 1 of 6 → 3 of 6, healthy false alarms "
        "unchanged at 0.12 per 10,000 steps).",
        "warmup": "2 evaluations: the first evaluations of a run are too early to judge a trend.",
    },
    "misalignment": {
        "window": "6 evaluations, judged from the loss's largest jump above its best before it when one exceeds "
        "`min_delta` (a label-mapping bug's jump, even while the window still holds the run's first, higher losses), "
        "else from its worst point (the first on a falling loss); from a jump, the metric's best is taken after it "
        "(the evaluation at the loss's peak may predate the metric's fall) and its rise is relative to where it stood "
        "before the jump (an accuracy fallen from 0.47 to 0.044 wobbling to 0.046 has not risen 4%). On the corpus "
        "tuning split 6 found 5 of 6 label-mapping bugs; a rank correlation over so few points is coarse, so "
        "`min_delta` and `metric_delta` carry the verdict with it.",
        "threshold": "0.3: aligned loss and metric correlate at 0.8–1.0; below 0.3 the metric is not "
        "following the loss.",
        "min_delta": "10% relative improvement of the loss over the window: at 5% the healthy runs' slow late "
        "gains against a metric flat within its noise made most false alarms (corpus tuning split: precision "
        "33% at 5%, 44% at 10%).",
        "metric_delta": "2% relative improvement of the metric over the window counts as following the loss "
        "(accuracy 0.80 → 0.816): a metric that improves is not misaligned whatever its ranks; 1% is within "
        "the evaluation noise of a small validation set.",
        "patience": "2 misaligned evaluations in a row: with a 6-evaluation window, 3 pushed the delay past 9 "
        "evaluations; 1 doubled the healthy false alarms (corpus tuning split). An evaluation judged from a jump of "
        "the loss, with the metric down beyond its noise, counts twice: label-mapping bugs found within 3 "
        "evaluations 0 → 5 of 6 on the tuning split, healthy false alarms 0.23 → 0.12 per 10,000 steps.",
        "deviations": "3 noise scales of the metric's own evaluations (second differences, which a trend does not "
        "inflate): a fall since before a loss jump must exceed it to count as lost ground (a 64-sample accuracy "
        "0.97 → 0.94 does not), and a rise beyond it is following the loss however small (a 2,048-sample r² 0.878 → "
        "0.891).",
        "mode": "max: accuracy, precision and mAP are higher-is-better; set min for error rates.",
        "loss_mode": "min: losses are lower-is-better.",
        "ceiling": "0.05: a metric on [0, 1] within 5% of its bound (accuracy 0.95-0.99, r² 0.99) has no room "
        "to follow the loss (issue 10: all misalignment false alarms were accuracies at 0.95-0.99).",
        "spacing": "10 steps: metric points closer than that to an evaluation's first point are the same "
        "evaluation (a metric logged every step is judged every 10 steps, not every step: cheap, and the "
        "same whatever the batching).",
    },
    "stalled": {
        "factor": "10× the run's own usual interval: a sender that batches every few seconds is late by "
        "an order of magnitude only when something is wrong.",
        "min_seconds": "60 s: a client flushes at least every few seconds and heartbeats while idle.",
        "gap_factor": "1.5× the longest healthy gap seen: an epoch-end evaluation pause, once seen, is usual.",
        "window": "20 arrivals of EWMA.",
        "warmup": "3 intervals: start-up and the first compilation do not set the usual interval.",
    },
}

_DEFAULT_SELECT: dict[str, dict[str, tuple[str, ...]]] = {
    "non_finite": {"kinds": ("loss", "loss_component", "metric", "grad_norm")},
    "spike": {"kinds": ("loss",), "exclude": EVAL_PATTERNS},
    "divergence": {"kinds": ("loss",), "exclude": EVAL_PATTERNS},
    "plateau": {"kinds": ("loss",), "exclude": EVAL_PATTERNS},
    "overfitting": {"kinds": ("loss", "loss_component"), "keys": EVAL_PATTERNS},
    "misalignment": {"kinds": ("metric",)},
    "stalled": {"kinds": ()},
}


@dataclass(frozen=True)
class RuleSpec:
    """One rule's effective configuration."""

    name: str
    enabled: bool = True
    kinds: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pair: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def applies(self, key: str, kind: str) -> bool:
        if not self.enabled or kind not in self.kinds:
            return False
        if self.keys and not any(fnmatch.fnmatchcase(key, p) for p in self.keys):
            return False
        return not any(fnmatch.fnmatchcase(key, p) for p in self.exclude)

    def detector(self) -> Any:
        return make_detector(self.name, self.params)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"enabled": self.enabled, "kinds": list(self.kinds), "keys": list(self.keys),
                             "exclude": list(self.exclude)}
        if self.pair is not None:
            d["pair"] = self.pair
        d.update(self.params)
        return d


def make_detector(rule: str, params: Mapping[str, Any] | None = None) -> Any:
    """The detector of ``rule`` with ``params`` (defaults for the rest); ValueError when invalid."""
    if rule not in DETECTORS:
        raise ValueError(f"unknown rule {rule!r} (known: {', '.join(RULES)})")
    items = tuple(sorted((params or {}).items()))
    try:
        return _make(rule, items)
    except TypeError:  # unhashable parameter value: build without the cache, to report it
        return _build(rule, dict(items))


@lru_cache(maxsize=512)
def _make(rule: str, items: tuple[tuple[str, Any], ...]) -> Any:
    return _build(rule, dict(items))


#: parameters a rule no longer has, still accepted (and ignored) so that saved configurations stay valid
RETIRED: dict[str, frozenset[str]] = {
    # the log-space scale (floor x first loss) took the place of single_floor; the noise envelope that of the
    # heavy-tail switch (single_deviations, single_tail, single_tail_rtol)
    "spike": frozenset({"single_floor", "single_deviations", "single_tail", "single_tail_rtol"}),
}


def _build(rule: str, params: dict[str, Any]) -> Any:
    cls = DETECTORS[rule]
    known = cls.__dataclass_fields__.keys()
    retired = RETIRED.get(rule, frozenset())
    params = {k: v for k, v in params.items() if k not in retired}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"{rule}: unknown parameter {', '.join(map(repr, unknown))} "
            f"(parameters: {', '.join(known)}; selectors: {', '.join(_SELECTORS)})"
        )
    return cls(**params)


def defaults(rule: str) -> dict[str, Any]:
    """The default parameters of ``rule``."""
    return make_detector(rule).params()


@dataclass(frozen=True)
class RuleConfig:
    """The effective rules of a run (or a project). Immutable; build with :meth:`from_dict`."""

    rules: Mapping[str, RuleSpec]

    @classmethod
    def default(cls) -> RuleConfig:
        return _DEFAULT

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, base: RuleConfig | None = None) -> RuleConfig:
        """``data`` layered over ``base`` (the built-in defaults when None). Raises ValueError."""
        return (base or _DEFAULT).merge(data)

    def merge(self, data: Mapping[str, Any] | None) -> RuleConfig:
        if data is None:
            return self
        if not isinstance(data, Mapping):
            raise ValueError(f"alert rules must be an object, got {type(data).__name__}")
        rules = dict(self.rules)
        for name, value in data.items():
            if name == "silenced":
                continue
            if name not in rules:
                raise ValueError(f"unknown rule {name!r} (known: {', '.join(RULES)}, or 'silenced')")
            rules[name] = _merge_spec(rules[name], value)
        merged = RuleConfig(rules)
        if "silenced" in data:
            merged = merged.silence(_names(data["silenced"], "silenced"))
        return merged

    def silence(self, names: Iterable[str]) -> RuleConfig:
        rules = dict(self.rules)
        for name in names:
            if name not in rules:
                raise ValueError(f"cannot silence unknown rule {name!r} (known: {', '.join(RULES)})")
            rules[name] = replace(rules[name], enabled=False)
        return RuleConfig(rules)

    def to_dict(self) -> dict[str, Any]:
        """The full effective configuration, JSON-safe (what the API can show)."""
        return {name: spec.to_dict() for name, spec in self.rules.items()}

    def rules_for(self, key: str, kind: str) -> tuple[str, ...]:
        """The enabled series rules that apply to a series, in evaluation order (memoised: the
        configuration is immutable and ingest asks for every series of every batch)."""
        cache = self.__dict__.get("_rules_for")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_rules_for", cache)
        got = cache.get((key, kind))
        if got is None:
            got = cache[(key, kind)] = tuple(r for r in SERIES_RULES if self.rules[r].applies(key, kind))
            if len(cache) > 4096:
                cache.clear()
        return got

    def detector(self, rule: str) -> Detector:
        """The rule's detector (memoised, as :meth:`rules_for`: ingest asks for it per series and batch)."""
        cache = self.__dict__.get("_detectors")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_detectors", cache)
        det = cache.get(rule)
        if det is None:
            det = cache[rule] = self.rules[rule].detector()
        return det

    def pair(self, rule: str, key: str, series_kinds: Mapping[str, str]) -> str | None:
        """The series paired with ``key`` for ``overfitting`` (its training loss) or ``misalignment``
        (the loss the metric should follow), among the run's series (key -> kind); None if none."""
        spec = self.rules[rule]
        if spec.pair is not None:
            return spec.pair if spec.pair in series_kinds else None
        if rule == "overfitting":
            return next((k for k in train_candidates(key) if k in series_kinds), None)
        if rule == "misalignment":
            for k in ("train/loss", "loss", "train_loss"):
                if series_kinds.get(k) == "loss":
                    return k
            trains = sorted(
                k for k, kd in series_kinds.items()
                if kd == "loss" and not any(fnmatch.fnmatchcase(k, p) for p in EVAL_PATTERNS)
            )
            return trains[0] if trains else None
        return None


def train_candidates(key: str) -> list[str]:
    """Training-side keys of an evaluation key: ``val/loss`` -> ``train/loss``, ``val_loss`` -> ``loss``."""
    out = []
    for prefix in ("val/", "valid/", "validation/", "eval/", "test/"):
        if key.startswith(prefix):
            out.append("train/" + key[len(prefix):])
    for prefix in ("val_", "eval_", "test_"):
        if key.startswith(prefix):
            out += [key[len(prefix):], "train_" + key[len(prefix):]]
    return out


def resolve_config(
    project: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    silenced: Iterable[str] = (),
) -> RuleConfig:
    """Defaults, then the project's rules, then the run's, then the silenced rules."""
    return RuleConfig.default().merge(project).merge(run).silence(silenced)


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of rule names, got {value!r}")
    return list(value)


def _patterns(rule: str, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{rule}.{name} must be a list of strings, got {value!r}")
    return tuple(value)


def _merge_spec(spec: RuleSpec, value: Any) -> RuleSpec:
    name = spec.name
    if isinstance(value, bool):
        return replace(spec, enabled=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be true, false or an object of parameters, got {value!r}")
    changes: dict[str, Any] = {}
    params = dict(spec.params)
    for k, v in value.items():
        if k == "enabled":
            if not isinstance(v, bool):
                raise ValueError(f"{name}.enabled must be true or false, got {v!r}")
            changes["enabled"] = v
        elif k == "kinds":
            kinds = _patterns(name, k, v)
            bad = [x for x in kinds if x not in KINDS]
            if bad:
                raise ValueError(f"{name}.kinds: unknown kind {bad[0]!r} (kinds: {', '.join(KINDS)})")
            changes["kinds"] = kinds
        elif k in ("keys", "exclude"):
            changes[k] = _patterns(name, k, v)
        elif k == "pair":
            if name not in ("overfitting", "misalignment") or not (v is None or isinstance(v, str)):
                raise ValueError(f"{name}.pair must be a series key (overfitting and misalignment only)")
            changes["pair"] = v
        else:
            params[k] = v
    make_detector(name, params)  # validates, with a clear message
    return replace(spec, params=params, **changes)


_DEFAULT = RuleConfig({name: RuleSpec(name, **_DEFAULT_SELECT[name]) for name in RULES})
