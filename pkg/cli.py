"""The ``losswatch`` command.

    losswatch serve [--host H] [--port P] [--db URL] [--auth on|off|auto] [--no-migrate]
    losswatch db upgrade [--db URL]
    losswatch token create --project NAME [--scope read|write|admin] [--name LABEL] [--expires 90d] [--db URL]
    losswatch token list [--project NAME] [--all] [--db URL]
    losswatch token revoke ID [--db URL]
    losswatch export --run ID [--key K ...] [--out FILE] [--db URL]
    losswatch export --project NAME --out FILE[.gz] [--db URL]       (whole project, see docs/deploy.md)
    losswatch import archive FILE [--project NEWNAME] [--db URL]
    losswatch backup --out FILE [--db URL]                            (SQLite online backup)
    losswatch sync [DIR] [--url URL] [--token TOKEN]
    losswatch demo [--url URL] [--project demo] [--steps N]
    losswatch import tensorboard LOGDIR | mlflow URI  [--url URL] [--token TOKEN] [--project P]

Server commands need the server extra (``pip install 'losswatch[server]'``); without it they say so.
Settings come from ``LOSSWATCH_*`` environment variables; flags override them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

SERVER_EXTRA_HINT = (
    "this command needs the losswatch server, which is not installed: pip install 'losswatch[server]'"
)


def _need_server() -> None:
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        _die(SERVER_EXTRA_HINT)


def _die(message: str, code: int = 2) -> NoReturn:
    print(f"losswatch: {message}", file=sys.stderr)
    raise SystemExit(code)


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from pydantic import ValidationError

    from losswatch.server.settings import Settings

    overrides = dict(extra)
    if getattr(args, "db", None):
        overrides["database_url"] = args.db
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        _die(f"invalid setting: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")


def settings_help() -> str:
    """Every setting with its environment variable and description (also in docs/configuration.md)."""
    from losswatch.server.settings import Settings

    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        lines.append(f"  LOSSWATCH_{name.upper():<24} {field.description} (default: {field.default!r})")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    _need_server()
    import uvicorn

    from losswatch.server.app import create_app
    from losswatch.server.settings import is_loopback

    extra: dict[str, Any] = {}
    if args.host:
        extra["host"] = args.host
    if args.port:
        extra["port"] = args.port
    if args.auth:
        extra["auth"] = args.auth
    if args.no_migrate:
        extra["auto_migrate"] = False
    settings = _settings(args, **extra)
    if settings.auth_required:
        print(f"losswatch: API tokens required (bound to {settings.host}); make one with "
              "`losswatch token create --project NAME --scope write`", file=sys.stderr)
    else:
        where = "a loopback address" if is_loopback(settings.host) else settings.host
        print(f"losswatch: auth is OFF (bound to {where}): anyone who can reach this port can read and write",
              file=sys.stderr)
    print(f"losswatch: database {settings.database_url.split('@')[-1]}; "
          f"serving on http://{settings.host}:{settings.port}", file=sys.stderr)
    try:
        app = create_app(settings)
        from losswatch.server.storage.db import Database, prepare_database

        db = Database(settings)  # fail early and clearly, before uvicorn starts
        try:
            prepare_database(settings, db)
        finally:
            db.dispose()
    except RuntimeError as exc:
        _die(str(exc))
    import logging

    for name in ("uvicorn.access", "uvicorn.error", "losswatch"):  # a token sent where it does not belong
        logging.getLogger(name).addFilter(RedactTokens())            # (?token=...) stays out of the log
    from losswatch.server.protocol import uvicorn_options
    from losswatch.server.slow_clients import with_timeouts

    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=args.access_log,  # request heads bounded (431), slow clients cut off (408)
                **with_timeouts(uvicorn_options(settings), settings))
    return 0


class RedactTokens:
    """A logging filter that replaces anything shaped like a losswatch token (``lw_<12 hex>_<secret>``)
    in a record's message and arguments with ``lw_<lookup>_…``."""

    def __init__(self) -> None:
        import re

        self._token = re.compile(r"(lw_[0-9a-f]{12}_)[A-Za-z0-9_\-]+")

    def _clean(self, value: Any) -> Any:
        return self._token.sub(r"\1…", value) if isinstance(value, str) and "lw_" in value else value

    def filter(self, record: Any) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    _need_server()
    from losswatch.server.storage.db import upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    print("database is at the latest revision")
    return 0


