"""Spool files and ``losswatch sync``: torn lines, a killed process, live spools left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _server import FakeServer, free_port

import losswatch
from losswatch.client import spool
from losswatch.client.errors import LosswatchWarning
from losswatch.client.sync import main, sync_dir


def dead_run(spool_dir: Path, fast: dict, steps: int = 20, finish: bool = True, **kw) -> losswatch.Run:
    """A run whose server never answered: everything stays in its spool."""
    with pytest.warns(LosswatchWarning, match="could not reach"):
        run = losswatch.init(
            project="p", url=f"http://127.0.0.1:{free_port()}", spool_dir=spool_dir, **fast, **kw
        )
        for step in range(steps):
            run.log({"train/loss": step / 10, "lr": 0.1})
        run.flush(timeout=5)
        if finish:
            run.finish("failed")
    return run


def test_frames_detect_torn_and_corrupt_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    good = spool.frame(b'{"t":"finish","seq":1,"status":"finished"}')
    corrupt = bytearray(good)
    corrupt[20] ^= 1
    path.write_bytes(good + bytes(corrupt) + good[:-5])
    got = [r for r, _ in spool.read_records(path)]
    assert got == [{"t": "finish", "seq": 1, "status": "finished"}, None, None]


def test_sync_dir_replays_a_dead_run_and_deletes_its_spool(spool_dir: Path, fast) -> None:
    run = dead_run(spool_dir, fast)
    path = spool_dir / f"{run.id}.jsonl"
    assert path.exists()
    server = FakeServer()
    try:
        report = sync_dir(spool_dir, url=server.url)
    finally:
        server.stop()
    assert report["synced"] == [str(path)] and report["failed"] == {} and report["runs"] == [run.id]
    assert report["points"] == 40 and report["damaged_lines"] == 0
    assert server.series(run.id, "train/loss") == {s: s / 10 for s in range(20)}
    assert server.runs[run.id]["status"] == "failed"
    assert server.runs[run.id]["project"] == "p"
    assert not path.exists()


def test_torn_last_line_is_skipped(spool_dir: Path, fast) -> None:
    run = dead_run(spool_dir, fast, finish=False, steps=10)
    run._sender._halt = True  # pretend the process died here: nothing more is written by it
    run._sender.spool.close()
    path = spool_dir / f"{run.id}.jsonl"
    torn = spool.frame(
        spool.points_payload(999, b'{"series":[{"key":"x","kind":"other","steps":[1],"values":[1.0]}]}')
    )
    with open(path, "ab") as f:
        f.write(torn[: len(torn) // 2])  # SIGKILL in the middle of a write
    server = FakeServer()
    try:
        report = sync_dir(spool_dir, url=server.url)
    finally:
        server.stop()
    assert report["damaged_lines"] == 1 and report["failed"] == {}
    assert server.series(run.id, "train/loss") == {s: s / 10 for s in range(10)}
    assert server.series(run.id, "x") == {}
    assert (
        server.runs[run.id]["status"] == "running"
    )  # no finish marker: left to the server's heartbeat check
    run._finished = True  # nothing to finish: the "process" is gone


def test_sync_leaves_a_live_process_alone(spool_dir: Path, fast) -> None:
    with pytest.warns(LosswatchWarning, match="could not reach"):
        run = losswatch.init(project="p", url=f"http://127.0.0.1:{free_port()}", spool_dir=spool_dir, **fast)
        run.log({"a": 1.0})
        run.flush(timeout=5)
    server = FakeServer()
    try:
        report = sync_dir(spool_dir, url=server.url)
        assert report["skipped"] == [str(spool_dir / f"{run.id}.jsonl")]
        assert server.requests == []
        run.finish()  # still down for the run itself: it keeps its spool
        report = sync_dir(spool_dir, url=server.url)
    finally:
        server.stop()
    assert report["synced"] and server.series(run.id, "a") == {0: 1.0}


def test_sync_failure_keeps_the_file(spool_dir: Path, fast) -> None:
    run = dead_run(spool_dir, fast, steps=3)
    report = sync_dir(spool_dir, url=f"http://127.0.0.1:{free_port()}", retries=0)
    path = str(spool_dir / f"{run.id}.jsonl")
    assert list(report["failed"]) == [path] and "ConnectionRefused" in report["failed"][path]
    assert Path(path).exists()


def test_sync_main_uses_the_url_recorded_in_the_spool(spool_dir: Path, fast, capsys, monkeypatch) -> None:
    port = free_port()
    with pytest.warns(LosswatchWarning, match="could not reach"):
        run = losswatch.init(project="p", url=f"http://127.0.0.1:{port}", spool_dir=spool_dir, **fast)
        run.log({"a": 2.0})
        run.finish()
    monkeypatch.delenv("LOSSWATCH_URL", raising=False)
    server = FakeServer(port=port)
    try:
        assert main([str(spool_dir)]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "1 of 1 spool files delivered" in out and "1 points" in out
    assert server.series(run.id, "a") == {0: 2.0}
    assert main([str(spool_dir / "nothing-here")]) == 0


CHILD = """
import os, sys, time
import losswatch
run = losswatch.init(project="p", url=sys.argv[1], spool_dir=sys.argv[2], flush_interval=0.05,
                     retry_min=0.05, retry_max=0.2, heartbeat_interval=3600)
print(run.id, flush=True)
for step in range(100000):
    run.log({"train/loss": step * 0.25, "train/loss/box": -step * 0.125}, step=step)
    if step == 300:
        run.flush(timeout=5)
        print("spooled", flush=True)
    time.sleep(0.0005)
"""


def test_sigkill_then_sync_delivers_the_spooled_points(spool_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(spool_dir)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "spooled"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    server = FakeServer(port=int(url.rsplit(":", 1)[1]))
    try:
        report = sync_dir(spool_dir)
    finally:
        server.stop()
    assert report["runs"] == [run_id] and report["failed"] == {}
    got = server.series(run_id, "train/loss")
    n = len(got)
    assert n >= 301
    assert got == {s: s * 0.25 for s in range(n)}  # a prefix, nothing missing inside it
    assert server.series(run_id, "train/loss/box") == {s: -s * 0.125 for s in range(n)}
