"""`losswatch demo` against a real server: three runs (healthy, diverging, plateau) with loss
components, learning rate, gradient norm and evaluation metrics; the diverging one is caught."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import BIN, need_module


@pytest.mark.slow
def test_demo_trains_three_runs_and_the_diverging_one_is_caught(sqlite_url, server_factory, api) -> None:
    need_module("torch")
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
    # The diverging run stops itself: not "before N fast steps" (a race with the sender thread), but at
    # the latest at the first evaluation after the server raised a stop_on alert, because the demo
    # flushes at every evaluation and flush() returns only once the server's answer is in.
    stops = [a for a in lw.alerts(runs["diverging"]["id"]) if a["rule"] in {"divergence", "non_finite"}]
    assert stops, lw.alerts(runs["diverging"]["id"])
    raised_at = min(a["step"] for a in stops)  # the step whose ingest raised the first one
    eval_every = max(10, 300 // 12)
    next_eval = next(s for s in range(raised_at, 300) if (s + 1) % eval_every == 0 or s == 299)
    assert runs["diverging"]["status"] == "stopped"  # stop_on ended it
    stopped_at = runs["diverging"]["summary"]["train/loss"]["count"] - 1  # steps 0..stopped_at were trained
    assert min(a["onset_step"] for a in stops) <= stopped_at <= next_eval, (stops, stopped_at)
    assert f"diverging  stopped itself at step {stopped_at}" in out.stdout
    assert f"{server.url}/p/demo/compare?runs=" in out.stdout
