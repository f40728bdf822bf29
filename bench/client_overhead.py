"""What ``run.log()`` costs the training thread, measured against a real HTTP sink.

    python bench/client_overhead.py [N_STEPS]

``measure(n_steps)`` times every ``run.log()`` call of 3 scalars, then of 3 CPU tensors (when torch
is installed), while the client's background threads really batch and post to a sink server
running in another process (so its parsing does not compete with the training thread). It also
times a bare ``deque.append`` of the same tuple as a floor, and ``run.finish()`` (everything
delivered). Times are microseconds per call; ``finish_s`` is seconds. ``system_metrics_on_off(...)``
times the same 3-scalar call with system metrics off, sampling every 0.02 s, and off again (the
noise), in rotating blocks, and times one tick of the sampler (issue 14: no added time on the
training thread).

``end_to_end(...)`` logs 10 series x N steps as fast as possible into a real ``losswatch serve`` on
SQLite until ``run.finish()`` returns with every point stored, beside plain ``sqlite3`` executemany
of the same rows in the same run, and measures the CPU seconds that the client's background threads
(collector and sender) spend per million points in the training process: the process's CPU time
minus the training thread's own (``time.process_time() - time.thread_time()``).

``before_issue_13``: the same background-CPU measurement against the same sink, in the same run, of
the client of commit ``BEFORE_ISSUE_13`` (the tree issue 13 was filed against: JSON batches built
point by point), extracted with ``git archive``, and of this tree's client, each in a fresh
``python -S`` process (both are standard library only; ``-S`` keeps the installed losswatch out of
the old one's imports), alternately, three times each; the medians are compared.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEFORE_ISSUE_13 = "2f23a95"  # the commit issues 10-15 were filed against

SINK = r"""
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def log_message(self, *a):
        pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"accepted": 0, "alerts": []}'
        self.send_response(201 if self.path.endswith("/runs") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

httpd = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


def _import_losswatch() -> Any:
    """``import losswatch``, from a source checkout if it is not installed."""
    if importlib.util.find_spec("losswatch") is None and "losswatch" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "losswatch",
            ROOT / "pkg" / "__init__.py",
            submodule_search_locations=[str(ROOT / "pkg"), str(ROOT)],
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["losswatch"] = module
        spec.loader.exec_module(module)
    import losswatch

    return losswatch


def _percentiles(ns: list[int]) -> tuple[float, float]:
    ns.sort()
    return ns[len(ns) // 2] / 1000, ns[min(len(ns) - 1, int(len(ns) * 0.99))] / 1000


def _time_calls(call: Any, make: Any, n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        args = make(i)
        t0 = clock()
        call(args, i)
        out[i] = clock() - t0
    return out


E2E_KEYS = ("train/loss", "train/loss/box", "train/loss/cls", "train/loss/dfl", "lr", "grad_norm",
            "sys/gpu_mem", "time/step", "data/throughput", "train/acc")


def _log_steps(run: Any, n_steps: int) -> None:
    k0, k1, k2, k3, k4, k5, k6, k7, k8, k9 = E2E_KEYS
    log = run.log
    for step in range(n_steps):
        x = 1.0 / (step + 1)
        log({k0: x, k1: 0.5 * x, k2: 0.3 * x, k3: 0.2 * x, k4: 3e-4, k5: 2.0 + x, k6: 1e9, k7: 0.05,
             k8: 512.0, k9: 1.0 - x}, step=step)


def background_cpu(url: str, n_steps: int, spool_dir: str, name: str) -> dict[str, float]:
    """Log 10 series x ``n_steps`` as fast as possible and finish; wall seconds and the CPU seconds
    of the client's background threads (process CPU minus the training thread's CPU)."""
    losswatch = _import_losswatch()
    run = losswatch.init(project="bench", name=name, url=url, spool_dir=spool_dir, finish_timeout=600)
    gc.collect()
    t0, p0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
    _log_steps(run, n_steps)
    run.finish()
    wall = time.perf_counter() - t0
    main = time.thread_time() - m0
    total = time.process_time() - p0
    points = n_steps * len(E2E_KEYS)
    return {"points": points, "sent_points": run.stats["sent_points"], "seconds": wall,
            "points_per_s": points / wall, "training_thread_cpu_s": main, "background_cpu_s": total - main,
            "background_cpu_s_per_million_points": (total - main) / points * 1e6}


def system_metrics_on_off(losswatch: Any, url: str, spool_dir: str, n_steps: int, blocks: int = 60,
                          interval: float = 0.02) -> dict[str, Any]:
    """``run.log()`` of 3 scalars with system metrics off, on, and off again (an A/A arm: the noise
    of this very comparison), a fresh run per block, the three arms in a rotating order (off, on, off2;
    on, off2, off; ...) so that drift and order fall on all alike. Between two calls the loop sleeps
    100 µs, as a training step leaves the GIL to its kernels. "on" samples every ``interval`` (0.02 s,
    500 times the default rate, one or two samples per block): the sampler thread really works while
    the calls are timed. On a shared 2-core VM the median of a block of calls moves between about 1.5
    and 5 µs from one block to the next in either arm, in phases of about 100 calls: with 12 blocks
    (before) the off2/off ratio of one run ranged 0.66-1.03 and on/off 0.77-1.35, with 60 short
    blocks both stay within about 3 %. Read on/off beside off2/off of the same run.

    Separately, what the sampler holds the GIL for, whatever the loop: ``system_metrics_tick_us`` is
    the median time of one tick (sample, encode, queue in the sender) run on this thread, and
    ``..._ppm_at_default_interval`` that time per 10 s."""
    per_block = max(150, n_steps // blocks)
    gap = time.sleep
    arms = ("off", "on", "off2")
    times: dict[str, list[int]] = {arm: [] for arm in arms}
    samples = 0
    scalars = lambda i: {"train/loss": 1.0 / (i + 1), "train/loss/box": 0.5 / (i + 1), "lr": 3e-4}  # noqa: E731
    for block in range(blocks):
        order = arms[block % 3:] + arms[:block % 3]
        for arm in (order if block % 6 < 3 else order[::-1]):
            run = losswatch.init(project="bench", name=f"system-metrics-{arm}", url=url, spool_dir=spool_dir,
                                 system_metrics=interval if arm == "on" else False)
            _time_calls(run.log, scalars, 200)  # warm up
            gc.collect()
            times[arm] += _time_calls(lambda d, i, run=run: run.log(d, step=i),  # the gap is in make(i), untimed
                                      lambda i: (gap(0.0001), scalars(i))[1], per_block)
            if run._system is not None:
                samples += run._system.samples
            run.finish()
    out: dict[str, Any] = {}
    for arm in arms:
        out[f"system_metrics_{arm}_median_us"], out[f"system_metrics_{arm}_p99_us"] = _percentiles(times[arm])
        out[f"system_metrics_{arm}_mean_us"] = sum(times[arm]) / len(times[arm]) / 1000
    off, on, off2 = (out[f"system_metrics_{arm}_median_us"] for arm in arms)
    out["system_metrics_on_off_median_ratio"] = on / off if off else None
    out["system_metrics_off2_off_median_ratio"] = off2 / off if off else None  # A/A: the noise
    on_mean, off_mean = out["system_metrics_on_mean_us"], out["system_metrics_off_mean_us"]
    out["system_metrics_on_off_mean_ratio"] = on_mean / off_mean if off_mean else None
    out["system_metrics_interval_s"] = interval
    out["system_metrics_samples_while_timed"] = samples
    out.update(system_metrics_tick(losswatch, url, spool_dir))
    return out


def system_metrics_tick(losswatch: Any, url: str, spool_dir: str, ticks: int = 300) -> dict[str, Any]:
    """One tick of the sampler thread (sample, encode, queue) timed on this thread: the GIL time a
    sample takes from the process, every ``interval`` (torch imported, CUDA not initialised here)."""
    from losswatch.client import system

    run = losswatch.init(project="bench", name="system-metrics-tick", url=url, spool_dir=spool_dir,
                         system_metrics=False)
    sampler = system.SystemSampler(run, system.DEFAULT_INTERVAL)  # not started: ticked from here
    nvml = system._Nvml()
    sampler.tick(nvml)
    ns = _time_calls(lambda _, i: sampler.tick(nvml), lambda i: None, ticks)
    run.finish()
    median, p99 = _percentiles(ns)
    return {"system_metrics_tick_us": median, "system_metrics_tick_p99_us": p99,
            "system_metrics_tick_ppm_at_default_interval": median / (system.DEFAULT_INTERVAL * 1e6) * 1e6}


def end_to_end(n_steps: int = 200_000, work_dir: Path | None = None) -> dict[str, Any]:
    """The real client into a real server on SQLite, beside plain executemany of the same rows."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import server_bench

    work = Path(work_dir or tempfile.mkdtemp()) / "e2e"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out: dict[str, Any] = {}
    srv = server_bench.Server(f"sqlite:///{work / 'e2e.db'}", work)
    try:
        r = background_cpu(srv.url, n_steps, str(work / "spool"), "end-to-end")
        import httpx

        runs = httpx.get(f"{srv.url}/api/v1/projects/bench/runs", params={"limit": 5}, timeout=60).json()["runs"]
        stored = sum(s["count"] for run in runs if run["name"] == "end-to-end" for s in run["summary"].values())
    finally:
        srv.stop()
    out["e2e_points"] = r["points"]
    out["e2e_stored_points"] = stored
    out["e2e_points_per_s"] = r["points_per_s"]
    out["e2e_background_cpu_s_per_million_points"] = r["background_cpu_s_per_million_points"]
    out["e2e_training_thread_cpu_s"] = r["training_thread_cpu_s"]
    out["raw_sqlite_executemany_rows_per_s"] = server_bench.raw_sqlite_executemany(work, r["points"])
    out["ratio_e2e_to_executemany"] = out["e2e_points_per_s"] / out["raw_sqlite_executemany_rows_per_s"]
    shutil.rmtree(work, ignore_errors=True)
    return out


def measure(n_steps: int = 10000, quick: bool = False, work_dir: Path | None = None) -> dict[str, Any]:
    """Median and p99 (µs) of one ``run.log()`` of 3 scalars and of 3 CPU tensors, and more."""
    losswatch = _import_losswatch()
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = {"n_steps": n_steps}
    try:
        assert sink.stdout is not None
        url = f"http://127.0.0.1:{int(sink.stdout.readline())}"
        with tempfile.TemporaryDirectory() as spool_dir:
            q: deque[Any] = deque()
            floor = _time_calls(
                lambda d, i: q.append((i, d, time.time(), False)), lambda i: {"a": 1.0}, n_steps
            )
            result["deque_append_median_us"], result["deque_append_p99_us"] = _percentiles(floor)

            run = losswatch.init(project="bench", name="client-overhead", url=url, spool_dir=spool_dir)
            scalars = lambda i: {"train/loss": 1.0 / (i + 1), "train/loss/box": 0.5 / (i + 1), "lr": 3e-4}  # noqa: E731
            _time_calls(run.log, scalars, 200)  # warm up
            gc.collect()
            ns = _time_calls(lambda d, i: run.log(d, step=i), scalars, n_steps)
            result["scalars_median_us"], result["scalars_p99_us"] = _percentiles(ns)
            t0 = time.perf_counter()
            run.finish()
            result["finish_s"] = time.perf_counter() - t0
            result["scalars_points_sent"] = run.stats["sent_points"]

            try:
                import torch
            except ImportError:
                result["tensors_median_us"] = result["tensors_p99_us"] = None
            else:
                run = losswatch.init(
                    project="bench", name="client-overhead-tensors", url=url, spool_dir=spool_dir
                )
                w = torch.ones(4, requires_grad=True)

                def tensors(i: int) -> dict[str, Any]:
                    box = (w * (1.0 / (i + 1))).sum()
                    return {"train/loss": box * 2, "train/loss/box": box, "lr": torch.tensor(3e-4)}

                _time_calls(run.log, tensors, 200)
                gc.collect()
                ns = _time_calls(lambda d, i: run.log(d, step=i), tensors, n_steps)
                result["tensors_median_us"], result["tensors_p99_us"] = _percentiles(ns)
                run.finish()
                result["tensors_points_sent"] = run.stats["sent_points"]

            result.update(system_metrics_on_off(losswatch, url, spool_dir, n_steps))

            # The client's background threads alone, against the sink (no server cost in the figure).
            sink_cpu = background_cpu(url, 20_000 if quick else 100_000, spool_dir, "client-cpu")
            result["sink_points_per_s"] = sink_cpu["points_per_s"]
            result["sink_background_cpu_s_per_million_points"] = sink_cpu["background_cpu_s_per_million_points"]
            result.update(before_issue_13(url, 20_000 if quick else 100_000, spool_dir))
    finally:
        sink.kill()
        sink.wait()
        if sink.stdout is not None:
            sink.stdout.close()
    result.update(end_to_end(20_000 if quick else 200_000, work_dir))
    return result


def before_issue_13(url: str, n_steps: int, spool_dir: str, repeats: int = 3) -> dict[str, Any]:
    """Background CPU per million points of the client of BEFORE_ISSUE_13 and of this tree's, each in
    fresh ``python -S`` processes against the sink, alternately; {} outside a git checkout."""
    import shutil
    import statistics

    old = Path(tempfile.mkdtemp(prefix="lw-client-before-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_ISSUE_13, "client", "pkg"],
                                 capture_output=True, timeout=60)
        if archive.returncode != 0:
            return {}
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=60)
        cpu: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(repeats):
            for arm, tree in (("before", old), ("now", ROOT)):
                proc = subprocess.run([sys.executable, "-S", str(Path(__file__).resolve()), "client-cpu", str(tree),
                                       url, str(n_steps), spool_dir],
                                      capture_output=True, text=True, timeout=600, check=True)
                cpu[arm].append(json.loads(proc.stdout.strip().splitlines()[-1])["background_cpu_s_per_million_points"])
        before, now = statistics.median(cpu["before"]), statistics.median(cpu["now"])
        return {"before_issue_13_commit": BEFORE_ISSUE_13,
                "fresh_process_background_cpu_s_per_million_points_before_issue_13": before,
                "fresh_process_background_cpu_s_per_million_points_now": now,
                "background_cpu_cut_x": before / now}
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _client_cpu_main(tree: str, url: str, n_steps: int, spool_dir: str) -> None:
    spec = importlib.util.spec_from_file_location("losswatch", f"{tree}/pkg/__init__.py",
                                                  submodule_search_locations=[f"{tree}/pkg", tree])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["losswatch"] = module
    spec.loader.exec_module(module)
    assert module.__file__ is not None and module.__file__.startswith(tree)
    print(json.dumps(background_cpu(url, n_steps, spool_dir, "client-cpu-fresh")))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "client-cpu":
    _client_cpu_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
elif __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10000), indent=2))
