"""Two real server processes on one PostgreSQL ingesting into the same run at the same time, with a NaN
and a divergence in the data, and one of them killed and restarted in the middle: exactly the alerts a
single server finds on the same data (one per series and rule, never duplicated, never missed), every
point stored once, every alert delivered to the project's webhook."""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from losswatch.client import wire
from tests.e2e._support import same_bits
from tests.receivers import WebhookReceiver, wait_for

N, BATCH = 1500, 50
SERIES = {"train/loss": 300, "aux/loss": 450}  # key -> step of its NaN
DIVERGE_AT = 900
RULES = {"silenced": ["spike", "plateau", "stalled", "misalignment", "overfitting"]}


def curve(key: str) -> dict[int, float]:
    """A falling noisy loss, one NaN, then a divergence to 4x its best that does not come back."""
    rng = random.Random(key)
    out = {}
    for s in range(N):
        v = 2.0 / (1 + s / 100) * (1 + 0.05 * rng.random())
        if s >= DIVERGE_AT:
            v = 4.0 * 2.0 / (1 + DIVERGE_AT / 100) * (1 + 0.05 * rng.random())
        out[s] = math.nan if s == SERIES[key] else v
    return out


def body(key: str, steps: range, values: dict[int, float]) -> dict[str, Any]:
    return wire.batch([wire.series_entry(key, "loss", list(steps), [values[s] for s in steps])])


def post(clients: list[httpx.Client], first: int, path: str, payload: dict[str, Any]) -> None:
    """POST to one server; on no answer or a 5xx, to the other (what a load balancer does)."""
    data = wire.dumps(payload)
    for attempt in range(200):
        c = clients[(first + attempt) % 2]
        try:
            r = c.post(path, content=data, headers={"content-type": "application/json"})
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        if r.status_code < 500:
            assert r.status_code in (200, 201), r.text
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: no server took it")


def ingest(clients: list[httpx.Client], run_id: str, key: str, values: dict[int, float], first: int,
           after_batch: threading.Event | None = None, at: int = -1) -> None:
    """One training process's sender: the series' batches in order, alternating between servers."""
    for i, start in enumerate(range(0, N, BATCH)):
        post(clients, first + i, f"/runs/{run_id}/points", body(key, range(start, start + BATCH), values))
        if after_batch is not None and i == at:
            after_batch.set()


def alerts_of(client: httpx.Client, run_id: str) -> list[tuple[Any, ...]]:
    rows = client.get(f"/runs/{run_id}/alerts").json()["alerts"]
    return sorted((a["series"], a["rule"], a["onset_step"], a["status"], a["resolved_step"]) for a in rows)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_servers_one_postgres_alerts_exactly_once(pg_database, server_factory, api) -> None:
    env = {"LOSSWATCH_ALLOW_PRIVATE_CHANNELS": "true"}
    a = server_factory(pg_database, env=env).start()
    b = server_factory(pg_database, env=env).start()
    curves = {key: curve(key) for key in SERIES}
    with WebhookReceiver() as hook, httpx.Client(base_url=a.url + "/api/v1", timeout=30) as ca, \
            httpx.Client(base_url=b.url + "/api/v1", timeout=30) as cb:
        clients = [ca, cb]
        ids = {"reference": uuid.uuid4().hex, "shared": uuid.uuid4().hex}
        for run_id in ids.values():
            post(clients, 0, "/projects/two/runs", {"id": run_id, "alerts": RULES})
        r = ca.post("/projects/two/channels", json={"name": "hook", "kind": "webhook", "config": {"url": hook.url},
                                                      "min_severity": "info"})
        assert r.status_code in (200, 201), r.text

        # the reference: the same data through one server, one series after the other
        for key, values in curves.items():
            ingest([ca, ca], ids["reference"], key, values, 0)

        # two senders at once, each alternating between the servers; server A is killed mid-way
        halfway = threading.Event()
        senders = [threading.Thread(target=ingest, args=(clients, ids["shared"], key, values, i, halfway, 12))
                   for i, (key, values) in enumerate(curves.items())]
        for t in senders:
            t.start()
        assert halfway.wait(60)
        a.kill()
        time.sleep(0.3)
        a.start()
        for t in senders:
            t.join(120)
            assert not t.is_alive()

        expected = alerts_of(ca, ids["reference"])
        assert {(s, rule) for s, rule, *_ in expected} == {
            (key, rule) for key in SERIES for rule in ("non_finite", "divergence")
        }  # the data has one NaN and one divergence per series, and the reference found them
        for client in clients:  # both servers tell the same story
            assert alerts_of(client, ids["shared"]) == expected
        lw = api(b.url)
        for key, values in curves.items():
            assert same_bits(lw.points(ids["shared"], key), values)
            assert lw.count(ids["shared"], key) == N

        # every alert of the shared run reached the webhook (at least once: a killed sender may repeat)
        shared = {a["id"] for a in ca.get(f"/runs/{ids['shared']}/alerts").json()["alerts"]}

        def delivered() -> set[int]:
            return {r["json"]["alert"]["id"] for r in hook.delivered() if r["json"]["event"] == "alert.fired"}

        wait_for(lambda: shared <= delivered(), timeout=30)
        fired = [r["json"]["alert"]["id"] for r in hook.delivered() if r["json"]["event"] == "alert.fired"
                 and r["json"]["alert"]["id"] in shared]
        print(f"\nalerts (series, rule, onset, status, resolved): {expected}; "
              f"webhook 'fired' deliveries for the shared run: {len(fired)} for {len(shared)} alerts")


