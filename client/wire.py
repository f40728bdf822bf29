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

The same batch in binary (``Content-Type: application/vnd.losswatch.columnar``), what the client
sends by default: every value travels as its eight bytes, so NaN payloads, ±Inf and -0.0 arrive bit
for bit, and the server reads each column with one ``numpy.frombuffer``. All integers little-endian::

    magic        4 bytes   b"LWC1"
    n_series     uint32
    n_series times, the series descriptors:
      n_points   uint32
      kind       uint8     index into SERIES_KINDS; 255: not given (the server guesses from the key)
      flags      uint8     bit 0: wall times present (else the time of arrival)
      key_len    uint16    then key_len bytes: the key in UTF-8
    zero bytes up to the next multiple of 8 from the start of the body
    n_series times, the columns of each series in descriptor order:
      steps      n_points x int64
      values     n_points x float64 (IEEE 754)
      wall_times n_points x float64, seconds since the epoch (only when flag bit 0 is set)

The body ends exactly after the last column. :func:`encode_columnar` writes it (standard library
``array``), :func:`columnar_layout` reads and checks the frame, :func:`columnar_to_batch` turns it
into the JSON document above. The server answers in JSON either way.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

NAN: Final = "NaN"
POS_INF: Final = "Infinity"
NEG_INF: Final = "-Infinity"
NONFINITE_SPELLINGS: Final = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}

MAX_STEP: Final = 2**63 - 1
MAX_KEY_LENGTH: Final = 250
SERIES_KINDS: Final = ("loss", "loss_component", "metric", "lr", "grad_norm", "other")

JSON_TYPE: Final = "application/json"
COLUMNAR_TYPE: Final = "application/vnd.losswatch.columnar"
COLUMNAR_MAGIC: Final = b"LWC1"
KIND_GUESS: Final = 255  # the kind byte of a series whose kind is not given
FLAG_WALLS: Final = 1
_HEAD = struct.Struct("<4sI")
_DESC = struct.Struct("<IBBH")
_KIND_INDEX: Final = {k: i for i, k in enumerate(SERIES_KINDS)}
_BIG_ENDIAN = sys.byteorder == "big"
# A run id: 1-64 letters, digits, '_' or '-' (the client's choice, or a uuid4 hex). The server's schemas, the
# dashboard's pages and its scripts (``/static/wire.js``, generated from this module) take it from here.
RUN_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
# The rules the server runs (losswatch.server.detectors.RULES; a test keeps the two equal): ``stop_on`` names.
ALERT_RULES: Final = ("non_finite", "spike", "divergence", "plateau", "overfitting", "misalignment", "stalled")
END_STATUSES: Final = ("finished", "failed", "stopped", "crashed")  # what ``Run.finish(status=)`` may say
TOKEN_COOKIE: Final = "losswatch_token"  # the dashboard's sign-in cookie, read by the API as a token

# Control characters: Unicode's Cc (C0 including tab, CR and LF; DEL; C1 including NEL U+0085), plus
# the line and paragraph separators U+2028/U+2029. None of them may appear in a one-line name (a
# series key, a run name, group or tag): each one breaks a line somewhere (a log, a CSV, an e-mail
# header). Multi-line text (a run's notes) may hold tab, LF, CR and the two separators.
_CONTROL_ONE_LINE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_MULTI_LINE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def control_character(text: str, *, multiline: bool = False) -> str | None:
    """The first control character of ``text`` as ``U+XXXX``, or None when there is none.
    The rule for names (``multiline=False``) and for free text such as notes (``multiline=True``);
    the server refuses what this finds, at every door (REST, MLflow, archive import)."""
    found = (_CONTROL_MULTI_LINE if multiline else _CONTROL_ONE_LINE).search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


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
    try:
        total = sum(out)  # type: ignore[arg-type]
        if total - total == 0:  # NaN or ±Inf anywhere (or an overflow) makes this NaN: look one by one
            return out
    except TypeError:
        pass
    for i, v in enumerate(out):
        if v != v or v in (math.inf, -math.inf):
            out[i] = encode_value(v)  # type: ignore[arg-type]  # a float: strings are only written here
    return out


