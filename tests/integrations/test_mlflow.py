"""The MLflow-compatible REST subset, with the real `mlflow` client (mlflow-skinny) against a real
`losswatch serve`: fluent and MlflowClient calls log params, tags and metrics (single, batched, NaN
and infinities), read them back (runs/get, get-history with paging), and the stored points are
checked through losswatch's own API; MLflow's batch limits and error codes come back as MLflow
documents them."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import need_module

mlflow = need_module("mlflow")
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tests.integrations.conftest import read_run, read_series, read_walls  # noqa: E402

API = "/api/2.0/mlflow"


@pytest.fixture
def tracking(server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an error is an answer, not a retry
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(server.url)
    yield server.url
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_the_fluent_api_logs_into_losswatch(tracking: str) -> None:
    url = tracking
    exp_id = mlflow.set_experiment("detector").experiment_id
    with mlflow.start_run(run_name="lr-3e-4", tags={"team": "vision"}) as active:
        mlflow.log_param("lr", 3e-4)
        mlflow.log_params({"batch": 16, "optim": "adamw"})
        mlflow.set_tag("stage", "baseline")
        for step in range(5):
            mlflow.log_metric("train/loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"val/mAP50-95": 0.25, "val/loss": 0.9}, step=4)
        mlflow.log_metric("train/loss", float("nan"), step=5)
        mlflow.log_metric("grad_norm", float("inf"), step=5)
        run_id = active.info.run_id

    # the MLflow view of it
    client = MlflowClient(tracking)
    assert client.get_experiment(exp_id).name == "detector"
    assert client.get_experiment_by_name("detector").experiment_id == exp_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lr-3e-4" and run.info.end_time
    assert run.data.params == {"lr": "0.0003", "batch": "16", "optim": "adamw"}
    assert run.data.tags["team"] == "vision" and run.data.tags["stage"] == "baseline"
    assert run.data.metrics["val/mAP50-95"] == 0.25 and math.isnan(run.data.metrics["train/loss"])
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4, 5]
    assert [m.value for m in history[:5]] == [1.0, 0.5, 1 / 3, 0.25, 0.2] and math.isnan(history[5].value)
    assert client.get_metric_history(run_id, "no/such/metric") == []

    # losswatch's view of the same run: project = experiment, params = config, tags, series + kinds
    ours = read_run(url, run_id)
    assert ours["project"] == "detector" and ours["name"] == "lr-3e-4" and ours["status"] == "finished"
    assert ours["config"] == {"lr": "0.0003", "batch": "16", "optim": "adamw"}
    assert "team=vision" in ours["tags"] and "stage=baseline" in ours["tags"]
    loss = read_series(url, run_id, "train/loss")
    assert [loss[s] for s in range(5)] == [1.0, 0.5, 1 / 3, 0.25, 0.2] and math.isnan(loss[5])
    assert read_series(url, run_id, "grad_norm") == {5: math.inf}
    kinds = {k: v["kind"] for k, v in ours["summary"].items()}
    assert kinds == {"train/loss": "loss", "val/mAP50-95": "metric", "val/loss": "loss", "grad_norm": "grad_norm"}
    # MLflow's timestamps (ms) became the points' wall times
    walls = read_walls(url, run_id, "train/loss")
    assert all(abs(w - time.time()) < 120 for w in walls.values())
    assert [m.timestamp for m in history] == [round(walls[s] * 1000) for s in range(6)]


def test_log_batch_pages_and_exact_timestamps(tracking: str) -> None:
    client = MlflowClient(tracking)
    exp_id = client.create_experiment("batches")
    run = client.create_run(exp_id, run_name="big")
    rid = run.info.run_id
    t0 = 1_764_380_000_000
    for chunk in range(3):  # 3 x 1000 metrics: MLflow's largest batch
        metrics = [Metric("loss", 10.0 - (chunk * 1000 + i) / 1000, t0 + chunk * 1000 + i, chunk * 1000 + i)
                   for i in range(1000)]
        client.log_batch(rid, metrics=metrics, params=[Param(f"p{chunk}", str(chunk))],
                         tags=[RunTag("chunk", str(chunk))])
    client.set_terminated(rid, "KILLED")
    history = client.get_metric_history(rid, "loss")
    assert len(history) == 3000
    assert [m.step for m in history] == list(range(3000))
    assert [m.timestamp for m in history] == [t0 + i for i in range(3000)]
    ours = read_run(tracking, rid)
    assert ours["status"] == "stopped" and ours["config"] == {"p0": "0", "p1": "1", "p2": "2"}
    assert [t for t in ours["tags"] if t.startswith("chunk=")] == ["chunk=2"]  # a tag is replaced
    assert read_walls(tracking, rid, "loss")[2999] == (t0 + 2999) / 1000

    # paging over REST: max_results and next_page_token
    page = httpx.get(f"{tracking}{API}/metrics/get-history",
                     params={"run_id": rid, "metric_key": "loss", "max_results": 1000}).json()
    assert len(page["metrics"]) == 1000 and page["next_page_token"] == "1000"
    last = httpx.get(f"{tracking}{API}/metrics/get-history",
                     params={"run_id": rid, "metric_key": "loss", "page_token": "2500"}).json()
    assert [m["step"] for m in last["metrics"]] == list(range(2500, 3000)) and "next_page_token" not in last


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{API}/{path}", json=body, timeout=30)


def test_mlflow_limits_and_error_codes(tracking: str) -> None:
    url = tracking
    client = MlflowClient(tracking)
    exp_id = client.create_experiment("limits")
    rid = client.create_run(exp_id).info.run_id
    now = int(time.time() * 1000)

    too_many = {"run_id": rid, "metrics": [{"key": "m", "value": 1.0, "timestamp": now, "step": i} for i in range(1001)]}
    r = _post(url, "runs/log-batch", too_many)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "at most 1000 metrics" in r.json()["message"]
    for field, n in (("params", 101), ("tags", 101)):
        r = _post(url, "runs/log-batch", {"run_id": rid, field: [{"key": f"k{i}", "value": "v"} for i in range(n)]})
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", field
        assert f"at most 100 {field}" in r.json()["message"]
    mixed = {"run_id": rid, "metrics": too_many["metrics"][:950],
             "params": [{"key": f"p{i}", "value": "v"} for i in range(51)]}
    r = _post(url, "runs/log-batch", mixed)
    assert r.status_code == 400 and "at most 1000 total" in r.json()["message"]
    assert read_run(url, rid)["summary"] == {}  # nothing of a refused batch was written

    r = _post(url, "runs/log-parameter", {"run_id": rid, "key": "k" * 251, "value": "v"})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = _post(url, "runs/log-parameter", {"run_id": rid, "key": "long", "value": "v" * 6001})
    assert r.status_code == 400 and "6000" in r.json()["message"]
    r = _post(url, "runs/set-tag", {"run_id": rid, "key": "long", "value": "v" * 8001})
    assert r.status_code == 400 and "8000" in r.json()["message"]
    r = _post(url, "runs/log-metric", {"run_id": rid, "key": "m", "value": "abc", "timestamp": now})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = _post(url, "runs/log-metric", {"run_id": rid, "key": "m", "value": 1.0})
    assert r.status_code == 400 and "timestamp" in r.json()["message"]

    # params are immutable, as in MLflow
    client.log_param(rid, "lr", "0.1")
    client.log_param(rid, "lr", "0.1")  # the same value again is fine
    with pytest.raises(MlflowException) as err:
        client.log_param(rid, "lr", "0.2")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "Changing param values" in err.value.message

    # missing things: 404 RESOURCE_DOES_NOT_EXIST
    for path, params in (("runs/get", {"run_id": "0" * 32}), ("experiments/get", {"experiment_id": "999999"}),
                         ("experiments/get-by-name", {"experiment_name": "nope"}),
                         ("metrics/get-history", {"run_id": "f" * 32, "metric_key": "loss"})):
        r = httpx.get(f"{url}{API}/{path}", params=params)
        assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", path
    r = _post(url, "runs/log-metric", {"run_id": "0" * 32, "key": "m", "value": 1, "timestamp": now})
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(RestException) as missing:
        client.get_run("0" * 32)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow.get_experiment_by_name("nope") is None  # the client reads 404 as "no such experiment"

    # an experiment that exists already; a required parameter missing; an endpoint we do not have
    r = _post(url, "experiments/create", {"name": "limits"})
    assert r.status_code == 400 and r.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    r = _post(url, "experiments/create", {})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = _post(url, "experiments/create", {"name": "has spaces/and slashes"})
    assert r.status_code == 400 and "project" in r.json()["message"]
    r = httpx.post(f"{url}{API}/runs/log-batch", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = _post(url, "registered-models/create", {"name": "m"})
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_default_experiment_and_token_auth(server_factory: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without an experiment go to MLflow's default experiment "0" (project Default); with auth
    on, MLflow's MLFLOW_TRACKING_TOKEN is our bearer token and a missing token is UNAUTHENTICATED."""
    import subprocess

    from tests.conftest import BIN

    subprocess.run([str(BIN / "losswatch"), "db", "upgrade", "--db", sqlite_url], check=True, capture_output=True)
    made = subprocess.run([str(BIN / "losswatch"), "token", "create", "--project", "Default", "--scope", "write",
                           "--db", sqlite_url], check=True, capture_output=True, text=True)
    token = made.stdout.strip().split()[-1]
    srv = server_factory(sqlite_url, args=["--auth", "on"]).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    r = httpx.get(f"{srv.url}{API}/experiments/get", params={"experiment_id": "0"})
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    mlflow.set_tracking_uri(srv.url)
    try:
        client = MlflowClient(srv.url)
        run = client.create_run("0", run_name="default-exp")
        client.log_metric(run.info.run_id, "loss", 0.5, step=3)
        client.set_terminated(run.info.run_id)
        assert client.get_experiment("0").name == "Default"
        with pytest.raises(MlflowException) as denied:
            client.create_experiment("other")
        assert denied.value.error_code == "PERMISSION_DENIED"
    finally:
        mlflow.set_tracking_uri(None)
    headers = {"Authorization": f"Bearer {token}"}
    runs = httpx.get(f"{srv.url}/api/v1/projects/Default/runs", headers=headers).json()["runs"]
    assert [r["name"] for r in runs] == ["default-exp"]
    points = httpx.get(f"{srv.url}/api/v1/runs/{runs[0]['id']}/points", params={"key": "loss"}, headers=headers).json()
    assert points["steps"] == [3] and points["values"] == [0.5]


