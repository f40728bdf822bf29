"""A simulated training process for the fault tests: the real client, steady logging, a JSON report.

    python -m tests.faults._trainer URL RUN_ID --steps N --series K --rate STEPS_PER_S
        [--spool DIR] [--fsize BYTES] [--max-buffer BYTES] [--go FILE] [--finish-timeout S]

Prints one JSON line: the warnings raised (category and text), the client's stats, the RSS samples
(bytes, taken every 0.2 s while logging) and the seconds the logging loop took. ``--fsize`` caps the
size of any file this process writes (RLIMIT_FSIZE, SIGXFSZ ignored): a full disk for the spool.
``--go FILE``: after logging, wait until FILE exists before finishing (the test heals the fault).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import threading
import time
import warnings
from pathlib import Path


def value(series: int, step: int) -> float:
    return math.sin(step * 0.001 + series) + series


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("run_id")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--series", type=int, default=10)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--spool", default=None)
    p.add_argument("--fsize", type=int, default=0)
    p.add_argument("--max-buffer", type=int, default=24 << 20)
    p.add_argument("--go", default=None)
    p.add_argument("--finish-timeout", type=float, default=120.0)
    a = p.parse_args()
    if a.fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (a.fsize, a.fsize))
    import losswatch

    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append(rss_bytes())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = losswatch.init(project="faults", url=a.url, id=a.run_id, spool_dir=a.spool, retry_min=0.2,
                             retry_max=1.0, flush_interval=0.2, max_buffer_bytes=a.max_buffer,
                             heartbeat_interval=5.0, finish_timeout=a.finish_timeout)
        keys = [f"train/loss/{i}" if i else "train/loss" for i in range(a.series)]
        samples.append(rss_bytes())
        threading.Thread(target=sample, daemon=True).start()
        t0 = time.perf_counter()
        for step in range(a.steps):
            run.log({k: value(i, step) for i, k in enumerate(keys)}, step=step)
            if a.rate:
                delay = t0 + (step + 1) / a.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        took = time.perf_counter() - t0
        stop.set()
        print(json.dumps({"event": "logged", "took_s": took}), flush=True)
        if a.go:
            while not Path(a.go).exists():
                time.sleep(0.05)
        run.finish()
        stats = run.stats
    print(json.dumps({"event": "done", "warnings": [[w.category.__name__, str(w.message)] for w in caught],
                      "stats": stats, "rss": samples, "took_s": took}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
