"""Run the losswatch benchmarks and write bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # everything (what `make bench` runs)
    .venv/bin/python bench/run.py ingest query    # only these sections (the others keep their last figures)
    .venv/bin/python bench/run.py --list          # the section names
    .venv/bin/python bench/run.py --quick mlflow  # small sizes, to check that a section works

Sections. Each benchmark module in bench/ is imported lazily (bench/ is put on sys.path, so modules
import each other by bare name). A module contributes:
  - one section per function ``measure_<name>(...) -> dict``, named ``<name>``, in the order the
    functions are defined; or, if it has none,
  - one section from ``measure(...) -> dict``, named after the module's alias in MODULES below.
A function receives, by keyword, those of these arguments its signature names (all of them if it
takes ``**kwargs``): ``max_seconds`` (float, its time budget: the module's budget in MODULES
divided among its sections), ``work_dir`` (Path, a scratch folder
of its own under bench/work/), ``quick`` (bool, small sizes), ``results`` (dict: section name ->
the dicts returned so far in this run).

A missing module is noted and skipped; a section that raises gets its traceback in RESULTS.md and
the others go on. RESULTS.md is rewritten after every section, so an interrupted run keeps what it
measured. The raw figures go to bench/work/results.json; a run of some sections keeps the other
sections' last figures from there (or, on a fresh clone without it, reads them back from RESULTS.md),
each labelled with the date and commit it was measured at.

Rendering of a section's dict: ``title`` (str) replaces the heading, ``notes`` (str or list of str)
become bullets, ``error`` (str) is shown in bold, a list of dicts becomes a table with one row per
dict, a nested dict becomes a sub-table, and the remaining scalars become a figure/value table.
The "Side by side" table at the end takes the figures named in COMPARISONS from the sections.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import math
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_JSON = WORK / "results.json"

# alias -> (module in bench/, time budget in seconds for the whole module, shared equally by its
# sections; a module whose functions take no `max_seconds` bounds itself). Together about 20
# minutes on the 2-core bench machine.
MODULES: dict[str, tuple[str, float]] = {
    "server": ("server_bench", 360.0),
    "client": ("client_overhead", 150.0),
    "detectors": ("detectors", 60.0),
    "dashboard": ("dashboard_bench", 240.0),
    "mlflow": ("mlflow_peer", 540.0),
    "tensorboard": ("tb_peer", 90.0),
    "load": ("load", 300.0),
    "integrations": ("integrations_bench", 240.0),
    "python_api": ("python_api_bench", 600.0),
    "security": ("security_bench", 360.0),
    "scaleout": ("scaleout_bench", 240.0),
}

PACKAGES = ("fastapi", "uvicorn", "sqlalchemy", "numpy", "orjson", "torch", "pydantic", "httpx", "psycopg", "alembic")


# --------------------------------------------------------------------------------------------
# Side by side: (our module alias, key) vs (peer module alias, key). A key is a dotted path into
# a section's dict (nested dicts flattened with "."), or the last parts of one ("1_client_points_per_s"
# does not match; "sqlite.ingest_1_client_points_per_s" and "ingest_1_client_points_per_s" do).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    label: str
    ours: tuple[str, str]
    peer: tuple[str, str]
    unit: str  # unit of both figures after conversion, for the table
    higher_is_better: bool
    goal: float | None = None  # the ratio the issues ask for
    ours_scale: float = 1.0  # multiply our figure by this to get `unit`
    peer_scale: float = 1.0


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("ingest over HTTP, SQLite, 1 client", ("server", "ingest_sqlite_1_client_points_per_s"),
               ("mlflow", "sqlite.ingest_1_client_points_per_s"), "points/s", True, 200),
    Comparison("ingest over HTTP, SQLite, ours 8 clients vs MLflow 4", ("server", "ingest_sqlite_8_clients_points_per_s"),
               ("mlflow", "sqlite.ingest_4_clients_points_per_s"), "points/s", True),
    Comparison("ingest over HTTP, PostgreSQL, 1 client", ("server", "ingest_postgresql_1_client_points_per_s"),
               ("mlflow", "postgresql.ingest_1_client_points_per_s"), "points/s", True),
    Comparison("ingest over HTTP, PostgreSQL, ours 8 clients vs MLflow 4",
               ("server", "ingest_postgresql_8_clients_points_per_s"),
               ("mlflow", "postgresql.ingest_4_clients_points_per_s"), "points/s", True),
    Comparison("downsampled query, 1,000,000 points to 2,000 (MLflow: sampled bulk-interval)",
               ("server", "query_1m_2000_buckets_ms"), ("mlflow", "sqlite.bulk_interval_1000000_s"), "ms", False, 150,
               peer_scale=1000.0),
    Comparison("full read of a 1,000,000-point series (ours: export; MLflow: get-history)",
               ("server", "export_1m_s"), ("mlflow", "sqlite.get_history_1000000_s"), "s", False),
    Comparison("full read of a 100,000-point series (ours: export; MLflow: get-history)",
               ("server", "export_100k_s"), ("mlflow", "sqlite.get_history_100000_s"), "s", False),
    Comparison("client: one step of 3 scalars vs TensorBoard (3 add_scalar), median",
               ("client", "scalars_median_us"), ("tensorboard", "step_3_scalars_median_us"), "µs", False, 30),
    Comparison("client: one step of 3 scalars vs one TensorBoard add_scalar, median",
               ("client", "scalars_median_us"), ("tensorboard", "add_scalar_median_us"), "µs", False),
    Comparison("client: one step of 3 CPU tensors vs TensorBoard (3 add_scalar of tensors), median",
               ("client", "tensors_median_us"), ("tensorboard", "step_3_tensors_median_us"), "µs", False, 30),
    Comparison("client: one step of 3 scalars vs MLflow log_metrics (synchronous), median",
               ("client", "scalars_median_us"), ("mlflow", "client.log_metrics_sync_median_us"), "µs", False,
               10_000),
    Comparison("client: one step of 3 scalars vs MLflow log_metrics (synchronous=False), median",
               ("client", "scalars_median_us"), ("mlflow", "client.log_metrics_async_median_us"), "µs", False),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class Section:
    name: str
    alias: str
    module: str
    func_name: str
    budget: float


def _import(module: str) -> tuple[Any | None, str | None]:
    """The module, or None and why; a module that is absent is not an error."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(module), None
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None, f"bench/{module}.py is not there (yet): section skipped"
        return None, "".join(traceback.format_exception(exc))
    except Exception as exc:  # noqa: BLE001 - a broken module must not stop the others
        return None, "".join(traceback.format_exception(exc))


