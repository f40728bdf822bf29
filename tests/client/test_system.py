"""System metrics: the client's own thread samples CPU and memory as ``sys/*`` series of kind
``other`` that reach a real HTTP server, at the training loop's steps; off with ``system_metrics=None``."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import losswatch
from losswatch.client import system


def test_samples_arrive_as_sys_series_of_kind_other(server: Any, spool_dir: Path, fast: dict[str, float]) -> None:
    run = losswatch.init(project="p", id="sys-on", url=server.url, spool_dir=spool_dir, system_metrics=0.05, **fast)
    for step in range(50):
        run.log({"train/loss": 1.0 / (step + 1)}, step=step)
    assert server.wait_for(lambda: len(server.series("sys-on", "sys/rss_mib")) >= 3)
    run.finish()
    rss = server.series("sys-on", "sys/rss_mib")
    cpu = server.series("sys-on", "sys/cpu_percent")
    assert cpu and all(v >= 0 for v in cpu.values())
    assert all(5 < v < 1_000_000 for v in rss.values())  # a Python process holds more than 5 MiB
    assert sorted(rss) == sorted(set(rss)) and min(rss) >= 49  # at (or after) the loop's latest step
    assert server.kinds[("sys-on", "sys/rss_mib")] == "other" and server.kinds[("sys-on", "sys/cpu_percent")] == "other"
    assert server.series("sys-on", "train/loss")[49] == 1.0 / 50
    assert run._system is not None and run._system.samples >= 3


def test_off_and_defaults(server: Any, spool_dir: Path, fast: dict[str, float]) -> None:
    run = losswatch.init(project="p", id="sys-off", url=server.url, spool_dir=spool_dir, system_metrics=None, **fast)
    run.log({"train/loss": 1.0}, step=0)
    run.finish()
    assert not any(key.startswith("sys/") for (rid, key) in server.points if rid == "sys-off")
    assert run._system is None
    with pytest.raises(ValueError, match="system_metrics"):
        losswatch.init(project="p", url=server.url, spool_dir=spool_dir, system_metrics=-1)


def test_the_default_interval_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOSSWATCH_SYSTEM_METRICS", raising=False)
    assert system.interval_of(True) == system.DEFAULT_INTERVAL == 10.0  # init's default
    monkeypatch.setenv("LOSSWATCH_SYSTEM_METRICS", "2.5")
    assert system.interval_of(True) == 2.5 and system.interval_of(0.5) == 0.5
    monkeypatch.setenv("LOSSWATCH_SYSTEM_METRICS", "0")  # what tests/conftest.py sets for the other tests
    assert system.interval_of(True) is None and system.interval_of(None) is None and system.interval_of(False) is None
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("LOSSWATCH_SYSTEM_METRICS", bad)
        with pytest.raises(ValueError, match="LOSSWATCH_SYSTEM_METRICS"):
            system.interval_of(True)
    for bad in (0, -2, float("inf"), "x"):
        with pytest.raises(ValueError, match="system_metrics"):
            system.interval_of(bad)


def test_one_sample_reads_this_process() -> None:
    state: dict[str, float] = {}
    assert "sys/cpu_percent" not in system.sample(state)  # the first call is the baseline
    sum(i * i for i in range(200_000))
    second = system.sample(state)
    assert second["sys/cpu_percent"] > 0 and second["sys/rss_mib"] > 5 and 0 < second["sys/mem_percent"] < 100


@pytest.mark.gpu
def test_gpu_memory_is_sampled_once_the_script_uses_cuda() -> None:
    import torch  # the client tests run where torch is installed (the dev extra)

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    state: dict[str, float] = {}
    assert not any(k.startswith("sys/gpu") for k in system.sample(state)) or torch.cuda.is_initialized()
    block = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")  # 64 MiB: initialises CUDA
    got = system.sample(state)
    assert got["sys/gpu0/mem_allocated_mib"] >= 64 and got["sys/gpu0/mem_reserved_mib"] >= 64
    assert got["sys/gpu0/mem_peak_mib"] >= got["sys/gpu0/mem_allocated_mib"]
    del block


def test_gpu_memory_takes_one_allocator_call_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """memory_allocated(), memory_reserved() and max_memory_allocated() each flatten and sort every
    allocator statistic in Python with the GIL held: the sampler reads the nested stats once per GPU."""
    calls: list[int] = []

    def nested(i: int) -> dict[str, Any]:
        calls.append(i)
        mib = 1 << 20
        return {"allocated_bytes": {"all": {"current": (10 + i) * mib, "peak": (30 + i) * mib}},
                "reserved_bytes": {"all": {"current": (20 + i) * mib, "peak": 99 * mib}}}

    def flattening(*_: Any) -> int:
        raise AssertionError("flattens memory_stats() in Python")

    cuda = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, device_count=lambda: 2,
                           memory_stats_as_nested_dict=nested, memory_allocated=flattening,
                           memory_reserved=flattening, max_memory_allocated=flattening)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    out: dict[str, float] = {}
    system._torch_gpus(out)
    assert calls == [0, 1]
    assert out == {"sys/gpu0/mem_allocated_mib": 10, "sys/gpu0/mem_reserved_mib": 20, "sys/gpu0/mem_peak_mib": 30,
                   "sys/gpu1/mem_allocated_mib": 11, "sys/gpu1/mem_reserved_mib": 21, "sys/gpu1/mem_peak_mib": 31}


def test_memory_percent_reads_the_two_fields_of_meminfo(monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = b"MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     250 kB\nBuffers: 1 kB\n"
    monkeypatch.setattr(system, "_read", lambda path: meminfo if path == "/proc/meminfo" else b"")
    assert system._mem_percent() == 75.0
    monkeypatch.setattr(system, "_read", lambda path: b"MemTotal: 1000 kB\n")  # no MemAvailable (old kernels)
    assert system._mem_percent() is None
