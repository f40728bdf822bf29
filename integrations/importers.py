"""``losswatch import``: bring TensorBoard logs and MLflow runs into losswatch.

::

    losswatch import tensorboard LOGDIR [--project P] [--url URL] [--token T]
    losswatch import mlflow URI         [--project P] [--url URL] [--token T] [--experiment NAME ...]

- **tensorboard**: every directory under LOGDIR that holds event files (``events.out.tfevents.*``)
  becomes one run, named by its path relative to LOGDIR, except the sub-directories that
  ``add_scalars("grp", {"a": ..., "b": ...})`` writes (``grp_a``, ``grp_b``): those become series
  ``grp/a``, ``grp/b`` of their parent's run; its scalars (classic ``simple_value`` ones
  and the ``scalars`` plugin's tensors) are read with TensorBoard's own ``EventAccumulator`` and
  keep their tags, steps and wall times. Project: ``--project``, default ``tensorboard``.
- **mlflow**: every run of every experiment (or of the ``--experiment`` ones) of the tracking URI
  (``sqlite:///mlflow.db``, ``http://host:5000``, ``file:///…/mlruns``…), read with ``MlflowClient``:
  params become the config, tags ``key=value`` tags, each metric's full history a series (MLflow's
  timestamps the wall times). Project: ``--project``, default the experiment's name (characters a
  project name cannot hold become ``-``).

Runs get ids derived from their source (the event directory's absolute path, the MLflow run id) and
project, so importing the same thing into the same project again rewrites the same runs instead of
making copies. Points travel through
the normal ingest API in batches of ``--batch`` points; a progress line goes to stderr.
Needs the ``tensorboard`` or ``mlflow`` (``mlflow-skinny`` is enough) package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from losswatch.client import settings, wire
from losswatch.client.transport import DEFAULT_URL, HTTPTransport

EVENT_FILE = "events.out.tfevents"
_STATUS = {"RUNNING": "running", "SCHEDULED": "running", "FINISHED": "finished", "FAILED": "failed",
           "KILLED": "stopped"}


@dataclass
class ImportedRun:
    """One run to send: what the source said, as plain data. ``source`` names where it came from;
    its id is derived from the source and the project it goes to."""

    source: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    status: str = "finished"
    # key -> (steps, values, wall times in seconds)
    series: dict[str, tuple[list[int], list[float], list[float]]] = field(default_factory=dict)
    id: str = ""

    @property
    def points(self) -> int:
        return sum(len(s[0]) for s in self.series.values())


class ImportError_(Exception):  # noqa: N801 - not the builtin ImportError
    """The import cannot go on (server refused, source unreadable)."""


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """``[=====>    ] 12,000/30,000 points  run 2/5 train`` on stderr: redrawn in place on a terminal,
    a line per run otherwise."""

    def __init__(self, total_runs: int, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.total_runs = total_runs
        self._last = 0.0

    def update(self, index: int, name: str, done: int, total: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and (not self.tty or now - self._last < 0.1):
            return
        self._last = now
        width = 30
        filled = width if total == 0 else int(width * done / total)
        bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
        line = f"[{bar[:width]}] {done:,}/{total:,} points  run {index}/{self.total_runs} {name}"
        if self.tty:
            self.out.write("\r" + line[:120].ljust(120) + ("\n" if final else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


# --- sending ----------------------------------------------------------------------------------


class Sender:
    """Creates runs and posts their points through the HTTP API, in batches, synchronously."""

    def __init__(self, url: str, token: str | None, batch_points: int = 20_000) -> None:
        self.transport = HTTPTransport(url, token, timeout=60)
        self.batch_points = batch_points

    def _call(self, method: str, path: str, body: Any) -> Any:
        for attempt in range(5):
            try:
                status, _, data = self.transport.request(method, path, wire.dumps(body))
            except Exception as exc:  # noqa: BLE001 - a transport error: retry a few times
                if attempt == 4:
                    raise ImportError_(f"{method} {path}: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
                continue
            if status in (429, 502, 503, 504) and attempt < 4:
                time.sleep(0.5 * 2**attempt)
                continue
            if status >= 300:
                raise ImportError_(f"{method} {path}: HTTP {status} {data[:500].decode(errors='replace')}")
            return json.loads(data) if data else None
        raise AssertionError("unreachable")

    def send(self, project: str, run: ImportedRun, progress: Progress, index: int) -> None:
        prefix = run.source.split(":", 1)[0]
        run.id = f"{prefix}-{hashlib.sha1(f'{project}/{run.source}'.encode()).hexdigest()[:32]}"
        self._call("POST", f"/api/v1/projects/{project}/runs",
                   {"id": run.id, "name": run.name[:500] or run.id[:8], "config": _jsonable(run.config),
                    "tags": run.tags[:100], "client": {"importer": "losswatch import"}})
        # a run imported again: the config and tags of the source win
        self._call("PATCH", f"/api/v1/runs/{run.id}", {"config": _jsonable(run.config), "tags": run.tags[:100]})
        total = run.points
        done = 0
        progress.update(index, run.name, done, total)
        for body, n in self._batches(run):
            self._call("POST", f"/api/v1/runs/{run.id}/points", body)
            done += n
            progress.update(index, run.name, done, total)
        self._call("POST", f"/api/v1/runs/{run.id}/finish",
                   {"status": run.status if run.status != "running" else "finished"})
        progress.update(index, run.name, done, total, final=True)

    def _batches(self, run: ImportedRun) -> Iterator[tuple[dict[str, Any], int]]:
        """The run's points as ingest bodies of at most ``batch_points`` points each."""
        entries: list[dict[str, Any]] = []
        n = 0
        for key, (steps, values, walls) in run.series.items():
            i = 0
            while i < len(steps):
                take = min(self.batch_points - n, len(steps) - i)
                entries.append(wire.series_entry(key, wire.guess_kind(key), steps[i : i + take],
                                                 values[i : i + take], walls[i : i + take]))
                n += take
                i += take
                if n >= self.batch_points:
                    yield wire.batch(entries), n
                    entries, n = [], 0
        if entries:
            yield wire.batch(entries), n

    def close(self) -> None:
        self.transport.close()


