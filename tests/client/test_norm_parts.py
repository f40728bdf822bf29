"""``NormParts``: a norm whose last two ops (stack, reduce) the collector does for a whole batch at
once. Logged through the real client to a real HTTP server on 127.0.0.1, each step's value must be
the 2-norm of its parts, whatever the number of parts of each step."""

from __future__ import annotations

import math
from pathlib import Path

from _server import FakeServer

import losswatch
from losswatch.client.batching import NormParts
from tests.conftest import need_module


def test_norm_parts_arrive_as_the_norm_of_each_step(server: FakeServer, spool_dir: Path, fast: dict[str, float]) -> None:
    torch = need_module("torch")
    g = torch.Generator().manual_seed(0)
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=64, **fast)
    expected = {}
    for step in range(200):
        grads = [torch.randn(3 + (step % 4), generator=g) for _ in range(1 + step % 3)]  # 1 to 3 parts
        parts = torch._foreach_norm(grads, 2.0)
        expected[step] = float(torch.linalg.vector_norm(torch.cat(grads)))
        run.log({"grad_norm": NormParts(parts), "train/loss": 1.0}, step=step)
    run.finish()
    got = server.series(run.id, "grad_norm")
    assert sorted(got) == list(range(200))
    for step, value in expected.items():
        assert math.isclose(got[step], value, rel_tol=1e-6), (step, got[step], value)
    assert float(NormParts([torch.tensor(3.0), torch.tensor(4.0)])) == 5.0
