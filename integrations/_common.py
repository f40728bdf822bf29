"""What the framework adapters share: starting a run (or taking the caller's), flattening configs and
telling numbers apart. A run's config is changed after it started with ``Run.update`` (through the
sender: spooled and retried like the points).

Nothing here imports a framework.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from losswatch.client.run import Run, _jsonable, init

log = logging.getLogger("losswatch")


def start_run(run: Run | None, config: Any = None, **init_kwargs: Any) -> Run:
    """The caller's run if given, else ``losswatch.init(config=config, **init_kwargs)``."""
    if run is not None:
        return run
    return init(config=config, **init_kwargs)


def flatten(config: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for frameworks whose hyperparameters are flat)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def plain_config(obj: Any) -> dict[str, Any]:
    """A framework's config object (dict, Namespace, dataclass, object with ``__dict__``) as JSON data."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            obj = to_dict()
        elif hasattr(obj, "__dict__") and not hasattr(obj, "__dataclass_fields__"):
            obj = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    data = _jsonable(obj)
    if not isinstance(data, dict):
        return {"value": data}
    json.dumps(data)  # _jsonable guarantees this; fail here rather than in the sender
    return data


def is_number(value: Any) -> bool:
    """True for what ``run.log`` can take: a real number (not bool), a numpy scalar or a
    one-element tensor. Strings, lists and multi-element tensors are not numbers."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return True
    numel = getattr(value, "numel", None)
    if callable(numel):  # torch.Tensor
        try:
            return int(numel()) == 1 and not value.is_complex()
        except Exception:  # noqa: BLE001
            return False
    size = getattr(value, "size", None)
    if isinstance(size, int) and hasattr(value, "dtype"):  # numpy scalar / array
        return size == 1 and getattr(value.dtype, "kind", "") in "biuf"
    return False
