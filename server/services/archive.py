"""Export and import of a whole project: a streaming, line-oriented archive (JSON lines, gzip optional).

One JSON object per line, in this order::

    {"format": "losswatch-archive", "version": 1, "project": {name, created_at, alert_config}, ...}
    {"type": "run", "run": {every column of the run}}                      for each run, then its
    {"type": "series", "run": ID, "series": {key, kind, summary, detector_state}}
    {"type": "points", "run": ID, "key": K, "steps": [...], "values": [...], "wall_us": [...]}
    {"type": "alert", "alert": {every column but the ids}}
    {"type": "end", "runs": N, "series": N, "points": N, "alerts": N}

- Values use the wire encoding of ``losswatch.client.wire``: finite numbers as JSON numbers written by
  Python's ``repr`` (so every float64, ``-0.0`` included, reads back bit for bit), non-finite ones as
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. Wall times are the stored integer microseconds.
- A ``points`` line holds at most one stored chunk (about a thousand points): exporting or importing a
  ten-million-point project keeps one chunk per series in memory, never the project.
- The ``end`` line carries the counts: an archive cut short (a full disk, a killed export) is refused
  on import instead of being half loaded.
- Not exported: tokens (secrets; make new ones), channels (their URLs and signing keys are secrets;
  add them again) and the delivery outbox.

Import writes the rows directly (no detectors run again: the detector state and the alerts come from
the archive) in one transaction, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from losswatch.client import wire
from losswatch.server.api.schemas import RunCreate
from losswatch.server.errors import InvalidRequest, LosswatchError
from losswatch.server.services.batches import check_key
from losswatch.server.services.projects import check_name, get_project, now
from losswatch.server.storage import chunks
from losswatch.server.storage.chunks import Points
from losswatch.server.storage.models import Alert, Chunk, Project, Run, Series

FORMAT = "losswatch-archive"
VERSION = 1
_RUN_COLUMNS = ("id", "name", "group", "tags", "config", "notes", "status", "created_at", "started_at",
                "ended_at", "heartbeat_at", "host", "client", "alert_config", "monitor_state")
_SERIES_COLUMNS = ("key", "kind", "count", "nonfinite", "first_step", "last_step", "last_value", "last_special",
                   "last_wall_us", "min_value", "max_value", "detector_state")
_ALERT_COLUMNS = ("run_id", "series_key", "rule", "severity", "status", "onset_step", "step", "resolved_step",
                  "value", "value_special", "reference", "message", "details", "created_at", "updated_at",
                  "resolved_at")
_TIMES = {"created_at", "started_at", "ended_at", "heartbeat_at", "updated_at", "resolved_at"}
# A points line holds one stored chunk (about 60 KB); a run line its config (at most the API's body
# limit). Anything longer is refused while it streams in, before it is held in memory.
MAX_LINE_BYTES = 32 * 1024 * 1024
MAX_ARCHIVE_BYTES = 64 * 1024**3  # decompressed
_READ = 1024 * 1024


class ArchiveError(InvalidRequest):
    code = "invalid_archive"


# --- encoding helpers -------------------------------------------------------------------------


def _time(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _float(value: float | None) -> float | str | None:
    return None if value is None else wire.encode_value(value)


def _unfloat(value: Any) -> float | None:
    return None if value is None else wire.decode_value(value)


def _columns(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = getattr(obj, name)
        if name in _TIMES:
            value = _time(value)
        elif isinstance(value, float):
            value = _float(value)
        out[name] = value
    return out


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- export ---------------------------------------------------------------------------------


def export_project(session: Session, project_name: str) -> Iterator[bytes]:
    """The archive of one project, line by line (encode each line as it is read; nothing accumulates)."""
    from losswatch import __version__

    project = get_project(session, project_name)
    yield _line({"format": FORMAT, "version": VERSION, "losswatch": __version__, "exported_at": _time(now()),
                 "project": {"name": project.name, "created_at": _time(project.created_at),
                             "alert_config": project.alert_config}})
    counts = {"runs": 0, "series": 0, "points": 0, "alerts": 0}
    run_ids = list(session.scalars(select(Run.id).where(Run.project_id == project.id).order_by(Run.created_at, Run.id)))
    for run_id in run_ids:
        run = session.get(Run, run_id)
        assert run is not None
        yield _line({"type": "run", "run": _columns(run, _RUN_COLUMNS)})
        counts["runs"] += 1
        for series in session.scalars(select(Series).where(Series.run_id == run_id).order_by(Series.key)).all():
            yield _line({"type": "series", "run": run_id, "series": _columns(series, _SERIES_COLUMNS)})
            counts["series"] += 1
            for pts in _iter_points(session, series.id):
                counts["points"] += len(pts)
                yield _line({"type": "points", "run": run_id, "key": series.key, "steps": pts.steps.tolist(),
                             "values": [wire.encode_value(v) for v in pts.values.tolist()],
                             "wall_us": pts.walls.tolist()})
            session.expunge(series)
        for alert in session.scalars(select(Alert).where(Alert.run_id == run_id).order_by(Alert.id)).all():
            yield _line({"type": "alert", "alert": _columns(alert, _ALERT_COLUMNS)})
            counts["alerts"] += 1
        session.expunge_all()
    yield _line({"type": "end", **counts})


def _iter_points(session: Session, series_id: int) -> Iterator[Points]:
    last = -1
    while True:
        rows = session.execute(
            select(Chunk.chunk_no, Chunk.steps, Chunk.values, Chunk.walls)
            .where(Chunk.series_id == series_id, Chunk.chunk_no > last).order_by(Chunk.chunk_no).limit(32)
        ).all()
        if not rows:
            return
        for row in rows:
            yield chunks.decode(row.chunk_no, row.steps, row.values, row.walls)
        last = rows[-1].chunk_no


def write_archive(session: Session, project_name: str, path: str | Path) -> dict[str, int]:
    """Write the project's archive to ``path`` (gzip when it ends in ``.gz``). Returns the counts."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    last = b""
    with opener(path, "wb") as out:  # type: ignore[operator]
        for line in export_project(session, project_name):
            out.write(line)
            last = line
    return {k: v for k, v in json.loads(last).items() if k != "type"}


