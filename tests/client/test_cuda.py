"""CUDA tensors: logged without a device synchronisation on the training thread (needs a GPU)."""

from __future__ import annotations

import pytest
from _server import FakeServer

import losswatch
from tests.conftest import need_module

torch = need_module("torch")
pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_fetched_in_bulk_without_syncing_the_training_thread(
    server: FakeServer, spool_dir, fast
) -> None:
    w = torch.linspace(0.1, 1.0, 8, device="cuda", requires_grad=True)
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    expected = []
    torch.cuda.set_sync_debug_mode("error")  # an implicit sync (.item(), blocking copy) would raise
    try:
        for step in range(50):
            loss = (w * (step + 1)).square().mean()
            box = (w[:4] * 0.5).sum().to(torch.float16)
            run.log({"train/loss": loss, "train/loss/box": box})
            expected.append((loss.detach(), box.detach()))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    run.finish()
    got_loss = server.series(run.id, "train/loss")
    got_box = server.series(run.id, "train/loss/box")
    for step, (loss, box) in enumerate(expected):
        assert got_loss[step] == loss.item()
        assert got_box[step] == box.item()