def post_body(client: httpx.Client, path: str, data: bytes) -> int:
    """One POST of an ingest body as the client sends it (its content type); the status, 0 on no answer."""
    try:
        return client.post(path, content=data, headers={"content-type": wire.content_type(data)}).status_code
    except httpx.HTTPError:
        return 0


def send_with_retries(clients: list[httpx.Client], run_id: str, key: str, values: dict[int, float]) -> None:
    """One training process whose every batch is sent twice at once, to both servers (a retry that
    overtakes the original: the first attempt timed out on one server, the second went to the other),
    together with a late copy of the batch before it; then the batch is sent until one answer is 200."""
    path = f"/runs/{run_id}/points"
    t0 = time.time()  # wall times stamped once, at "logging", as the client does: a retry repeats them
    bodies = [wire.batch_to_columnar(wire.batch([wire.series_entry(
        key, "loss", list(range(s, s + BATCH)), [values[i] for i in range(s, s + BATCH)],
        [t0 + i * 0.01 for i in range(s, s + BATCH)])])) for s in range(0, N, BATCH)]
    for i, data in enumerate(bodies):
        sends = [(clients[0], data), (clients[1], data)]
        if i:
            sends.append((clients[i % 2], bodies[i - 1]))
        threads = [threading.Thread(target=post_body, args=(c, path, d)) for c, d in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for attempt in range(100):
            if post_body(clients[attempt % 2], path, data) == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{path}: batch {i} was never accepted")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_servers_same_runs_with_retried_batches_store_once(pg_database, server_factory, api) -> None:
    """Two processes take the same batches of the same runs at the same time (binary columnar bodies,
    every batch sent to both, late copies of the one before): every point is stored once, bit for
    bit, and each incident (one NaN, one divergence per series) raises one alert, the same alerts a
    single server raises on the data sent once."""
    a = server_factory(pg_database).start()
    b = server_factory(pg_database).start()
    curves = {key: curve(key) for key in SERIES}
    with httpx.Client(base_url=a.url + "/api/v1", timeout=60) as ca, \
            httpx.Client(base_url=b.url + "/api/v1", timeout=60) as cb:
        clients = [ca, cb]
        reference = uuid.uuid4().hex
        shared = [uuid.uuid4().hex, uuid.uuid4().hex]
        for run_id in [reference, *shared]:
            post(clients, 0, "/projects/two/runs", {"id": run_id, "alerts": RULES})
        for key, values in curves.items():
            ingest([ca, ca], reference, key, values, 0)
        senders = [threading.Thread(target=send_with_retries, args=(clients, run_id, key, values))
                   for run_id in shared for key, values in curves.items()]
        for t in senders:
            t.start()
        for t in senders:
            t.join(300)
            assert not t.is_alive()

        expected = alerts_of(ca, reference)
        assert {(s, rule) for s, rule, *_ in expected} == {
            (key, rule) for key in SERIES for rule in ("non_finite", "divergence")}
        lw = api(b.url)
        for run_id in shared:
            for client in clients:
                assert alerts_of(client, run_id) == expected
            for key, values in curves.items():
                assert same_bits(lw.points(run_id, key), values)
                assert lw.count(run_id, key) == N
