"""The client API against a real local HTTP server: values, steps, kinds, lifecycle, ranks, alerts."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import threading

import pytest
from _server import FakeServer

import losswatch
from losswatch.client import wire
from losswatch.client.errors import LosswatchWarning
from tests.conftest import need_module


def bits(x: float) -> bytes:
    """The float's bytes; every NaN is one value on the wire ("NaN"), so NaNs compare equal."""
    return b"nan" if math.isnan(x) else struct.pack("<d", x)


def test_values_arrive_bit_exact_in_batches_on_one_connection(server: FakeServer, spool_dir, fast) -> None:
    special = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, 1 / 3]
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=10, **fast)
    expected = {}
    for step in range(40):
        v = special[step % len(special)] if step < 30 else step * 1.000000001
        expected[step] = v
        run.log({"train/loss": v, "train/loss/box": -v, "lr": 3e-4})
    run.finish()
    got = server.series(run.id, "train/loss")
    assert sorted(got) == list(range(40))
    assert all(bits(got[s]) == bits(expected[s]) for s in range(40))
    box = server.series(run.id, "train/loss/box")
    assert all(bits(box[s]) == bits(-expected[s]) for s in range(40))
    sizes = [
        sum(len(s["steps"]) for s in wire.loads_batch(b)["series"])
        for _, p, _, b in server.requests
        if p.endswith("/points")
    ]
    assert sum(sizes) == 120 and len(sizes) >= 2
    # cut at flush_every points, or held up to max_batch while the sender is behind (test_held_batches)
    assert max(sizes) <= run._collector.max_batch + 2  # a log() call is never split
    assert len(server.arrivals) == 120  # each point once
    assert server.connections == 1  # one keep-alive connection for everything
    assert server.runs[run.id]["status"] == "finished"
    assert not spool_dir.exists() or not list(spool_dir.iterdir())


def test_steps_auto_increment_and_eval_uses_last_step(server: FakeServer, spool_dir, fast) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"a": 1.0})
    run.log({"a": 2.0})
    run.log({"a": 3.0}, step=10)
    run.log({"a": 4.0})
    run.log_eval({"val/acc": 0.9, "val/loss": 0.3, "val/box_loss": 0.1, "accuracy": 0.8})
    run.log({"a": 5.0})
    run.log_eval({"val/acc": 0.95}, step=100)
    run.finish()
    assert server.series(run.id, "a") == {0: 1.0, 1: 2.0, 10: 3.0, 11: 4.0, 12: 5.0}
    assert server.series(run.id, "val/acc") == {11: 0.9, 100: 0.95}
    kinds = {k: v for (r, k), v in server.kinds.items() if r == run.id}
    assert kinds == {
        "a": "other", "val/acc": "metric", "val/loss": "loss", "val/box_loss": "loss",  # YOLO's val losses
        "accuracy": "metric",
    }  # fmt: skip


def test_kinds_given_by_the_caller_win(server: FakeServer, spool_dir, fast) -> None:
    run = losswatch.init(
        project="p", url=server.url, spool_dir=spool_dir, kinds={"reg": "loss_component"}, **fast
    )
    run.log({"reg": 0.1, "train/loss": 1.0, "gn": 2.0}, kinds={"gn": "grad_norm"})
    run.finish()
    assert server.kinds[(run.id, "reg")] == "loss_component"
    assert server.kinds[(run.id, "gn")] == "grad_norm"
    assert server.kinds[(run.id, "train/loss")] == "loss"
    with pytest.raises(ValueError):
        losswatch.init(project="p", url=server.url, kinds={"x": "nonsense"})


def test_numpy_and_python_number_types(server: FakeServer, spool_dir, fast) -> None:
    np = need_module("numpy")
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"f32": np.float32(0.1), "i64": np.int64(7), "arr": np.array(2.5), "one": np.array([1.5]),
             "b": True, "i": 3, "f16": np.float16(-math.inf)})  # fmt: skip
    run.finish()
    got = {k: server.series(run.id, k)[0] for k in ("f32", "i64", "arr", "one", "b", "i", "f16")}
    assert bits(got["f32"]) == bits(float(np.float32(0.1)))
    assert got == {
        "f32": got["f32"],
        "i64": 7.0,
        "arr": 2.5,
        "one": 1.5,
        "b": 1.0,
        "i": 3.0,
        "f16": -math.inf,
    }


