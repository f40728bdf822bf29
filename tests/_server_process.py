"""A real server process on 127.0.0.1, for the tests and the benchmarks (standard library only).

Start it, wait until its health URL answers, read its log, stop it (or kill it: that is where the
delivery guarantees are proven). ``losswatch serve`` by default; any other command (uvicorn with an
app factory, ``mlflow server``) through ``argv``, where ``{port}`` stands for the port::

    with ServerProcess("sqlite:///x.db", args=["--auth", "on"]) as server:
        urllib.request.urlopen(server.url + "/healthz")

The benchmarks import it after putting the repository root on ``sys.path``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_factory(app: str) -> list[str]:
    """``argv`` for an app factory (``module:function``) served by uvicorn."""
    return [str(BIN / "python"), "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1", "--port", "{port}",
            "--log-level", "warning"]


class ServerProcess:
    """A server process on 127.0.0.1 (``losswatch serve --db DB_URL`` unless ``argv`` says otherwise)."""

    def __init__(self, db_url: str = "", port: int | None = None, env: dict[str, str] | None = None,
                 args: Sequence[str] = (), log_path: Path | None = None, *, argv: Sequence[str] | None = None,
                 health: str = "/healthz", cwd: Path | None = None, new_session: bool = False) -> None:
        self.db_url, self.port = db_url, port or free_port()
        self.env = {**os.environ, "LOSSWATCH_LOG_LEVEL": "warning", **(env or {})}
        self.args, self.argv, self.health = list(args), argv, health
        self.log_path, self.cwd, self.new_session = log_path, cwd, new_session
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.argv is not None:
            return [a.replace("{port}", str(self.port)) for a in self.argv]
        return [str(BIN / "losswatch"), "serve", "--db", self.db_url, "--host", "127.0.0.1",
                "--port", str(self.port), *self.args]

    def start(self, wait: bool = True, timeout: float = 30.0) -> ServerProcess:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="losswatch-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.cwd, start_new_session=self.new_session)
        if wait:
            self.wait_ready(timeout)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the health URL answers 200; an exit or the timeout raises with the log's tail."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=2) as r:  # noqa: S310 - 127.0.0.1
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready within {timeout:.0f} s: {self.output()[-2000:]}")

    def rss_mib(self, field: str = "VmHWM") -> float:
        """The process's peak (``VmHWM``) or current (``VmRSS``) resident memory, from /proc."""
        try:
            with open(f"/proc/{self.proc.pid if self.proc else 0}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            if self.new_session:
                os.killpg(self.proc.pid, sig)  # the server and the workers it forked
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
