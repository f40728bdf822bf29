"""What ``run.log()`` costs the training thread, measured against a real HTTP sink.

    python bench/client_overhead.py [N_STEPS]

``measure(n_steps)`` times every ``run.log()`` call of 3 scalars, then of 3 CPU tensors (when torch
is installed), while the client's background threads really batch and post to a sink server
running in another process (so its parsing does not compete with the training thread). It also
times a bare ``deque.append`` of the same tuple as a floor, and ``run.finish()`` (everything
delivered). Times are microseconds per call; ``finish_s`` is seconds.
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


def measure(n_steps: int = 10000) -> dict[str, Any]:
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
    finally:
        sink.kill()
        sink.wait()
        if sink.stdout is not None:
            sink.stdout.close()
    return result


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10000), indent=2))
