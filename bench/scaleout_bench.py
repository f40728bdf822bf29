"""Scale-out on one PostgreSQL: 1, 2 and 4 `losswatch serve` processes, 8 client processes.

No load balancer: client i sends to server ``i % processes`` (round-robin over the processes), each
client into its own run, batches of 10 series x 1,000 steps in the binary columnar body (what the
losswatch client sends; the same batches as the ``ingest`` section). Each process count gets a fresh
database. Measured per process count:

- points/s over the 8 clients (after one warm-up batch each, behind a barrier);
- CPU seconds per million points of each server process (``utime + stime`` of /proc/<pid>/stat,
  all its threads), of PostgreSQL (every process that ``pg_stat_activity`` lists: the backends of
  the servers' connections and the background processes, /proc/<pid>/stat before and after) and
  of the client processes (their own ``process_time``);
- the cores those busy: (server + PostgreSQL + client CPU seconds) / wall seconds, beside the
  cores this machine has: when that is the machine, more processes cannot go faster.

Called by bench/run.py (section ``scaleout``); ``python bench/scaleout_bench.py [--quick]``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import server_bench  # noqa: E402

CLIENTS = 8
PROCESS_COUNTS = (1, 2, 4)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5), after "pid (comm)"


def postgres_pids(admin_url: str) -> dict[int, str]:
    """Every PostgreSQL process pg_stat_activity lists (backends and background processes)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, coalesce(backend_type, '') FROM pg_stat_activity "
                            "WHERE pid <> pg_backend_pid()").fetchall()
    return {int(pid): kind for pid, kind in rows}


def _client(args: tuple[str, str, list[bytes], Any]) -> tuple[int, float]:
    """One sending process (http.client, one kept-alive connection); returns (points, own CPU s)."""
    import http.client
    from urllib.parse import urlsplit

    from losswatch.client import wire

    url, run_id, bodies, barrier = args
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    headers = {"content-type": wire.content_type(bodies[0])}
    path = f"/api/v1/runs/{run_id}/points"
    conn.request("POST", path, body=bodies[0], headers=headers)
    conn.getresponse().read()
    barrier.wait()
    cpu = time.process_time()
    for body in bodies[1:]:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            raise RuntimeError(text[:500])
    cpu = time.process_time() - cpu
    conn.close()
    return (len(bodies) - 1) * len(server_bench.MIX) * server_bench.STEPS_PER_BATCH, cpu


def run_processes(processes: int, bodies: list[bytes], work: Path) -> dict[str, Any]:
    import httpx

    name = f"lw_bench_scale_{uuid.uuid4().hex[:8]}"
    url = server_bench._pg_database(name)
    servers: list[server_bench.Server] = []
    try:
        servers.append(server_bench.Server(url, work))  # the first one migrates the new database
        servers += [server_bench.Server(url, work) for _ in range(processes - 1)]
        targets = [servers[i % processes].url for i in range(CLIENTS)]
        run_ids = []
        for i, target in enumerate(targets):
            r = httpx.post(f"{target}/api/v1/projects/scale/runs", json={"name": f"scale-{processes}-{i}"}, timeout=60)
            r.raise_for_status()
            run_ids.append(r.json()["id"])
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            barrier = manager.Barrier(CLIENTS + 1)
            with ctx.Pool(CLIENTS) as pool:
                pending = pool.map_async(_client, [(t, rid, bodies, barrier) for t, rid in zip(targets, run_ids,
                                                                                               strict=True)])
                barrier.wait()
                # after the warm-up batches: every server's pool holds its connections now
                pg_before = {pid: cpu_seconds(pid) for pid in postgres_pids(server_bench.PG_ADMIN)}
                srv_before = [cpu_seconds(s.proc.pid) for s in servers]  # type: ignore[union-attr]
                start = time.perf_counter()
                results = pending.get()
                elapsed = time.perf_counter() - start
                srv_cpu = [cpu_seconds(s.proc.pid) - b for s, b in zip(servers, srv_before, strict=True)]  # type: ignore[union-attr]
                pg_after = postgres_pids(server_bench.PG_ADMIN)
                pg_cpu = sum(cpu_seconds(pid) - pg_before.get(pid, 0.0) for pid in pg_after)
        points = sum(r[0] for r in results)
        # every point stored once: the runs' summaries through the API
        stored = 0
        with httpx.Client(timeout=60) as c:
            for target, rid in zip(targets, run_ids, strict=True):
                summary = c.get(f"{target}/api/v1/runs/{rid}").json()["summary"]
                stored += sum(s["count"] for s in summary.values())
        expected = CLIENTS * len(bodies) * len(server_bench.MIX) * server_bench.STEPS_PER_BATCH
        if stored != expected:
            raise RuntimeError(f"{processes} processes: {stored} points stored, {expected} sent")
        mpts = points / 1e6
        client_cpu = sum(r[1] for r in results)
        return {
            "processes": processes, "points_per_s": points / elapsed, "seconds": elapsed, "points": points,
            "server_cpu_s_per_mpoints": [round(c / mpts, 3) for c in srv_cpu],
            "servers_cpu_s_per_mpoints": sum(srv_cpu) / mpts,
            "postgresql_cpu_s_per_mpoints": pg_cpu / mpts,
            "clients_cpu_s_per_mpoints": client_cpu / mpts,
            "cores_busy": (sum(srv_cpu) + pg_cpu + client_cpu) / elapsed,
            "server_cores_busy": sum(srv_cpu) / elapsed, "postgresql_cores_busy": pg_cpu / elapsed,
            "server_peak_rss_mib": max(s.rss_mib() for s in servers),
        }
    finally:
        for s in servers:
            s.stop()
        server_bench._drop_pg(name)


