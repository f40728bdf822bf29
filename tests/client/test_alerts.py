"""Alerts back to the training script, with the real app in process behind the injected transport:
``init(alerts=...)``, ``run.alerts``, ``on_alert``, ``stop_on`` with the flag and with StopTraining."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

import losswatch
from losswatch.client.errors import LosswatchWarning, ServerError
from tests.conftest import make_client


class AppTransport:
    """The client's transport, calling the real FastAPI app in process (as httpx's ASGI transport)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((method, path))
        headers = {"content-type": "application/json"} if body is not None else {}
        r = self.client.request(method, path, content=body, headers=headers)
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content

    def close(self) -> None:
        pass


@pytest.fixture
def app(sqlite_url: str) -> Iterator[Any]:
    with make_client(sqlite_url) as c:
        yield c


def start(app: Any, spool_dir, fast, **kw: Any) -> losswatch.Run:
    return losswatch.init(project="p", transport=AppTransport(app), spool_dir=spool_dir, **{**fast, **kw})


def test_init_sends_the_rule_configuration(app, spool_dir, fast) -> None:
    config = {"plateau": False, "divergence": {"patience": 20}, "silenced": ["stalled"]}
    run = start(app, spool_dir, fast, alerts=config)
    run.log({"train/loss": 1.0})
    run.finish()
    assert app.get(f"/api/v1/runs/{run.id}/alert-config").json() == config
    with pytest.raises(ValueError, match="rule configuration"):
        losswatch.init(project="p", transport=AppTransport(app), spool_dir=spool_dir, alerts=["plateau"])


def test_an_invalid_rule_configuration_warns_and_training_goes_on(server_factory, sqlite_url, spool_dir, fast) -> None:
    # A real server process here, not the app in a thread of this process: FastAPI enters
    # warnings.catch_warnings() in its own code, which is not thread-safe and can undo pytest.warns.
    import httpx

    sp = server_factory(sqlite_url).start()
    kw = {"project": "p", "url": sp.url, "spool_dir": spool_dir, **fast}
    run = losswatch.init(alerts={"divergence": {"rtl": 1.0}}, **kw)
    with pytest.warns(LosswatchWarning, match="rtl"):
        for step in range(200):
            run.log({"train/loss": 1.0}, step=step)
            if step % 50 == 0:
                run.flush(timeout=2)
        run.finish()
    assert httpx.get(f"{sp.url}/api/v1/runs/{run.id}").status_code == 404
    assert spool_dir.joinpath(f"{run.id}.jsonl").exists()  # kept for `losswatch sync` once fixed
    with pytest.raises(ServerError, match="invalid_alert_config"):
        losswatch.init(alerts={"divergence": {"rtl": 1.0}}, strict=True, **kw)


def test_stop_on_is_checked(spool_dir) -> None:
    with pytest.raises(ValueError, match="nan"):
        losswatch.init(project="p", url="http://127.0.0.1:9", spool_dir=spool_dir, stop_on={"nan"})


def test_real_alerts_fire_resolve_and_reach_run_and_callback(app, spool_dir, fast) -> None:
    seen: list[dict[str, Any]] = []
    run = start(app, spool_dir, fast, on_alert=seen.append, alerts={"silenced": ["spike", "plateau"]})
    for step in range(30):
        run.log({"train/loss": 1.0 / (step + 1)}, step=step)
    run.log({"train/loss": math.nan}, step=30)
    assert run.flush()
    assert [(a["rule"], a["series"], a["status"], a["onset_step"]) for a in run.alerts] == [
        ("non_finite", "train/loss", "firing", 30)
    ]
    assert not run.should_stop  # nothing in stop_on
    for step in range(31, 45):  # 10 finite points in a row resolve it
        run.log({"train/loss": 0.01}, step=step)
    assert run.flush()
    run.finish()
    assert run.alerts == []
    assert [(a["rule"], a["status"]) for a in seen] == [("non_finite", "firing"), ("non_finite", "resolved")]
    assert seen[0]["id"] == seen[1]["id"] and seen[1]["resolved_step"] == 40


def test_a_nan_that_fired_and_resolved_within_one_batch_still_stops(app, spool_dir, fast) -> None:
    run = start(app, spool_dir, fast, stop_on="non_finite", flush_every=10_000, flush_interval=60.0)
    for step in range(40):
        run.log({"train/loss": math.nan if step == 20 else 1.0}, step=step)
    assert run.flush()  # one batch: the alert comes back already resolved
    assert run.should_stop and run.stop_alert is not None
    assert run.stop_alert["status"] == "resolved" and run.alerts == []
    run.finish()
    assert app.get(f"/api/v1/runs/{run.id}").json()["status"] == "stopped"


def test_should_stop_flag_and_finish_marks_the_run_stopped(app, spool_dir, fast) -> None:
    run = start(app, spool_dir, fast, stop_on={"non_finite", "divergence"})
    stopped_at = None
    for step in range(5000):
        run.log({"train/loss": 1.0 if step < 100 else math.inf}, step=step)
        if step % 20 == 0:
            run.flush()
        if run.should_stop:
            stopped_at = step
            break
    run.finish()
    assert stopped_at is not None and 100 <= stopped_at <= 120
    assert run.stop_alert["rule"] == "non_finite" and run.stop_alert["onset_step"] == 100
    assert app.get(f"/api/v1/runs/{run.id}").json()["status"] == "stopped"


def test_raise_on_stop_raises_once_and_the_with_block_ends_cleanly(app, spool_dir, fast) -> None:
    raised: list[losswatch.StopTraining] = []
    with start(app, spool_dir, fast, stop_on={"non_finite"}, raise_on_stop=True) as run:
        for step in range(5000):
            try:
                run.log({"train/loss": 1.0 if step < 100 else math.nan}, step=step)
            except losswatch.StopTraining as exc:
                raised.append(exc)
                last = step
                break
            if step % 20 == 0:
                run.flush()
        run.log({"train/loss": 0.5}, step=last + 1)  # raised once: logging after it works
    assert len(raised) == 1 and 100 <= last <= 120
    exc = raised[0]
    assert exc.run_id == run.id and exc.alert["rule"] == "non_finite"
    assert "non_finite" in str(exc) and "train/loss" in str(exc) and "step 100" in str(exc)
    assert app.get(f"/api/v1/runs/{run.id}").json()["status"] == "stopped"

    with start(app, spool_dir, fast, stop_on={"non_finite"}, raise_on_stop=True) as run2:
        for step in range(5000):  # uncaught: the with block swallows the run's own StopTraining
            run2.log({"train/loss": 1.0 if step < 10 else math.nan}, step=step)
            if step % 20 == 0:
                run2.flush()
        pytest.fail("StopTraining was not raised")
    assert app.get(f"/api/v1/runs/{run2.id}").json()["status"] == "stopped"


def test_heartbeat_answers_carry_alerts(app, spool_dir, fast) -> None:
    run = start(app, spool_dir, {**fast, "heartbeat_interval": 0.05}, stop_on={"non_finite"})
    run.log({"train/loss": math.nan}, step=0)
    assert run.flush()
    run._seen_alerts.clear()  # forget what the ingest answer said: only heartbeats can tell now
    run.should_stop = False
    run.alerts = []
    from tests.receivers import wait_for

    wait_for(lambda: run.should_stop, timeout=10)
    assert run.alerts[0]["rule"] == "non_finite"
    run.finish()
