"""PyTorch Lightning, for real: a tiny regression model trains on CPU with `LosswatchLogger` and
`LosswatchCallback` against a real `losswatch serve`; the server must hold every batch's loss exactly
as the training_step computed it, every learning rate, what Lightning gave its loggers (compared with
a recording logger beside ours) and the hyperparameters as the run's config. A NaN loss with
stop_on=("non_finite",) must end the fit early and cleanly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_module

L = need_module("lightning")
import torch  # noqa: E402
from lightning.pytorch.loggers.logger import Logger  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from losswatch.integrations.lightning import LosswatchCallback, LosswatchLogger  # noqa: E402
from tests.integrations.conftest import read_run, read_series  # noqa: E402

pytestmark = [
    # Lightning's advice for real jobs (num_workers, small log_every_n_steps) is no error for a test
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    # Lightning 2.6 still uses torch's LeafSpec, which torch 2.13 deprecates
    pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec.* is deprecated:FutureWarning"),
]


class Tiny(L.LightningModule):
    def __init__(self, lr: float = 0.05, nan_from: int | None = None, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.losses: list[float] = []  # what training_step computed, read by the test (a sync is fine here)
        self.run_for_flush: Any = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        n = len(self.losses)
        if self.hparams.nan_from is not None and n >= self.hparams.nan_from:
            loss = loss * float("nan")
            if self.run_for_flush is not None:  # let the server's answer (the alert) come back now
                self.run_for_flush.flush(timeout=10)
        self.losses.append(loss.item())
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)]


class Recorder(Logger):
    """What Lightning hands its loggers, kept in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.hparams: dict[str, Any] = {}

    name = "recorder"  # type: ignore[assignment]
    version = "0"  # type: ignore[assignment]

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.update(params)