_STAGES: Final = frozenset({"train", "training", "val", "valid", "validation", "eval", "evaluation", "test", "metrics"})
_EVAL_STAGES: Final = frozenset({"val", "valid", "validation", "eval", "evaluation", "test", "metrics"})
_TOTAL_LOSS: Final = (("loss",), ("total", "loss"), ("loss", "total"), ("objective",))
# loss terms that users name without the word "loss" (Lightning's train_ce, train_l2, ...)
_LOSS_TERMS: Final = frozenset({"ce", "nll", "kl", "kld", "mse", "l1", "l2", "bce", "focal", "elbo", "recon",
                                "reconstruction", "box", "cls", "dfl", "obj", "reg", "regularization", "aux"})
# accuracy-like words: an evaluation metric wherever it is logged (val_acc, train_acc, f1, mAP50-95)
_METRIC_WORDS: Final = frozenset({"acc", "accuracy", "precision", "recall", "f1", "auc", "auroc", "iou",
                                  "miou", "dice", "bleu", "rouge", "top1", "top5", "map", "ap", "ap50",
                                  "map50", "fitness", "score", "psnr", "ssim", "mcc", "r2"})
# bookkeeping that frameworks log beside evaluation metrics (eval_runtime, epoch): not a metric
_BOOKKEEPING: Final = frozenset({"epoch", "step", "runtime", "time", "seconds", "samples", "per", "second",
                                 "steps", "flos", "memory"})
_TOKENS: Final = re.compile(r"[/_.\-\s()]+")
_GRAD_NORM: Final = re.compile(r"grad(?:ient)?[_-]?(?:\d+(?:\.\d+)?[_-]?)?norm")


def guess_kind(key: str, evaluation: bool = False) -> str:
    """The series kind a key most likely has, for callers that do not say: the one place that
    decides (the client, the integrations, the MLflow API and the importers all call it).
    ``evaluation``: the key was logged as an evaluation result (``run.log_eval``), so any key that is
    neither a loss, a learning rate, a gradient norm nor bookkeeping is a ``metric`` whatever its name
    (``eval_runtime``, ``epoch``, ``samples_per_second`` stay ``other``: a rule must not judge them).

    ====================================================  ================
    key                                                   kind
    ====================================================  ================
    ``sys/...`` (system metrics)                          other
    ``lr``, ``lr/pg0``, ``lr-Adam``, ``learning_rate``    lr
    ``grad_norm``, ``train/grad_norm``, ``grad_2.0_norm``  grad_norm
    ``loss``, ``train/loss``, ``train_loss_epoch``,       loss
    ``val_loss``, ``eval_loss``, ``val/loss``, ``total_loss``
    ``val/box_loss`` (an evaluation loss, as YOLO's)      loss
    ``train/loss/box``, ``train/box_loss``, ``loss_cls``,  loss_component
    ``train_ce``, ``train_l2``, ``val/loss/box``
    ``val_acc``, ``train_acc``, ``f1``, ``mAP50-95``,     metric
    anything else under ``val/``, ``eval/``, ``test/``,
    ``metrics/`` (but not ``eval_runtime``, ``epoch``)
    anything else                                         other
    ====================================================  ================
    """
    k = key.lower()
    if k.startswith("sys/"):
        return "other"
    tokens = [t for t in _TOKENS.split(k) if t]
    leaf = k.rsplit("/", 1)[-1]
    if (leaf in ("lr", "learning_rate") or k.startswith(("lr/", "lr-", "lr_")) or "/lr" in k
            or leaf.endswith("_lr")):
        return "lr"
    if _GRAD_NORM.search(k) or "gradnorm" in k:
        return "grad_norm"
    stage = tokens[0] if tokens and tokens[0] in _STAGES else None
    core = tokens[1:] if stage else tokens
    while core and core[-1] in ("epoch", "step"):
        core = core[:-1]
    if any("loss" in t for t in core):
        if tuple(core) in _TOTAL_LOSS:
            return "loss"
        if stage in _EVAL_STAGES and core[-1] == "loss":
            return "loss"
        return "loss_component"
    if len(core) == 1 and core[0] in _LOSS_TERMS:
        return "loss_component"
    if any(t in _METRIC_WORDS or t.startswith(("map", "top")) and t[-1:].isdigit() for t in core):
        return "metric"
    if (stage in _EVAL_STAGES or evaluation) and core and not any(t in _BOOKKEEPING for t in core):
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


