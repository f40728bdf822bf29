"""``losswatch sync [DIR]``: deliver the spools that dead processes left behind.

Each spool file (see :mod:`losswatch.client.spool`) starts with what is needed to create its run
again; :func:`sync_dir` creates the run (idempotent), replays the batches in order (the server
overwrites a (series, step) written twice, so replaying is harmless), ends the run if the file
holds a finish marker, and deletes the file once everything was accepted. A file whose process
is still alive (it holds the file's lock) is left alone; a damaged line (the torn last line of a
killed process) is skipped and counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from losswatch.client import delivery, settings, spool, wire
from losswatch.client.transport import HTTPTransport, Transport


def sync_dir(
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
    *,
    transport: Transport | None = None,
    retries: int = 3,
) -> dict[str, Any]:
    """Replay every spool file of ``path`` (default ``LOSSWATCH_SPOOL_DIR`` or ``~/.losswatch/spool``).

    The server is ``url``, else the one the run was logging to, else ``LOSSWATCH_URL``; the token is
    ``token``, else ``LOSSWATCH_TOKEN`` (tokens are never written to spool files). Returns a report:
    ``{"dir", "files", "synced": [paths], "skipped": [paths of live processes], "failed": {path: why},
    "runs": [run ids], "points", "batches", "dropped_points", "damaged_lines", "warnings": [...]}``.
    """
    directory = Path(path) if path is not None else spool.default_dir()
    report: dict[str, Any] = {
        "dir": str(directory), "files": 0, "synced": [], "skipped": [], "failed": {}, "runs": [],
        "points": 0, "batches": 0, "dropped_points": 0, "damaged_lines": 0, "warnings": [],
    }  # fmt: skip
    if not directory.is_dir():
        return report
    files = sorted(directory.glob("*" + spool.SUFFIX), key=lambda p: (p.stat().st_mtime, p.name))
    token = settings.token(token)
    transports: dict[str, Transport] = {}
    try:
        for file in files:
            report["files"] += 1
            try:
                _sync_file(file, url, token, transport, transports, retries, report)
            except OSError as exc:
                report["failed"][str(file)] = f"{type(exc).__name__}: {exc}"
    finally:
        for t in transports.values():
            t.close()
    return report


class _Failed(Exception):
    pass


def _sync_file(
    file: Path,
    url: str | None,
    token: str | None,
    transport: Transport | None,
    transports: dict[str, Transport],
    retries: int,
    report: dict[str, Any],
) -> None:
    with open(file, "rb") as fh:
        if not spool.try_lock(fh):
            report["skipped"].append(str(file))
            return
        header: dict[str, Any] | None = None
        created = False
        t: Transport | None = None
        points = batches = dropped = 0
        try:
            for line in fh:
                record = spool.parse_line(line)
                if record is None:
                    report["damaged_lines"] += 1
                    continue
                kind = record.get("t")
                if kind == "run":
                    if header is None:
                        header = record
                    continue
                if header is None:
                    raise _Failed("the file does not start with its run record")
                if t is None:
                    t = transport or _transport_for(url or header.get("url"), token, transports)
                run_id = str(header["run_id"])
                if not created:
                    _create(t, header, retries)
                    created = True
                body = spool.points_body(record) if kind == "points" else None
                if body is not None:
                    res = _retrying(retries, delivery.send_points, t, run_id, body, delivery.Limits())
                    if res.outcome == "missing_run":
                        _create(t, header, retries)
                        res = _retrying(retries, delivery.send_points, t, run_id, body, delivery.Limits())
                    if res.outcome not in ("ok", "dropped"):
                        raise _Failed(res.describe())
                    for _, note in res.notes:
                        report["warnings"].append(f"{file.name}: {note}")
                    n = wire.count_points(body)
                    points += n - res.dropped_points
                    dropped += res.dropped_points
                    batches += 1
                elif kind == "update" and isinstance(record.get("body"), dict):
                    body = wire.dumps(record["body"])
                    res = _retrying(retries, delivery.update_run, t, run_id, body)
                    if res.outcome == "missing_run":
                        _create(t, header, retries)
                        res = _retrying(retries, delivery.update_run, t, run_id, body)
                    if res.outcome == "dropped":
                        report["warnings"].append(f"{file.name}: run update refused: {res.describe()}")
                    elif not res.ok:
                        raise _Failed(res.describe())
                elif kind == "finish":
                    res = _retrying(
                        retries, delivery.finish_run, t, run_id, str(record.get("status", "finished"))
                    )
                    if res.outcome not in ("ok", "dropped"):
                        raise _Failed(res.describe())
            if header is None:
                raise _Failed("no run record (empty or damaged file)")
            if not created:  # a run that logged nothing: still create it
                t = transport or _transport_for(url or header.get("url"), token, transports)
                _create(t, header, retries)
        except _Failed as exc:
            report["failed"][str(file)] = str(exc)
            return
        report["runs"].append(str(header["run_id"]))
        report["points"] += points
        report["batches"] += batches
        report["dropped_points"] += dropped
        file.unlink()
        report["synced"].append(str(file))


def _transport_for(url: str | None, token: str | None, cache: dict[str, Transport]) -> Transport:
    url = settings.url(url)
    if url not in cache:
        cache[url] = HTTPTransport(url, token)
    return cache[url]


def _create(t: Transport, header: dict[str, Any], retries: int) -> None:
    payload = dict(header.get("create") or {})
    payload["id"] = header["run_id"]
    res = _retrying(retries, delivery.create_run, t, str(header.get("project") or "default"), payload)
    if not res.ok:
        raise _Failed(f"cannot create run {header['run_id']}: {res.describe()}")


def _retrying(retries: int, call: Any, *args: Any) -> delivery.Result:
    delay = 0.5
    for attempt in range(retries + 1):
        res: delivery.Result = call(*args)
        if res.outcome != "retry" or attempt == retries:
            return res
        time.sleep(max(delay, min(res.retry_after or 0.0, 30.0)))
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """``losswatch sync [DIR] [--url URL]``; returns the exit status (1 if a file failed)."""
    parser = argparse.ArgumentParser(
        prog="losswatch sync",
        description="Send the points that training processes spooled to disk and could not deliver.",
    )
    parser.add_argument(
        "dir", nargs="?", help="spool directory (default: $LOSSWATCH_SPOOL_DIR or ~/.losswatch/spool)"
    )
    parser.add_argument("--url", help="server URL (default: the one each run used, else $LOSSWATCH_URL)")
    parser.add_argument("--token", help="API token with write scope (default: $LOSSWATCH_TOKEN)")
    args = parser.parse_args(argv)
    report = sync_dir(args.dir, url=args.url, token=args.token)
    out = sys.stdout
    for path in report["synced"]:
        print(f"synced   {path}", file=out)
    for path in report["skipped"]:
        print(f"skipped  {path} (its process is still running)", file=out)
    for path, why in report["failed"].items():
        print(f"FAILED   {path}: {why}", file=out)
    for text in report["warnings"]:
        print(f"warning  {text}", file=out)
    print(
        f"{len(report['synced'])} of {report['files']} spool files delivered from {report['dir']}: "
        f"{report['points']} points in {report['batches']} batches"
        + (f", {report['dropped_points']} points refused" if report["dropped_points"] else "")
        + (f", {report['damaged_lines']} damaged lines skipped" if report["damaged_lines"] else ""),
        file=out,
    )
    return 1 if report["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