# --- import ---------------------------------------------------------------------------------


def open_archive(path: str | Path) -> IO[bytes]:
    """The archive's lines, gunzipped if it starts with gzip's magic bytes."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")  # type: ignore[return-value]  # noqa: SIM115


class _SeriesWriter:
    """Re-chunks one series' points as they stream in (the archive's lines need not match the
    chunk size of this server), keeping only the last, possibly incomplete, chunk in memory."""

    def __init__(self, session: Session, series_id: int) -> None:
        self.session, self.series_id = session, series_id
        self.pending: list[Points] = []
        self.rows: list[dict[str, Any]] = []
        self.last_step = -1

    def add(self, pts: Points) -> None:
        if len(pts) == 0:
            return
        if int(pts.steps[0]) <= self.last_step or (len(pts) > 1 and bool(np.any(np.diff(pts.steps) <= 0))):
            raise ArchiveError("points of a series must come in increasing step order")
        self.last_step = int(pts.steps[-1])
        self.pending.append(pts)
        merged = chunks.concat(self.pending)
        nos, starts = chunks.chunk_numbers(merged.steps)
        keep_from = int(starts[-1])  # the last chunk may continue on the next line
        self._write(Points(merged.steps[:keep_from], merged.values[:keep_from], merged.walls[:keep_from]))
        self.pending = [Points(merged.steps[keep_from:], merged.values[keep_from:], merged.walls[keep_from:])]

    def close(self) -> None:
        self._write(chunks.concat(self.pending))
        self.pending = []
        self.flush()

    def _write(self, pts: Points) -> None:
        if len(pts) == 0:
            return
        nos, starts = chunks.chunk_numbers(pts.steps)
        ends = np.append(starts[1:], len(pts))
        for no, a, b in zip(nos.tolist(), starts.tolist(), ends.tolist(), strict=True):
            enc = chunks.encode(Points(pts.steps[a:b], pts.values[a:b], pts.walls[a:b]))
            self.rows.append({"series_id": self.series_id, "chunk_no": no, **enc.__dict__})
        if len(self.rows) >= 64:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.session.execute(insert(Chunk), self.rows)
            self.rows = []


def _points_of(line: dict[str, Any]) -> Points:
    steps, values, walls = line["steps"], line["values"], line["wall_us"]
    if not (isinstance(steps, list) and isinstance(values, list) and isinstance(walls, list)) \
            or not len(steps) == len(values) == len(walls):
        raise ArchiveError("a points line needs steps, values and wall_us of one length")
    try:
        return Points(np.array(steps, dtype=np.int64), np.array([wire.decode_value(v) for v in values], np.float64),
                      np.array(walls, dtype=np.int64))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ArchiveError(f"bad points line: {exc}") from None


def bounded_lines(f: IO[bytes], *, max_line_bytes: int = MAX_LINE_BYTES,
                  max_total_bytes: int = MAX_ARCHIVE_BYTES) -> Iterator[bytes]:
    """The lines of an (already gunzipped) archive stream, each read at most ``max_line_bytes`` at a
    time: a line longer than that, or more than ``max_total_bytes`` in all, is refused as soon as it
    is seen, with at most one line's worth of it in memory (a gzip bomb never inflates further)."""
    total = 0
    n = 0
    while True:
        line = f.readline(max_line_bytes + 1)
        if not line:
            return
        n += 1
        total += len(line)
        if len(line) > max_line_bytes:
            raise ArchiveError(f"line {n} is longer than {max_line_bytes} bytes: not a losswatch archive "
                               "(or a damaged one); nothing imported", code="archive_too_large")
        if total > max_total_bytes:
            raise ArchiveError(f"the archive inflates to more than {max_total_bytes} bytes; nothing imported",
                               code="archive_too_large")
        yield line


