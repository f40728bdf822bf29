"""Control characters in names at every door (issue 12, item 4), on SQLite and PostgreSQL.

Run names, groups and tags follow the rule series keys follow (``losswatch.client.wire.control_character``:
no C0, DEL, C1, U+2028 or U+2029); notes are multi-line text and may hold tab, CR, LF and the line
separators, nothing else of the kind. Every door refuses what the rule refuses: the REST API (422),
the MLflow API (MLflow's ``INVALID_PARAMETER_VALUE``) and ``losswatch import archive``. E-mail alerts
never fail on a header, even for a name stored before the rule (subject lines are sanitised too).
"""

from __future__ import annotations

import gzip
import json
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from losswatch.client import wire
from losswatch.server.alerts import senders
from losswatch.server.services import archive
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from losswatch.server.storage.models import Run
from tests.conftest import BIN, make_client
from tests.receivers import SMTPReceiver, wait_for

EVIL = "evil\r\nBcc: victim@example.org"
BAD_NAMES = [EVIL, "a\nb", "a\rb", "tab\there", "\x1b[31mred", "a\x7fb", "nel\x85here", "ls\u2028here", "ps\u2029",
             "\x0bvt", "\x9bcsi"]
GOOD_NAMES = ["lr-3e-4", "🔥 run ü", "λ·ε", "e\u0301", "\u200b zero-width", "a b", "<img src=x>"]
MLFLOW = "/api/2.0/mlflow"


