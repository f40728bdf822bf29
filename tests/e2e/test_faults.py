"""Delivery faults with real server processes over real HTTP: the server stopped and restarted, the
client killed with SIGKILL while the server is down, the server answering 500, 413 and 401.
Training always goes on; every point arrives, once, with its exact value."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import losswatch
from losswatch.client.errors import LosswatchWarning
from tests.conftest import BIN
from tests.e2e._support import FAST, Proxy, same_bits
from tests.receivers import wait_for

KEYS = ("train/loss", "train/loss/box", "lr")


def value(key: str, step: int) -> float:
    """A deterministic value per (key, step), with a NaN now and then."""
    if key == "train/loss" and step % 997 == 13:
        return math.nan
    return {"train/loss": 2.0 / (1 + step) + math.sin(step) * 1e-3, "train/loss/box": 0.1 * math.cos(step),
            "lr": 3e-4 * (1 - step / 1e6)}[key]


# Retries at least 1 s apart in the tests that bound log()'s time: a log() that waited on the server, a
# connection attempt or a retry would take 1 s or more, so the bound tells behaviour apart, not speed.
SLOW_RETRIES = {**FAST, "retry_min": 1.0, "retry_max": 2.0}
NEVER_WAITS = 0.5  # seconds: the slowest log() allowed


def log_steps(run: losswatch.Run, steps: range) -> float:
    """Log every key at every step; returns the slowest log() call in seconds."""
    worst = 0.0
    for step in steps:
        t = time.perf_counter()
        run.log({k: value(k, step) for k in KEYS}, step=step)
        worst = max(worst, time.perf_counter() - t)
    return worst


def expected(steps: range) -> dict[str, dict[int, float]]:
    return {k: {s: value(k, s) for s in steps} for k in KEYS}


def assert_exactly(lw, run_id: str, steps: range) -> None:
    for key, want in expected(steps).items():
        assert same_bits(lw.points(run_id, key), want), key
        assert lw.count(run_id, key) == len(want)  # stored once each


@pytest.mark.slow
def test_server_stopped_mid_run_and_restarted_every_point_arrives_once(
    sqlite_url, server_factory, spool_dir, api
) -> None:
    server = server_factory(sqlite_url).start()
    run = losswatch.init(project="faults", url=server.url, spool_dir=spool_dir, flush_every=600,
                         **SLOW_RETRIES)
    lw = api(server.url)
    log_steps(run, range(0, 1000))
    assert run.flush()
    server.stop()
    with pytest.warns(LosswatchWarning, match="could not reach the server"):
        worst = log_steps(run, range(1000, 2000))  # while the server is down
        assert not run.flush(timeout=5)
        assert run.stats["offline"] and Path(run.stats["spool"]).exists()
        server.start()  # the same port
        up = time.monotonic()
        wait_for(lambda: lw.count(run.id, "lr") == 2000, timeout=20)
        caught_up = time.monotonic() - up
        log_steps(run, range(2000, 3000))
        run.finish()
    assert_exactly(lw, run.id, range(3000))
    assert lw.run(run.id)["status"] == "finished"
    assert not any(spool_dir.iterdir())  # replayed, then deleted
    print(f"\nspooled points delivered {caught_up:.2f} s after the restart; slowest log() while down "
          f"{worst * 1e6:.0f} us")
    assert worst < NEVER_WAITS


CHILD = r"""
import math, sys, time
import losswatch
from tests.e2e.test_faults import KEYS, log_steps

url, spool_dir = sys.argv[1], sys.argv[2]
run = losswatch.init(project="faults", url=url, spool_dir=spool_dir, flush_interval=0.05, retry_min=0.05,
                     retry_max=0.2, heartbeat_interval=3600.0)
print(run.id, flush=True)
log_steps(run, range(0, 500))
assert run.flush(timeout=10)
print("sent", flush=True)
sys.stdin.readline()  # the parent stops the server
log_steps(run, range(500, 1500))
assert not run.flush(timeout=5)
print("spooled", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_client_killed_while_server_down_then_sync_delivers(
    sqlite_url, server_factory, spool_dir, api, tmp_path
) -> None:
    server = server_factory(sqlite_url).start()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).parents[2])}
    with subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(spool_dir)], env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            run_id = child.stdout.readline().strip()
            assert child.stdout.readline().strip() == "sent"
            server.stop()
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "spooled"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    spool = spool_dir / f"{run_id}.jsonl"
    assert spool.exists()
    server.start()
    lw = api(server.url)
    assert lw.count(run_id, "lr") == 500
    out = subprocess.run([str(BIN / "losswatch"), "sync", str(spool_dir)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr + server.output()[-3000:]
    assert "1 of 1 spool files delivered" in out.stdout
    assert_exactly(lw, run_id, range(1500))
    assert not spool.exists()


@pytest.mark.slow
def test_server_answering_500_warns_training_goes_on_then_delivers(
    sqlite_url, server_factory, spool_dir, api
) -> None:
    server = server_factory(sqlite_url).start()
    proxy = Proxy(server.port)
    try:
        run = losswatch.init(project="faults", url=proxy.url, spool_dir=spool_dir, flush_every=300,
                             **SLOW_RETRIES)
        proxy.fail_with = 500
        with pytest.warns(LosswatchWarning, match="answered HTTP 500"):
            worst = log_steps(run, range(0, 1000))
            wait_for(lambda: proxy.failed_answers >= 3)
            log_steps(run, range(1000, 1500))
            proxy.fail_with = None
            run.finish()
        assert_exactly(api(server.url), run.id, range(1500))
        assert worst < NEVER_WAITS
    finally:
        proxy.close()


@pytest.mark.slow
def test_server_answering_413_batches_are_split_and_everything_arrives(
    sqlite_url, server_factory, spool_dir, api
) -> None:
    server = server_factory(sqlite_url, env={"LOSSWATCH_MAX_BODY_BYTES": "4096"}).start()
    run = losswatch.init(project="faults", url=server.url, spool_dir=spool_dir, flush_every=3000, **FAST)
    with pytest.warns(LosswatchWarning, match="too large"):
        log_steps(run, range(0, 2000))
        run.finish()
    assert_exactly(api(server.url), run.id, range(2000))
    assert not spool_dir.exists() or not any(spool_dir.iterdir())


@pytest.mark.slow
def test_server_answering_401_warns_training_goes_on_and_sync_with_a_token_delivers(
    sqlite_url, server_factory, spool_dir, api
) -> None:
    server = server_factory(sqlite_url, args=["--auth", "on"]).start()
    run = losswatch.init(project="faults", url=server.url, spool_dir=spool_dir, **SLOW_RETRIES)  # no token
    with pytest.warns(LosswatchWarning, match="refused the token"):
        worst = log_steps(run, range(0, 1000))
        run.flush(timeout=2)
        log_steps(run, range(1000, 1500))
        run.finish()
    assert worst < NEVER_WAITS
    assert run.stats["refused"]
    token = subprocess.run(
        [str(BIN / "losswatch"), "token", "create", "--project", "faults", "--scope", "write", "--db", sqlite_url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    out = subprocess.run([str(BIN / "losswatch"), "sync", str(spool_dir), "--token", token],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr + server.output()[-3000:]
    lw = api(server.url, token)
    assert_exactly(lw, run.id, range(1500))
    assert lw.run(run.id)["status"] == "finished"
