"""MLflow's read calls with the real `mlflow` client against a real `losswatch serve`:
``mlflow.search_runs`` (filters on metrics, params, tags and attributes, ``order_by``, paging) returns
the DataFrame MLflow would, in the order of losswatch's own REST list; ``search_experiments``;
``get-history-bulk-interval`` (what MLflow's UI charts call); artifact calls fail with MLflow's error
naming what is not supported, not with a local ``FileNotFoundError``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import need_or_skip

try:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
except ImportError as exc:  # a missing package is a skip outside CI, a failure in CI
    mlflow = None
    _MISSING = f"mlflow and pandas are needed: {exc}"
else:
    _MISSING = None

API = "/api/2.0/mlflow"
MAPS = [0.31, 0.52, None, 0.44, 0.12, 0.52]


@pytest.fixture
def tracking(server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    need_or_skip(_MISSING)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(server.url)
    yield server.url
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def sweep(tracking: str) -> tuple[str, list[str]]:
    exp = mlflow.set_experiment("sweep").experiment_id
    ids = []
    for i, m in enumerate(MAPS):
        with mlflow.start_run(run_name=f"lr-{i}", tags={"team": "vision" if i % 2 else "nlp"}) as run:
            mlflow.log_params({"lr": 10.0 ** -i, "optim": "adamw" if i < 3 else "sgd"})
            for step in range(30):
                mlflow.log_metric("train/loss", 1.0 / (step + 1 + i), step=step)
            if m is not None:
                mlflow.log_metric("val/mAP50-95", m - 0.2, step=10)
                mlflow.log_metric("val/mAP50-95", m, step=29)
            ids.append(run.info.run_id)
    mlflow.start_run(run_name="failed-one")
    mlflow.log_metric("val/mAP50-95", float("nan"), step=0)
    mlflow.end_run(status="FAILED")
    return exp, ids


def test_search_runs_returns_mlflows_dataframe_in_the_rest_lists_order(sweep: tuple[str, list[str]]) -> None:
    exp, ids = sweep
    df = mlflow.search_runs(experiment_ids=[exp], filter_string="metrics.`val/mAP50-95` > 0.3",
                            order_by=["metrics.`val/mAP50-95` DESC"])
    assert isinstance(df, pd.DataFrame)
    # ties (0.52 twice) break on the newest start first, as MLflow does
    assert list(df["run_id"]) == [ids[5], ids[1], ids[3], ids[0]]
    for column in ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time",
                   "metrics.val/mAP50-95", "metrics.train/loss", "params.lr", "params.optim", "tags.team",
                   "tags.mlflow.runName"):
        assert column in df.columns, column
    row = df.set_index("run_id").loc[ids[1]]
    assert row["metrics.val/mAP50-95"] == 0.52 and row["metrics.train/loss"] == 1.0 / 31
    assert row["params.lr"] == "0.1" and row["tags.team"] == "vision" and row["tags.mlflow.runName"] == "lr-1"
    assert row["status"] == "FINISHED" and row["experiment_id"] == exp
    assert isinstance(row["start_time"], pd.Timestamp)

    # the same question through losswatch's REST list: the same runs in the same order
    rest = httpx.get(f"{sweep_url()}/api/v1/projects/sweep/runs", params={"sort": "-last:val/mAP50-95", "limit": 1000}).json()
    above = [r["id"] for r in rest["runs"] if isinstance(r["summary"].get("val/mAP50-95", {}).get("last"), float)
             and r["summary"]["val/mAP50-95"]["last"] > 0.3]
    assert sorted(above) == sorted(df["run_id"]) and above[2:] == list(df["run_id"])[2:]


def sweep_url() -> str:
    return str(mlflow.get_tracking_uri())


def test_filters_on_params_tags_and_attributes(sweep: tuple[str, list[str]]) -> None:
    exp, ids = sweep

    def found(filter_string: str, **kw: Any) -> list[str]:
        return list(mlflow.search_runs(experiment_ids=[exp], filter_string=filter_string, **kw)["run_id"])

    assert set(found("params.optim = 'adamw' AND tags.team LIKE 'vis%'")) == {ids[1]}
    assert set(found("params.optim != 'adamw'")) == {ids[3], ids[4], ids[5]}
    assert set(found("attributes.run_name ILIKE 'LR-1'")) == {ids[1]}
    assert set(found(f"attributes.run_id IN ('{ids[0]}', '{ids[2]}')")) == {ids[0], ids[2]}
    assert len(found("attributes.status = 'FAILED'")) == 1
    assert set(found("metrics.`val/mAP50-95` <= 0.12")) == {ids[4]}  # NaN is not <= anything
    assert set(found("tags.team = \"nlp\" and metrics.`train/loss` < 0.032")) == {ids[2], ids[4]}
    assert found("params.lr = '0.001'") == [ids[3]]
    by_name = found("", order_by=["attributes.run_name DESC"])
    assert by_name[:2] == [ids[5], ids[4]] and len(by_name) == 7
    # runs without the value (and NaN) sort last in both directions
    asc = found("attributes.status = 'FINISHED'", order_by=["metrics.`val/mAP50-95` ASC"])
    assert asc[0] == ids[4] and asc[-1] == ids[2]

    for bad in ("metrics.x > 'a'", "params.lr > 1", "metrics.x >", "foo.x = 1", "metrics.a = 1 OR metrics.b = 2"):
        with pytest.raises(MlflowException) as err:
            mlflow.search_runs(experiment_ids=[exp], filter_string=bad)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE", bad
    with pytest.raises(MlflowException) as err:
        mlflow.search_runs(experiment_ids=["999999"])
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_pages_and_experiments(sweep: tuple[str, list[str]]) -> None:
    exp, ids = sweep
    client = MlflowClient()
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = client.search_runs([exp], order_by=["params.lr DESC"], max_results=2, page_token=token)
        seen += [r.info.run_id for r in page]
        pages += 1
        token = page.token
        if not token:
            break
    assert pages == 4 and len(seen) == 7 and len(set(seen)) == 7
    assert seen[:6] == [ids[5], ids[0], ids[1], ids[2], ids[3], ids[4]]  # strings: "1e-05" > "1.0" > "0.1"
    run = client.search_runs([exp], filter_string=f"attributes.run_id = '{ids[1]}'")[0]
    assert run.data.params == {"lr": "0.1", "optim": "adamw"} and run.data.metrics["val/mAP50-95"] == 0.52

    names = [e.name for e in client.search_experiments()]
    assert "sweep" in names
    assert [e.name for e in client.search_experiments(filter_string="name = 'sweep'")] == ["sweep"]
    assert [e.name for e in client.search_experiments(filter_string="name LIKE 'sw%'")] == ["sweep"]


def test_bulk_interval_samples_each_run(sweep: tuple[str, list[str]]) -> None:
    exp, ids = sweep
    url = sweep_url()
    r = httpx.get(f"{url}{API}/metrics/get-history-bulk-interval",
                  params={"run_ids": ids[:2], "metric_key": "train/loss", "max_results": 5})
    assert r.status_code == 200, r.text
    metrics = r.json()["metrics"]
    for rid, i in ((ids[0], 0), (ids[1], 1)):
        mine = [m for m in metrics if m["run_id"] == rid]
        steps = [m["step"] for m in mine]
        assert steps[0] == 0 and steps[-1] == 29 and len(steps) == 5 and steps == sorted(steps)
        assert all(m["value"] == 1.0 / (m["step"] + 1 + i) for m in mine)
    part = httpx.get(f"{url}{API}/metrics/get-history-bulk-interval",
                     params={"run_ids": ids[0], "metric_key": "train/loss", "start_step": 5, "end_step": 7}).json()
    assert [m["step"] for m in part["metrics"]] == [5, 6, 7]
    bad = httpx.get(f"{url}{API}/metrics/get-history-bulk-interval", params={"metric_key": "train/loss"})
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_artifacts_fail_with_mlflows_error_naming_what_is_missing(tracking: str) -> None:
    mlflow.set_experiment("arts")
    with mlflow.start_run() as run:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        with pytest.raises(Exception) as err:
            mlflow.log_text("hello", "notes.txt")
    assert "not artifacts" in str(err.value) and "FileNotFoundError" not in repr(err.value)
    r = httpx.get(f"{tracking}{API}/artifacts/list", params={"run_id": run.info.run_id})
    assert r.status_code == 501 and r.json()["error_code"] == "NOT_IMPLEMENTED"


def test_kinds_follow_the_keys(tracking: str) -> None:
    mlflow.set_experiment("kinds")
    with mlflow.start_run() as run:
        mlflow.log_metrics({"val_acc": 0.9, "val_loss": 0.4, "train_loss_epoch": 0.5, "train_ce": 0.3,
                            "eval_runtime": 1.5}, step=0)
    summary = httpx.get(f"{tracking}/api/v1/runs/{run.info.run_id}").json()["summary"]
    assert {k: v["kind"] for k, v in summary.items()} == {
        "val_acc": "metric", "val_loss": "loss", "train_loss_epoch": "loss", "train_ce": "loss_component",
        "eval_runtime": "other"}


ACCS = [0.91, 0.42, 0.77, None, 0.55, 0.63, 0.12, 0.98]


def test_search_runs_rows_equal_the_rest_lists(tracking: str) -> None:
    """A metric filter and order_by over runs with distinct values: mlflow.search_runs gives exactly the
    runs, in exactly the order, of losswatch's REST list sorted by the same metric and filtered alike."""
    exp = mlflow.set_experiment("accs").experiment_id
    for i, acc in enumerate(ACCS):
        with mlflow.start_run(run_name=f"t-{i}"):
            mlflow.log_param("seed", i)
            mlflow.log_metric("train/loss", 1.0 / (i + 1), step=0)
            if acc is not None:
                mlflow.log_metric("val/acc", acc / 2, step=1)
                mlflow.log_metric("val/acc", acc, step=2)  # the last value is the one compared
    rest = httpx.get(f"{tracking}/api/v1/projects/accs/runs", params={"sort": "-last:val/acc", "limit": 1000}).json()

    def last(run: dict[str, Any]) -> Any:
        return run["summary"].get("val/acc", {}).get("last")

    for op, want in ((">", lambda v: v > 0.5), ("<=", lambda v: v <= 0.5)):
        for direction in ("DESC", "ASC"):
            df = mlflow.search_runs(experiment_ids=[exp], filter_string=f"metrics.`val/acc` {op} 0.5",
                                    order_by=[f"metrics.`val/acc` {direction}"])
            expected = [r["id"] for r in rest["runs"] if last(r) is not None and want(last(r))]
            if direction == "ASC":
                expected.reverse()
            assert list(df["run_id"]) == expected, (op, direction)
            assert list(df["metrics.val/acc"]) == [last(r) for r in rest["runs"] if r["id"] in expected][
                :: -1 if direction == "ASC" else 1]
    assert len(expected) == 2  # 0.42 and 0.12 at or below 0.5
