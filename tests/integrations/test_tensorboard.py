"""`losswatch.SummaryWriter`, a drop-in for torch.utils.tensorboard's writer: the same calls made on both
writers give the same scalars (TensorBoard's read back with its own EventAccumulator, ours from a real
`losswatch serve`); add_scalars, add_hparams, auto steps, close/context manager; the rest of the
TensorBoard API does nothing and warns once."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_module

torch = need_module("torch")
need_module("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import losswatch  # noqa: E402
from losswatch.client.errors import LosswatchWarning  # noqa: E402
from losswatch.integrations.tensorboard import SummaryWriter  # noqa: E402
from tests.integrations.conftest import list_runs, read_run, read_series  # noqa: E402


def _log(writer: Any) -> None:
    """A training loop's TensorBoard calls."""
    for step in range(20):
        loss = torch.tensor(2.0 / (step + 1))
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("lr", 0.1 * 0.9**step, global_step=step)
    writer.add_scalar("train/loss", float("nan"), 20)
    writer.add_scalar("val/acc", 0.5, 9)
    writer.add_scalar("val/acc", 0.75, 19)


def test_same_scalars_as_tensorboard(server: Any, tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter as TBWriter

    tb = TBWriter(str(tmp_path / "tb" / "exp1"))
    _log(tb)
    tb.close()
    ours = SummaryWriter(str(tmp_path / "runs" / "exp1"), project="tb", url=server.url, flush_interval=0.2)
    assert losswatch.SummaryWriter is SummaryWriter
    _log(ours)
    ours.close()

    acc = EventAccumulator(str(tmp_path / "tb" / "exp1"), size_guidance={"scalars": 0})
    acc.Reload()
    run = read_run(server.url, ours.run.id)
    assert run["name"] == "exp1" and run["project"] == "tb" and run["status"] == "finished"
    assert sorted(run["summary"]) == sorted(acc.Tags()["scalars"])
    for tag in acc.Tags()["scalars"]:
        theirs = {e.step: e.value for e in acc.Scalars(tag)}  # TensorBoard keeps float32
        stored = read_series(server.url, run["id"], tag)
        assert sorted(stored) == sorted(theirs), tag
        for step, value in theirs.items():
            assert (math.isnan(value) and math.isnan(stored[step])) or math.isclose(stored[step], value, rel_tol=1e-6)
    assert {k: v["kind"] for k, v in run["summary"].items()} == {"train/loss": "loss", "lr": "lr", "val/acc": "metric"}
    assert read_series(server.url, run["id"], "lr")[3] == 0.1 * 0.9**3  # ours keeps float64


def test_scalars_hparams_auto_steps_and_the_rest(server: Any, tmp_path: Path) -> None:
    with SummaryWriter(str(tmp_path / "runs" / "sweep-1"), project="tb", url=server.url,
                       config={"model": "mlp"}) as writer:
        for step in range(3):
            writer.add_scalars("loss", {"box": 0.5 + step, "cls": torch.tensor(1.5)}, step)
        for value in (3.0, 2.0, 1.0):
            writer.add_scalar("no_step", value)  # TensorBoard puts these at step 0; ours count per tag
        with pytest.warns(LosswatchWarning, match="add_histogram"):
            writer.add_histogram("weights", torch.randn(10), 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            writer.add_histogram("weights", torch.randn(10), 1)  # warned once only
        with pytest.warns(LosswatchWarning, match="add_image"):
            writer.add_image("img", torch.zeros(3, 4, 4), 0)
        with pytest.raises(AttributeError):
            writer.add_nonsense  # noqa: B018
        writer.add_hparams({"lr": 0.01, "batch": 32}, {"hparam/accuracy": 0.8})
        writer.flush()
        assert writer.get_logdir().endswith("sweep-1")

    run = read_run(server.url, writer.run.id)
    assert run["status"] == "finished" and run["name"] == "sweep-1"
    assert run["config"] == {"model": "mlp", "lr": 0.01, "batch": 32}
    assert read_series(server.url, run["id"], "loss/box") == {0: 0.5, 1: 1.5, 2: 2.5}
    assert read_series(server.url, run["id"], "loss/cls") == {0: 1.5, 1: 1.5, 2: 1.5}
    assert read_series(server.url, run["id"], "no_step") == {0: 3.0, 1: 2.0, 2: 1.0}
    assert read_series(server.url, run["id"], "hparam/accuracy") == {2: 0.8}  # at the last step written
    assert run["summary"]["hparam/accuracy"]["kind"] == "metric"
    assert [r["id"] for r in list_runs(server.url, "tb")] == [run["id"]]


def test_an_exception_in_the_with_block_marks_the_run_failed(server: Any, tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with SummaryWriter(str(tmp_path / "crash"), project="tb", url=server.url) as writer:
            writer.add_scalar("train/loss", 1.0, 0)
            1 / 0  # noqa: B018
    run = read_run(server.url, writer.run.id)
    assert run["status"] == "failed" and read_series(server.url, run["id"], "train/loss") == {0: 1.0}


def test_walltime_is_recorded_and_hparams_merge_in_the_background(server: Any, tmp_path: Path) -> None:
    from tests.integrations.conftest import read_walls

    wall = 1_750_000_000.5  # exact in microseconds, as the server stores wall times
    writer = SummaryWriter(str(tmp_path / "runs" / "wt"), project="tb", url=server.url, config={"seed": 1},
                           flush_interval=0.2)
    writer.add_scalar("train/loss", 1.0, 0, walltime=wall)
    writer.add_scalars("loss", {"box": 0.5, "cls": 0.25}, 1, walltime=wall + 1)
    writer.add_scalars("aux", {"a": 0.1}, walltime=wall + 2)  # no global_step: each tag counts its steps
    writer.add_hparams({"lr": 0.01}, {"val/acc": 0.5})
    writer.add_hparams({"batch": 8}, {})
    writer.close()
    run = read_run(server.url, writer.run.id)
    assert run["config"] == {"seed": 1, "lr": 0.01, "batch": 8}
    assert read_walls(server.url, run["id"], "train/loss") == {0: wall}
    assert read_walls(server.url, run["id"], "loss/box") == {1: wall + 1}
    assert read_walls(server.url, run["id"], "aux/a") == {0: wall + 2}