def _envelope(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_the_rule(bad: str) -> None:
    assert wire.control_character(bad) is not None
    assert wire.control_character(bad, multiline=True) is None or bad[0] not in "\t\n\r\u2028\u2029"


@pytest.mark.parametrize("good", GOOD_NAMES)
def test_the_rule_lets_ordinary_unicode_through(good: str) -> None:
    assert wire.control_character(good) is None


def test_names_groups_and_tags_refuse_control_characters_through_the_api(client: Any) -> None:
    rid = client.post("/api/v1/projects/p/runs", json={"name": "ok"}).json()["id"]
    for bad in BAD_NAMES:
        for body, loc in (({"name": bad}, ["body", "name"]), ({"group": bad}, ["body", "group"]),
                          ({"tags": ["fine", bad]}, ["body", "tags", 1])):
            err = _envelope(client.post("/api/v1/projects/p/runs", json=body), 422)
            assert err["code"] == "invalid_request" and err["details"][0]["loc"] == loc, err
            assert "control characters" in err["message"]
            err = _envelope(client.patch(f"/api/v1/runs/{rid}", json=body), 422)
            assert err["details"][0]["loc"] == loc
        for path, body in (("/api/v1/projects/p/channels", {"name": bad, "kind": "email",
                                                            "config": {"to": ["a@example.org"]}}),
                           ("/api/v1/projects/p/tokens", {"name": bad, "scope": "read"})):
            assert _envelope(client.post(path, json=body), 422)["code"] == "invalid_request"
    run = client.get(f"/api/v1/runs/{rid}").json()
    assert run["name"] == "ok" and run["tags"] == [] and run["group"] is None
    assert client.get("/api/v1/projects/p/runs").json()["total"] == 1  # nothing half-created


def test_notes_may_span_lines_but_hold_no_other_control_character(client: Any) -> None:
    text = "first line\nsecond\tcolumn\r\nthird\u2028fourth\u2029"
    r = client.post("/api/v1/projects/p/runs", json={"notes": text})
    assert r.status_code == 201, r.text
    assert client.get(f"/api/v1/runs/{r.json()['id']}").json()["notes"] == text
    for bad in ("\x1b[31m", "bell\x07", "a\x85b", "\x0c"):
        err = _envelope(client.post("/api/v1/projects/p/runs", json={"notes": bad}), 422)
        assert err["details"][0]["loc"] == ["body", "notes"]


def test_good_names_round_trip(client: Any) -> None:
    r = client.post("/api/v1/projects/p/runs", json={"name": GOOD_NAMES[1], "group": GOOD_NAMES[2],
                                                     "tags": GOOD_NAMES})
    assert r.status_code == 201, r.text
    run = client.get(f"/api/v1/runs/{r.json()['id']}").json()
    assert run["name"] == GOOD_NAMES[1] and run["group"] == GOOD_NAMES[2] and run["tags"] == GOOD_NAMES


def test_series_keys_follow_the_same_rule(client: Any) -> None:
    rid = client.post("/api/v1/projects/p/runs", json={}).json()["id"]
    for bad in BAD_NAMES:
        r = client.post(f"/api/v1/runs/{rid}/points", json={"series": [{"key": bad, "steps": [1], "values": [1]}]})
        assert _envelope(r, 422)["code"] == "invalid_points"
    body = {"series": [{"key": k, "steps": [1], "values": [1]} for k in GOOD_NAMES]}
    assert client.post(f"/api/v1/runs/{rid}/points", json=body).status_code == 200


# --- MLflow ------------------------------------------------------------------------------------


def _mlflow_error(r: Any) -> str:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE", body
    return body["message"]  # type: ignore[no-any-return]


def test_mlflow_run_names_and_tags_refuse_control_characters(client: Any) -> None:
    for body in ({"run_name": EVIL}, {"tags": [{"key": "mlflow.runName", "value": EVIL}]},
                 {"tags": [{"key": "team", "value": "a\nb"}]}, {"tags": [{"key": "k\u2028", "value": "v"}]}):
        assert "control characters" in _mlflow_error(client.post(MLFLOW + "/runs/create", json=body))
    r = client.post(MLFLOW + "/runs/create", json={"run_name": "fine", "tags": [{"key": "team", "value": "vision"}]})
    assert r.status_code == 200, r.text
    rid = r.json()["run"]["info"]["run_id"]
    for path, body in (("/runs/update", {"run_id": rid, "run_name": EVIL}),
                       ("/runs/set-tag", {"run_id": rid, "key": "mlflow.runName", "value": EVIL}),
                       ("/runs/set-tag", {"run_id": rid, "key": "x\ty", "value": "v"}),
                       ("/runs/log-batch", {"run_id": rid, "tags": [{"key": "ok", "value": "\x1b[2J"}]}),
                       ("/runs/log-metric", {"run_id": rid, "key": "loss\n", "value": 1.0, "timestamp": 0})):
        _mlflow_error(client.post(MLFLOW + path, json=body))
    run = client.get(f"/api/v1/runs/{rid}").json()
    assert run["name"] == "fine" and run["tags"] == ["team=vision"] and run["summary"] == {}


def test_mlflow_tags_too_long_for_a_losswatch_tag_are_a_400_not_a_500(client: Any) -> None:
    r = client.post(MLFLOW + "/runs/create", json={"tags": [{"key": "long", "value": "v" * 600}]})
    assert "tags" in _mlflow_error(r)


def test_mlflow_non_utf8_body_gets_mlflows_error_shape(client: Any) -> None:
    for body in (b'{"name": "a\xe9"}', b'"\xff\xfe"', b"\xff" * 10):
        r = client.post(MLFLOW + "/runs/create", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"error_code", "message"} and r.json()["error_code"] == "BAD_REQUEST"
    r = client.post("/api/v1/projects/p/runs", content=b'{"name": "a\xe9"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"  # losswatch's own routes: its shape


# --- archive import ----------------------------------------------------------------------------


def _archive(c: Any, url: str, tmp_path: Path) -> list[dict[str, Any]]:
    c.post("/api/v1/projects/proj/runs", json={"id": "run-one", "name": "clean", "tags": ["t"]})
    c.post("/api/v1/runs/run-one/points", json={"series": [{"key": "train/loss", "steps": [0, 1], "values": [1, 2]}]})
    db = Database(Settings(database_url=url))
    try:
        with db.read() as s:
            archive.write_archive(s, "proj", tmp_path / "a.jsonl")
    finally:
        db.dispose()
    return [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]


def _write(lines: list[dict[str, Any]], path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def _import_cli(path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "losswatch"), "import", "archive", str(path), "--db", url,
                           "--project", "copy"], capture_output=True, text=True, timeout=120)


def _tamper(lines: list[dict[str, Any]], kind: str, edit: Any) -> list[dict[str, Any]]:
    out = json.loads(json.dumps(lines))
    for line in out:
        if line.get("type") == kind:
            edit(line)
    return out


def test_import_refuses_what_the_api_refuses(db_url: str, tmp_path: Path) -> None:
    with make_client(db_url) as c:
        lines = _archive(c, db_url, tmp_path)
        target = f"sqlite:///{tmp_path / 'target.db'}"
        cases = {
            "run name": _tamper(lines, "run", lambda x: x["run"].update(name=EVIL)),
            "run group": _tamper(lines, "run", lambda x: x["run"].update(group="g\x85")),
            "run tag": _tamper(lines, "run", lambda x: x["run"].update(tags=["a\nb"])),
            "run notes": _tamper(lines, "run", lambda x: x["run"].update(notes="\x1b[2J")),
            "run id (path)": _tamper(lines, "run", lambda x: x["run"].update(id="../../etc/passwd")),
            "run id (NUL)": _tamper(lines, "run", lambda x: x["run"].update(id="run\x00one")),
            "series key": _tamper(lines, "series", lambda x: x["series"].update(key="train/loss\r\n")),
            "series kind": _tamper(lines, "series", lambda x: x["series"].update(kind="<script>")),
            "series of no run": _tamper(lines, "series", lambda x: x.update(run="someone-else")),
        }
        with make_client(target):
            pass  # migrated
        db = Database(Settings(database_url=target))
        try:
            for what, tampered in cases.items():
                path = _write(tampered, tmp_path / f"{what.replace(' ', '_')}.jsonl.gz")
                with pytest.raises(archive.ArchiveError) as refused:
                    with db.write() as s:
                        archive.read_archive(s, path, project="copy")
                assert refused.value.status == 422 and EVIL not in refused.value.message, what
        finally:
            db.dispose()
        done = _import_cli(tmp_path / "run_name.jsonl.gz", target)  # the command line says why, no traceback
        assert done.returncode == 1 and "nothing imported" in done.stderr and "control characters" in done.stderr
        assert "Traceback" not in done.stderr and EVIL not in done.stderr
        done = _import_cli(_write(lines, tmp_path / "clean.jsonl.gz"), target)  # the untampered archive loads
        assert done.returncode == 0, done.stderr
    with make_client(target) as c:
        assert [r["name"] for r in c.get("/api/v1/projects/copy/runs").json()["runs"]] == ["clean"]


# --- e-mail ------------------------------------------------------------------------------------


def test_email_subjects_are_one_line_whatever_the_name() -> None:
    for name in BAD_NAMES:
        subject = senders._header_text(f"[losswatch] CRITICAL: non_finite on {name} (train/loss)")
        assert wire.control_character(subject) is None and subject.startswith("[losswatch] CRITICAL")
        msg = EmailMessage()
        msg["Subject"] = subject  # the standard library raises ValueError on CR, LF and other line breaks
        assert "\nBcc:" not in msg.as_string()


def test_an_email_alert_for_a_run_with_a_legacy_control_character_name_is_delivered(db_url: str) -> None:
    """A name stored before the rule existed (written here straight into the database) must not make
    every e-mail of its run fail and be retried for a day: the subject is sanitised."""
    with SMTPReceiver() as smtp, make_client(db_url) as c:
        c.app.state.settings.smtp_host = "127.0.0.1"
        c.app.state.settings.smtp_port = smtp.port
        rid = c.post("/api/v1/projects/p/runs", json={"name": "placeholder"}).json()["id"]
        db = Database(Settings(database_url=db_url))
        try:
            with db.write() as s:
                s.execute(update(Run).where(Run.id == rid).values(name=EVIL))
        finally:
            db.dispose()
        ch = c.post("/api/v1/projects/p/channels", json={"name": "mail", "kind": "email", "min_severity": "info",
                                                         "config": {"to": ["ops@example.org"]}})
        assert ch.status_code == 201, ch.text
        r = c.post(f"/api/v1/runs/{rid}/points", json={"series": [{"key": "train/loss", "steps": [0, 1],
                                                                   "values": [1.0, "NaN"]}]})
        assert r.json()["alerts"], r.text
        wait_for(lambda: smtp.messages, timeout=30)
        rcpt, msg = smtp.messages[0]
        assert rcpt == ["ops@example.org"]
        subject = str(msg["Subject"]).replace("\r\n ", " ").replace("\n ", " ")  # unfold long-line folding
        assert "evil" in subject and "\r" not in subject and "\n" not in subject
        assert msg["Bcc"] is None
        attempts = c.get(f"/api/v1/projects/p/channels/{ch.json()['id']}/attempts").json()["attempts"]
        assert attempts and attempts[0]["ok"] is True, attempts


def test_a_series_kind_of_the_wrong_type_is_a_422(client: Any) -> None:
    """Found by the fuzzer once it could send ingest bodies (issue 12, item 7): a list or an object as
    a series kind was a 500 (unhashable) instead of a 422."""
    rid = client.post("/api/v1/projects/p/runs", json={}).json()["id"]
    for kind in ([None], {}, [[], {}], 1, True, ["loss"]):
        r = client.post(f"/api/v1/runs/{rid}/points", json={"series": [{"key": "a", "kind": kind, "steps": [1],
                                                                         "values": [1.0]}]})
        err = _envelope(r, 422)
        assert err["code"] == "invalid_points" and err["details"][0]["loc"] == ["body", "series", 0, "kind"], err
