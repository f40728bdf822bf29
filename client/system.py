"""System metrics: a thread of its own samples the machine every ``interval`` seconds (10 by default,
as MLflow does) and hands the values straight to the run's sender as one small batch.

Series (kind ``other``, under ``sys/`` so that the dashboard shows them in their own section):

- ``sys/cpu_percent``: CPU time of this process (all its threads) per wall second, in percent (a
  process busy on 4 cores reads 400);
- ``sys/rss_mib``: resident memory of this process (``/proc/self/statm``; elsewhere the peak, from
  ``resource``); ``sys/mem_percent``: memory in use on the machine (Linux ``/proc/meminfo``);
- per GPU ``i`` that torch sees, when the script already imported torch and initialised CUDA:
  ``sys/gpu{i}/mem_allocated_mib``, ``sys/gpu{i}/mem_reserved_mib``, ``sys/gpu{i}/mem_peak_mib``
  (``torch.cuda.max_memory_allocated``);
- with ``pynvml`` (``nvidia-ml-py``) installed: ``sys/gpu{i}/util_percent`` and ``sys/gpu{i}/temp_c``.

The training thread pays nothing: this thread reads counters, encodes the batch and queues it in the
sender (a lock shared with the collector, never with ``run.log``). A sample goes at the step of the
training loop's latest ``log()`` (or one past the previous sample, so that a stalled loop still gets
one point per sample): the curves line up with the loss. Standard library only; torch and pynvml
are used only when already importable and never imported by ``import losswatch``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from losswatch.client import settings, wire

log = logging.getLogger("losswatch")

DEFAULT_INTERVAL = 10.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MIB = 1 << 20


def interval_of(option: Any) -> float | None:
    """``init(system_metrics=...)`` as seconds, or None for off: ``True`` (the default) is
    ``$LOSSWATCH_SYSTEM_METRICS`` seconds (``0`` turns it off), else 10 s; ``None``/``False`` is off;
    a number is the interval. ``ValueError`` for anything else."""
    if option is None or option is False:
        return None
    if option is True:
        env = (settings.system_metrics() or "").strip()
        if not env:
            return DEFAULT_INTERVAL
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"losswatch: LOSSWATCH_SYSTEM_METRICS is seconds between samples (0: off), got {env!r}") from None
        if value != value or value < 0:
            raise ValueError(f"losswatch: LOSSWATCH_SYSTEM_METRICS is seconds between samples (0: off), got {env!r}")
        return value or None
    try:
        value = float(option)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"losswatch: system_metrics is seconds between samples (> 0), True or None, got {option!r}")
    return value


def _read(path: str) -> bytes:
    """A small ``/proc`` file in one ``read`` (the kernel writes it while the GIL is released)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def _rss_mib() -> tuple[str, float] | None:
    try:
        return "sys/rss_mib", int(_read("/proc/self/statm").split()[1]) * _PAGE / _MIB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return "sys/rss_peak_mib", peak / (_MIB if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return None


def _mem_percent() -> float | None:
    try:
        text = _read("/proc/meminfo")
        return 100.0 * (1 - _meminfo_kib(text, b"MemAvailable:") / _meminfo_kib(text, b"MemTotal:"))
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None


def _meminfo_kib(text: bytes, name: bytes) -> int:
    """One field of ``/proc/meminfo`` (the two it needs, not its ~50 lines parsed each tick)."""
    start = text.index(name) + len(name)
    return int(text[start:text.index(b"\n", start)].split()[0])


class _Nvml:
    """pynvml if it is installed and finds a driver, else nothing (checked once)."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - no driver, no GPU: nothing to sample
            log.debug("losswatch: NVML is installed but did not start", exc_info=True)

    def sample(self, out: dict[str, float]) -> None:
        if self.nvml is None:
            return
        for i, h in enumerate(self.handles):
            try:
                out[f"sys/gpu{i}/util_percent"] = float(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                out[f"sys/gpu{i}/temp_c"] = float(self.nvml.nvmlDeviceGetTemperature(h, 0))  # NVML_TEMPERATURE_GPU
            except Exception:  # noqa: BLE001
                log.debug("losswatch: NVML sample of GPU %d failed", i, exc_info=True)


def _torch_gpus(out: dict[str, float]) -> None:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None:
        return
    try:
        if not cuda.is_available() or not cuda.is_initialized():
            return  # never initialise CUDA on the script's behalf
        for i in range(cuda.device_count()):
            # One allocator call per device: memory_allocated(), memory_reserved() and
            # max_memory_allocated() each flatten and sort all of memory_stats() in Python, GIL held.
            stats = cuda.memory_stats_as_nested_dict(i)
            allocated = stats.get("allocated_bytes", {}).get("all", {})
            reserved = stats.get("reserved_bytes", {}).get("all", {})
            out[f"sys/gpu{i}/mem_allocated_mib"] = allocated.get("current", 0) / _MIB
            out[f"sys/gpu{i}/mem_reserved_mib"] = reserved.get("current", 0) / _MIB
            out[f"sys/gpu{i}/mem_peak_mib"] = allocated.get("peak", 0) / _MIB
    except Exception:  # noqa: BLE001 - a sample is not worth an error in training
        log.debug("losswatch: torch.cuda memory sample failed", exc_info=True)


def sample(state: dict[str, float], nvml: _Nvml | None = None) -> dict[str, float]:
    """One sample. ``state`` keeps the previous CPU reading between calls."""
    out: dict[str, float] = {}
    now, cpu = time.monotonic(), time.process_time()
    if "wall" in state and now > state["wall"]:
        out["sys/cpu_percent"] = 100.0 * (cpu - state["cpu"]) / (now - state["wall"])
    state["wall"], state["cpu"] = now, cpu
    rss = _rss_mib()
    if rss is not None:
        out[rss[0]] = rss[1]
    mem = _mem_percent()
    if mem is not None:
        out["sys/mem_percent"] = mem
    _torch_gpus(out)
    if nvml is not None:
        nvml.sample(out)
    return out


class SystemSampler(threading.Thread):
    """Samples every ``interval`` seconds into ``run``'s sender until :meth:`stop`."""

    def __init__(self, run: Any, interval: float) -> None:
        super().__init__(name=f"losswatch-system-{run.id[:8]}", daemon=True)
        self._run = run
        self.interval = interval
        self._halt = threading.Event()
        self._state: dict[str, float] = {}
        self._step = -1
        self.samples = 0

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            nvml = _Nvml()
            sample(self._state)  # the CPU baseline
            while not self._halt.wait(self.interval):
                self.tick(nvml)
        except Exception:  # noqa: BLE001 - the boundary of the thread: system metrics stop, training goes on
            log.exception("losswatch: the system metrics thread failed; no more sys/* samples")

    def tick(self, nvml: _Nvml | None = None) -> None:
        """One sample, sent: all this thread does every ``interval`` (the bench times it)."""
        self._send(sample(self._state, nvml))

    def _send(self, values: dict[str, float]) -> None:
        run = self._run
        if not values or run._finished:
            return
        self._step = max(self._step + 1, run._step - 1)
        wall = time.time()
        entries = [wire.series_entry(key, "other", [self._step], [v], [wall]) for key, v in values.items()]
        run._sender.put_points(wire.dumps(wire.batch(entries)), len(entries))
        self.samples += 1
