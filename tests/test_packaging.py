"""Packaging: the light client, the package list, the wheel's contents."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"pkg": "losswatch", "client": "losswatch.client", "integrations": "losswatch.integrations",
           "server": "losswatch.server", "dashboard": "losswatch.dashboard", "migrations": "losswatch.migrations"}


def test_import_losswatch_stays_light() -> None:
    code = ("import sys, losswatch, losswatch.client.wire; run = losswatch.init; "
            "heavy = sorted(m for m in ('fastapi', 'sqlalchemy', 'pydantic', 'numpy', 'torch', 'uvicorn', 'starlette') "
            "if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == ""


def test_every_subpackage_is_listed_in_pyproject() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    mapping = conf["package-dir"]
    assert {v: k for k, v in mapping.items()} == {f: FOLDERS[f] for f in FOLDERS}
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "node_modules" in rel.parts or "static" in rel.parts:
                continue
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found == listed, f"missing: {found - listed}, stale: {listed - found}"


def test_wheel_carries_migrations_and_templates(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("losswatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "losswatch/client/wire.py" in names and "losswatch/py.typed" in names
    assert "losswatch/migrations/versions/0001_initial.py" in names
    assert "losswatch/migrations/script.py.mako" in names
    assert any(n.startswith("losswatch/dashboard/templates/") for n in names)