def _data(n: int = 64, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _trainer(tmp_path: Path, loggers: list[Logger], **kw: Any) -> Any:
    return L.Trainer(
        max_epochs=kw.pop("max_epochs", 3), accelerator="cpu", devices=1, logger=loggers,
        callbacks=[LosswatchCallback()], log_every_n_steps=kw.pop("log_every_n_steps", 3),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **kw,
    )  # fmt: skip


def test_every_batch_and_what_lightning_logs_reach_the_server(server: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tiny()
    recorder = Recorder()
    logger = LosswatchLogger(project="lit", name="tiny", url=server.url, config={"data": "synthetic"},
                             flush_interval=0.2)
    trainer = _trainer(tmp_path, [logger, recorder])
    trainer.fit(model, _data(), _data(32, seed=1))
    logger.experiment.finish()  # fit() does not wait for delivery; finish() does

    run = read_run(server.url, logger.version)
    assert run["project"] == "lit" and run["name"] == "tiny" and run["status"] == "finished"
    assert logger.experiment.id == run["id"] and logger.name == "tiny"
    # hyperparameters (save_hyperparameters) merged into the config given to the logger
    assert run["config"] == {"data": "synthetic", "lr": 0.05, "nan_from": None, "hidden": 8}

    # every batch's loss, as training_step computed it (float32 -> float64), at the batch index
    batches = 3 * 8
    assert len(model.losses) == batches
    assert read_series(server.url, run["id"], "train/loss") == dict(enumerate(model.losses))
    assert run["summary"]["train/loss"]["kind"] == "loss"
    # the learning rate at every batch (StepLR steps once per epoch)
    lr = read_series(server.url, run["id"], "lr")
    assert len(lr) == batches and lr[0] == 0.05 and run["summary"]["lr"]["kind"] == "lr"

    # what Lightning gave its loggers, logged at Lightning's steps; the callback's points at the same
    # steps carry the same values (no accumulation: batch index == Lightning's logging step)
    val_expected: dict[int, float] = {}
    epoch_expected: dict[int, float] = {}
    for step, metrics in recorder.metrics:
        assert step is not None
        if "val/loss" in metrics:
            val_expected[step] = metrics["val/loss"]
        epoch_expected[step] = metrics["epoch"]
        if "train/loss" in metrics:
            assert math.isclose(model.losses[step], metrics["train/loss"], rel_tol=1e-7)
    assert len(val_expected) == 3
    assert read_series(server.url, run["id"], "val/loss") == val_expected
    assert read_series(server.url, run["id"], "epoch") == epoch_expected
    assert run["summary"]["val/loss"]["kind"] in ("loss", "loss_component")


def test_a_non_finite_loss_alert_stops_the_fit(server: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tiny(nan_from=5)
    logger = LosswatchLogger(project="lit", url=server.url, stop_on=("non_finite",), flush_interval=0.2)
    model.run_for_flush = logger.experiment
    trainer = _trainer(tmp_path, [logger], max_epochs=50)
    trainer.fit(model, _data())
    logger.experiment.finish()  # fit() does not wait for delivery; finish() does

    # batch 5 is NaN, sent (flush) during batch 6; the alert is back before batch 6 ends
    assert len(model.losses) == 7 and trainer.global_step == 7
    run = read_run(server.url, logger.version)
    assert run["status"] == "stopped"
    loss = read_series(server.url, run["id"], "train/loss")
    assert sorted(loss) == list(range(7))
    assert all(math.isfinite(loss[i]) for i in range(5)) and math.isnan(loss[5]) and math.isnan(loss[6])
    assert run["summary"]["train/loss"]["nonfinite"] == 2


def test_the_callback_without_a_losswatch_logger_says_what_to_do(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [Recorder()], max_epochs=1)
    with pytest.raises(RuntimeError, match="LosswatchLogger"):
        trainer.fit(Tiny(), _data(16))


class WithComponents(L.LightningModule):
    """Two loss terms logged with on_step (seen by loggers only every log_every_n_steps), and the
    gradient norm before clipping, measured by the module itself (a sync is fine in a test)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.terms: list[tuple[float, float]] = []
        self.norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        ce = torch.nn.functional.mse_loss(out, y)
        l2 = 1e-3 * sum((p**2).sum() for p in self.parameters())
        self.terms.append((ce.item(), l2.item()))
        self.log("train_ce", ce, on_step=True, on_epoch=False)
        self.log("train_l2", l2, on_step=True, on_epoch=False)
        return ce + l2

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_every_component_every_batch_and_the_gradient_norm_before_clipping(server: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WithComponents()
    logger = LosswatchLogger(project="lit", url=server.url, flush_interval=0.2)
    trainer = _trainer(tmp_path, [logger], max_epochs=2, log_every_n_steps=50, gradient_clip_val=0.01)
    trainer.fit(model, _data())
    logger.experiment.finish()  # fit() does not wait for delivery; finish() does
    rid = logger.version
    batches = 2 * 8
    assert len(model.terms) == batches == len(model.norms)
    ce = read_series(server.url, rid, "train_ce")
    l2 = read_series(server.url, rid, "train_l2")
    assert ce == {i: t[0] for i, t in enumerate(model.terms)}  # every batch, exactly (float32 -> float64)
    assert l2 == {i: t[1] for i, t in enumerate(model.terms)}
    norm = read_series(server.url, rid, "grad_norm")
    assert sorted(norm) == list(range(batches))
    for i, expected in enumerate(model.norms):
        assert math.isclose(norm[i], expected, rel_tol=1e-5), (i, norm[i], expected)
    assert max(norm.values()) > 0.01  # measured before clipping to 0.01
    summary = read_run(server.url, rid)["summary"]
    assert summary["train_ce"]["kind"] == "loss_component" and summary["train_l2"]["kind"] == "loss_component"
    assert summary["grad_norm"]["kind"] == "grad_norm" and summary["train/loss"]["kind"] == "loss"


@pytest.mark.filterwarnings("ignore::lightning_fabric.utilities.warnings.PossibleUserWarning")
def test_the_pytorch_lightning_package_name(server: Any, tmp_path: Path) -> None:
    import pytorch_lightning as pl  # installed with lightning (its dependency) by the dev extra

    from losswatch.integrations import pytorch_lightning as lw_pl

    class Small(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.losses: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    model = Small()
    logger = lw_pl.LosswatchLogger(project="pl", url=server.url, flush_interval=0.2)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=logger,
                         callbacks=[lw_pl.LosswatchCallback()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, _data())
    logger.experiment.finish()  # fit() does not wait for delivery; finish() does
    assert isinstance(logger, pl.loggers.Logger)
    run = read_run(server.url, logger.version)
    assert run["status"] == "finished"
    assert read_series(server.url, run["id"], "train/loss") == dict(enumerate(model.losses))
    assert len(read_series(server.url, run["id"], "grad_norm")) == 8


EXIT_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
from tests.integrations.test_lightning import Tiny, _data, _trainer
from losswatch.integrations.lightning import LosswatchLogger
from pathlib import Path
torch.manual_seed(0)
model = Tiny()
logger = LosswatchLogger(project="lit-exit", url=sys.argv[1], spool_dir=sys.argv[2])
_trainer(Path(sys.argv[2]), [logger], max_epochs=4).fit(model, _data(), _data(32, seed=1))
print(logger.version, repr(model.losses), flush=True)
"""  # the script ends right after fit(): what is left is delivered at interpreter exit


def test_a_script_ending_right_after_fit_delivers_every_batch(server: Any, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, server.url, str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rid, losses = out.stdout.strip().splitlines()[-1].split(" ", 1)
    expected = eval(losses, {"nan": math.nan})  # noqa: S307 - the list our own script printed
    run = read_run(server.url, rid)
    assert run["status"] == "finished"
    assert read_series(server.url, rid, "train/loss") == dict(enumerate(expected))
    assert len(expected) == 4 * 8 and len(read_series(server.url, rid, "grad_norm")) == 4 * 8
    assert not any(p.is_file() and p.stat().st_size for p in (tmp_path / "spool").rglob("*.jsonl"))


class SparseEmbedding(L.LightningModule):
    """A sparse embedding gradient beside dense ones: the norm covers the dense gradients (as before)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4, sparse=True)
        self.net = torch.nn.Linear(4, 1)
        self.norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        idx = (x[:, 0].abs() * 3).long().clamp(max=9)
        return torch.nn.functional.mse_loss(self.net(x + self.emb(idx)), y)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.net.parameters()]))))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_gradient_norm_with_a_sparse_gradient(server: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SparseEmbedding()
    logger = LosswatchLogger(project="lit", url=server.url, flush_interval=0.2)
    _trainer(tmp_path, [logger], max_epochs=1).fit(model, _data())
    logger.experiment.finish()
    norm = read_series(server.url, logger.version, "grad_norm")
    assert sorted(norm) == list(range(8))
    for i, expected in enumerate(model.norms):
        assert math.isclose(norm[i], expected, rel_tol=1e-5), (i, norm[i], expected)


@pytest.mark.filterwarnings("ignore::lightning_fabric.utilities.warnings.PossibleUserWarning")
@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_dispatches_only_the_hooks_the_callback_uses(server: Any, tmp_path: Path, package: str) -> None:
    # Lightning calls each hook of each callback at every batch through a profiler context and skips a
    # hook that is not callable: the per-batch hooks the callback leaves unused must not be dispatched,
    # and the ones it uses must be (Lightning's own profiler records each dispatch by name)
    import importlib

    pl = importlib.import_module(package)
    lw = importlib.import_module(
        "losswatch.integrations.lightning" if package == "lightning.pytorch" else "losswatch.integrations.pytorch_lightning"
    )
    profiler = pl.profilers.SimpleProfiler()
    torch.manual_seed(0)
    model = Tiny() if package == "lightning.pytorch" else None
    if model is None:

        class Small(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Linear(4, 1)

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                return torch.nn.functional.mse_loss(self.net(x), y)

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.01)

        model = Small()
    logger = lw.LosswatchLogger(project="hooks", url=server.url, flush_interval=0.2)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, profiler=profiler,
                         callbacks=[lw.LosswatchCallback()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, _data(), _data(32, seed=1))
    logger.experiment.finish()
    ours = {name.split(".", 1)[1]: len(d) for name, d in profiler.recorded_durations.items()
            if name.startswith("[Callback]LosswatchCallback.")}
    assert ours.get("on_train_batch_end") == 16 and ours.get("on_before_optimizer_step") == 16
    unused = {"on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_zero_grad",
              "on_validation_batch_start", "on_validation_batch_end"}
    assert not unused & set(ours), ours
    assert ours.get("on_fit_start") == 1  # the hooks of the run's start still come
    assert len(read_series(server.url, logger.version, "train/loss")) == 16