def test_values_that_are_not_numbers_are_dropped_with_one_warning(
    server: FakeServer, spool_dir, fast
) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"ok": 1.0, "bad": "abc"})
    run.log({"ok": 2.0, "bad": [1, 2]})
    with pytest.warns(LosswatchWarning, match="not numbers") as record:
        assert run.flush()  # warnings surface on the training thread, at the next call
    run.log({"ok": 3.0, "bad": None})  # the same problem again: no second warning
    run.finish()
    assert len(record) == 1
    assert server.series(run.id, "ok") == {0: 1.0, 1: 2.0, 2: 3.0}
    assert server.series(run.id, "bad") == {}


@pytest.mark.parametrize(
    ("exc", "status"), [(None, "finished"), (RuntimeError, "failed"), (KeyboardInterrupt, "stopped")]
)
def test_context_manager_sets_the_status(server: FakeServer, spool_dir, fast, exc, status) -> None:
    run = None
    try:
        with losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast) as run:
            run.log({"x": 1.0})
            if exc is not None:
                raise exc("boom")
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert run is not None
    assert server.runs[run.id]["status"] == status
    assert server.series(run.id, "x") == {0: 1.0}


def test_run_create_payload_and_idempotent_id(server: FakeServer, spool_dir, fast) -> None:
    run = losswatch.init(
        project="det", name="lr-3e-4", config={"lr": 3e-4, "warmup": math.inf, "nested": {"a": (1, 2)}},
        tags=["yolo"], group="sweep", url=server.url, spool_dir=spool_dir, id="myrun_1", **fast,
    )  # fmt: skip
    run.finish()
    created = server.runs["myrun_1"]
    assert created["project"] == "det" and created["name"] == "lr-3e-4" and created["group"] == "sweep"
    assert created["tags"] == ["yolo"]
    assert created["config"] == {"lr": 3e-4, "warmup": "Infinity", "nested": {"a": [1, 2]}}
    assert created["client"]["python"] and created["host"]
    with pytest.raises(ValueError):
        losswatch.init(project="p", url=server.url, id="not a valid id!")


def test_env_fallbacks(server: FakeServer, spool_dir, fast, monkeypatch) -> None:
    monkeypatch.setenv("LOSSWATCH_URL", server.url)
    monkeypatch.setenv("LOSSWATCH_PROJECT", "from-env")
    monkeypatch.setenv("LOSSWATCH_TOKEN", "s3cret")
    run = losswatch.init(spool_dir=spool_dir, **fast)
    run.finish()
    assert server.runs[run.id]["project"] == "from-env"
    assert len(run.id) == 32 and int(run.id, 16) >= 0  # uuid4 hex
    headers = server.requests[0][2]
    assert headers["Authorization"] == "Bearer s3cret"


