"""Data safety: a project's archive round-trips exactly between SQLite and PostgreSQL (NaN, ±Inf,
-0.0, wall times, alerts, rule configuration); deleting a run is explicit, needs admin scope,
cascades and is logged; `losswatch backup` copies a SQLite database while ingest goes on."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from losswatch import cli
from losswatch.server.services import archive
from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from losswatch.server.storage.models import Alert, Chunk, Run, Series
from tests.conftest import make_client

SPECIALS = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 5e-324, 1.7976931348623157e308, -2.5e-300, 0.1]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _fill(c: Any) -> dict[str, Any]:
    """A project with two runs, every kind of value, three chunks' worth of steps, an alert and
    rule configuration on the project and on a run."""
    assert c.put("/api/v1/projects/proj/alert-config", json={}).status_code in (200, 404)
    r1 = c.post("/api/v1/projects/proj/runs", json={
        "id": "run-one", "name": "lr-3e-4", "group": "sweep", "tags": ["yolo", "ünï"], "notes": "n\u2028",
        "config": {"lr": 0.0003, "optim": {"name": "adam", "betas": [0.9, 0.999]}, "nan": "NaN"},
        "host": "gpu-07", "client": {"losswatch": "0.1.0"}, "alerts": {"plateau": False}}).json()
    assert c.put("/api/v1/projects/proj/alert-config", json={"divergence": {"rtol": 2.0}}).status_code == 200
    steps = list(range(0, 3000)) + [2**40, 2**62]
    values = [math.sin(i / 10) * 1e-3 for i in range(3000)] + [1.5, 2.5]
    for i, v in enumerate(SPECIALS):
        values[100 + i] = v
    walls = [1764380000.0 + i * 0.001 + 0.000001 for i in range(len(steps))]
    body = {"series": [
        {"key": "train/loss", "kind": "loss", "steps": steps,
         "values": [v if math.isfinite(v) else ("NaN" if v != v else ("Infinity" if v > 0 else "-Infinity"))
                    for v in values], "wall_times": walls},
        {"key": "val/mAP50-95", "kind": "metric", "steps": [0, 1000], "values": [0.1, 0.2]},
        {"key": "lr", "steps": [5], "values": ["-Infinity"]},
    ]}
    r = c.post(f"/api/v1/runs/{r1['id']}/points", json=body)
    assert r.status_code == 200, r.text
    c.post(f"/api/v1/runs/{r1['id']}/finish", json={"status": "failed"})
    r2 = c.post("/api/v1/projects/proj/runs", json={"id": "run-two"}).json()
    c.post(f"/api/v1/runs/{r2['id']}/points", json={"series": [{"key": "x", "steps": [7], "values": [-0.0]}]})
    return {"runs": [r1["id"], r2["id"]], "steps": steps, "values": values}


def _as_float(obj: Any) -> Any:
    """PostgreSQL's JSONB writes a float such as 3.5e121 back as an integer literal; the detectors read
    either the same. Compare detector and monitor state with numbers as floats."""
    if isinstance(obj, dict):
        return {k: _as_float(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_float(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    return obj


def _normalise(line: dict[str, Any]) -> dict[str, Any]:
    for record, field in (("series", "detector_state"), ("run", "monitor_state")):
        if line.get("type") == record and line[record].get(field) is not None:
            line[record][field] = _as_float(line[record][field])
    return line


def _export(url: str, path: Path) -> list[dict[str, Any]]:
    db = Database(Settings(database_url=url))
    try:
        with db.read() as s:
            archive.write_archive(s, "proj", path)
    finally:
        db.dispose()
    with archive.open_archive(path) as f:
        lines = [_normalise(json.loads(line)) for line in f]
    lines[0].pop("exported_at")
    return lines


def _import(url: str, path: Path, **kw: Any) -> dict[str, Any]:
    db = Database(Settings(database_url=url))
    try:
        from losswatch.server.app import prepare_database

        prepare_database(db.settings, db)
        with db.write() as s:
            return archive.read_archive(s, path, **kw)
    finally:
        db.dispose()


def _api_view(url: str, run_ids: list[str]) -> dict[str, Any]:
    with make_client(url) as c:
        view: dict[str, Any] = {"config": c.get("/api/v1/projects/proj/alert-config").json(), "runs": {}}
        for rid in run_ids:
            run = c.get(f"/api/v1/runs/{rid}").json()
            pts = {k: c.get(f"/api/v1/runs/{rid}/points", params={"key": k, "limit": 100_000}).json()
                   for k in run["summary"]}
            view["runs"][rid] = {"run": run, "points": pts, "alerts": c.get(f"/api/v1/runs/{rid}/alerts").json(),
                                 "alert_config": c.get(f"/api/v1/runs/{rid}/alert-config").json()}
        return view


@pytest.mark.postgres
@pytest.mark.parametrize("direction", ["sqlite->postgres", "postgres->sqlite"])
def test_project_archive_round_trips_exactly_across_backends(direction: str, sqlite_url: str, pg_database: str,
                                                             tmp_path: Path) -> None:
    src, dst = (sqlite_url, pg_database) if direction.startswith("sqlite") else (pg_database, sqlite_url)
    with make_client(src) as c:
        filled = _fill(c)
    first = _export(src, tmp_path / "a.jsonl.gz")
    assert first[-1] == {"type": "end", "runs": 2, "series": 4, "points": 3002 + 2 + 1 + 1, "alerts": len(
        [x for x in first if x.get("type") == "alert"])}
    assert any(x.get("type") == "alert" for x in first), "the NaN should have fired an alert"
    counts = _import(dst, tmp_path / "a.jsonl.gz")
    assert counts["points"] == 3006
    second = _export(dst, tmp_path / "b.jsonl")
    assert second == first  # every line: runs (all columns), series summaries, points, alerts

    # and through the API: every point exact, bit for bit, wall times to the microsecond
    a, b = _api_view(src, filled["runs"]), _api_view(dst, filled["runs"])
    assert a == b
    loss = b["runs"]["run-one"]["points"]["train/loss"]
    got = [archive.wire.decode_value(v) for v in loss["values"]]
    assert [_bits(x) for x in got] == [_bits(x) for x in filled["values"]]
    assert loss["steps"] == filled["steps"]
    assert loss["wall_times"][1] == pytest.approx(1764380000.001001, abs=1e-7)
    x = b["runs"]["run-two"]["points"]["x"]["values"][0]
    assert x == 0 and math.copysign(1, x) == -1
    assert b["config"] == {"divergence": {"rtol": 2.0}}
    assert b["runs"]["run-one"]["alert_config"] == {"plateau": False}
    assert b["runs"]["run-one"]["run"]["status"] == "failed"


def test_archive_import_refuses_existing_runs_and_cut_archives(sqlite_url: str, tmp_path: Path) -> None:
    with make_client(sqlite_url) as c:
        _fill(c)
    path = tmp_path / "a.jsonl"
    _export(sqlite_url, path)
    with pytest.raises(archive.ArchiveError, match="exists already"):
        _import(sqlite_url, path, project="copy")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    lines = path.read_bytes().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_bytes(b"".join(lines[:-3]))
    with pytest.raises(archive.ArchiveError, match="cut short|end line"):
        _import(other, tmp_path / "cut.jsonl")
    db = Database(Settings(database_url=other))
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0  # nothing half loaded
    db.dispose()
    (tmp_path / "junk.jsonl").write_bytes(b'{"hello": 1}\n')
    with pytest.raises(archive.ArchiveError, match="not a losswatch archive"):
        _import(other, tmp_path / "junk.jsonl")


def test_export_and_import_through_the_cli(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with make_client(sqlite_url) as c:
        _fill(c)
    out = tmp_path / "p.jsonl.gz"
    assert cli.main(["export", "--project", "proj", "--out", str(out), "--db", sqlite_url]) == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert cli.main(["import", "archive", str(out), "--db", other, "--project", "restored"]) == 0
    err = capsys.readouterr().err
    assert "2 runs, 4 series, 3006 points" in err
    with make_client(other) as c:
        runs = c.get("/api/v1/projects/restored/runs").json()
        assert runs["total"] == 2
    # the run CSV export still works, and so do the other importers' argument parsing
    assert cli.main(["export", "--run", "run-one", "--key", "lr", "--out", str(tmp_path / "x.csv"),
                     "--db", sqlite_url]) == 0
    assert (tmp_path / "x.csv").read_text() .splitlines()[1].startswith("lr,5,-Infinity,")
    with pytest.raises(SystemExit):
        cli.main(["import", "tensorboard", "--help"])


def test_archive_streams_a_big_series_in_chunks(sqlite_url: str, tmp_path: Path) -> None:
    """No line holds more than a chunk; memory does not grow with the project."""
    n = 200_000
    with make_client(sqlite_url) as c:
        rid = c.post("/api/v1/projects/proj/runs", json={}).json()["id"]
        for start in range(0, n, 50_000):
            r = c.post(f"/api/v1/runs/{rid}/points", json={"series": [
                {"key": "l", "steps": list(range(start, start + 50_000)), "values": [1.0] * 50_000}]})
            assert r.status_code == 200
    path = tmp_path / "big.jsonl"
    lines = _export(sqlite_url, path)
    sizes = [len(x["steps"]) for x in lines if x.get("type") == "points"]
    assert sum(sizes) == n and max(sizes) <= 4096
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert _import(other, path)["points"] == n
    db = Database(Settings(database_url=other))
    with db.read() as s:
        assert s.scalar(select(func.sum(Chunk.count))) == n
    db.dispose()


# --- deleting a run ----------------------------------------------------------------------------


def test_deleting_a_run_needs_admin_and_confirmation_cascades_and_is_logged(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(Settings(database_url=db_url))
    with make_client(db_url, auth="on") as c:
        with db.write() as s:
            tok = {scope: create_token(s, "a", scope, f"ci-{scope}")[1] for scope in ("read", "write", "admin")}
            other_admin = create_token(s, "b", "admin", "b-admin")[1]
        h = {scope: {"Authorization": f"Bearer {t}"} for scope, t in tok.items()}
        rid = c.post("/api/v1/projects/a/runs", json={"name": "doomed"}, headers=h["write"]).json()["id"]
        keep = c.post("/api/v1/projects/a/runs", json={"name": "kept"}, headers=h["write"]).json()["id"]
        for run in (rid, keep):
            r = c.post(f"/api/v1/runs/{run}/points", headers=h["write"], json={"series": [
                {"key": "train/loss", "steps": [0, 1, 2], "values": [1.0, "NaN", 2.0]}]})
            assert r.status_code == 200 and r.json()["alerts"], r.text
        url = f"/api/v1/runs/{rid}"
        for who in ("read", "write"):
            assert c.delete(url, params={"confirm": rid}, headers=h[who]).status_code == 403
        assert c.delete(url, params={"confirm": rid},
                        headers={"Authorization": f"Bearer {other_admin}"}).status_code == 404  # not its project
        assert c.delete(url, params={"confirm": rid}).status_code == 401
        r = c.delete(url, headers=h["admin"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "confirmation_required"
        assert c.delete(url, params={"confirm": keep}, headers=h["admin"]).status_code == 422
        with caplog.at_level(logging.WARNING, logger="losswatch.audit"):
            r = c.delete(url, params={"confirm": rid}, headers=h["admin"])
        assert r.status_code == 200, r.text
        assert r.json() == {"id": rid, "project": "a", "name": "doomed", "series": 1, "points": 3, "alerts": 1}
        line = " ".join(rec.getMessage() for rec in caplog.records if rec.name == "losswatch.audit")
        assert rid in line and "'ci-admin'" in line and "3 points" in line
        assert tok["admin"] not in caplog.text
        assert c.get(url, headers=h["admin"]).status_code == 404
        assert c.delete(url, params={"confirm": rid}, headers=h["admin"]).status_code == 404
        assert c.get(f"/api/v1/runs/{keep}/points", params={"key": "train/loss"}, headers=h["read"]).json()[
            "steps"] == [0, 1, 2]
    with db.read() as s:  # the cascade: nothing of the run is left
        assert s.scalar(select(func.count()).select_from(Series).where(Series.run_id == rid)) == 0
        assert s.scalar(select(func.count()).select_from(Alert).where(Alert.run_id == rid)) == 0
        assert s.scalar(select(func.count()).select_from(Chunk)) == 1  # the kept run's only chunk
    db.dispose()


# --- backup ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sqlite_backup_while_ingest_goes_on(tmp_path: Path, server_factory: Any) -> None:
    import httpx

    src = tmp_path / "live.db"
    server = server_factory(f"sqlite:///{src}").start()
    rid = httpx.post(server.url + "/api/v1/projects/p/runs", json={}).json()["id"]
    stop = threading.Event()
    sent = [0]

    def ingest() -> None:
        with httpx.Client(base_url=server.url) as h:
            step = 0
            while not stop.is_set():
                r = h.post(f"/api/v1/runs/{rid}/points", json={"series": [
                    {"key": "l", "steps": list(range(step, step + 500)), "values": [0.5] * 500}]})
                assert r.status_code == 200
                step += 500
                sent[0] = step

    t = threading.Thread(target=ingest)
    t.start()
    try:
        time.sleep(1.0)
        before = sent[0]
        out = tmp_path / "backup.db"
        assert cli.main(["backup", "--db", f"sqlite:///{src}", "--out", str(out)]) == 0
        after = sent[0]
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert sent[0] > after  # ingest went on during and after the backup
    con = sqlite3.connect(out)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (count,) = con.execute("SELECT count FROM series WHERE key = 'l'").fetchone()
    con.close()
    assert before <= count <= after, (before, count, after)  # a consistent snapshot of a moment between
    with make_client(f"sqlite:///{out}") as c:  # the copy opens as a losswatch database
        steps: list[int] = []
        start: int | None = 0
        while start is not None:
            page = c.get(f"/api/v1/runs/{rid}/points", params={"key": "l", "start": start, "limit": 100_000}).json()
            steps += page["steps"]
            start = page["next_start"]
        assert steps == list(range(count))
    with pytest.raises(SystemExit):  # never overwrites
        cli.main(["backup", "--db", f"sqlite:///{src}", "--out", str(out)])
