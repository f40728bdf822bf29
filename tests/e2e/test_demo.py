"""`losswatch demo` against a real server: three runs (healthy, diverging, plateau) with loss
components, learning rate, gradient norm and evaluation metrics; the diverging one is caught."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import BIN


@pytest.mark.slow
def test_demo_trains_three_runs_and_the_diverging_one_is_caught(sqlite_url, server_factory, api) -> None:
    pytest.importorskip("torch")
    server = server_factory(sqlite_url).start()
    out = subprocess.run([str(BIN / "losswatch"), "demo", "--url", server.url, "--steps", "300"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    lw = api(server.url)
    runs = {r["name"]: r for r in lw.get("/projects/demo/runs")["runs"]}
    assert set(runs) == {"healthy", "diverging", "plateau"}
    for name, r in runs.items():
        kinds = {key: s["kind"] for key, s in r["summary"].items()}
        assert kinds == {
            "train/loss": "loss",
            **{f"train/loss/{t}": "loss_component" for t in ("box", "cls", "l1", "l2")},
            **{f"train/loss/{t}_weighted": "loss_component" for t in ("box", "cls", "l1")},
            "lr": "lr", "grad_norm": "grad_norm", "val/loss": "loss",
            "val/accuracy": "metric", "val/precision": "metric", "val/mIoU": "metric",
        }, name  # fmt: skip
        assert r["summary"]["val/accuracy"]["count"] >= 3, name
        assert f"{server.url}/runs/{r['id']}" in out.stdout
    assert runs["healthy"]["summary"]["train/loss"]["count"] == 300
    assert runs["healthy"]["status"] == "finished"
    assert runs["healthy"]["summary"]["val/accuracy"]["last"] > 0.6
    healthy_rules = {a["rule"] for a in lw.alerts(runs["healthy"]["id"])}
    assert not healthy_rules & {"non_finite", "divergence", "spike"}
    diverging = lw.alerts(runs["diverging"]["id"])
    assert {a["rule"] for a in diverging} & {"divergence", "non_finite"}
    assert runs["diverging"]["status"] == "stopped"  # stop_on ended it
    assert runs["diverging"]["summary"]["train/loss"]["count"] < 300
    assert f"{server.url}/p/demo/compare?runs=" in out.stdout
