"""Where the client's settings come from, in one place: the caller's argument first, then the
environment, then the default. An empty variable counts as unset.

=======================  ==============================================  ==========================
variable                 what                                            default
=======================  ==============================================  ==========================
``LOSSWATCH_URL``        the server                                      ``http://127.0.0.1:8000``
``LOSSWATCH_TOKEN``      an API token (write scope to log)               none
``LOSSWATCH_PROJECT``    the project                                     the caller's (``default``)
``LOSSWATCH_RUN_ID``     one run id for every process of a job           a new uuid4 hex
``LOSSWATCH_SPOOL_DIR``  where unsent batches wait                       see ``losswatch.client.spool``
``RANK``, ``WORLD_SIZE``  the process in a distributed job (torchrun)    not distributed: rank None, 1
=======================  ==============================================  ==========================

``LOSSWATCH_SYSTEM_METRICS`` is the seconds between system metric samples (default 10, ``0``: off;
see ``losswatch.client.system``).

The server's settings are a different object (``losswatch.server.settings``, ``LOSSWATCH_*`` too).
"""

from __future__ import annotations

import os

from losswatch.client.transport import DEFAULT_URL


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def url(given: str | None = None) -> str:
    return given or _env("LOSSWATCH_URL") or DEFAULT_URL


def token(given: str | None = None) -> str | None:
    return given or _env("LOSSWATCH_TOKEN")


def project(given: str | None = None, default: str | None = "default") -> str | None:
    return given or _env("LOSSWATCH_PROJECT") or default


def run_id(given: str | None = None) -> str | None:
    return given or _env("LOSSWATCH_RUN_ID")


def spool_dir() -> str | None:
    return _env("LOSSWATCH_SPOOL_DIR")


def system_metrics() -> str | None:
    """``$LOSSWATCH_SYSTEM_METRICS`` as written (``losswatch.client.system.interval_of`` checks it)."""
    return _env("LOSSWATCH_SYSTEM_METRICS")


def rank() -> int | None:
    """``$RANK`` as torchrun and its kin set it; ``None`` when the process is not part of a distributed
    job (unset, or not an integer). Rank 0 and "not distributed" both log; only the latter is alone."""
    try:
        return int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1
