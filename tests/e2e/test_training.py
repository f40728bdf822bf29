"""A real torch training loop through the client to a real server process, on SQLite and PostgreSQL:
what the server stores is, bit for bit, what the loop computed."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import pytest

import losswatch
from tests.conftest import need_module
from tests.e2e._support import FAST, same_bits

torch = need_module("torch")


class Recorder:
    """Stands where the run stands for the torch helpers: records what is logged, then logs it.

    Tensors are read here with ``.item()`` (the test may sync; the client must not), which widens a
    float32 exactly to a Python float: the value the server must hold.
    """

    def __init__(self, run: losswatch.Run) -> None:
        self.run = run
        self.values: dict[str, dict[int, float]] = {}
        self.kinds: dict[str, str] = {}

    def _record(self, values: Mapping[str, Any], step: int, kinds: Mapping[str, str] | None) -> None:
        for key, value in values.items():
            v = value.item() if isinstance(value, torch.Tensor) else float(value)
            self.values.setdefault(key, {})[step] = v
        self.kinds.update(kinds or {})

    def log(self, values: Mapping[str, Any], step: int | None = None,
            kinds: Mapping[str, str] | None = None) -> None:
        assert step is not None
        self.run.log(values, step=step, kinds=kinds)
        self._record(values, step, kinds)

    def log_eval(self, values: Mapping[str, Any], step: int) -> None:
        self.run.log_eval(values, step=step)
        self._record(values, step, None)


def train(rec: Recorder, steps: int = 300, eval_every: int = 50) -> None:
    """A small classifier on synthetic data, CPU, float32: loss components, LR, grad norm, evals."""
    from losswatch.client.torch_helpers import LossComponents, clip_and_log_grad_norm, l2_penalty, log_lr

    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = torch.randn(10, 3, generator=g)
    x_val = torch.randn(256, 10, generator=g)
    y_val = (x_val @ teacher).argmax(1)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    criterion = LossComponents(rec, weights={"ce": 1.0, "margin": 0.5}, prefix="train/loss")
    for step in range(steps):
        x = torch.randn(32, 10, generator=g)
        y = (x @ teacher).argmax(1)
        logits = model(x)
        loss = criterion(ce=F.cross_entropy(logits, y), margin=F.multi_margin_loss(logits, y),
                         l2=l2_penalty(model, 1e-3), step=step)
        opt.zero_grad()
        loss.backward()
        log_lr(rec, opt, step=step)
        clip_and_log_grad_norm(rec, model.parameters(), max_norm=1.0, step=step)
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0:
            with torch.no_grad():
                val_logits = model(x_val)
                rec.log_eval({"val/loss": F.cross_entropy(val_logits, y_val),
                              "val/accuracy": (val_logits.argmax(1) == y_val).float().mean()}, step=step)


@pytest.mark.slow
def test_stored_points_equal_what_the_loop_computed(db_url: str, server_factory, spool_dir, api) -> None:
    server = server_factory(db_url).start()
    run = losswatch.init(project="e2e", name="train", url=server.url, spool_dir=spool_dir, finish_timeout=600,
                         **FAST)
    rec = Recorder(run)
    # non-finite and extreme values the loop could produce travel too
    special = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2]
    for step, v in enumerate(special):
        rec.log({"probe/value": v}, step=step)
    train(rec)
    t0 = time.perf_counter()
    run.finish()
    finish_s = time.perf_counter() - t0
    lw = api(server.url)
    stored = lw.run(run.id)
    assert stored["status"] == "finished"
    assert set(stored["summary"]) == set(rec.values)
    for key, expected in rec.values.items():
        assert same_bits(lw.points(run.id, key), expected), key
        assert stored["summary"][key]["count"] == len(expected)  # once each
    kinds = {key: s["kind"] for key, s in stored["summary"].items()}
    assert kinds == {
        "train/loss": "loss", "train/loss/ce": "loss_component", "train/loss/ce_weighted": "loss_component",
        "train/loss/margin": "loss_component", "train/loss/margin_weighted": "loss_component",
        "train/loss/l2": "loss_component", "lr": "lr", "grad_norm": "grad_norm",
        "val/loss": "loss", "val/accuracy": "metric", "probe/value": "other",
    }  # fmt: skip
    assert len(rec.values["train/loss"]) == 300 and len(rec.values["val/accuracy"]) == 6
    assert rec.values["val/accuracy"][299] > 0.8  # it really trained
    assert not spool_dir.exists() or not any(spool_dir.iterdir())
    print(f"\n[{db_url.split(':')[0]}] finish() took {finish_s * 1000:.0f} ms")
    assert finish_s < 60  # finish() returns once delivered, never waiting out finish_timeout (600 s)
