"""The losswatch wire format, defined once (standard library only).

The client builds ingest batches with these helpers and the server parses them with the same
definitions, so the two cannot drift apart.

Ingest batch (``POST /api/v1/runs/{run_id}/points``), columnar::

    {"series": [
        {"key": "train/loss", "kind": "loss",
         "steps": [0, 1, 2], "values": [0.91, "NaN", 0.87],
         "wall_times": [1764380000.0, 1764380000.1, 1764380000.2]},   # optional, seconds
        {"key": "val/mAP50-95", "kind": "metric", "steps": [2], "values": [0.31]}
    ]}

Non-finite values: standard JSON has no NaN or infinity, so they travel as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the spellings of JavaScript and of Python's
``json`` module). Every finite value is a JSON number written with the shortest repr that
round-trips, so a float64 comes back bit for bit. The server answers with the same encoding.

Steps are integers in ``[0, 2**63 - 1]``. Writing a (series, step) again overwrites it: a retried
batch never duplicates a point.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

NAN: Final = "NaN"
POS_INF: Final = "Infinity"
NEG_INF: Final = "-Infinity"
NONFINITE_SPELLINGS: Final = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}

MAX_STEP: Final = 2**63 - 1
MAX_KEY_LENGTH: Final = 250
SERIES_KINDS: Final = ("loss", "loss_component", "metric", "lr", "grad_norm", "other")


def encode_value(value: float) -> float | str:
    """A float as it travels in JSON: itself, or one of the non-finite spellings."""
    if value != value:
        return NAN
    if value == math.inf:
        return POS_INF
    if value == -math.inf:
        return NEG_INF
    return value


def decode_value(value: float | int | str) -> float:
    """The inverse of :func:`encode_value`; raises ``ValueError`` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in NONFINITE_SPELLINGS:
        return NONFINITE_SPELLINGS[value]
    raise ValueError(f"expected a number or one of 'NaN', 'Infinity', '-Infinity', got {value!r}")


def encode_values(values: Iterable[float]) -> list[float | str]:
    """Encode a sequence of floats; fast when all of them are finite."""
    out: list[float | str] = list(values)
    for i, v in enumerate(out):
        if v != v or v in (math.inf, -math.inf):
            out[i] = encode_value(v)  # type: ignore[arg-type]  # a float: strings are only written here
    return out


def guess_kind(key: str) -> str:
    """The series kind a key most likely has, for callers that do not say.

    ``train/loss`` -> loss, ``train/loss/box`` or ``train/box_loss`` -> loss_component,
    ``lr`` or ``lr/pg0`` -> lr, ``grad_norm`` -> grad_norm, anything under ``val/``, ``eval/``,
    ``test/`` or ``metrics/`` that is not a loss -> metric, else other.
    """
    k = key.lower()
    leaf = k.rsplit("/", 1)[-1]
    if leaf in ("lr", "learning_rate") or k.startswith("lr/") or "/lr" in k:
        return "lr"
    if "grad_norm" in k or "gradnorm" in k:
        return "grad_norm"
    if "loss" in k:
        if leaf in ("loss", "total_loss", "loss_total"):
            return "loss"
        return "loss_component"
    if k.startswith(("val/", "eval/", "test/", "metrics/", "valid/", "validation/")):
        return "metric"
    return "other"


def series_entry(
    key: str,
    kind: str,
    steps: Sequence[int],
    values: Sequence[float],
    wall_times: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One series of an ingest batch."""
    entry: dict[str, Any] = {"key": key, "kind": kind, "steps": list(steps), "values": encode_values(values)}
    if wall_times is not None:
        entry["wall_times"] = list(wall_times)
    return entry


def batch(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The body of one ingest request."""
    return {"series": list(entries)}


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes of a request or answer body.

    Refuses a bare float NaN or infinity (``allow_nan=False``): encode values with
    :func:`encode_value` first. Floats are written with their shortest round-trip repr.
    """
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