def _expiry(text: str | None) -> Any:
    """``--expires``: a duration (90d, 12h, 30m, 3600s) from now, or an ISO 8601 time (UTC if no zone)."""
    if not text:
        return None
    from datetime import UTC, datetime, timedelta

    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) + timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        _die(f"--expires takes a duration (90d, 12h, 30m) or an ISO 8601 time, not {text!r}")
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _in_transaction(args: argparse.Namespace, work: Callable[[Any], Any], *, write: bool = True,
                    failed: str = "{}", code: int = 2) -> Any:
    """``work(session)`` in one transaction on the database of ``args``, migrated to head first; any
    failure ends the command with its message (``failed`` formats it). A CLI boundary."""
    _need_server()
    from losswatch.server.storage.db import Database, prepare_database

    settings = _settings(args)
    db = Database(settings)
    try:
        prepare_database(settings, db)
        with db.write() if write else db.read() as session:
            return work(session)
    except Exception as exc:  # noqa: BLE001 - a CLI boundary: say what went wrong
        _die(failed.format(getattr(exc, "message", exc)), code)
    finally:
        db.dispose()


def cmd_token_create(args: argparse.Namespace) -> int:
    _need_server()
    from losswatch.server.services.tokens import create_token

    expires_at = _expiry(args.expires)

    def create(session: Any) -> tuple[int, str]:
        token, plaintext = create_token(session, args.project, args.scope, args.name, expires_at=expires_at)
        return token.id, plaintext

    token_id, plaintext = _in_transaction(args, create)
    print(plaintext)
    until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
    print(f"(token #{token_id}, scope {args.scope} on project {args.project!r}{until}; shown once, store it now)",
          file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    _need_server()
    from losswatch.server.services.projects import project_key
    from losswatch.server.services.tokens import list_tokens

    def read(session: Any) -> list[dict[str, Any]]:
        project_id = project_key(session, args.project)[0] if args.project else None
        return list_tokens(session, project_id, include_revoked=args.all)

    rows = _in_transaction(args, read, write=False)

    def when(dt: Any) -> str:
        return dt.isoformat(timespec="seconds") if dt else "-"

    print("id\tproject\tname\tscope\tprefix\tcreated\texpires\trevoked\tparent")
    for t in rows:
        print("\t".join(str(v) for v in (t["id"], t["project"], t["name"], t["scope"], t["prefix"],
                                         when(t["created_at"]), when(t["expires_at"]), when(t["revoked_at"]),
                                         t["parent_id"] or "-")))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _need_server()
    from losswatch.server.services.tokens import revoke_token

    gone = _in_transaction(args, lambda session: revoke_token(session, args.id))
    print(f"token #{gone['id']} {gone['name']!r} ({gone['scope']} on project {gone['project']!r}) revoked; "
          f"every server stops accepting it within LOSSWATCH_AUTH_CACHE_SECONDS (1 s by default)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _need_server()
    if args.project:
        return _export_project(args)
    from losswatch.server.services import points, runs
    from losswatch.server.storage.db import Database

    settings = _settings(args)
    db = Database(settings)
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    try:
        with db.read() as session:
            keys = args.key or list(runs.read_run(session, args.run).summary)
            for chunk in points.iter_csv(session, args.run, keys):
                out.write(chunk)
    except Exception as exc:  # noqa: BLE001
        _die(str(exc))
    finally:
        if args.out:
            out.close()
        db.dispose()
    return 0


def _export_project(args: argparse.Namespace) -> int:
    from losswatch.server.services import archive
    from losswatch.server.storage.db import Database

    if not args.out:
        _die("export --project needs --out FILE (FILE.gz for gzip)")
    settings = _settings(args)
    db = Database(settings)
    try:
        with db.read() as session:
            counts = archive.write_archive(session, args.project, args.out)
    except Exception as exc:  # noqa: BLE001 - a CLI boundary: say what went wrong
        _die(f"export failed: {exc}", 1)
    finally:
        db.dispose()
    print(f"exported project {args.project!r} to {args.out}: {counts['runs']} runs, {counts['series']} series, "
          f"{counts['points']} points, {counts['alerts']} alerts", file=sys.stderr)
    return 0


def import_archive_main(argv: Sequence[str]) -> int:
    """``losswatch import archive FILE``: load a project archive written by ``losswatch export --project``."""
    p = argparse.ArgumentParser(prog="losswatch import archive",
                                description="Load a project archive (from `losswatch export --project`) "
                                "into the database, in one transaction.")
    p.add_argument("file", help="the archive (.jsonl or .jsonl.gz)")
    p.add_argument("--project", help="import under this project name (default: the archive's)")
    p.add_argument("--db", help="database URL (default: LOSSWATCH_DATABASE_URL or sqlite:///losswatch.db)")
    args = p.parse_args(list(argv))
    _need_server()
    from losswatch.server.services import archive

    counts = _in_transaction(args, lambda session: archive.read_archive(session, args.file, project=args.project),
                             failed="import failed, nothing imported: {}", code=1)
    print(f"imported project {counts['project']!r}: {counts['runs']} runs, {counts['series']} series, "
          f"{counts['points']} points, {counts['alerts']} alerts", file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of a SQLite database while the server keeps writing (SQLite's online backup)."""
    _need_server()
    import sqlite3

    from sqlalchemy.engine import make_url

    settings = _settings(args)
    if not settings.is_sqlite:
        _die("`losswatch backup` copies SQLite databases; for PostgreSQL use pg_dump (see docs/deploy.md)")
    source = make_url(settings.database_url).database
    if not source or source == ":memory:":
        _die("the database URL names no SQLite file")
    from pathlib import Path

    if not Path(source).exists():
        _die(f"no database file at {source}")
    out = Path(args.out)
    if out.exists():
        _die(f"{out} exists already; choose a new file")
    tmp = out.with_name(out.name + ".part")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(tmp)
    try:
        # pages=-1: one step, inside one read transaction: a consistent snapshot even while the server
        # commits (WAL lets the writer go on); stepping in small pages would restart on every commit.
        src.backup(dst, pages=-1)
        ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        dst.close()
        src.close()
    if ok != "ok":
        tmp.unlink(missing_ok=True)
        _die(f"the backup failed its integrity check: {ok}", 1)
    tmp.rename(out)
    print(f"backed up {source} to {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from losswatch.client import sync

    argv = [a for a in [args.dir] if a]
    if args.url:
        argv += ["--url", args.url]
    if args.token:
        argv += ["--token", args.token]
    return int(sync.main(argv) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from losswatch import demo

    argv = ["--project", args.project]
    if args.url:
        argv += ["--url", args.url]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    return int(demo.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="losswatch", description="Watch training runs.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def db_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", help="database URL (default: LOSSWATCH_DATABASE_URL or sqlite:///losswatch.db)")

    s = sub.add_parser("serve", help="run the server", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="see `losswatch settings` for every LOSSWATCH_* setting")
    db_flag(s)
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument("--auth", choices=["on", "off", "auto"], help="require tokens (auto: off on loopback)")
    s.add_argument("--no-migrate", action="store_true", help="refuse to start if migrations are pending")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("db", help="database maintenance")
    dsub = d.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", help="apply pending migrations")
    db_flag(up)
    up.set_defaults(func=cmd_db_upgrade)

    t = sub.add_parser("token", help="API tokens")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", help="make a token (prints it once)")
    db_flag(tc)
    tc.add_argument("--project", required=True)
    tc.add_argument("--scope", choices=["read", "write", "admin"], default="write")
    tc.add_argument("--name", default="cli")
    tc.add_argument("--expires", help="stop working after this: a duration (90d, 12h, 30m) or an ISO 8601 time")
    tc.set_defaults(func=cmd_token_create)
    tl = tsub.add_parser("list", help="the tokens (never their secrets), live ones unless --all")
    db_flag(tl)
    tl.add_argument("--project", help="only this project's tokens")
    tl.add_argument("--all", action="store_true", help="also the revoked ones")
    tl.set_defaults(func=cmd_token_list)
    tr = tsub.add_parser("revoke", help="revoke a token (and the tokens made with it) by its id")
    db_flag(tr)
    tr.add_argument("id", type=int, help="the token's id, as `losswatch token list` shows it")
    tr.set_defaults(func=cmd_token_revoke)

    e = sub.add_parser("export", help="CSV of a run's series, or a whole project's archive")
    db_flag(e)
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="CSV of this run's series")
    which.add_argument("--project", help="archive of the whole project (runs, series, every point, alerts, "
                       "rule configuration); read back with `losswatch import archive FILE`")
    e.add_argument("--key", action="append", help="series key (repeat; default: all; with --run)")
    e.add_argument("--out", help="file (default: stdout; required with --project; .gz compresses)")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("backup", help="consistent copy of a SQLite database while the server runs")
    db_flag(b)
    b.add_argument("--out", required=True, help="the new file")
    b.set_defaults(func=cmd_backup)

    y = sub.add_parser("sync", help="send spooled points left by a process that died")
    y.add_argument("dir", nargs="?", help="spool directory (default: ~/.losswatch/spool)")
    y.add_argument("--url")
    y.add_argument("--token")
    y.set_defaults(func=cmd_sync)

    dm = sub.add_parser("demo", help="train three small torch models against a running server")
    dm.add_argument("--url", help="server URL (default: $LOSSWATCH_URL or http://127.0.0.1:8000)")
    dm.add_argument("--project", default="demo", help="project of the three runs (default: demo)")
    dm.add_argument("--steps", type=int, help="training steps per model (default: 1500)")
    dm.set_defaults(func=cmd_demo)

    sub.add_parser("import", help="import runs: tensorboard LOGDIR | mlflow URI | archive FILE "
                   "(see `losswatch import --help`)")

    ck = sub.add_parser("check", help="run the alert rules offline over a CSV, a TensorBoard log dir or an "
                        "export archive and print the findings")
    ck.add_argument("path", help="a CSV (key,step,value or a step column), a TensorBoard LOGDIR, an archive, or a "
                    "directory holding them")
    ck.add_argument("--config", help="a JSON rule configuration (as stored per project or run) to try")
    ck.add_argument("--info", action="store_true", help="also print info findings (single-batch spikes)")
    ck.add_argument("--json", action="store_true", help="one JSON finding per line")
    ck.set_defaults(func=cmd_check)

    st = sub.add_parser("settings", help="list every server setting")
    st.set_defaults(func=lambda a: print(settings_help()) or 0)
    return p


def cmd_check(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401  (the detectors' numpy paths)
    except ImportError:
        _die(SERVER_EXTRA_HINT)
    from losswatch import check

    return check.main(args.path, args.config, show_info=args.info, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["import", "archive"]:  # a project archive: straight into the database
        return import_archive_main(argv[2:])
    if argv[:1] == ["import"]:  # its own parser (the importers send through the client), with its own --help
        from losswatch.integrations import importers

        return int(importers.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