def discover(aliases: list[str]) -> tuple[list[Section], dict[str, str]]:
    """Sections of the given module aliases, and a note for each module that gave none."""
    sections: list[Section] = []
    problems: dict[str, str] = {}
    for alias in aliases:
        module_name, budget = MODULES[alias]
        mod, why = _import(module_name)
        if mod is None:
            problems[alias] = why or "?"
            continue
        funcs = [
            (name, obj)
            for name, obj in vars(mod).items()
            if name.startswith("measure_") and callable(obj) and getattr(obj, "__module__", None) == mod.__name__
        ]
        if funcs:
            for name, _ in funcs:
                sections.append(Section(name.removeprefix("measure_"), alias, module_name, name, budget / len(funcs)))
        elif callable(getattr(mod, "measure", None)):
            sections.append(Section(alias, alias, module_name, "measure", budget))
        else:
            problems[alias] = f"bench/{module_name}.py has neither measure() nor measure_<name>() functions"
    return sections, problems


def _call(func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return func(**kwargs)
    return func(**{k: v for k, v in kwargs.items() if k in params})


def run_section(section: Section, quick: bool, results: dict[str, Any], budget_scale: float) -> dict[str, Any]:
    mod = importlib.import_module(section.module)
    func = getattr(mod, section.func_name)
    work_dir = WORK / section.name
    work_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {
        "max_seconds": section.budget * budget_scale,
        "work_dir": work_dir,
        "quick": quick,
        "results": {name: entry.get("data") for name, entry in results.items()},
    }
    data = _call(func, kwargs)
    if not isinstance(data, dict):
        raise TypeError(f"{section.module}.{section.func_name} returned {type(data).__name__}, not dict")
    return data


# --------------------------------------------------------------------------------------------
# Machine information
# --------------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cmd(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _postgres_version() -> str:
    try:
        import psycopg
    except ImportError:
        return "not measured (psycopg not installed)"
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3") as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:  # noqa: BLE001
        return f"unreachable at 127.0.0.1:5432 ({type(exc).__name__})"


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "?"


def machine_info() -> dict[str, str]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "")
    meminfo = _read("/proc/meminfo")
    mem_kb = next((int(ln.split()[1]) for ln in meminfo.splitlines() if ln.startswith("MemTotal:")), 0)
    os_release = dict(
        ln.split("=", 1) for ln in _read("/etc/os-release").splitlines() if "=" in ln and not ln.startswith("#")
    )
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = _cmd(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
    if _cmd(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": commit,
        "CPU": model or platform.processor() or "?",
        "cores": f"{affinity} usable ({os.cpu_count()} online)",
        "RAM": f"{mem_kb / 1024 / 1024:.1f} GiB" if mem_kb else "?",
        "OS": f"{os_release.get('PRETTY_NAME', platform.system()).strip(chr(34))}, kernel {platform.release()}",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL server": _postgres_version(),
        "load average at start": _load(),
    }
    for pkg in PACKAGES:
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    return info


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.1f}"
        if a >= 0.01 or a == 0:
            return f"{value:.3g}"
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def _kv_table(pairs: dict[str, Any]) -> list[str]:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {fmt(k)} | {fmt(v)} |" for k, v in pairs.items()]
    return lines


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def render_data(data: dict[str, Any], level: int = 3) -> list[str]:
    lines: list[str] = []
    if data.get("error"):
        lines += [f"**Error:** {fmt(data['error'])}", ""]
    notes = data.get("notes")
    if notes:
        for note in [notes] if isinstance(notes, str) else notes:
            lines.append(f"- {note}")
        lines.append("")
    scalars = {
        k: v
        for k, v in data.items()
        if k not in ("title", "notes", "error") and not isinstance(v, dict) and not _is_rows(v)
    }
    if scalars:
        lines += _kv_table(scalars) + [""]
    for key, value in data.items():
        if key in ("title", "notes", "error"):
            continue
        if isinstance(value, dict):
            lines += [f"{'#' * level} {key}", ""]
            inner = {k: v for k, v in value.items() if k not in ("notes", "error", "skipped")}
            if value.get("skipped"):
                lines += [f"Skipped: {fmt(value['skipped'])}", ""]
            if value.get("error"):
                lines += [f"**Error:** {fmt(value['error'])}", ""]
            if value.get("notes"):
                lines += [f"- {n}" for n in ([value["notes"]] if isinstance(value["notes"], str) else value["notes"])]
                lines.append("")
            rows = {k: v for k, v in inner.items() if _is_rows(v)}
            flat = flatten({k: v for k, v in inner.items() if k not in rows})
            if flat:
                lines += _kv_table(flat) + [""]
            for name, table in rows.items():
                lines += [f"{name}:", ""] + _table(table) + [""]
        elif _is_rows(value):
            lines += [f"{'#' * level} {key}", ""] + _table(value) + [""]
    return lines


