"""`losswatch import archive` reads a hostile archive in bounded memory (issue 12, item 6): a line
longer than the line limit (a gzip bomb: a 1 MB gzip line that inflates to hundreds of MB) is refused
while it streams in, before it is held in memory; so is an archive that inflates past the total limit."""

from __future__ import annotations

import gzip
import json
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import pytest

from losswatch.server.services import archive
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import BIN, make_client

HEAD = {"format": "losswatch-archive", "version": 1,
        "project": {"name": "bomb", "created_at": "2026-01-01T00:00:00+00:00", "alert_config": None}}
INFLATED = 400 * 1024 * 1024  # bytes the bomb's one line inflates to


def _bomb(path: Path) -> Path:
    """A gzip archive: a valid header line, then one 400 MB line of spaces (about 400 KB of gzip)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    with open(path, "wb") as f:
        f.write(comp.compress(json.dumps(HEAD).encode() + b"\n"))
        block = b" " * (4 * 1024 * 1024)
        for _ in range(INFLATED // len(block)):
            f.write(comp.compress(block))
        f.write(comp.compress(b"\n"))
        f.write(comp.flush())
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _bomb(tmp_path_factory.mktemp("bomb") / "bomb.jsonl.gz")
    assert path.stat().st_size < 2 * 1024 * 1024
    return path


def _migrated(url: str) -> Database:
    with make_client(url):
        pass
    return Database(Settings(database_url=url))


def test_a_gzip_bomb_line_is_refused_in_bounded_memory(bomb: Path, sqlite_url: str) -> None:
    db = _migrated(sqlite_url)
    tracemalloc.start()
    try:
        with pytest.raises(archive.ArchiveError) as refused:
            with db.write() as s:
                archive.read_archive(s, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        db.dispose()
    assert refused.value.code == "archive_too_large" and "line 2" in refused.value.message
    assert peak < 3 * archive.MAX_LINE_BYTES < INFLATED / 3, f"peak {peak / 2**20:.0f} MiB"


def test_limits_are_parameters(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "small.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(json.dumps(HEAD).encode() + b"\n" + b'{"type": "end", "runs": 0, "series": 0, "points": 0, '
                b'"alerts": 0, "pad": "' + b"x" * 5000 + b'"}\n')
    db = _migrated(sqlite_url)
    try:
        for kwargs, what in (({"max_line_bytes": 4096}, "longer than 4096 bytes"),
                             ({"max_total_bytes": 2048}, "more than 2048 bytes")):
            with pytest.raises(archive.ArchiveError, match=what):
                with db.write() as s:
                    archive.read_archive(s, path, **kwargs)
        with db.write() as s:  # within the defaults it loads
            assert archive.read_archive(s, path)["runs"] == 0
    finally:
        db.dispose()


def test_the_command_line_refuses_the_bomb_and_a_truncated_gzip(bomb: Path, tmp_path: Path, sqlite_url: str) -> None:
    done = subprocess.run([str(BIN / "losswatch"), "import", "archive", str(bomb), "--db", sqlite_url],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "nothing imported" in done.stderr and "longer than" in done.stderr, done.stderr
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(bomb.read_bytes()[:2000])
    done = subprocess.run([str(BIN / "losswatch"), "import", "archive", str(cut), "--db", sqlite_url],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "nothing imported" in done.stderr and "Traceback" not in done.stderr, done.stderr