def test_only_rank_zero_sends_by_default(server: FakeServer, spool_dir, fast, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    assert not run.enabled
    run.log({"train/loss": 1.0})
    run.log_eval({"val/acc": 1.0})
    assert run.flush()
    run.finish()
    assert server.requests == []


def test_every_rank_sends_with_suffixed_keys(server: FakeServer, spool_dir, fast, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    run = losswatch.init(
        project="p", url=server.url, spool_dir=spool_dir, rank_zero_only=False, id="shared", **fast
    )
    run.log({"train/loss": 1.0, "train/loss/box": 0.5})
    run.finish()
    assert server.series("shared", "train/loss@rank3") == {0: 1.0}
    assert server.kinds[("shared", "train/loss@rank3")] == "loss"  # kind guessed from the key without suffix
    assert server.kinds[("shared", "train/loss/box@rank3")] == "loss_component"


def test_alerts_reach_the_run_the_callback_and_should_stop(server: FakeServer, spool_dir, fast) -> None:
    seen = []
    run = losswatch.init(
        project="p", url=server.url, spool_dir=spool_dir, on_alert=seen.append, stop_on={"non_finite"}, **fast
    )
    run.log({"train/loss": 1.0})
    assert run.flush()
    assert run.alerts == [] and not run.should_stop
    spike = {"id": 1, "rule": "spike", "key": "train/loss", "onset_step": 1}
    server.alerts = [spike]
    run.log({"train/loss": 50.0})
    assert run.flush()
    assert run.alerts == [spike] and not run.should_stop
    nan = {"id": 2, "rule": "non_finite", "key": "train/loss", "onset_step": 2}
    server.alerts = [spike, nan]
    run.log({"train/loss": math.nan})
    run.log({"train/loss": math.nan})
    assert run.flush()
    run.log({"train/loss": math.nan})
    run.finish()
    assert seen == [spike, nan]  # each new alert once
    assert run.should_stop
    assert run.alerts == [spike, nan]


def test_a_failing_alert_callback_does_not_stop_delivery(server: FakeServer, spool_dir, fast) -> None:
    def boom(alert: dict) -> None:
        raise RuntimeError("user bug")

    server.alerts = [{"id": 1, "rule": "spike"}]
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, on_alert=boom, **fast)
    run.log({"a": 1.0})
    assert run.flush()
    run.log({"a": 2.0})
    run.finish()
    assert server.series(run.id, "a") == {0: 1.0, 1: 2.0}


def test_log_after_finish_warns_and_is_ignored(server: FakeServer, spool_dir, fast) -> None:
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.finish()
    run.finish()  # twice is fine
    with pytest.warns(LosswatchWarning, match="finished"):
        run.log({"a": 1.0})
    assert server.series(run.id, "a") == {}


def test_heartbeats_are_sent(server: FakeServer, spool_dir) -> None:
    run = losswatch.init(
        project="p", url=server.url, spool_dir=spool_dir, heartbeat_interval=0.05, flush_interval=0.05
    )
    assert server.wait_for(lambda: len(server.paths("/heartbeat")) >= 2, timeout=10)
    run.finish()


def test_cpu_tensors_are_not_read_on_the_training_thread(
    server: FakeServer, spool_dir, fast, monkeypatch
) -> None:
    torch = need_module("torch")
    main = threading.get_ident()
    calls = []
    for name in ("item", "tolist", "__float__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            calls.append((_name, threading.get_ident() == main))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    w = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    expected = []
    for step in range(20):
        loss = (w * (step + 1)).sum()
        box = (w[0] * 2).to(torch.float64)
        half = torch.tensor(step / 7, dtype=torch.bfloat16)
        queued_before = len(run._q)
        run.log({"train/loss": loss, "train/loss/box": box, "x": half, "count": torch.tensor(step)})
        if len(run._q) > queued_before:
            held = run._q[-1][1]["train/loss"]
            assert not held.requires_grad  # stored detached: the graph is not kept alive
        expected.append((float(loss.detach()), float(box.detach()), float(half), step))
    assert [c for c in calls if c[1] and c[0] != "__float__"] == []  # nothing read on the training thread
    calls.clear()
    run.finish()
    assert not any(on_main for _, on_main in calls)
    assert ("tolist", False) in calls  # bulk fetch in the sender
    assert sum(1 for c in calls if c[0] == "item") == 0
    loss_got = server.series(run.id, "train/loss")
    for step, (loss_v, box_v, half_v, count) in enumerate(expected):
        assert bits(loss_got[step]) == bits(loss_v)
        assert bits(server.series(run.id, "train/loss/box")[step]) == bits(box_v)
        assert server.series(run.id, "x")[step] == half_v
        assert server.series(run.id, "count")[step] == count


def test_tensors_of_several_elements_are_dropped_with_a_warning(server: FakeServer, spool_dir, fast) -> None:
    torch = need_module("torch")
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, **fast)
    run.log({"vec": torch.ones(3), "ok": torch.tensor([2.0])})
    with pytest.warns(LosswatchWarning, match="not numbers"):
        assert run.flush()
    run.finish()
    assert server.series(run.id, "ok") == {0: 2.0}
    assert server.series(run.id, "vec") == {}


def test_import_does_not_load_heavy_modules() -> None:
    code = (
        "import losswatch, losswatch.client.sync, sys\n"
        "print(sorted(m for m in ('torch', 'numpy', 'fastapi', 'sqlalchemy', 'pydantic') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_logging_leaves_the_scripts_random_numbers_alone(server: FakeServer, spool_dir, fast) -> None:
    """A training script that seeds `random` gets the same numbers with losswatch as without: the client's
    jitter (flush intervals, retry backoff) draws from a generator of its own."""
    import random

    random.seed(1234)
    alone = [random.random() for _ in range(50)]
    random.seed(1234)
    run = losswatch.init(project="p", url=server.url, spool_dir=spool_dir, flush_every=5, **fast)
    drawn = []
    for step in range(50):
        run.log({"train/loss": 1.0 / (step + 1)})
        run.flush()  # the collector and the sender cut and send between the script's draws
        drawn.append(random.random())
    run.finish()
    assert drawn == alone
    assert sorted(server.series(run.id, "train/loss")) == list(range(50))
