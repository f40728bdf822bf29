"""Faults that tests/e2e does not cover, with real processes: PostgreSQL restarted under a logging
run (the server recovers its connections by itself), the client's spool directory unwritable or
full (one clear warning, training goes on, nothing lost), and a very slow server (the training
process's memory stays bounded). Every test ends by counting the points through the API: each
step of each series exactly once, with the value that was logged."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, need_or_skip
from tests.faults._trainer import value

pytestmark = pytest.mark.slow


class Trainer:
    """tests/faults/_trainer.py in a child process."""

    def __init__(self, url: str, *args: str) -> None:
        self.run_id = uuid.uuid4().hex
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.faults._trainer", url, self.run_id, *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def event(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"trainer gave no event in {timeout} s: {self.proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        return json.loads(line)  # type: ignore[no-any-return]

    def done(self, timeout: float = 180) -> dict[str, Any]:
        ev = self.event(timeout)
        assert ev["event"] == "done", ev
        assert self.proc.wait(30) == 0, self.proc.stderr.read()[-3000:]  # type: ignore[union-attr]
        return ev

    def kill(self) -> None:
        """Stop it if it still runs, and close its pipes (always called, in a finally)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def assert_every_point_once(url: str, run_id: str, steps: int, series: int, timeout: float = 30) -> None:
    keys = [f"train/loss/{i}" if i else "train/loss" for i in range(series)]
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{url}/api/v1/runs/{run_id}", timeout=10).json()
        counts = {k: run.get("summary", {}).get(k, {}).get("count") for k in keys}
        if all(c == steps for c in counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts == dict.fromkeys(keys, steps), f"lost or duplicated points: {counts}"
    for i, k in enumerate(keys):
        got = httpx.get(f"{url}/api/v1/runs/{run_id}/points", params={"key": k, "limit": 100_000}, timeout=30).json()
        assert got["steps"] == list(range(steps)), f"{k}: steps lost or duplicated"
        assert got["values"] == [value(i, s) for s in range(steps)], f"{k}: values changed"
    assert run["status"] == "finished"


# --- PostgreSQL restarted while runs are logging -------------------------------------------------


def _cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def _pg_up() -> bool:
    from tests.conftest import _pg_reason

    return _pg_reason() is None


@pytest.mark.postgres
def test_server_recovers_its_connections_after_postgresql_restarts(pg_database: str, server_factory: Any) -> None:
    if not Path("/etc/postgresql").is_dir() or subprocess.run(["which", "pg_ctlcluster"], capture_output=True).returncode:
        need_or_skip("no local PostgreSQL cluster to restart (pg_ctlcluster)")
    server = server_factory(pg_database).start()
    steps, series = 1500, 10
    trainer = Trainer(server.url, "--steps", str(steps), "--series", str(series), "--rate", "150")
    try:
        time.sleep(3.0)  # logging is under way
        restart = subprocess.run([*_cluster(), "restart"], capture_output=True, text=True, timeout=120)
        assert restart.returncode == 0, restart.stderr
        assert trainer.event(120)["event"] == "logged"
        done = trainer.done()
    finally:
        trainer.kill()
        if not _pg_up():  # whatever happened, leave PostgreSQL running for everyone else
            subprocess.run([*_cluster(), "start"], capture_output=True, timeout=120)
            for _ in range(100):
                if _pg_up():
                    break
                time.sleep(0.2)
    assert_every_point_once(server.url, trainer.run_id, steps, series)
    assert done["stats"]["dropped_points"] == 0
    # the same server process answers queries again without a restart of its own
    assert server.proc is not None and server.proc.poll() is None
    assert httpx.get(server.url + "/api/v1/projects/faults/runs").json()["total"] == 1


# --- the client's spool directory unwritable or full ---------------------------------------------


@pytest.mark.parametrize("fault", ["unwritable", "full"])
def test_spool_unwritable_or_full_warns_once_and_training_goes_on(fault: str, sqlite_url: str, tmp_path: Path,
                                                                  server_factory: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"  # the server is down while the run starts: the client wants its spool
    if fault == "unwritable":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file where the spool directory should be")
        args = ["--spool", str(blocker / "spool")]
    else:  # a full disk: any file of this process stops at 2 KiB (RLIMIT_FSIZE, SIGXFSZ ignored)
        args = ["--spool", str(tmp_path / "spool"), "--fsize", "2048"]
    steps, series = 600, 10
    go = tmp_path / "go"
    trainer = Trainer(url, "--steps", str(steps), "--series", str(series), "--rate", "200", "--go", str(go), *args)
    try:
        logged = trainer.event(60)
        assert logged["event"] == "logged"
        assert logged["took_s"] < steps / 200 + 2.0, "training was slowed down by the fault"
        server_factory(sqlite_url, port=port).start()  # the server comes (back) up
        go.touch()
        done = trainer.done()
    finally:
        trainer.kill()
    spool_warnings = [w for w in done["warnings"] if "cannot write the spool" in w[1]]
    assert len(spool_warnings) == 1, done["warnings"]  # one clear warning, not one per batch
    category, text = spool_warnings[0]
    assert category == "LosswatchWarning" and "spool_dir" in text
    others = [w for w in done["warnings"] if w not in spool_warnings]
    assert all("could not reach the server" in t for _, t in others), others  # the other fault: the server down
    assert_every_point_once(url, trainer.run_id, steps, series)


# --- a very slow server ------------------------------------------------------------------------


class SlowProxy:
    """A TCP proxy that waits ``delay`` seconds before passing on each piece of a request."""

    def __init__(self, upstream_port: int) -> None:
        self.delay = 0.0
        self.upstream = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(conn, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_slow_server_keeps_the_training_process_memory_bounded(sqlite_url: str, tmp_path: Path,
                                                              server_factory: Any) -> None:
    server = server_factory(sqlite_url).start()
    proxy = SlowProxy(server.port)
    proxy.delay = 3.0  # every request waits 3 s before the server sees it
    steps, series, max_buffer = 30_000, 10, 4 << 20  # 300,000 points, far more than the 4 MiB buffer holds
    go = tmp_path / "go"
    trainer = Trainer(f"http://127.0.0.1:{proxy.port}", "--steps", str(steps), "--series", str(series),
                      "--rate", "3000", "--max-buffer", str(max_buffer), "--spool", str(tmp_path / "spool"),
                      "--go", str(go), "--finish-timeout", "240")
    try:
        logged = trainer.event(120)
        assert logged["took_s"] < steps / 3000 + 5.0, "a slow server slowed training down"
        proxy.delay = 0.0
        go.touch()
        done = trainer.done(300)
    finally:
        trainer.kill()
        proxy.close()
    rss = done["rss"]
    growth = max(rss) - rss[0]
    assert growth < 64 << 20, f"the training process grew by {growth >> 20} MiB behind a slow server"
    assert_every_point_once(server.url, trainer.run_id, steps, series, timeout=60)