def measure_scaleout(max_seconds: float = 240.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    work = Path(work_dir or tempfile.mkdtemp()) / "scaleout"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = 6 if quick else 61  # per client; the first is a warm-up: 8 x 60 x 10,000 = 4,800,000 points measured
    bodies = server_bench.columnar_bodies(server_bench.make_bodies(n))
    cores = len(os.sched_getaffinity(0))
    rows = [run_processes(p, bodies, work) for p in PROCESS_COUNTS]
    out: dict[str, Any] = {
        "title": f"Scale-out: 1, 2 and 4 server processes on one PostgreSQL, {CLIENTS} clients (issue 13)",
        "notes": [
            f"{CLIENTS} client processes, each its own run, batches of 10 series x 1,000 steps (binary columnar), "
            "client i sending to server i mod processes (no load balancer); a fresh database per process count.",
            "cpu_s_per_mpoints: CPU seconds (user + system, /proc/<pid>/stat) per million points stored, of each "
            "server process, of PostgreSQL (every process pg_stat_activity lists) and of the client processes; "
            f"cores_busy = all of that / wall time, on a machine with {cores} usable cores shared with whatever "
            "else runs (see the load average above).",
            "runs_10x100_*: how many runs logging 10 series at 100 steps/s each (1,000 points/s a run) that "
            "points/s carries.",
        ],
        "cores": cores,
        "batch_points": len(server_bench.MIX) * server_bench.STEPS_PER_BATCH,
    }
    base = rows[0]["points_per_s"]
    for r in rows:
        p = r["processes"]
        label = f"{p}_process" + ("es" if p > 1 else "")
        r["speedup"] = r["points_per_s"] / base
        out[f"points_per_s_{label}"] = r["points_per_s"]
        out[f"speedup_{label}"] = r["speedup"]
        out[f"servers_cpu_s_per_mpoints_{label}"] = r["servers_cpu_s_per_mpoints"]
        out[f"postgresql_cpu_s_per_mpoints_{label}"] = r["postgresql_cpu_s_per_mpoints"]
        out[f"cores_busy_{label}"] = r["cores_busy"]
        out[f"server_cores_busy_{label}"] = r["server_cores_busy"]
        out[f"runs_10x100_{label}"] = round(r["points_per_s"] / 1000)
    one = rows[0]
    share_pg = one["postgresql_cpu_s_per_mpoints"] / (one["servers_cpu_s_per_mpoints"] + one["postgresql_cpu_s_per_mpoints"]
                                                      + one["clients_cpu_s_per_mpoints"])
    out["postgresql_cpu_percent_1_process"] = 100 * share_pg
    busiest = max(rows, key=lambda r: r["cores_busy"])
    out["notes"].append(
        f"limit: with {busiest['processes']} process(es) the servers, PostgreSQL and the clients keep "
        f"{busiest['cores_busy']:.2f} of the {cores} cores busy; a point costs the same CPU whichever process "
        "takes it, so once the cores are full more processes only share them (and add context switches). "
        f"PostgreSQL takes {100 * share_pg:.0f} % of the CPU with 1 process; that one server process keeps "
        f"{one['server_cores_busy']:.2f} core busy (one Python process uses at most one core for its Python code).")
    out["rows"] = [{k: (", ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else v) for k, v in r.items()}
                   for r in rows]
    shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(json.dumps(measure_scaleout(quick="--quick" in sys.argv), indent=1, default=str))
