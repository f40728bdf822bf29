"""The server killed with SIGKILL in the middle of ingest, three times, while a client keeps logging:
each batch is in the database entirely or not at all, the SQLite file is never corrupted, and once the
server is back the client delivers everything, once."""

from __future__ import annotations

import math
import sqlite3
import threading
import time

import pytest

import losswatch
from losswatch.client.errors import LosswatchWarning
from tests.e2e._support import Proxy, batch_points, bits, same_bits
from tests.receivers import wait_for

KEYS = ("train/loss", "train/loss/box", "grad_norm")


def value(key: str, step: int) -> float:
    return {"train/loss": 1.0 / (1.0 + step) + 1e-9 * step, "train/loss/box": math.sin(step),
            "grad_norm": float(step % 1000) / 7.0}[key]


class Training(threading.Thread):
    """Logs every key at every step, about 7,500 points a second, until told to stop."""

    def __init__(self, run: losswatch.Run) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.steps = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for step in range(self.steps, self.steps + 100):
                    self.run_.log({k: value(k, step) for k in KEYS}, step=step)
                self.steps += 100
                time.sleep(0.04)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.mark.slow
def test_server_killed_mid_ingest_leaves_no_half_batch_and_no_corruption(
    tmp_path, server_factory, spool_dir, api
) -> None:
    db_file = tmp_path / "losswatch.db"
    url = f"sqlite:///{db_file}"
    server = server_factory(url).start()
    proxy = Proxy(server.port)
    outcomes: list[str] = []
    checked = 0
    try:
        run = losswatch.init(project="crash", url=proxy.url, spool_dir=spool_dir, flush_every=3000,
                             flush_interval=0.2, retry_min=0.1, retry_max=0.3, heartbeat_interval=3600.0)
        training = Training(run)
        with pytest.warns(LosswatchWarning, match="502"):
            training.start()
            for _cycle in range(3):
                # wait for an ingest request that has been in the server for a few milliseconds, then kill
                wait_for(lambda: proxy.in_flight_for() > 0.005, timeout=20, interval=0.0005)
                server.kill()
                wait_for(lambda: all(r["status"] is not None for r in proxy.ingests), timeout=10)
                died = [r for r in proxy.ingests[checked:] if r["status"] == 0]
                checked = len(proxy.ingests)
                outcomes += check_database(db_file, url, proxy, died, run.id, server_factory, api)
                server.start()  # same port: the client's retries get through again
            training.halt.set()
            training.join(10)
            assert training.error is None
            t0 = time.perf_counter()
            run.finish()
            finish_s = time.perf_counter() - t0
        lw = api(server.url)
        for key in KEYS:
            want = {s: value(key, s) for s in range(training.steps)}
            assert same_bits(lw.points(run.id, key), want), key
            assert lw.count(run.id, key) == training.steps
        assert lw.run(run.id)["status"] == "finished"
    finally:
        proxy.close()
    ok = [r["ended"] - r["started"] for r in proxy.ingests if r["status"] == 200]
    print(f"\n{training.steps * len(KEYS)} points; {len(ok)} batches answered 200 (median "
          f"{sorted(ok)[len(ok) // 2] * 1000:.0f} ms); batches in flight at the 3 kills: {outcomes}; "
          f"finish() {finish_s:.2f} s")


def check_database(db_file, url: str, proxy: Proxy, died: list[dict], run_id: str, server_factory, api
                   ) -> list[str]:
    """With the server dead and before any retry: the file is sound and holds whole batches only."""
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    inspector = server_factory(url).start()  # another port: the client cannot reach it
    try:
        lw = api(inspector.url)
        stored: dict[tuple[str, int], float] = {}
        for key in KEYS:
            stored.update(((key, s), v) for s, v in lw.points(run_id, key, missing_ok=True).items())
        seen: set[tuple[str, int]] = set()
        for record in list(proxy.ingests):
            points = batch_points(record["body"])
            seen.update(points)
            if record["status"] == 200:
                assert all(p in stored for p in points), "an acknowledged batch is not all there"
            assert all(bits(stored[p]) == bits(v) for p, v in points.items() if p in stored)
        assert set(stored) <= seen  # nothing that was not sent
        outcomes = []
        for record in died:  # the server died while it had them: all or nothing
            points = batch_points(record["body"])
            present = sum(p in stored for p in points)
            assert present in (0, len(points)), f"half a batch: {present} of {len(points)} points stored"
            outcomes.append(f"{'all' if present else 'none'} of {len(points)} after "
                            f"{(record['ended'] - record['started']) * 1000:.0f} ms")
        return outcomes
    finally:
        inspector.stop()
