"""The spool: an append-only file of what could not be sent yet.

One file per run (``<spool_dir>/<run_id>.jsonl``; ``<run_id>@rank<N>.jsonl`` when every rank
sends), one record per line, each line framed as::

    <crc32 of the JSON, 8 hex digits> <one JSON object>\\n

A line whose checksum does not match or that lacks its newline (the torn last line of a process
killed in the middle of a write) is skipped by every reader. Records:

- ``{"t": "run", "v": 1, "project": ..., "run_id": ..., "create": {...}, "url": ..., "rank": ...}``
  the first line of every file: everything needed to create the run again (never the token);
- ``{"t": "points", "seq": N, "body": {...ingest batch of losswatch.client.wire...}}``, or
  ``{"t": "points", "seq": N, "columnar": "<base64 of the binary columnar batch>"}`` (what the
  client writes: no conversion when it spools; :func:`points_body` reads either);
- ``{"t": "update", "seq": N, "body": {...}}`` a change of the run's fields (``Run.update``: the
  body of ``PATCH /api/v1/runs/{id}``);
- ``{"t": "finish", "seq": N, "status": "finished"}`` once the run has ended.

Every line reaches the operating system when it is written (a killed process loses nothing that
was spooled); ``fsync`` runs at most once a second and when the run ends (for power loss).
The live process holds an exclusive ``flock`` on the file (POSIX), so ``losswatch sync`` leaves the
spool of a living process alone. A spool that has been replayed is deleted.
"""

from __future__ import annotations

import base64
import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from losswatch.client import settings
from losswatch.client.wire import dumps, is_columnar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]

SPOOL_VERSION = 1
SUFFIX = ".jsonl"


def default_dir() -> Path:
    """``LOSSWATCH_SPOOL_DIR``, else ``~/.losswatch/spool``."""
    env = settings.spool_dir()
    return Path(env) if env else Path.home() / ".losswatch" / "spool"


def frame(payload: bytes) -> bytes:
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def points_payload(seq: int, body: bytes) -> bytes:
    """The record of an ingest batch: a JSON body inline, a binary columnar one in base64."""
    if is_columnar(body):
        return b'{"t":"points","seq":%d,"columnar":"%s"}' % (seq, base64.b64encode(body))
    return b'{"t":"points","seq":%d,"body":%s}' % (seq, body)


def points_body(record: dict[str, Any]) -> bytes | None:
    """The ingest body (JSON or binary columnar) of a points record; None if it holds neither."""
    if isinstance(record.get("body"), dict):
        return dumps(record["body"])
    if isinstance(record.get("columnar"), str):
        try:
            body = base64.b64decode(record["columnar"], validate=True)
        except ValueError:
            return None
        return body if is_columnar(body) else None
    return None


def update_payload(seq: int, body: bytes) -> bytes:
    return b'{"t":"update","seq":%d,"body":%s}' % (seq, body)


def finish_payload(seq: int, status: str) -> bytes:
    return dumps({"t": "finish", "seq": seq, "status": status})


def parse_line(line: bytes) -> dict[str, Any] | None:
    """The record of one framed line, or ``None`` if it is torn or corrupt."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(
    path: str | os.PathLike[str], offset: int = 0
) -> Iterator[tuple[dict[str, Any] | None, int]]:
    """Every line of a spool file from ``offset``: (record or ``None`` if damaged, offset after it)."""
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        for line in f:
            pos += len(line)
            yield parse_line(line), pos


def try_lock(f: BinaryIO) -> bool:
    """Take the exclusive lock of an open spool file without waiting; False if someone holds it."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Spool:
    """The spool of one live run. Used under the sender's lock; raises ``OSError`` on disk trouble."""

    def __init__(
        self, path: Path, header: dict[str, Any], fsync: bool = True, fsync_interval: float = 1.0
    ) -> None:
        self.path = path
        self._header = header
        self._fsync = fsync
        self._fsync_interval = fsync_interval  # every write reaches the OS at once; fsync at most this often
        self._synced_at = 0.0
        self._f: BinaryIO | None = None
        self._rf: BinaryIO | None = None
        self.committed = 0  # bytes of complete lines written so far
        self.start = (
            0  # where this process's lines begin (an earlier process with this run id may have left some)
        )

    @property
    def is_open(self) -> bool:
        return self._f is not None

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "ab")  # noqa: SIM115 - kept open while the run lives
        try:
            if not try_lock(f):
                raise OSError(f"{self.path} is locked by another process")
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                f.write(frame(dumps(self._header)))
            elif self._tail_is_torn(size):
                f.write(b"\n")  # close a torn line of an earlier process so it is skipped, not glued to ours
            f.flush()
            self.committed = f.tell()
            self.start = 0 if size else self.committed
        except BaseException:
            f.close()
            raise
        self._f = f
        return f

    def _tail_is_torn(self, size: int) -> bool:
        with open(self.path, "rb") as r:
            r.seek(size - 1)
            return r.read(1) != b"\n"

    def append(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        f = self._f or self._open()
        data = b"".join(frame(p) for p in payloads)
        try:
            f.write(data)
            f.flush()
            now = time.monotonic()
            if self._fsync and now - self._synced_at >= self._fsync_interval:
                os.fsync(f.fileno())
                self._synced_at = now
        except OSError:
            # a partial write leaves a torn line: truncate back so later lines stay readable
            try:
                f.truncate(self.committed)
                f.seek(self.committed)
            except OSError:
                pass
            raise
        self.committed += len(data)

    def read(self, offset: int) -> tuple[dict[str, Any] | None, int] | None:
        """The record at ``offset`` and the offset after it; ``None`` at the committed end."""
        if offset >= self.committed:
            return None
        if self._rf is None:
            self._rf = open(self.path, "rb")  # noqa: SIM115
        self._rf.seek(offset)
        line = self._rf.readline()
        if not line:
            return None
        return parse_line(line), offset + len(line)

    def delete(self) -> None:
        """Remove the file (everything in it was delivered) and release the lock."""
        if self._f is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.close()
        self.committed = 0
        self.start = 0

    def close(self) -> None:
        if self._f is not None and self._fsync:
            try:
                os.fsync(self._f.fileno())
            except OSError:
                pass
        for f in (self._rf, self._f):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._rf = self._f = None
