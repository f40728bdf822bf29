"""losswatch: watch training runs.

    import losswatch
    run = losswatch.init(project="detector", name="lr-3e-4", config={"lr": 3e-4})
    for step, batch in enumerate(loader):
        ...
        run.log({"train/loss": loss, "train/loss/box": box, "lr": lr}, step=step)
    run.finish()

This package needs nothing beyond the standard library; torch is imported only by the helpers
that take tensors, and the server lives in ``losswatch.server`` (``pip install 'losswatch[server]'``).
The public names below are loaded on first use, so ``import losswatch.server`` (or the CLI) does not
pay for the client.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "init": "losswatch.client.run",
    "Run": "losswatch.client.run",
    "Api": "losswatch.client.api",
    "LosswatchError": "losswatch.client.errors",
    "TransportError": "losswatch.client.errors",
    "ServerError": "losswatch.client.errors",
    "LosswatchWarning": "losswatch.client.errors",
    "StopTraining": "losswatch.client.errors",
    "SummaryWriter": "losswatch.integrations.tensorboard",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'losswatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
