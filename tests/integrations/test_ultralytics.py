"""Ultralytics YOLO, for real: a YOLO11n built from its yaml trains 2 epochs on CPU on a tiny dataset
that the training script generates, with `losswatch.integrations.ultralytics.attach`, against a real
`losswatch serve`; then what the server stored is compared with what the trainer computed (captured
by an extra callback of the script, which runs after losswatch's).

The training runs in .venv-ultralytics (`make venv-ultralytics`): ultralytics needs torchvision, and
PyPI's torchvision does not import beside the main venv's torch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need_or_skip
from tests.integrations.conftest import read_run, read_series

PYTHON = ROOT / ".venv-ultralytics" / "bin" / "python"
SCRIPT = Path(__file__).with_name("_yolo_train.py")

pytestmark = pytest.mark.slow


def _train(url: str, workdir: Path, *extra: str) -> dict[str, Any]:
    need_or_skip(None if PYTHON.exists() else
                 f"{PYTHON} is missing: run `make venv-ultralytics` (ultralytics, torch 2.14.1, torchvision 0.29.1)")
    out = workdir / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", YOLO_CONFIG_DIR=str(workdir / "yolo-config"),
               MPLBACKEND="Agg", OMP_NUM_THREADS="2", LOSSWATCH_SPOOL_DIR=str(workdir / "spool"))
    proc = subprocess.run([str(PYTHON), str(SCRIPT), url, str(workdir), str(out), *extra], env=env,
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "LosswatchWarning" not in proc.stderr, proc.stderr[-3000:]  # nothing dropped or refused
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_every_batch_and_epoch_reach_the_server_as_the_trainer_computed_them(server: Any, tmp_path: Path) -> None:
    seen = _train(server.url, tmp_path)
    run = read_run(server.url, seen["run_id"])
    nb = seen["nb"]
    batches = seen["batches"]
    assert nb >= 2 and len(batches) == 2 * nb  # 2 epochs, every batch

    # the run: project, name from the save dir, the training arguments as config, finished
    assert run["project"] == "yolo" and run["name"] == "train" and run["status"] == "finished"
    for key in ("epochs", "imgsz", "batch", "nbs", "amp", "seed", "model", "data"):
        assert run["config"][key] == seen["args"][key], key

    # every batch's loss components, exactly as trainer.loss_items held them (float32 -> float64)
    names = list(batches[0]["losses"])
    assert names == ["box_loss", "cls_loss", "dfl_loss"]
    for name in names:
        stored = read_series(server.url, run["id"], f"train/{name}")
        assert stored == {i: b["losses"][name] for i, b in enumerate(batches)}, name
        assert run["summary"][f"train/{name}"]["kind"] == "loss_component"
    total = read_series(server.url, run["id"], "train/loss")
    assert run["summary"]["train/loss"]["kind"] == "loss"
    for i, b in enumerate(batches):
        assert math.isclose(total[i], sum(b["losses"].values()), rel_tol=1e-6)

    # the learning rate of every param group at every batch (warm-up moves it each batch)
    n_groups = len(batches[0]["lrs"])
    assert n_groups == 3
    for g in range(n_groups):
        stored = read_series(server.url, run["id"], f"lr/pg{g}")
        assert stored == {i: b["lrs"][g] for i, b in enumerate(batches)}
        assert run["summary"][f"lr/pg{g}"]["kind"] == "lr"
    assert len({b["lrs"][0] for b in batches}) > 1

    # every epoch's validation metrics and losses, with the trainer's keys, at the epoch's last batch;
    # the final validation of best.pt (Ultralytics' "epoch + 1") right after the last batch
    epochs = seen["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    expected: dict[str, dict[int, float]] = {}
    for e in epochs:
        step = (e["epoch"] + 1) * nb - 1 if e["epoch"] < 2 else 2 * nb
        for key, value in e["metrics"].items():
            expected.setdefault(key, {})[step] = value
    for key in ("metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)",
                "val/box_loss", "val/cls_loss", "val/dfl_loss"):
        assert key in expected, key
        assert read_series(server.url, run["id"], key) == expected[key], key
    assert run["summary"]["metrics/mAP50-95(B)"]["kind"] == "metric"
    assert run["summary"]["val/box_loss"]["kind"] in ("loss", "loss_component")
    assert not [k for k in run["summary"] if k.startswith("metrics/") and "(B)" not in k]


def test_a_non_finite_loss_alert_stops_training_cleanly(server: Any, tmp_path: Path) -> None:
    """From batch 1 on the losses are NaN; with stop_on=("non_finite",) the alert the server
    answers sets the trainer's stop flag: the epoch ends early, validation and saving still happen,
    and the run ends as stopped."""
    seen = _train(server.url, tmp_path, "--nan-from-batch", "1", "--epochs", "5")
    batches = seen["batches"]
    # batch 1 is NaN and sent at batch 2's start; the alert is back before batch 2 ends
    assert len(batches) == 3, [b["stop"] for b in batches]
    assert batches[-1]["stop"] and seen["stopped"]
    run = read_run(server.url, seen["run_id"])
    assert run["status"] == "stopped"
    box = read_series(server.url, run["id"], "train/box_loss")
    assert sorted(box) == [0, 1, 2]
    assert math.isfinite(box[0]) and math.isnan(box[1]) and math.isnan(box[2])
    assert run["summary"]["train/box_loss"]["nonfinite"] == 2
    assert (tmp_path / "runs" / "train" / "weights" / "last.pt").exists()
