"""Make ``import losswatch`` work from a source checkout that is not pip-installed.

pyproject maps ``losswatch`` to ``pkg/`` and ``losswatch.client`` to ``client/`` (and so on). When
the package is installed (``pip install -e .``) this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install() -> None:
    if "losswatch" in sys.modules or importlib.util.find_spec("losswatch") is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "losswatch", ROOT / "pkg" / "__init__.py", submodule_search_locations=[str(ROOT / "pkg"), str(ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["losswatch"] = module
    spec.loader.exec_module(module)


# the line a child process runs first (tests that start real client processes)
CHILD_PRELUDE = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import _shim; _shim.install()\n"
)
