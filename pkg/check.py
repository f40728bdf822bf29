"""``losswatch check FILE|DIR``: run the alert rules offline over logged runs and print the findings.

Inputs (a directory is searched for all of them):

- a CSV in the export format ``key,step,value[,wall_time]`` (what ``GET /runs/{id}/export.csv`` and
  ``losswatch export`` write), or a wide CSV with a ``step`` column and one column per series;
- a TensorBoard log directory (event files; needs the ``tensorboard`` package);
- a project archive (``losswatch export --project``; JSON lines, gzip or not).

Each run goes through ``losswatch.server.detectors.evaluate_run``, the function the server runs at
ingest, in one batch: the rules are batch-invariant, so the findings are the ones the server would have
raised. ``--config`` takes a rule configuration (the JSON a project or a run stores: ``{"plateau":
{"share": 0.3}, "silenced": ["misalignment"]}``), so a team can try settings on its old runs first.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losswatch.client import wire


@dataclass
class OfflineRun:
    name: str
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def _number(text: str) -> float:
    text = text.strip()
    return wire.decode_value(text) if text in ("NaN", "Infinity", "-Infinity") else float(text)


def read_csv(path: Path) -> OfflineRun:
    run = OfflineRun(path.stem)
    with path.open(newline="") as fh:
        rows = csv.reader(fh)
        header = [h.strip() for h in next(rows, [])]
        if header[:3] == ["key", "step", "value"]:
            for row in rows:
                if len(row) >= 3 and row[2].strip() != "":
                    s, v = run.series.setdefault(row[0], ([], []))
                    s.append(int(float(row[1])))
                    v.append(_number(row[2]))
        elif "step" in header:
            si = header.index("step")
            cols = [(i, h) for i, h in enumerate(header) if i != si and h not in ("wall_time", "epoch", "time")]
            for row in rows:
                if len(row) <= si or row[si].strip() == "":
                    continue
                step = int(float(row[si]))
                for i, h in cols:
                    if i < len(row) and row[i].strip() != "":
                        s, v = run.series.setdefault(h, ([], []))
                        s.append(step)
                        v.append(_number(row[i]))
        else:
            raise ValueError(f"{path}: a CSV needs the columns key,step,value or a step column")
    run.kinds = {k: wire.guess_kind(k) for k in run.series}
    return run


def read_archive(path: Path) -> list[OfflineRun]:
    with path.open("rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    fh = gzip.open(path, "rt") if gz else path.open()
    runs: dict[str, OfflineRun] = {}
    with fh:
        for line in fh:
            obj = json.loads(line)
            t = obj.get("type")
            if t == "run":
                runs[obj["run"]["id"]] = OfflineRun(obj["run"]["name"])
            elif t == "series":
                runs[obj["run"]].kinds[obj["series"]["key"]] = obj["series"]["kind"]
            elif t == "points":
                s, v = runs[obj["run"]].series.setdefault(obj["key"], ([], []))
                s.extend(obj["steps"])
                v.extend(wire.decode_value(x) if isinstance(x, str) else float(x) for x in obj["values"])
    return list(runs.values())


def read_tensorboard(directory: Path, root: Path) -> OfflineRun:
    from losswatch.integrations import importers

    imported = importers.read_tensorboard(directory, root)
    run = OfflineRun(imported.name, {k: (s, v) for k, (s, v, _) in imported.series.items()})
    run.kinds = {k: wire.guess_kind(k) for k in run.series}
    return run


def is_archive(path: Path) -> bool:
    try:
        with path.open("rb") as probe:
            head = probe.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rt") as fh:  # type: ignore[operator]
            first = fh.readline(4096)
        return '"losswatch-archive"' in first
    except (OSError, UnicodeDecodeError, EOFError):
        return False


def load(path: Path) -> Iterator[OfflineRun]:
    """Every run found at ``path``."""
    if path.is_dir():
        events = sorted({p.parent for p in path.rglob("*tfevents*")})
        for d in events:
            yield read_tensorboard(d, path)
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix == ".csv":
                yield read_csv(p)
            elif p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz", ".gz")) and is_archive(p):
                yield from read_archive(p)
        return
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if "tfevents" in path.name:
        yield read_tensorboard(path.parent, path.parent)
    elif is_archive(path):
        yield from read_archive(path)
    elif path.suffix == ".csv":
        yield read_csv(path)
    else:
        raise ValueError(f"{path}: not a CSV, a TensorBoard log or a losswatch archive")


def check_run(run: OfflineRun, config: Any) -> list[Any]:
    """The findings of every rule over the run (one batch: the same as the server's, batch-invariant)."""
    from losswatch.server.detectors import evaluate_run

    lr = None
    for k, kind in run.kinds.items():
        if kind == "lr" and run.series[k][1]:
            lr = run.series[k][1][-1]
    _, findings = evaluate_run({}, run.kinds, run.series, config, lr=lr)
    return findings


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return wire.encode_value(v) if not math.isfinite(v) else f"{v:.4g}"


def main(path: str, config_path: str | None = None, show_info: bool = False, as_json: bool = False) -> int:
    from losswatch.server.detectors import RuleConfig

    config = RuleConfig.default()
    if config_path:
        try:
            config = RuleConfig.from_dict(json.loads(Path(config_path).read_text()))
        except (OSError, ValueError) as exc:
            print(f"losswatch check: bad --config {config_path}: {exc}")
            return 2
    total = 0
    try:
        for run in load(Path(path)):
            found = [f for f in check_run(run, config)
                     if f.action in ("fire", "escalate") and (show_info or f.severity != "info")]
            total += len(found)
            for f in found:
                if as_json:
                    print(json.dumps({"run": run.name, **f.to_dict()}))
                else:
                    print(f"{run.name}\t{f.rule}\t{f.key}\t{f.step}\t{f.severity}\t{f.reason}")
    except (ValueError, KeyError, csv.Error) as exc:
        print(f"losswatch check: {exc}")
        return 2
    if not as_json:
        print(f"{total} finding(s)")
    return 0
