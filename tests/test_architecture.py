"""The package's import graph: no import circle, and no import from a lower layer into a higher one.

The layers, lowest first (docs/architecture.md draws them)::

    root, client          the ``losswatch`` package itself and the client (standard library only)
    integrations          framework adapters, importers, the demo: the client and nothing else
    detectors             pure rules (numpy and the client's wire definitions)
    base                  server settings and errors
    storage               server/storage/ (models, db, chunks) and migrations
    contract              the HTTP schemas (server/api/schemas.py), below the services that fill them
    services              use cases: storage, contract, detectors
    api | dashboard | workers   routes, pages, the delivery worker: services and below, never each other
    composition           server/app.py, the CLI: everything

Every import counts, also the ones inside a function and ``importlib.import_module("...")`` with a
literal name: a lazy import still ties the layers together. Modules are read with ``ast``; nothing
is imported, so the test needs no extra installed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> import name (pyproject.toml's package-dir)
FOLDERS = {
    "pkg": "losswatch",
    "client": "losswatch.client",
    "integrations": "losswatch.integrations",
    "server": "losswatch.server",
    "dashboard": "losswatch.dashboard",
    "migrations": "losswatch.migrations",
}

# Module prefix -> layer; the longest prefix wins (``losswatch.server.api.schemas`` is the contract, the
# rest of ``losswatch.server.api`` the api). A module that matches nothing fails the test: a new
# folder gets a layer here, on purpose.
LAYERS = {
    "losswatch.client": "client",
    "losswatch.integrations": "integrations",
    "losswatch.demo": "integrations",  # `losswatch demo` trains against a server through the client only
    "losswatch.server.detectors": "detectors",
    "losswatch.server.settings": "base",
    "losswatch.server.errors": "base",
    "losswatch.server.storage": "storage",  # models, db, chunks
    "losswatch.migrations": "storage",
    "losswatch.server.api.schemas": "contract",
    "losswatch.server.services": "services",
    "losswatch.server.api": "api",
    "losswatch.dashboard": "dashboard",
    "losswatch.server.alerts": "workers",
    "losswatch.server.app": "composition",
    "losswatch.server.openapi_docs": "composition",
    "losswatch.server.protocol": "composition",  # uvicorn's HTTP protocol options of `losswatch serve`
    "losswatch.server.slow_clients": "composition",  # read timeouts of `losswatch serve`
    "losswatch.cli": "composition",
    "losswatch.check": "composition",  # `losswatch check`: the detectors offline, over files
}
# Packages whose own ``__init__`` is the root layer (matched exactly: their submodules need a layer above).
EXACT = {"losswatch": "root", "losswatch.server": "root"}

_BELOW_SERVICES = {"root", "client", "detectors", "base", "storage", "contract"}
# layer -> the layers it may import besides its own
ALLOWED: dict[str, set[str]] = {
    "root": set(),
    "client": {"root"},
    "integrations": {"root", "client"},
    "detectors": {"root", "client"},
    "base": {"root", "client"},
    "storage": {"root", "client", "base"},
    "contract": {"root", "client", "base"},
    "services": _BELOW_SERVICES,
    "api": _BELOW_SERVICES | {"services"},
    "dashboard": _BELOW_SERVICES | {"services"},
    "workers": _BELOW_SERVICES | {"services"},
    "composition": set(LAYERS.values()) | set(EXACT.values()),
}


def layer_of(module: str) -> str | None:
    if module in EXACT:
        return EXACT[module]
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYERS[best] if best else None


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package: import name -> file."""
    found: dict[str, Path] = {}
    for folder, name in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if folder == "pkg" and parts[0] in FOLDERS:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package modules that ``module`` imports, anywhere in its file."""
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            submodules = {f"{base}.{a.name}" for a in node.names} & known
            targets.update(submodules)
            if len(submodules) < len(node.names):  # a name from the module itself, not a submodule
                targets.add(base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets.add(node.args[0].value)
    out = set()
    for target in targets:
        while target and target not in known:  # `import losswatch.server.storage.db.x` -> the module that exists
            target = target.rpartition(".")[0]
        if target and target != module:
            out.add(target)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Each import that goes from a layer into one it may not use, as 'a (layer) -> b (layer)'."""
    bad = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is None or theirs is None or theirs == mine:
                continue
            if theirs not in ALLOWED[mine]:
                bad.append(f"{module} ({mine}) -> {target} ({theirs})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    assert len(graph) > 50  # the walk found the package
    assert [m for m in graph if layer_of(m) is None] == [], "give the new module a layer in LAYERS"


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_imports_go_down_the_layers(graph: dict[str, set[str]]) -> None:
    assert upward_imports(graph) == []


def test_client_imports_nothing_of_the_server(graph: dict[str, set[str]]) -> None:
    client = {m: t for m, t in graph.items() if layer_of(m) in ("client", "integrations")}
    assert client
    assert {t for targets in client.values() for t in targets if t.startswith("losswatch.server")} == set()


def test_the_checks_catch_what_they_look_for() -> None:
    # the same functions on small graphs: a circle (direct and through a function-level import) and
    # the upward imports the issue found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert upward_imports({
        "losswatch.server.services.runs": {"losswatch.server.api.deps", "losswatch.server.storage.models"},
        "losswatch.integrations.importers": {"losswatch.cli", "losswatch.client.wire"},
        "losswatch.client.run": {"losswatch.server.api.schemas"},
        "losswatch.server.api.runs": {"losswatch.dashboard.views", "losswatch.server.api.schemas"},
        "losswatch.server.storage.models": {"losswatch.server.settings"},
    }) == [
        "losswatch.client.run (client) -> losswatch.server.api.schemas (contract)",
        "losswatch.integrations.importers (integrations) -> losswatch.cli (composition)",
        "losswatch.server.api.runs (api) -> losswatch.dashboard.views (dashboard)",
        "losswatch.server.services.runs (services) -> losswatch.server.api.deps (api)",
    ]


def test_lazy_and_relative_imports_are_edges(tmp_path: Path) -> None:
    pkg = tmp_path / "server" / "services"
    pkg.mkdir(parents=True)
    (tmp_path / "server" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "runs.py").write_text("def f():\n    from losswatch.server.services import alerts\n")
    (pkg / "alerts.py").write_text("from .runs import f\nimport importlib\nimportlib.import_module('losswatch.cli')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "cli.py").write_text("")
    for folder in ("client", "integrations", "dashboard", "migrations"):
        (tmp_path / folder).mkdir()
    g = import_graph(tmp_path)
    assert g["losswatch.server.services.runs"] == {"losswatch.server.services.alerts"}
    assert g["losswatch.server.services.alerts"] == {"losswatch.server.services.runs", "losswatch.cli"}
    assert cycles(g) == [["losswatch.server.services.alerts", "losswatch.server.services.runs"]]


def test_every_skip_goes_through_the_one_policy() -> None:
    # tests.conftest.need_or_skip / need_module: a loud skip outside CI, a failure with CI=true;
    # pytest.importorskip or a bare pytest.skip would skip silently in CI too. The one exception is the
    # documented one: a test that needs a GPU (CUDA) skips without one, CI included.
    tests = ROOT / "tests"
    calls = ("pytest.import" + "orskip(", "pytest." + "skip(")  # spelled apart: this file is scanned too
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in sorted(tests.rglob("*.py")) if p != tests / "conftest.py"
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if any(call in line for call in calls) and not re.search(r"\b(CUDA|GPU)\b", line)]
    assert offenders == []