def lookup(results: dict[str, Any], alias: str, key: str) -> tuple[Any, str | None]:
    """The figure `key` from the sections of module `alias`, and the run it was measured in."""
    for entry in results.values():
        if entry.get("alias") != alias or not isinstance(entry.get("data"), dict):
            continue
        flat = flatten(entry["data"])
        if key in flat:
            return flat[key], entry.get("run_id")
        for name, value in flat.items():
            if name.endswith("." + key):
                return value, entry.get("run_id")
    return None, None


def render_comparisons(results: dict[str, Any]) -> list[str]:
    rows = ["| comparison | losswatch | peer | losswatch better by | goal |", "|---|---|---|---|---|"]
    missing: list[str] = []
    for c in COMPARISONS:
        ours, ours_run = lookup(results, *c.ours)
        peer, peer_run = lookup(results, *c.peer)
        peer_name = {"mlflow": "MLflow", "tensorboard": "TensorBoard"}.get(c.peer[0], c.peer[0])
        if not isinstance(ours, (int, float)) or not isinstance(peer, (int, float)) or not ours or not peer:
            missing.append(
                f"{c.label}: "
                + ", ".join(
                    f"`{alias}` figure `{key}` {'not measured' if value is None else 'is ' + fmt(value)}"
                    for (alias, key), value in ((c.ours, ours), (c.peer, peer))
                    if not isinstance(value, (int, float)) or not value
                )
            )
            continue
        o, p = ours * c.ours_scale, peer * c.peer_scale
        ratio = o / p if c.higher_is_better else p / o
        goal = "—" if c.goal is None else f"≥ {c.goal:,.0f}× ({'met' if ratio >= c.goal else 'NOT met'})"
        mixed = "" if ours_run == peer_run else " (figures from different runs)"
        rows.append(
            f"| {c.label}{mixed} | {fmt(o)} {c.unit} | {peer_name} {fmt(p)} {c.unit} | {ratio:,.1f}× | {goal} |"
        )
    out = (rows if len(rows) > 2 else ["No pair of figures to compare in these results."]) + [""]
    if missing:
        out += ["Not compared (a figure is missing; not extrapolated):", ""] + [f"- {m}" for m in missing] + [""]
    return out