# ---- the binary columnar body --------------------------------------------------------------------


def is_columnar(body: bytes | None) -> bool:
    return body is not None and body[:4] == COLUMNAR_MAGIC


def content_type(body: bytes | None) -> str:
    """The Content-Type of a request body made here: columnar bodies start with their magic."""
    return COLUMNAR_TYPE if is_columnar(body) else JSON_TYPE


def _le(arr: array) -> bytes:  # type: ignore[type-arg]
    if _BIG_ENDIAN:  # pragma: no cover - every platform losswatch runs on is little-endian
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def encode_columnar(
    series: Iterable[tuple[str, str | None, Sequence[int], Sequence[float], Sequence[float] | None]],
) -> bytes:
    """The binary body of ``(key, kind or None, steps, values, wall_times or None)`` series.

    Columns may be lists or ``array`` objects (``array('q')`` for steps, ``array('d')`` for the
    others: those are copied as they are). Raises ``ValueError`` for a column of another length, a
    step outside int64, a value that is not a number, an unknown kind or a key too long to frame."""
    head: list[bytes] = []
    cols: list[bytes] = []
    count = 0
    for key, kind, steps, values, walls in series:
        k = key.encode("utf-8")
        if len(k) > 0xFFFF:
            raise ValueError(f"key too long for the columnar frame: {len(k)} bytes")
        n = len(steps)
        if len(values) != n or (walls is not None and len(walls) != n):
            raise ValueError(f"series {key!r}: steps, values and wall_times differ in length")
        kind_byte = KIND_GUESS if kind is None else _KIND_INDEX.get(kind)
        if kind_byte is None:
            raise ValueError(f"unknown kind {kind!r}")
        try:
            s = steps if type(steps) is array and steps.typecode == "q" else array("q", steps)
            v = values if type(values) is array and values.typecode == "d" else array("d", values)
            w = None if walls is None else walls if type(walls) is array and walls.typecode == "d" else array("d", walls)
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"series {key!r}: {exc}") from None
        head.append(_DESC.pack(n, kind_byte, 0 if w is None else FLAG_WALLS, len(k)))
        head.append(k)
        cols.append(_le(s))
        cols.append(_le(v))
        if w is not None:
            cols.append(_le(w))
        count += 1
    frame = _HEAD.pack(COLUMNAR_MAGIC, count) + b"".join(head)
    return frame + bytes(-len(frame) % 8) + b"".join(cols)


class ColumnarSeries(NamedTuple):
    """Where one series of a columnar body lies: its columns start at ``offset`` (steps, then
    values, then wall times when ``has_walls``), ``n`` items each."""

    key: str
    kind: str | None
    n: int
    has_walls: bool
    offset: int


