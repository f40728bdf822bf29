"""``run.finish(wait=False)``: the run ends without the caller waiting for the network, and nothing is
lost. Against a real HTTP server on 127.0.0.1 whose answer to the finish request is held back:

- ``finish(wait=False)`` returns while the server has not answered; the points and the status still
  arrive, once each, and a later ``finish()`` or ``flush()`` waits for them;
- a process that calls ``finish(wait=False)`` and exits at once delivers everything first (atexit);
- a forked child of such a process exits without waiting for its parent's sender.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _server import FakeServer

import losswatch


def _hold_finish(server: FakeServer) -> threading.Event:
    """The server answers the finish request only once the returned event is set (30 s at most)."""
    release = threading.Event()

    def responder(method: str, path: str, body: bytes) -> Any:
        if path.endswith("/finish"):
            release.wait(30)
        return None  # then the normal answer

    server.responder = responder
    return release


def _points_sent(server: FakeServer, run_id: str, key: str) -> Counter[int]:
    with server.lock:
        return Counter(step for rid, k, step, _ in server.arrivals if rid == run_id and k == key)


def test_finish_without_waiting_returns_before_the_server_answers(server: FakeServer, spool_dir: Path, fast: dict[str, float]) -> None:
    release = _hold_finish(server)
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    for step in range(500):
        run.log({"train/loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    run.finish("finished", wait=False)
    # returned although the server holds the finish answer (the test would hang here for 30 s otherwise)
    assert server.wait_for(lambda: bool(server.paths("/finish")))
    assert not release.is_set()
    with pytest.warns(losswatch.LosswatchWarning, match="finished"):
        run.log({"train/loss": 9.0}, step=500)  # ended: ignored, as after any finish
    release.set()
    run.finish()  # waits for the delivery the background threads are doing
    assert server.runs[run.id]["status"] == "finished"
    assert server.series(run.id, "train/loss") == {s: 1.0 / (s + 1) for s in range(500)}
    assert set(_points_sent(server, run.id, "train/loss").values()) == {1}  # each point once
    assert len(server.paths("/finish")) == 1


def test_flush_after_finish_without_waiting_waits_for_the_delivery(server: FakeServer, spool_dir: Path, fast: dict[str, float]) -> None:
    release = _hold_finish(server)
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"train/loss": 0.5}, step=0)
    run.finish("stopped", wait=False)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        assert run.flush(timeout=20)
    finally:
        timer.cancel()
    assert release.is_set() and server.runs[run.id]["status"] == "stopped"
    assert server.series(run.id, "train/loss") == {0: 0.5}
    run.finish()  # already delivered: returns, sends nothing more
    assert len(server.paths("/finish")) == 1


SCRIPT = """
import os, sys
import losswatch
run = losswatch.init(project="p", id=sys.argv[2], url=sys.argv[1], spool_dir=sys.argv[3],
                     heartbeat_interval=3600.0, finish_timeout=120.0)
for step in range(2000):
    run.log({"train/loss": step * 0.5, "lr": 0.1}, step=step)
run.finish(wait=False)
if sys.argv[4] == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # atexit in the child: must not wait for the parent's sender
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.parametrize("mode", ["exit", "fork"])
def test_a_process_exiting_right_after_finish_without_waiting_delivers_everything(
    server: FakeServer, spool_dir: Path, mode: str
) -> None:
    release = _hold_finish(server)
    timer = threading.Timer(0.5, release.set)  # the finish answer comes after the script's last line
    timer.start()
    try:
        out = subprocess.run([sys.executable, "-c", SCRIPT, server.url, f"nowait-{mode}", str(spool_dir), mode],
                             capture_output=True, text=True, timeout=90)
    finally:
        timer.cancel()
    assert out.returncode == 0, out.stderr
    assert "LosswatchWarning" not in out.stderr, out.stderr
    if mode == "fork":
        assert "child 0" in out.stdout
    rid = f"nowait-{mode}"
    assert server.runs[rid]["status"] == "finished"
    assert server.series(rid, "train/loss") == {s: s * 0.5 for s in range(2000)}
    assert set(_points_sent(server, rid, "train/loss").values()) == {1}
    assert len(server.paths("/finish")) == 1
    assert not any(p.is_file() and p.stat().st_size for p in spool_dir.rglob("*"))  # nothing left to sync