def render(machine: dict[str, str], results: dict[str, Any], order: list[str], run_id: str) -> str:
    lines = [
        "# losswatch benchmark results",
        "",
        "Written by `make bench` (`.venv/bin/python bench/run.py`); see bench/README.md. "
        "Do not edit by hand: rerun the bench.",
        "",
        "## Machine",
        "",
        *_kv_table(machine),
        "",
    ]
    for name in order:
        entry = results.get(name)
        if entry is None:
            continue
        data = entry.get("data") or {}
        title = data.get("title") if isinstance(data, dict) else None
        lines += [f"## {title or name} (`{name}`)", ""]
        when = f"bench/{entry['module']}.py, {entry.get('seconds', 0):.0f} s"
        if entry.get("load"):
            when += f", load average at its start {entry['load'].split(' (')[0]}"
        if entry.get("quick"):
            when += "; **quick sizes (--quick): not the benchmark's figures**"
        if entry.get("run_id") != run_id:
            when += f"; from an earlier run: {entry.get('date')}, commit {entry.get('commit')}"
        lines += [f"_{when}_", ""]
        if entry.get("skipped"):
            lines += [f"Skipped: {entry['skipped']}", ""]
            continue
        if entry.get("traceback"):
            lines += ["**This section failed:**", "", "```", entry["traceback"].rstrip(), "```", ""]
            continue
        lines += render_data(data)
    lines += ["## Side by side", "", *render_comparisons(results)]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _load_previous() -> dict[str, Any]:
    """The sections measured before: bench/work/results.json, and for any section it lacks (a fresh
    clone has no bench/work/), the section as RESULTS.md shows it, read back from its Markdown."""
    try:
        data = json.loads(RESULTS_JSON.read_text())
    except (OSError, ValueError):
        data = {}
    sections = data.get("sections", {}) if isinstance(data, dict) else {}
    try:
        shown = sections_from_markdown(RESULTS_MD.read_text())
    except OSError:
        shown = {}
    return {**{k: v for k, v in shown.items() if k not in sections}, **sections}


def _cell(text: str) -> Any:
    """A rendered value back to a value: numbers, yes/no, — (None); anything else stays text."""
    t = text.strip().replace("\\|", "|")
    if t == "—":
        return None
    if t in ("yes", "no"):
        return t == "yes"
    try:
        return int(t.replace(",", "")) if re.fullmatch(r"-?[\d,]+", t) else float(t.replace(",", ""))
    except ValueError:
        return t


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(lines: list[str]) -> dict[str, Any]:
    """A section's body (after its italic line) back to the dict render_data drew it from."""
    data: dict[str, Any] = {}
    target, notes, i = data, [], 0
    pending_rows: str | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("### "):
            target, pending_rows = {}, None
            data[line[4:].strip()] = target
        elif line.startswith("- "):
            notes.append(line[2:])
        elif line.startswith("**Error:** "):
            target["error"] = line[len("**Error:** "):]
        elif line.startswith("Skipped: "):
            target["skipped"] = line[len("Skipped: "):]
        elif line.endswith(":") and not line.startswith("|"):
            pending_rows = line[:-1]
        elif line.startswith("|"):
            header = _cells(line)
            body = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            if header == ["figure", "value"]:
                target.update({k: _cell(v) for k, v in body})
            else:
                rows = [{h: _cell(v) for h, v in zip(header, r, strict=False)} for r in body]
                if pending_rows is not None:
                    target[pending_rows], pending_rows = rows, None
                else:  # a list of dicts under its own ### heading: the heading names it
                    name = next(k for k, v in data.items() if v is target)
                    data[name] = rows
            continue
        i += 1
    if notes:
        data = {"notes": notes, **data}
    return data