class ColumnarError(ValueError):
    """A columnar body that does not follow the frame; ``loc`` names the place as the API does."""

    def __init__(self, loc: list[object], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


MAX_COLUMNAR_SERIES: Final = 100_000


def columnar_layout(body: bytes) -> list[ColumnarSeries]:
    """Check the frame of a columnar body and say where each series lies. O(series), no point is
    read. Raises :class:`ColumnarError` (the body's length must match the descriptors exactly)."""
    size = len(body)
    if size < _HEAD.size or body[:4] != COLUMNAR_MAGIC:
        raise ColumnarError(["body"], f"a columnar body starts with {COLUMNAR_MAGIC!r} and a series count")
    _, count = _HEAD.unpack_from(body, 0)
    if count > MAX_COLUMNAR_SERIES:
        raise ColumnarError(["body", "series"], f"at most {MAX_COLUMNAR_SERIES} series per batch, got {count}")
    pos = _HEAD.size
    descs: list[tuple[str, str | None, int, bool]] = []
    for i in range(count):
        if pos + _DESC.size > size:
            raise ColumnarError(["body", "series", i], "the body ends inside the series descriptors")
        n, kind_byte, flags, key_len = _DESC.unpack_from(body, pos)
        pos += _DESC.size
        if pos + key_len > size:
            raise ColumnarError(["body", "series", i, "key"], "the body ends inside a key")
        try:
            key = body[pos : pos + key_len].decode("utf-8")
        except UnicodeDecodeError:
            raise ColumnarError(["body", "series", i, "key"], "key must be valid UTF-8") from None
        pos += key_len
        if kind_byte == KIND_GUESS:
            kind = None
        elif kind_byte < len(SERIES_KINDS):
            kind = SERIES_KINDS[kind_byte]
        else:
            raise ColumnarError(["body", "series", i, "kind"],
                                f"kind byte must be 0..{len(SERIES_KINDS) - 1} or {KIND_GUESS}, got {kind_byte}")
        if flags & ~FLAG_WALLS:
            raise ColumnarError(["body", "series", i, "flags"], f"unknown flag bits {flags:#x}")
        descs.append((key, kind, n, bool(flags & FLAG_WALLS)))
    desc_end, pos = pos, pos + (-pos % 8)
    if pos > size or body[desc_end:pos].strip(b"\0"):
        raise ColumnarError(["body"], "the padding after the descriptors must be zero bytes")
    out: list[ColumnarSeries] = []
    for i, (key, kind, n, has_walls) in enumerate(descs):
        out.append(ColumnarSeries(key, kind, n, has_walls, pos))
        pos += n * (24 if has_walls else 16)
        if pos > size:
            raise ColumnarError(["body", "series", i], f"the body ends inside the columns of series {i} ({n} points)")
    if pos != size:
        raise ColumnarError(["body"], f"{size - pos} bytes after the last column")
    return out


def _column(body: bytes, typecode: str, offset: int, n: int) -> array:  # type: ignore[type-arg]
    arr = array(typecode)
    arr.frombytes(body[offset : offset + 8 * n])
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return arr


def columnar_columns(body: bytes) -> list[tuple[ColumnarSeries, array, array, array | None]]:  # type: ignore[type-arg]
    """Every series of a columnar body with its columns as ``array`` objects (standard library)."""
    out = []
    for s in columnar_layout(body):
        steps = _column(body, "q", s.offset, s.n)
        values = _column(body, "d", s.offset + 8 * s.n, s.n)
        walls = _column(body, "d", s.offset + 16 * s.n, s.n) if s.has_walls else None
        out.append((s, steps, values, walls))
    return out


def columnar_to_batch(body: bytes) -> dict[str, Any]:
    """The JSON document (:func:`batch`) of a columnar body; raises :class:`ColumnarError`."""
    entries = []
    for s, steps, values, walls in columnar_columns(body):
        entry: dict[str, Any] = {"key": s.key}
        if s.kind is not None:
            entry["kind"] = s.kind
        entry["steps"] = steps.tolist()
        entry["values"] = encode_values(values.tolist())
        if walls is not None:
            entry["wall_times"] = walls.tolist()
        entries.append(entry)
    return batch(entries)


def batch_to_columnar(doc: dict[str, Any]) -> bytes:
    """The columnar body of a JSON document (:func:`batch`), non-finite spellings decoded."""
    return encode_columnar(
        (s["key"], s.get("kind"), s["steps"], [decode_value(v) for v in s["values"]], s.get("wall_times"))
        for s in doc["series"]
    )


def count_points(body: bytes) -> int:
    """The number of points of an ingest body in either encoding (a columnar one is not decoded)."""
    if is_columnar(body):
        return sum(s.n for s in columnar_layout(body))
    return sum(len(s.get("steps", ())) for s in json.loads(body).get("series", ()))


def loads_batch(body: bytes) -> dict[str, Any]:
    """An ingest body in either encoding, as the JSON document."""
    return columnar_to_batch(body) if is_columnar(body) else json.loads(body)  # type: ignore[no-any-return]


def to_json(body: bytes) -> bytes:
    """An ingest body in JSON: columnar bodies re-encoded, JSON ones as they are."""
    return dumps(columnar_to_batch(body)) if is_columnar(body) else body
