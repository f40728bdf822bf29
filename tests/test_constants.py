"""What client, server and dashboard must agree on lives once, in ``losswatch.client.wire``.

A second copy of a contract constant drifts: the run-id pattern was written four times, the cookie
name twice, the client's rule list copied the server's. These tests grep the source for the literals
(only ``client/wire.py`` may hold them) and check that the places which need a constant in another
form (a ``Literal`` type, the detectors' rule table) equal the one in ``wire``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import pytest

from losswatch.client import wire

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("client", "server", "dashboard", "integrations", "pkg", "migrations")
HOME = Path("client/wire.py")

# contract -> a regular expression for its literal, as a copy would spell it in Python, JS or HTML
LITERALS = {
    "run-id pattern": re.escape("A-Za-z0-9_-]{1,64}"),
    "token cookie name": r"""["']losswatch_token["']""",
    "rule list": r"""["']misalignment["'],\s*["']stalled["']""",
    "series kinds": r"""["']grad_norm["'],\s*["']other["']""",
}
# a Literal type must spell its values out (for pydantic's schema and for mypy): these copies are
# checked for equality below instead
ALLOWED_COPIES = {"series kinds": {Path("server/api/schemas.py")}}


def source_files() -> list[Path]:
    files = []
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT)
            if path.suffix in (".py", ".js", ".html") and not {"vendor", "node_modules"} & set(rel.parts):
                files.append(rel)
    return sorted(files)


def holders(pattern: str) -> set[Path]:
    rx = re.compile(pattern)
    return {rel for rel in source_files() if rx.search((ROOT / rel).read_text(encoding="utf-8"))}


@pytest.mark.parametrize("contract", sorted(LITERALS))
def test_one_home_for_each_contract_literal(contract: str) -> None:
    assert holders(LITERALS[contract]) - ALLOWED_COPIES.get(contract, set()) == {HOME}


def test_the_grep_finds_a_copy(tmp_path: Path) -> None:
    # the check above, on a copy it must find (so that a passing run means something)
    copy = 'const RUN_ID = /^[A-Za-z0-9_-]{1,64}$/;\nexport const COOKIE = "losswatch_token";\n'
    assert re.search(LITERALS["run-id pattern"], copy) and re.search(LITERALS["token cookie name"], copy)
    assert len(source_files()) > 50 and Path("dashboard/static/compare.js") in source_files()


def test_rule_names_are_the_servers() -> None:
    from losswatch.client import run
    from losswatch.server.detectors import RULES

    assert wire.ALERT_RULES == RULES
    assert run.ALERT_RULES is wire.ALERT_RULES


def test_typed_copies_equal_wire() -> None:
    from losswatch.client import run
    from losswatch.server.api import schemas

    assert get_args(schemas.SeriesKind) == wire.SERIES_KINDS
    assert set(get_args(schemas.EndStatus)) == set(wire.END_STATUSES)
    assert run.RUN_STATUSES is wire.END_STATUSES
    assert schemas.RUN_ID_PATTERN is wire.RUN_ID_PATTERN


def test_the_server_and_the_pages_use_the_wire_constants() -> None:
    from losswatch.dashboard import security, views
    from losswatch.server.api import deps

    assert views._RUN_ID.pattern == wire.RUN_ID_PATTERN
    assert deps.TOKEN_COOKIE == security.TOKEN_COOKIE == wire.TOKEN_COOKIE


def test_page_scripts_import_the_generated_module() -> None:
    # scripts that check run ids take RUN_ID from /static/wire.js (served from wire by the dashboard)
    static = ROOT / "dashboard" / "static"
    users = [p for p in static.glob("*.js") if re.search(r"\bRUN_ID\b", p.read_text(encoding="utf-8"))]
    assert users
    for path in users:
        assert 'from "./wire.js"' in path.read_text(encoding="utf-8"), path.name


def test_wire_js_is_generated_from_wire() -> None:
    from fastapi.testclient import TestClient

    from losswatch.server.app import create_app
    from losswatch.server.settings import Settings

    client = TestClient(create_app(Settings(database_url="sqlite://", background_workers=False)))  # no database
    r = client.get("/static/wire.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    consts = dict(re.findall(r"^export const (\w+) = (.+);$", r.text, re.M))
    assert consts == {"RUN_ID": f"new RegExp({json.dumps(wire.RUN_ID_PATTERN)})",
                      "SERIES_KINDS": json.dumps(wire.SERIES_KINDS), "ALERT_RULES": json.dumps(wire.ALERT_RULES),
                      "MAX_KEY_LENGTH": str(wire.MAX_KEY_LENGTH)}


def test_the_environment_is_read_by_the_two_settings_modules() -> None:
    # the client's LOSSWATCH_* and RANK in client/settings.py, the server's in server/settings.py
    readers = {rel for rel in source_files() if rel.suffix == ".py"
               and re.search(r"os\.environ|getenv\(", (ROOT / rel).read_text(encoding="utf-8"))}
    assert readers == {Path("client/settings.py"), Path("server/settings.py")}


def test_one_rank_for_the_client_and_the_integrations(monkeypatch: pytest.MonkeyPatch) -> None:
    from losswatch.client import run, settings
    from losswatch.integrations import ultralytics

    for value, client_rank, ultralytics_rank in ((None, 0, -1), ("3", 3, 3), ("x", 0, -1), ("0", 0, 0)):
        if value is None:
            monkeypatch.delenv("RANK", raising=False)
        else:
            monkeypatch.setenv("RANK", value)
        assert settings.rank() == (None if client_rank == 0 and value != "0" else client_rank)
        assert run._rank()[0] == client_rank and ultralytics._rank() == ultralytics_rank
