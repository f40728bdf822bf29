"""``stop_on``: a real torch training loop whose learning rate is far too high diverges; the server's
alert comes back in an ingest answer and the loop stops itself, by the flag or by StopTraining."""

from __future__ import annotations

import math
import time

import pytest

import losswatch
from tests.conftest import need_module
from tests.e2e._support import FAST

torch = need_module("torch")


def diverging_steps(run: losswatch.Run, max_steps: int = 20_000):  # type: ignore[no-untyped-def]
    """Linear regression by SGD with lr=0.5 on inputs of scale 3: every step multiplies the error.
    Yields (step, loss value) after logging each step."""
    from losswatch.client.torch_helpers import LossComponents, log_lr

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    criterion = LossComponents(run, weights={"mse": 1.0, "l1": 0.1}, prefix="train/loss")
    w = torch.randn(8, 1, generator=g)
    for step in range(max_steps):
        x = 3 * torch.randn(16, 8, generator=g)
        pred = model(x)
        y = x @ w
        loss = criterion(mse=torch.nn.functional.mse_loss(pred, y), l1=torch.nn.functional.l1_loss(pred, y),
                         step=step)
        opt.zero_grad()
        loss.backward()
        log_lr(run, opt, step=step)
        opt.step()
        yield step, loss
        time.sleep(0.0005)  # a real step takes time; keeps the loop from outrunning the test's budget


@pytest.mark.slow
def test_a_diverging_training_loop_stops_itself(sqlite_url, server_factory, spool_dir, api) -> None:
    server = server_factory(sqlite_url).start()
    lw = api(server.url)
    run = losswatch.init(project="stop", url=server.url, spool_dir=spool_dir,
                         stop_on={"non_finite", "divergence"}, **FAST)
    first_bad = first_bad_at = None
    for step, loss in diverging_steps(run):
        if first_bad is None and not math.isfinite(loss.item()):
            first_bad, first_bad_at = step, time.monotonic()
        if run.should_stop:
            break
    stopped_after = time.monotonic() - first_bad_at if first_bad_at is not None else None
    run.finish()
    assert run.should_stop and step < 19_999
    assert run.stop_alert["rule"] in ("non_finite", "divergence")
    assert run.stop_alert["onset_step"] <= step  # stopped by the problem, after it began
    assert lw.run(run.id)["status"] == "stopped"
    rules = {a["rule"] for a in lw.alerts(run.id)}
    assert rules & {"non_finite", "divergence"}
    print(f"\nstopped at step {step} on {run.stop_alert['rule']} (onset {run.stop_alert['onset_step']}); "
          f"first non-finite loss at step {first_bad}, {stopped_after and stopped_after * 1000:.0f} ms before")


@pytest.mark.slow
def test_raise_on_stop_ends_the_loop_with_stop_training(sqlite_url, server_factory, spool_dir, api) -> None:
    server = server_factory(sqlite_url).start()
    last = -1
    with losswatch.init(project="stop", url=server.url, spool_dir=spool_dir, stop_on={"non_finite", "divergence"},
                        raise_on_stop=True, **FAST) as run:
        for step, _ in diverging_steps(run):
            last = step
        pytest.fail("StopTraining was not raised")
    assert 0 < last < 19_999
    assert api(server.url).run(run.id)["status"] == "stopped"
