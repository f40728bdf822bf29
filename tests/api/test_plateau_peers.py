"""The plateau rule against comparable runs, through the real app: the project's finished runs are read
back downsampled (services/peers.py) and a run stuck far above them gets a plateau alert naming them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from losswatch.client import wire
from losswatch.server.services import peers
from tests.conftest import make_client


def curve(n: int, seed: int, stop: int | None = None) -> np.ndarray:
    """A loss falling from ~2 to 0.02; frozen at its level at step ``stop`` when given (~0.29 at 120:
    below half its start, so its own history alone calls it converged)."""
    rng = np.random.default_rng(seed)
    base = 0.02 + 2.0 * np.exp(-np.arange(n) / 60.0)
    if stop is not None:
        base[stop:] = base[stop]
    return base * rng.lognormal(0.0, 0.1, n)


@pytest.fixture
def app(db_url: str) -> Any:
    with make_client(db_url) as c:
        yield c
    peers.clear()


def run_through(c: Any, project: str, name: str, values: np.ndarray, finish: bool = True) -> str:
    rid = str(c.post(f"/api/v1/projects/{project}/runs", json={"name": name}).json()["id"])
    for i in range(0, len(values), 100):  # the client's flushes
        steps = list(range(i, min(i + 100, len(values))))
        r = c.post(f"/api/v1/runs/{rid}/points",
                   json={"series": [wire.series_entry("train/loss", "loss", steps, values[steps].tolist())]})
        assert r.status_code == 200, r.text
    if finish:
        assert c.post(f"/api/v1/runs/{rid}/finish", json={"status": "finished"}).status_code == 200
    return rid


def plateaus(c: Any, rid: str) -> list[dict[str, Any]]:
    return [a for a in c.get(f"/api/v1/runs/{rid}/alerts").json()["alerts"] if a["rule"] == "plateau"]


def test_a_run_stuck_far_above_two_finished_runs_gets_a_plateau_naming_them(app: Any) -> None:
    stuck = curve(800, 7, stop=120)
    # alone (a project without finished runs) the run has converged as far as it can tell: no alert
    assert plateaus(app, run_through(app, "alone", "stuck", stuck)) == []

    for seed in (1, 2):
        run_through(app, "p", f"healthy-{seed}", curve(1000, seed))
    rid = run_through(app, "p", "stuck", stuck, finish=False)
    (alert,) = plateaus(app, rid)
    assert alert["severity"] == "warning" and alert["status"] == "firing" and alert["series"] == "train/loss"
    assert "2 comparable runs of this project were at" in alert["message"]
    assert alert["details"]["peers"] == 2 and alert["value"] > 3 * alert["details"]["peer_level"]

    # a healthy third run, judged against the same runs (and the stuck one once it ends): nothing
    app.post(f"/api/v1/runs/{rid}/finish", json={"status": "finished"})
    assert plateaus(app, run_through(app, "p", "healthy-3", curve(1000, 3))) == []