def sections_from_markdown(text: str) -> dict[str, Any]:
    """RESULTS.md's sections as results.json holds them (data read back from the tables, with the
    module, time, load, date and commit of the italic line), so a run of some sections on a fresh
    clone keeps the others as they were."""
    machine = dict(re.findall(r"^\| (date|git commit) \| (.*?) \|$", text, re.M))
    module_alias = {module: alias for alias, (module, _) in MODULES.items()}
    out: dict[str, Any] = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, rest = block.partition("\n")
        m = re.fullmatch(r"(.*) \(`([\w-]+)`\)", head.strip())
        if not m:
            continue
        title, name = m.groups()
        lines = [ln for ln in rest.splitlines() if ln.strip()]
        if not lines or not lines[0].startswith("_bench/"):
            continue
        info = re.match(r"_bench/(\w+)\.py, ([\d.]+) s(?:, load average at its start ([^;_]+))?"
                        r"(?:; from an earlier run: (.+), commit (\w+))?", lines[0])
        if not info:
            continue
        module, seconds, load, date, commit = info.groups()
        entry: dict[str, Any] = {"alias": module_alias.get(module, module), "module": module,
                                 "seconds": float(seconds), "load": load or "", "run_id": "RESULTS.md",
                                 "date": date or machine.get("date"), "commit": commit or machine.get("git commit")}
        if len(lines) > 1 and lines[1] == "**This section failed:**":
            entry["traceback"] = "\n".join(lines[3:-1])
        else:
            entry["data"] = _tables(lines[1:])
            if list(entry["data"]) == ["skipped"]:
                entry["skipped"] = entry.pop("data")["skipped"]
            elif title != name:
                entry["data"] = {"title": title, **entry["data"]}
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the losswatch benchmarks; write bench/RESULTS.md.")
    parser.add_argument("sections", nargs="*", help="section names or module aliases (default: all)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that sections work")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    parser.add_argument("--fresh", action="store_true", help="do not keep other sections' earlier figures")
    parser.add_argument("--out", type=Path, default=RESULTS_MD, help="where to write the Markdown")
    args = parser.parse_args(argv)

    sections, problems = discover(list(MODULES))
    if args.list:
        for s in sections:
            print(f"{s.name:20} bench/{s.module}.py:{s.func_name}  (alias {s.alias}, budget {s.budget:.0f} s)")
        for alias, why in problems.items():
            print(f"{alias:20} unavailable: {why.splitlines()[-1] if why else '?'}")
        return 0

    known = {s.name for s in sections} | set(MODULES)
    unknown = [n for n in args.sections if n not in known]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    chosen = [s for s in sections if not args.sections or s.name in args.sections or s.alias in args.sections]
    chosen_aliases = {s.alias for s in chosen} | {a for a in args.sections if a in MODULES}

    WORK.mkdir(parents=True, exist_ok=True)
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    machine = machine_info()
    previous = {} if args.fresh or not args.sections else _load_previous()
    results: dict[str, Any] = dict(previous)
    measured: set[str] = set()  # the sections this run wrote
    order = [s.name for s in sections] + [a for a in MODULES if a in problems]
    order += [n for n in previous if n not in order]

    def save() -> None:
        if args.sections and not args.fresh:  # sections another run wrote meanwhile are kept, not overwritten
            current = _load_previous()
            results.update({k: v for k, v in current.items() if k not in measured})
            order.extend(n for n in current if n not in order)
        RESULTS_JSON.write_text(json.dumps({"machine": machine, "sections": results}, indent=1, default=str))
        args.out.write_text(render(machine, results, order, run_id))

    base = {"run_id": run_id, "date": machine["date"], "commit": machine["git commit"]}
    for alias, why in problems.items():
        if alias in chosen_aliases or not args.sections:
            results[alias] = {**base, "alias": alias, "module": MODULES[alias][0], "skipped": why, "seconds": 0}
            measured.add(alias)
            if why.startswith("Traceback"):
                results[alias] = {**results[alias], "skipped": None, "traceback": why}
    for section in chosen:
        print(f"[bench] {section.name} (bench/{section.module}.py:{section.func_name}) ...", flush=True)
        entry: dict[str, Any] = {
            **base, "alias": section.alias, "module": section.module, "load": _load(), "quick": args.quick,
        }  # fmt: skip
        t0 = time.perf_counter()
        try:
            entry["data"] = run_section(section, args.quick, results, args.budget_scale)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - record it and go on with the next section
            entry["traceback"] = "".join(traceback.format_exception(exc))
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = time.perf_counter() - t0
        results[section.name] = entry
        measured.add(section.name)
        print(f"[bench] {section.name}: {entry['seconds']:.0f} s", flush=True)
        save()
    save()
    print(f"[bench] wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
