"""Batch size adapts to the sender: ``flush_every`` points while it keeps up; while it is behind (a
batch in flight and another waiting), the collector holds what is logged and cuts it as one larger
batch (at most ``max_batch`` points) when the sender catches up. Nothing is lost, duplicated or
reordered either way."""

from __future__ import annotations

import threading
from typing import Any

from _server import FakeServer

import losswatch
from losswatch.client import wire

QUICK = {"retry_min": 0.05, "retry_max": 0.2, "heartbeat_interval": 3600.0}


def point_batches(server: FakeServer) -> list[int]:
    return [sum(len(s["steps"]) for s in wire.loads_batch(b)["series"])
            for _, p, _, b in list(server.requests) if p.endswith("/points")]


def test_a_sender_that_keeps_up_gets_flush_every_points_a_batch(server: FakeServer, spool_dir: Any) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=100, flush_interval=60.0,
                         **QUICK)
    keys = [f"k{i}" for i in range(100)]
    for step in range(8):  # one call of 100 points, then wait until the server has it
        run.log(dict.fromkeys(keys, float(step)), step=step)
        assert server.wait_for(lambda n=step + 1: len(point_batches(server)) == n)
    run.finish()
    assert point_batches(server) == [100] * 8


def test_a_sender_behind_gets_fewer_larger_batches_and_every_point_once(server: FakeServer, spool_dir: Any) -> None:
    gate = threading.Event()
    in_flight = threading.Event()

    def hold_points(method: str, path: str, body: bytes) -> None:
        if path.endswith("/points"):
            in_flight.set()
            gate.wait(60)
        return None

    server.responder = hold_points
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=100, flush_interval=60.0,
                         **QUICK)
    max_batch = run._collector.max_batch
    assert max_batch == 1000  # ten times flush_every
    for step in range(150):
        run.log({"train/loss": 1.0 / (step + 1)})
    assert in_flight.wait(30)  # the first batch is stuck in the server
    for step in range(150, 2500):
        run.log({"train/loss": 1.0 / (step + 1)})
    assert server.wait_for(lambda: run.stats["queued_points"] == 0)  # the collector took them all
    assert len(point_batches(server)) == 1  # only the stuck one reached the server
    gate.set()
    run.finish()
    sizes = point_batches(server)
    assert sum(sizes) == 2500
    assert max(sizes) <= max_batch
    assert max(sizes) > 100  # held points went as a larger batch
    assert len(sizes) <= 8  # 25 batches of flush_every otherwise
    steps = [s for (_, key, s, _) in server.arrivals if key == "train/loss"]
    assert steps == list(range(2500))  # each point once, in order
    assert server.runs[run.id]["status"] == "finished"