def _jsonable(obj: Any) -> Any:
    from losswatch.client.run import _jsonable as convert

    return convert(obj)


_PROJECT_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def project_name(name: str) -> str:
    """A valid project name from an experiment's name (``My exp/1`` -> ``My-exp-1``)."""
    cleaned = _PROJECT_BAD.sub("-", name).strip("-._")[:200]
    return cleaned or "imported"


# --- TensorBoard ------------------------------------------------------------------------------


def event_dirs(logdir: Path) -> list[Path]:
    """Every directory under ``logdir`` (itself included) holding event files, sorted."""
    found = set()
    for root, _dirs, files in os.walk(logdir):
        if any(f.startswith(EVENT_FILE) for f in files):
            found.add(Path(root))
    return sorted(found)


def read_tensorboard(directory: Path, logdir: Path) -> ImportedRun:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(
        str(directory), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    rel = directory.relative_to(logdir)
    name = str(rel) if str(rel) != "." else (logdir.resolve().name or "run")
    run = ImportedRun(source=f"tb:{directory.resolve()}", name=name,
                      config={"source": "tensorboard", "logdir": str(directory.resolve())})
    tags = acc.Tags()
    for tag in tags.get(event_accumulator.SCALARS, []):
        events = acc.Scalars(tag)
        run.series[tag] = ([int(e.step) for e in events], [float(e.value) for e in events],
                           [float(e.wall_time) for e in events])
    for tag in tags.get(event_accumulator.TENSORS, []):  # scalars written as tensors (new_style=True)
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        events = acc.Tensors(tag)
        values = [float(tensor_util.make_ndarray(e.tensor_proto).reshape(-1)[0]) for e in events]
        run.series[tag] = ([int(e.step) for e in events], values, [float(e.wall_time) for e in events])
    for key, (steps, values, walls) in list(run.series.items()):
        run.series[key] = _valid_steps(steps, values, walls)
    return run


def _valid_steps(steps: list[int], values: list[float], walls: list[float]) -> tuple[list[int], list[float], list[float]]:
    keep = [i for i, s in enumerate(steps) if 0 <= s <= wire.MAX_STEP]
    if len(keep) == len(steps):
        return steps, values, walls
    return [steps[i] for i in keep], [values[i] for i in keep], [walls[i] for i in keep]


def import_tensorboard(logdir: Path, sender: Sender, project: str, out: TextIO | None = None) -> list[ImportedRun]:
    if not logdir.is_dir():
        raise ImportError_(f"{logdir} is not a directory")
    dirs = event_dirs(logdir)
    if not dirs:
        raise ImportError_(f"no TensorBoard event files ({EVENT_FILE}.*) under {logdir}")
    runs = merge_scalars_groups({d: read_tensorboard(d, logdir) for d in dirs})
    progress = Progress(len(runs), out)
    done = []
    for index, run in enumerate(runs.values(), 1):
        sender.send(project, run, progress, index)
        done.append(run)
    return done


def _group_of(directory: Path, run: ImportedRun) -> dict[str, str] | None:
    """``{tag: "tag/subtag"}`` when ``directory`` is what ``add_scalars(main_tag, {subtag: ...})``
    writes (torch's and tensorboardX's SummaryWriter): a sub-directory named
    ``<main_tag with / as _>_<subtag>`` holding scalars tagged ``main_tag``; else None."""
    if not run.series:
        return None
    keys = {}
    for tag in run.series:
        prefix = tag.replace("/", "_") + "_"
        if not directory.name.startswith(prefix) or len(directory.name) == len(prefix):
            return None
        keys[tag] = f"{tag}/{directory.name[len(prefix):]}"
    return keys


def merge_scalars_groups(runs: dict[Path, ImportedRun]) -> dict[Path, ImportedRun]:
    """``add_scalars`` groups become series ``tag/subtag`` of their parent's run, as losswatch's own
    SummaryWriter logs them, instead of runs of their own."""
    out = dict(runs)
    for directory in sorted(runs, key=lambda d: len(d.parts), reverse=True):  # deepest first
        parent = out.get(directory.parent)
        keys = _group_of(directory, runs[directory]) if parent is not None and directory.parent != directory else None
        if parent is None or keys is None:
            continue
        for tag, key in keys.items():
            if key not in parent.series:
                parent.series[key] = runs[directory].series[tag]
        del out[directory]
    return out


# --- MLflow -----------------------------------------------------------------------------------


def _paged(fetch: Any) -> Iterable[Any]:
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def read_mlflow_runs(client: Any, experiments: Sequence[str] | None) -> Iterator[tuple[str, Any]]:
    """(experiment name, mlflow Run) for every run of the chosen experiments."""
    from mlflow.entities import ViewType

    exps = list(_paged(lambda t: client.search_experiments(view_type=ViewType.ALL, page_token=t)))
    if experiments:
        wanted = set(experiments)
        missing = wanted - {e.name for e in exps}
        if missing:
            raise ImportError_(f"no such MLflow experiment(s): {', '.join(sorted(missing))}")
        exps = [e for e in exps if e.name in wanted]
    for exp in exps:
        for run in _paged(lambda t, e=exp: client.search_runs([e.experiment_id], run_view_type=ViewType.ALL,
                                                              max_results=1000, page_token=t)):
            yield exp.name, run


def convert_mlflow_run(client: Any, run: Any) -> ImportedRun:
    info, data = run.info, run.data
    tags = [f"{k}={v}" if v != "" else k for k, v in sorted(data.tags.items()) if k != "mlflow.runName"]
    out = ImportedRun(source=f"mlflow:{info.run_id}", name=info.run_name or info.run_id[:8],
                      config=dict(data.params), tags=tags, status=_STATUS.get(info.status, "finished"))
    for key in sorted(data.metrics):
        history = sorted(client.get_metric_history(info.run_id, key), key=lambda m: (m.step, m.timestamp))
        out.series[key] = _valid_steps([int(m.step) for m in history], [float(m.value) for m in history],
                                       [m.timestamp / 1000.0 for m in history])
    return out


def import_mlflow(uri: str, sender: Sender, project: str | None, experiments: Sequence[str] | None = None,
                  out: TextIO | None = None) -> list[ImportedRun]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = list(read_mlflow_runs(client, experiments))
    if not found:
        raise ImportError_(f"no MLflow runs at {uri}")
    progress = Progress(len(found), out)
    done = []
    for index, (exp_name, mlrun) in enumerate(found, 1):
        run = convert_mlflow_run(client, mlrun)
        sender.send(project or project_name(exp_name), run, progress, index)
        done.append(run)
    return done


# --- the command ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="losswatch import", description="Import runs into losswatch.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help=f"losswatch server (default: $LOSSWATCH_URL or {DEFAULT_URL})")
    common.add_argument("--token", default=None, help="API token with write scope (default: $LOSSWATCH_TOKEN)")
    common.add_argument("--batch", type=int, default=20_000, help="points per request (default: 20000)")
    sub = parser.add_subparsers(dest="source", required=True)
    sub.add_parser("archive", help="a project archive of `losswatch export --project` (losswatch import archive -h)")
    tb = sub.add_parser("tensorboard", parents=[common], help="scalars of TensorBoard event files")
    tb.add_argument("logdir", type=Path, help="directory with event files (searched recursively)")
    tb.add_argument("--project", default=None, help="project (default: $LOSSWATCH_PROJECT or 'tensorboard')")
    ml = sub.add_parser("mlflow", parents=[common], help="runs of an MLflow tracking store or server")
    ml.add_argument("uri", help="MLflow tracking URI: sqlite:///mlflow.db, http://host:5000, file:///path/mlruns")
    ml.add_argument("--project", default=None, help="one project for every run (default: each experiment's name)")
    ml.add_argument("--experiment", action="append", default=None, help="only this experiment (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["archive"]:  # `losswatch import archive` writes to the database: the CLI handles it
        print("losswatch import: a project archive goes straight into the database; run `losswatch import "
              "archive FILE` (losswatch import archive -h)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    url, token = settings.url(args.url), settings.token(args.token)
    try:
        sender = Sender(url, token, batch_points=max(1, args.batch))
    except ValueError as exc:
        print(f"losswatch import: {exc}", file=sys.stderr)
        return 2
    try:
        if args.source == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                print("losswatch import: reading event files needs TensorBoard: pip install tensorboard", file=sys.stderr)
                return 2
            project = settings.project(args.project, default="tensorboard")
            runs = import_tensorboard(args.logdir, sender, project)
        else:
            try:
                import mlflow  # noqa: F401
            except ImportError:
                print("losswatch import: reading MLflow runs needs MLflow: pip install mlflow-skinny", file=sys.stderr)
                return 2
            runs = import_mlflow(args.uri, sender, args.project, args.experiment)
    except ImportError_ as exc:
        print(f"losswatch import: {exc}", file=sys.stderr)
        return 1
    finally:
        sender.close()
    points = sum(r.points for r in runs)
    print(f"imported {len(runs)} run(s), {points:,} points into {url}", file=sys.stderr)
    for run in runs:
        print(f"{run.id}\t{run.name}")
    return 0
