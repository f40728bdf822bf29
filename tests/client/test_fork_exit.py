"""A forked child and the exit status, with real processes against a real HTTP server on 127.0.0.1:

- a ``multiprocessing`` child forked from a process with an open run warns once and drops what it
  logs (the parent's run is not disturbed), and may start a run of its own that delivers;
- a plain ``os.fork()`` child that exits normally does not wait ``finish_timeout`` for a sender
  thread that does not exist in it;
- ``sys.exit(n)`` with a non-zero ``n`` marks the run ``failed``, ``sys.exit(0)`` ``finished``.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import losswatch
from losswatch.client.errors import LosswatchWarning

pytestmark = pytest.mark.skipif(not hasattr(multiprocessing, "get_context") or sys.platform == "win32",
                                reason="fork is POSIX only")


def _child(run: Any, url: str, spool: str, queue: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(100, 110):
            run.log({"train/loss": 1.0}, step=step)  # the parent's run: dropped, one warning
        own = losswatch.init(project="p", id="child-run", url=url, spool_dir=spool, flush_interval=0.05,
                             heartbeat_interval=3600.0)
        own.log({"child/loss": 0.5}, step=0)
        own.finish()
    queue.put([str(w.message) for w in caught if issubclass(w.category, LosswatchWarning)])


def test_a_forked_child_warns_once_drops_and_can_start_its_own_run(server: Any, spool_dir: Path, fast: dict[str, float]) -> None:
    run = losswatch.init(project="p", id="parent-run", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"train/loss": 2.0}, step=0)
    assert run.flush(timeout=10)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():  # Python warns that forking a process with threads may deadlock
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=_child, args=(run, server.url, str(spool_dir), queue))
        child.start()
    messages = queue.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert len(messages) == 1 and "forked child" in messages[0] and "parent-run" in messages[0]
    run.log({"train/loss": 3.0}, step=1)
    run.finish()
    assert server.series("parent-run", "train/loss") == {0: 2.0, 1: 3.0}  # nothing of the child's
    assert server.series("child-run", "child/loss") == {0: 0.5}
    assert server.runs["child-run"]["status"] == "finished" and server.runs["parent-run"]["status"] == "finished"


SCRIPT = """
import os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import losswatch
run = losswatch.init(project="p", id=sys.argv[2], url=sys.argv[1], spool_dir=sys.argv[3],
                     flush_interval=0.05, heartbeat_interval=3600.0, finish_timeout=120.0)
run.log({"train/loss": 1.0}, step=0)
mode = sys.argv[4]
if mode == "fork":
    pid = os.fork()
    if pid == 0:
        run.log({"train/loss": 9.0}, step=1)
        sys.exit(0)  # runs atexit: must not wait 120 s for the parent's sender thread
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), flush=True)
    sys.exit(0)
sys.exit(int(mode))
"""


def _script(server: Any, spool_dir: Path, run_id: str, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, server.url, run_id, str(spool_dir), mode],
                          capture_output=True, text=True, timeout=90)


def test_a_forked_child_exits_without_waiting_for_a_sender(server: Any, spool_dir: Path) -> None:
    out = _script(server, spool_dir, "forking", "fork")  # a stall would be 120 s: the timeout fails it
    assert out.returncode == 0, out.stderr
    assert "child 0" in out.stdout
    assert server.series("forking", "train/loss") == {0: 1.0}
    assert server.runs["forking"]["status"] == "finished"


@pytest.mark.parametrize(("code", "status"), [("3", "failed"), ("0", "finished")])
def test_sys_exit_code_sets_the_final_status(server: Any, spool_dir: Path, code: str, status: str) -> None:
    out = _script(server, spool_dir, f"exit-{code}", code)
    assert out.returncode == int(code), out.stderr
    assert server.runs[f"exit-{code}"]["status"] == status
    assert server.series(f"exit-{code}", "train/loss") == {0: 1.0}
