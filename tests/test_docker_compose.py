"""docker-compose.yml is valid and wires PostgreSQL and the server together as documented.

No Docker engine runs here: ``docker-compose config`` (Debian's package) parses, validates and
interpolates the file without one. Outside CI a missing docker-compose skips loudly; with CI=true
it fails, because `make test` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need_or_skip

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _compose_config(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    need_or_skip(None if exe is not None else
                 "docker-compose is not installed (apt-get install docker-compose, or run `make test`)")
    assert exe is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_", "DOCKER_"))}
    env.update(extra_env or {})
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return _compose_config()


def test_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "server"}
    assert str(config["services"]["postgres"]["image"]).startswith("postgres:16")


def test_postgres_healthcheck_and_volume(config: dict[str, Any]) -> None:
    pg = config["services"]["postgres"]
    test = pg["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else str(test)
    assert "pg_isready" in command
    assert any(str(v).split(":")[1] == "/var/lib/postgresql/data" for v in pg["volumes"]) or any(
        isinstance(v, dict) and v.get("target") == "/var/lib/postgresql/data" for v in pg["volumes"]
    )
    assert "pgdata" in config["volumes"]
    assert pg["environment"]["POSTGRES_DB"] == "losswatch"
    # PostgreSQL stays on the compose network.
    assert "ports" not in pg


def test_server_waits_for_healthy_postgres(config: dict[str, Any]) -> None:
    server = config["services"]["server"]
    assert server["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_server_build_env_and_port(config: dict[str, Any]) -> None:
    server = config["services"]["server"]
    assert Path(server["build"]["context"]).resolve() == ROOT
    assert (ROOT / server["build"].get("dockerfile", "Dockerfile")).is_file()
    env = server["environment"]
    assert env["LOSSWATCH_DATABASE_URL"] == "postgresql+psycopg://losswatch:losswatch@postgres:5432/losswatch"
    # Bound to 0.0.0.0 inside the container: tokens are required.
    assert env["LOSSWATCH_AUTH"] == "on"
    assert server["command"][:2] == ["losswatch", "serve"]
    assert "0.0.0.0" in server["command"]
    ports = server["ports"]
    assert len(ports) == 1
    port = ports[0]
    if isinstance(port, dict):
        assert (int(port["published"]), int(port["target"])) == (8000, 8000)
    else:
        assert str(port).endswith("8000:8000")


def test_password_is_interpolated_from_the_environment() -> None:
    config = _compose_config({"POSTGRES_PASSWORD": "s3cret"})
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    url = config["services"]["server"]["environment"]["LOSSWATCH_DATABASE_URL"]
    assert url == "postgresql+psycopg://losswatch:s3cret@postgres:5432/losswatch"


def test_dockerfile_runs_the_server_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert 'pip install ".[server,postgres]"' in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert '"--host", "0.0.0.0"' in text
