"""`losswatch import tensorboard|mlflow`, the real CLI against a real `losswatch serve`, on event files
written by torch.utils.tensorboard and an MLflow store written by mlflow itself; what the server stores
is compared with what TensorBoard's EventAccumulator and MlflowClient read from the same sources."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, need_module
from tests.integrations.conftest import list_runs, read_run, read_series, read_walls


def _import(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **(env or {})}
    return subprocess.run([str(BIN / "losswatch"), "import", *args], capture_output=True, text=True,
                          timeout=300, env=full_env)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_import_tensorboard_event_files(server: Any, tmp_path: Path) -> None:
    need_module("tensorboard")
    torch = need_module("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "logs"
    for name, scale in (("baseline", 1.0), ("sweep/lr-0.1", 2.0)):
        with SummaryWriter(str(logdir / name)) as w:
            for step in range(0, 3000, 3):
                w.add_scalar("train/loss", scale / (step + 1), step)
                w.add_scalar("lr", torch.tensor(0.1 * scale), step)
            w.add_scalar("val/mAP50-95", 0.3 * scale, 2997, new_style=True)  # a tensor-style scalar
            w.add_scalar("train/loss", float("nan"), 3000)
    (logdir / "notes").mkdir()  # a directory without event files is no run

    done = _import("tensorboard", str(logdir), "--url", server.url, "--project", "tbimp", "--batch", "700")
    assert done.returncode == 0, done.stderr
    assert "imported 2 run(s), 4,004 points" in done.stderr and "points  run 2/2" in done.stderr
    runs = {r["name"]: r for r in list_runs(server.url, "tbimp")}
    assert sorted(runs) == ["baseline", "sweep/lr-0.1"]
    for name, run in runs.items():
        assert run["status"] == "finished"
        acc = EventAccumulator(str(logdir / name), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in ("train/loss", "lr"):
            events = acc.Scalars(tag)
            stored = read_series(server.url, run["id"], tag)
            assert len(stored) == len(events) == (1001 if tag == "train/loss" else 1000)
            assert all(_same(stored[e.step], e.value) for e in events), tag
            walls = read_walls(server.url, run["id"], tag)
            assert all(abs(walls[e.step] - e.wall_time) < 1e-6 for e in events)
        assert read_series(server.url, run["id"], "val/mAP50-95")[2997] == pytest.approx(0.3 * (2.0 if "sweep" in name else 1.0))
        assert {k: v["kind"] for k, v in read_run(server.url, run["id"])["summary"].items()} == {
            "train/loss": "loss", "lr": "lr", "val/mAP50-95": "metric"}
        assert read_run(server.url, run["id"])["summary"]["train/loss"]["nonfinite"] == 1

    again = _import("tensorboard", str(logdir), "--url", server.url, "--project", "tbimp")
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in list_runs(server.url, "tbimp")) == sorted(r["id"] for r in runs.values())

    missing = _import("tensorboard", str(tmp_path / "nothing"), "--url", server.url)
    assert missing.returncode == 1 and "not a directory" in missing.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # mlflow's own, on import
def test_import_mlflow_store(server: Any, tmp_path: Path) -> None:
    mlflow = need_module("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("yolo sweep")
        with mlflow.start_run(run_name="a", tags={"owner": "ana"}) as a:
            mlflow.log_params({"lr": 0.01, "epochs": 3})
            for step in range(50):
                mlflow.log_metric("train/loss", 1.0 / (step + 1), step=step, timestamp=1_764_380_000_000 + step)
            mlflow.log_metric("train/loss", float("inf"), step=50)
            mlflow.log_metric("metrics/mAP50-95", 0.4, step=49)
        mlflow.set_experiment("other")
        with mlflow.start_run(run_name="b") as b:
            mlflow.log_metric("loss", 0.5)
        client = MlflowClient(uri)
        client.set_terminated(b.info.run_id, "FAILED")
    finally:
        mlflow.set_tracking_uri(None)

    done = _import("mlflow", uri, "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert "imported 2 run(s)" in done.stderr
    [ra] = list_runs(server.url, "yolo-sweep")
    [rb] = list_runs(server.url, "other")
    assert ra["name"] == "a" and ra["status"] == "finished" and rb["status"] == "failed"
    assert ra["config"] == {"lr": "0.01", "epochs": "3"}
    assert "owner=ana" in ra["tags"] and any(t.startswith("mlflow.user=") for t in ra["tags"])
    history = client.get_metric_history(a.info.run_id, "train/loss")
    stored = read_series(server.url, ra["id"], "train/loss")
    assert {m.step: m.value for m in history} == stored
    assert stored[50] == sys.float_info.max  # MLflow's SQL store itself keeps +inf as the largest float
    walls = read_walls(server.url, ra["id"], "train/loss")
    assert all(walls[m.step] == m.timestamp / 1000 for m in history)
    assert read_series(server.url, ra["id"], "metrics/mAP50-95") == {49: 0.4}

    only = _import("mlflow", uri, "--url", server.url, "--experiment", "other", "--project", "merged")
    assert only.returncode == 0, only.stderr
    assert [r["name"] for r in list_runs(server.url, "merged")] == ["b"]
    bad = _import("mlflow", uri, "--url", server.url, "--experiment", "nope")
    assert bad.returncode == 1 and "no such MLflow experiment" in bad.stderr


def test_add_scalars_groups_become_series_of_the_parent_run(server: Any, tmp_path: Path) -> None:
    need_module("tensorboard")
    need_module("torch")
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "logs"
    with SummaryWriter(str(logdir / "yolo")) as w:
        for step in range(50):
            w.add_scalar("train/loss", 3.0 / (step + 1), step)
            w.add_scalars("train/loss", {"box": 1.0 / (step + 1), "cls": 2.0 / (step + 1)}, step)
            w.add_scalars("val", {"top1": step / 100}, step)
    assert len([p for p in (logdir / "yolo").iterdir() if p.is_dir()]) == 3  # TensorBoard's sub-runs

    done = _import("tensorboard", str(logdir), "--url", server.url, "--project", "groups")
    assert done.returncode == 0, done.stderr
    assert "imported 1 run(s), 200 points" in done.stderr
    (run,) = list_runs(server.url, "groups")
    assert run["name"] == "yolo"
    kinds = {k: v["kind"] for k, v in read_run(server.url, run["id"])["summary"].items()}
    assert kinds == {"train/loss": "loss", "train/loss/box": "loss_component", "train/loss/cls": "loss_component",
                     "val/top1": "metric"}
    assert read_series(server.url, run["id"], "train/loss/cls") == {s: pytest.approx(2.0 / (s + 1)) for s in range(50)}
    assert read_series(server.url, run["id"], "val/top1")[49] == pytest.approx(0.49)
