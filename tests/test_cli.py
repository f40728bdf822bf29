"""The losswatch command, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from losswatch.server.settings import Settings
from tests.conftest import BIN, ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def lw(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "losswatch"), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_serve_defaults_to_sqlite_in_the_working_directory(tmp_path: Path) -> None:
    sp = ServerProcess("", log_path=tmp_path / "serve.log")
    with open(sp.log_path, "wb") as log:  # type: ignore[arg-type]
        sp.proc = subprocess.Popen([str(BIN / "losswatch"), "serve", "--port", str(sp.port)], cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        sp.wait_ready()
        r = httpx.post(f"{sp.url}/api/v1/projects/p/runs", json={"name": "x"})
        assert r.status_code == 201
        assert (tmp_path / "losswatch.db").exists()
    finally:
        sp.stop()
    assert "auth is OFF" in sp.output()


def test_serve_on_a_public_address_requires_tokens(tmp_path: Path) -> None:
    out = lw("serve", "--host", "0.0.0.0", "--port", "1", "--db", f"sqlite:///{tmp_path}/x.db", "--no-migrate")
    # --no-migrate on an empty database refuses with a clear message, after saying tokens are required
    assert out.returncode == 2
    assert "API tokens required" in out.stderr
    assert "needs migrations" in out.stderr and "losswatch db upgrade" in out.stderr


def test_db_upgrade_then_serve_without_migrations(tmp_path: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/x.db"
    out = lw("db", "upgrade", "--db", url)
    assert out.returncode == 0, out.stderr
    sp = server_factory(url, args=["--no-migrate"]).start()
    assert httpx.get(sp.url + "/api/v1/projects").json() == {"projects": []}


def test_token_create_prints_a_working_token(tmp_path: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/x.db"
    out = lw("token", "create", "--project", "det", "--scope", "write", "--db", url)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("lw_") and "shown once" in out.stderr
    sp = server_factory(url, args=["--auth", "on"]).start()
    assert httpx.post(sp.url + "/api/v1/projects/det/runs", json={}).status_code == 401
    r = httpx.post(sp.url + "/api/v1/projects/det/runs", json={}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201


def test_export_writes_csv(tmp_path: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/x.db"
    sp = server_factory(url).start()
    rid = httpx.post(sp.url + "/api/v1/projects/p/runs", json={}).json()["id"]
    httpx.post(f"{sp.url}/api/v1/runs/{rid}/points",
               json={"series": [{"key": "l", "steps": [1, 2], "values": [0.5, "NaN"], "wall_times": [10, 11]}]})
    out = lw("export", "--run", rid, "--db", url, "--out", str(tmp_path / "o.csv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "o.csv").read_text().splitlines() == ["key,step,value,wall_time", "l,1,0.5,10.0", "l,2,NaN,11.0"]
    assert lw("export", "--run", "nope", "--db", url).returncode == 2


def test_settings_are_all_documented() -> None:
    out = lw("settings")
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        env = f"LOSSWATCH_{name.upper()}"
        assert env in out.stdout, env
        assert env in docs, f"{env} missing from docs/configuration.md"


def test_server_commands_explain_the_missing_extra() -> None:
    code = ("import sys; sys.modules['fastapi'] = None; from losswatch.cli import main; main(['db', 'upgrade'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and "pip install 'losswatch[server]'" in out.stderr
