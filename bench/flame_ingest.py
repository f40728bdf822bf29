"""A flame graph of one `losswatch serve` process while one client posts ingest batches (issue 13).

    .venv/bin/pip install py-spy        # not part of `make test` or `make bench`: a profiling tool
    .venv/bin/python bench/flame_ingest.py [N_BATCHES]

The server runs under ``py-spy record`` (sampling, every thread, native frames left out) on a fresh
SQLite file; one client process posts N batches of the ingest benchmark (10 series x 1,000 steps,
binary columnar body) over one keep-alive connection, as ``bench/server_bench.py`` does; the server
is then stopped with SIGINT and py-spy writes ``bench/ingest_flame.svg``. Open it in a browser: the
width of a frame is its share of the samples. bench/profile_ingest.py gives the same profile as
buckets (parse, store, detect, HTTP glue) in text.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
BIN = Path(sys.executable).parent
OUT = BENCH / "ingest_flame.svg"


def main(n_batches: int = 300) -> int:
    import server_bench

    from tests._server_process import free_port

    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lw-flame-"))
    port = free_port()
    cmd = [py_spy, "record", "--threads", "--rate", "250", "--output", str(OUT), "--",
           str(BIN / "losswatch"), "serve", "--db", f"sqlite:///{work / 'flame.db'}", "--host", "127.0.0.1",
           "--port", str(port)]
    env = {"LOSSWATCH_AUTH": "off", "LOSSWATCH_LOG_LEVEL": "warning", "PATH": str(BIN) + ":/usr/bin:/bin"}
    spy = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):  # noqa: S310 - loopback
                    break
            except OSError:
                if time.monotonic() > deadline or spy.poll() is not None:
                    raise RuntimeError("the server did not start under py-spy") from None
                time.sleep(0.2)
        bodies = server_bench.columnar_bodies(server_bench.make_bodies(n_batches))
        result = server_bench.run_ingest(url, 1, bodies)
        print(f"{result['points']:,} points in {result['seconds']:.2f} s under the profiler")
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy stops sampling, writes the graph and ends the server
        try:
            out, _ = spy.communicate(timeout=120)
        finally:
            subprocess.run(["pkill", "-INT", "-f", "--", str(work / "flame.db")], check=False)
        print(out.decode(errors="replace")[-400:])
        shutil.rmtree(work, ignore_errors=True)
    return 0 if OUT.exists() else 1


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
