"""Profile ingest requests end to end inside one real uvicorn server (cProfile in every thread).

    .venv/bin/python bench/profile_ingest.py [N_BATCHES] [--json]

The server (the real app on a fresh SQLite file, uvicorn, one process) runs in this process with a
cProfile profiler installed in each of its threads (the event loop, the group-commit writer and any
worker threads); one
client process posts N batches of the ingest benchmark (10 series x 1,000 steps, the binary
columnar body; ``--json`` for JSON) over one keep-alive connection. The profiles are merged and the
own time of every function is put in one of these buckets, by the file it lives in:

- parse:  ``server/services/batches.py``, ``client/wire.py``, orjson
- store:  ``server/services/points.py``, ``server/storage/chunks.py`` and ``chunk_batches.py``, SQLAlchemy,
  sqlite3, ``server/storage/db.py`` (the group-commit writer's loop too)
- detect: ``server/detectors/``, ``server/services/monitor.py``
- alerts: ``server/services/alerts.py``, ``server/services/runs.py`` (run row, monitor state)
- HTTP glue: uvicorn, h11/httptools, starlette, fastapi, anyio, asyncio, the route and auth
- other: the rest (numpy's own time is counted where it is called from: not split here)

The summary and the top functions go to ``bench/ingest_profile.txt``. Profiling slows Python
down unevenly (more for many small calls), so read the shares, not the absolute times.
"""

from __future__ import annotations

import cProfile
import multiprocessing as mp
import pstats
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

BUCKETS = (
    ("parse", ("server/services/batches.py", "client/wire.py", "orjson")),
    ("store", ("server/services/points.py", "server/storage/chunks.py", "server/storage/chunk_batches.py",
               "sqlalchemy", "sqlite3", "server/storage/db.py")),
    ("detect", ("server/detectors/", "server/services/monitor.py")),
    ("alerts", ("server/services/alerts.py", "server/services/runs.py")),
    ("HTTP glue", ("uvicorn", "h11", "httptools", "starlette", "fastapi", "anyio", "asyncio", "server/api/",
                   "server/app.py", "selectors", "socket", "concurrent/futures", "threading.py", "queue.py")),
)


def bucket(filename: str) -> str:
    for name, needles in BUCKETS:
        if any(n in filename for n in needles):
            return name
    if filename == "~":  # built-ins: attributed by name below
        return "builtin"
    return "other"


def _post(args: tuple[int, str, list[bytes]]) -> float:
    import http.client

    from losswatch.client import wire

    port, run_id, bodies = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"content-type": wire.content_type(bodies[0])}
    t = time.perf_counter()
    for body in bodies:
        conn.request("POST", f"/api/v1/runs/{run_id}/points", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    conn.close()
    return time.perf_counter() - t


def profile(n_batches: int = 60, columnar: bool = True) -> dict[str, Any]:
    import httpx
    import server_bench
    import uvicorn

    from losswatch.server.app import create_app
    from losswatch.server.settings import Settings

    work = Path(tempfile.mkdtemp())
    bodies = server_bench.make_bodies(n_batches + 1)
    if columnar:
        bodies = server_bench.columnar_bodies(bodies)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(Settings(database_url=f"sqlite:///{work / 'p.db'}", auth="off", log_level="warning"))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    profilers: list[cProfile.Profile] = []

    def install(*_: Any) -> None:  # the first profile event of each new thread swaps in its profiler
        p = cProfile.Profile()
        profilers.append(p)
        p.enable()

    threading.setprofile(install)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    run_id = httpx.post(f"http://127.0.0.1:{port}/api/v1/projects/bench/runs", json={}).json()["id"]
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(_post, ((port, run_id, bodies[:1]),))  # start-up, migrations and a warm-up batch:
        for p in list(profilers):  # not counted
            p.clear()
        wall = pool.apply(_post, ((port, run_id, bodies[1:]),))
    threading.setprofile(None)  # type: ignore[arg-type]
    server.should_exit = True
    thread.join(10)
    stats = pstats.Stats(*[p for p in profilers if p.getstats()]) if profilers else None
    return {"wall_s": wall, "points": n_batches * 10_000, "stats": stats, "columnar": columnar}


_WAITS = ("acquire' of '_thread.lock", "poll' of 'select", "posix.read", "epoll", "select.select",
          "get' of '_queue.SimpleQueue")  # the last: the group-commit writer waiting for work


def summarise(result: dict[str, Any], top: int = 30) -> str:
    stats: pstats.Stats = result["stats"]
    own: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        b = bucket(filename)
        if b == "builtin":
            if any(w in func for w in _WAITS):
                b = "waiting"  # idle threads: the event loop's poll, idle workers, the SQLite write lock
            else:
                b = ("store" if "sqlite3" in func else "HTTP glue" if any(w in func for w in ("socket", "recv", "send"))
                     else "other")
        own[b] = own.get(b, 0.0) + tottime
    waiting = own.pop("waiting", 0.0)
    total = sum(own.values())
    lines = [
        f"# ingest profile: {result['points']:,} points in {result['points'] // 10_000} requests of 10,000 "
        f"({'binary columnar' if result['columnar'] else 'JSON'} body), one uvicorn process, SQLite",
        "",
        f"wall time of the client (under the profiler): {result['wall_s']:.2f} s; own time of the server's "
        f"functions: {total:.2f} s, plus {waiting:.2f} s of threads waiting (lock acquire, poll, read, an empty queue), left out",
        "",
        "| bucket | own time s | share |",
        "|---|---|---|",
    ]
    for name in ("parse", "store", "detect", "alerts", "HTTP glue", "other"):
        v = own.get(name, 0.0)
        lines.append(f"| {name} | {v:.3f} | {100 * v / total:.1f} % |")
    lines += ["", f"Top {top} functions by own time (all threads merged; waits included):", "", "```"]
    import io

    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    lines += [ln.replace(str(BENCH.parent) + "/", "") for ln in text.splitlines() if ln.strip()][-top - 2:]
    lines.append("```")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    res = profile(int(args[0]) if args else 60, columnar="--json" not in sys.argv)
    text = summarise(res)
    (BENCH / "ingest_profile.txt").write_text(text)
    print(text)