def test_a_failing_part_of_a_batch_leaves_nothing_written(server_factory: Any, db_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A log-batch is one transaction, on SQLite and on PostgreSQL: params, tags and metrics go in
    together (through ingest, detectors included) or not at all, whichever part fails."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = server_factory(db_url).start().url
    client = MlflowClient(url)
    rid = client.create_run(client.create_experiment("atomic"), run_name="before").info.run_id
    now = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric("loss", 1.0, now, 0)], params=[Param("lr", "0.1")],
                     tags=[RunTag("team", "a")])

    def unchanged() -> None:
        ours = read_run(url, rid)
        assert ours["config"] == {"lr": "0.1"} and ours["name"] == "before", ours
        assert [t for t in ours["tags"] if "=" in t] == ["team=a"], ours["tags"]
        assert set(ours["summary"]) == {"loss"} and read_series(url, rid, "loss") == {0: 1.0}

    # a bad metric after good params, tags, a rename and a good metric: refused before the transaction
    r = _post(url, "runs/log-batch", {
        "run_id": rid, "params": [{"key": "wd", "value": "0.01"}],
        "tags": [{"key": "team", "value": "b"}, {"key": "mlflow.runName", "value": "after"}],
        "metrics": [{"key": "loss", "value": 0.5, "timestamp": now, "step": 1},
                    {"key": "bad\x07key", "value": 0.5, "timestamp": now, "step": 1}]})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text
    assert "control characters" in r.json()["message"]
    unchanged()

    # a part that fails inside the transaction (a param that changes value) takes the metrics with it
    r = _post(url, "runs/log-batch", {
        "run_id": rid, "params": [{"key": "wd", "value": "0.01"}, {"key": "lr", "value": "0.2"}],
        "tags": [{"key": "stage", "value": "x"}],
        "metrics": [{"key": "loss", "value": 0.5, "timestamp": now, "step": 1},
                    {"key": "val/acc", "value": 0.9, "timestamp": now, "step": 1}]})
    assert r.status_code == 400 and "Changing param values" in r.json()["message"], r.text
    unchanged()

    # the same batch without the bad part: all of it, and the detectors saw its NaN
    r = _post(url, "runs/log-batch", {
        "run_id": rid, "params": [{"key": "wd", "value": "0.01"}],
        "tags": [{"key": "stage", "value": "x"}, {"key": "mlflow.runName", "value": "after"}],
        "metrics": [{"key": "loss", "value": "NaN", "timestamp": now, "step": 1},
                    {"key": "val/acc", "value": 0.9, "timestamp": now, "step": 1}]})
    assert r.status_code == 200 and r.json() == {}, r.text
    ours = read_run(url, rid)
    assert ours["config"] == {"lr": "0.1", "wd": "0.01"} and ours["name"] == "after"
    assert "stage=x" in ours["tags"] and set(ours["summary"]) == {"loss", "val/acc"}
    assert math.isnan(read_series(url, rid, "loss")[1]) and read_series(url, rid, "val/acc") == {1: 0.9}
    alerts = httpx.get(f"{url}/api/v1/runs/{rid}/alerts", timeout=30).json()["alerts"]
    assert [(a["rule"], a["series"], a["step"]) for a in alerts] == [("non_finite", "loss", 1)], alerts