def _check_run(data: dict[str, Any], n: int) -> None:
    """A run record holds what the API would have accepted: its id, name, group, tags, notes, config
    and client pass the API's own validators (``RunCreate``)."""
    fields = {k: data.get(k) for k in ("id", "name", "group", "tags", "config", "notes", "client")}
    if not isinstance(fields["id"], str):
        raise ArchiveError(f"line {n}: a run record needs a string id")
    try:
        RunCreate.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ArchiveError(f"line {n}: run {fields['id'][:80]!r}: invalid {where}: {first['msg']}") from None


def import_archive(session: Session, lines: Iterable[bytes], *, project: str | None = None) -> dict[str, Any]:
    """Load an archive into the caller's transaction. ``project`` renames the project (default: the
    archive's name). The project may exist already (its rule configuration is then kept); a run id
    that exists already is refused: run ids are global, and an import never overwrites."""
    it = iter(lines)
    try:
        head = json.loads(next(it))
    except (StopIteration, ValueError):
        raise ArchiveError("not a losswatch archive (empty, or the first line is not JSON)") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise ArchiveError("not a losswatch archive (no 'format: losswatch-archive' header)")
    if head.get("version") != VERSION:
        raise ArchiveError(f"archive version {head.get('version')!r} is not supported (this losswatch reads {VERSION})")
    meta = head["project"]
    name = check_name(project or meta["name"])
    proj = session.scalar(select(Project).where(Project.name == name))
    if proj is None:
        proj = Project(name=name, created_at=_parse_time(meta["created_at"]), alert_config=meta.get("alert_config"))
        session.add(proj)
        session.flush()
    counts = {"runs": 0, "series": 0, "points": 0, "alerts": 0}
    writer: _SeriesWriter | None = None
    series_ids: dict[tuple[str, str], int] = {}
    run_ids: set[str] = set()
    ended = None
    for n, raw in enumerate(it, start=2):
        if not raw.strip():
            continue
        if ended is not None:
            raise ArchiveError(f"line {n}: data after the end line")
        try:
            line = json.loads(raw)
            kind = line["type"]
        except (ValueError, KeyError, TypeError):
            raise ArchiveError(f"line {n} is not an archive record") from None
        if kind == "points":
            key = (line.get("run"), line.get("key"))
            if writer is None or series_ids.get(key) != writer.series_id:
                raise ArchiveError(f"line {n}: points of {key} outside their series")
            pts = _points_of(line)
            writer.add(pts)
            counts["points"] += len(pts)
            continue
        if writer is not None:
            writer.close()
            writer = None
        if kind == "run":
            data = dict(line["run"])
            _check_run(data, n)
            run_ids.add(data["id"])
            if session.get(Run, data["id"]) is not None:
                raise ArchiveError(f"run {data['id']!r} exists already in this database; delete it first "
                                   "(DELETE /api/v1/runs/{id}?confirm={id}) or import into another database",
                                   code="run_exists")
            for t in _TIMES & set(data):
                data[t] = _parse_time(data[t])
            session.add(Run(project_id=proj.id, **data))
            session.flush()
            counts["runs"] += 1
        elif kind == "series":
            data = dict(line["series"])
            if line.get("run") not in run_ids:
                raise ArchiveError(f"line {n}: a series of run {str(line.get('run'))[:80]!r}, which the archive "
                                   "does not hold before it")
            try:
                check_key(data.get("key"))
            except LosswatchError as exc:
                raise ArchiveError(f"line {n}: {exc.message}") from None
            if data.get("kind") not in wire.SERIES_KINDS:
                raise ArchiveError(f"line {n}: series kind {str(data.get('kind'))[:40]!r} is not one of "
                                   f"{', '.join(wire.SERIES_KINDS)}")
            for f in ("last_value", "min_value", "max_value"):
                data[f] = _unfloat(data[f])
            sid = session.execute(insert(Series).values(run_id=line["run"], **data).returning(Series.id)).scalar_one()
            series_ids[(line["run"], data["key"])] = sid
            writer = _SeriesWriter(session, sid)
            counts["series"] += 1
        elif kind == "alert":
            data = dict(line["alert"])
            if data.get("run_id") not in run_ids:
                raise ArchiveError(f"line {n}: an alert of run {str(data.get('run_id'))[:80]!r}, which the "
                                   "archive does not hold before it")
            for t in _TIMES & set(data):
                data[t] = _parse_time(data[t])
            for f in ("value", "reference"):
                data[f] = _unfloat(data[f])
            session.execute(insert(Alert).values(project_id=proj.id, **data))
            counts["alerts"] += 1
        elif kind == "end":
            ended = {k: line.get(k) for k in counts}
        else:
            raise ArchiveError(f"line {n}: unknown record type {kind!r}")
    if writer is not None:
        writer.close()
    if ended is None:
        raise ArchiveError("the archive has no end line: it was cut short; nothing imported")
    if ended != counts:
        raise ArchiveError(f"the archive's end line says {ended} but it holds {counts}; nothing imported")
    return {"project": name, **counts}


def read_archive(session: Session, path: str | Path, *, project: str | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES, max_total_bytes: int = MAX_ARCHIVE_BYTES) -> dict[str, Any]:
    with open_archive(path) as f:
        try:
            lines = bounded_lines(f, max_line_bytes=max_line_bytes, max_total_bytes=max_total_bytes)
            return import_archive(session, lines, project=project)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ArchiveError(f"the archive is not a complete gzip file ({exc}); nothing imported") from None
