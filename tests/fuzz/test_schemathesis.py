"""Property-based fuzzing of the whole OpenAPI schema with schemathesis (v4), in process.

Every operation of ``/openapi.json`` gets generated requests, valid ones (``positive``) and ones that
break the schema (``negative``), against the real app on a seeded database: with auth off on
PostgreSQL (which refuses NUL characters and non-finite JSON numbers that SQLite takes) and with
auth on (an admin token of the seeded project) on SQLite. Each answer must not be a 5xx, must have a
documented status code and content type, and its body must match the documented schema.

Path parameters are pointed at seeded objects part of the time (a run with points, NaN included; a
project; a channel), so the fuzzer reaches the code behind the 404s. The whole run makes at least
``MIN_REQUESTS`` requests (reported on the terminal); failures are collected per operation with the
request that caused them, not shrunk (shrinking a 5xx costs minutes; the request is enough).
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import PG_URL, _pg_admin, _pg_reason, make_client, need_or_skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    # schemathesis' own strategies call the `random` module, which Hypothesis deprecates; that is
    # third-party code, and as an error it turns random examples into FlakyFailure.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Examples per operation, per auth mode: 37 operations x 2 modes x (POSITIVE + NEGATIVE) > 10,000.
POSITIVE = 110
NEGATIVE = 80
MIN_REQUESTS = 10_000
# The most exposed endpoint gets more: 2 modes x (600 + 450) = 2,100 generated ingest bodies.
INGEST = "/api/v1/runs/{run_id}/points"
INGEST_POSITIVE = 600
INGEST_NEGATIVE = 450
MIN_INGEST_BODIES = 2_000
RUN = "fuzzrun0"
PROJECT = "p"


def _seed(c: Any) -> dict[str, Any]:
    assert c.post(f"/api/v1/projects/{PROJECT}/runs", json={"id": RUN, "name": "seed", "tags": ["t"],
                                                            "config": {"lr": 0.1}}).status_code == 201
    body = {"series": [{"key": "train/loss", "steps": [0, 1, 2, 3], "values": [1.0, "NaN", "Infinity", -0.0]},
                       {"key": "val/acc", "steps": [0, 2], "values": [0.1, 0.2]}]}
    assert c.post(f"/api/v1/runs/{RUN}/points", json=body).status_code == 200
    ch = c.post(f"/api/v1/projects/{PROJECT}/channels",
                json={"name": "hook", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/hook"}})
    assert ch.status_code == 201, ch.text
    return {"project": PROJECT, "run_id": RUN, "channel_id": ch.json()["id"]}


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Any, dict[str, str], dict[str, Any]]]]:
    out: dict[str, tuple[Any, dict[str, str], dict[str, Any]]] = {}
    clients = []
    pg_name = None
    for auth in ("off", "on"):
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz-' + auth) / 'lw.db'}"
        if auth == "off":  # auth off on PostgreSQL (stricter about text and JSON), auth on on SQLite
            need_or_skip(_pg_reason())
            pg_name = f"lw_fuzz_{uuid.uuid4().hex[:12]}"
            with _pg_admin() as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
            url = f"{PG_URL.rsplit('/', 1)[0]}/{pg_name}".replace("postgresql://", "postgresql+psycopg://", 1)
        # background workers off: nothing is delivered; private channel URLs allowed: no DNS lookups
        # of generated host names (the SSRF check has its own tests in tests/security/).
        c = make_client(url, auth="off", background_workers=False, allow_private_channels=True).__enter__()
        seeded = _seed(c)
        headers: dict[str, str] = {}
        if auth == "on":
            c.__exit__(None, None, None)
            db = Database(Settings(database_url=url))
            with db.write() as s:
                headers = {"Authorization": f"Bearer {create_token(s, PROJECT, 'admin', 'fuzz')[1]}"}
            db.dispose()
            c = make_client(url, auth="on", background_workers=False, allow_private_channels=True).__enter__()
        clients.append(c)
        out[auth] = (c, headers, seeded)
    yield out
    for c in clients:
        c.__exit__(None, None, None)
    if pg_name:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def _operations(client: Any) -> list[Any]:
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    return [result.ok() for result in schema.get_all_operations()]


def _aim(case: Any, seeded: dict[str, Any]) -> None:
    """Point two cases in three at the seeded objects (chosen from the case itself: reproducible)."""
    if zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 3 == 0:
        return
    for name in list(case.path_parameters or {}):
        if name in seeded:
            case.path_parameters[name] = seeded[name]
    if case.operation.path == "/api/v1/query" and isinstance(case.query, dict):
        case.query["run"] = [RUN]
    if case.operation.path.startswith("/api/2.0/mlflow/"):
        if case.method.upper() == "GET":
            case.query = {**(case.query or {}), "run_id": RUN, "experiment_id": "1", "metric_key": "train/loss"}
        elif isinstance(case.body, dict):
            case.body = {**case.body, "run_id": RUN}


def _fuzz(op: Any, mode: GenerationMode, n: int, client: Any, headers: dict[str, str], seeded: dict[str, Any],
          failures: list[str], counter: list[int], bodies: list[int] | None = None) -> None:
    mine: list[str] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _aim(case, seeded)
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
        kwargs.pop("cookies", None)
        if "data" in kwargs and not isinstance(kwargs["data"], dict):
            kwargs["content"] = kwargs.pop("data")
        response = client.request(**{k: v for k, v in kwargs.items() if k in
                                     ("method", "url", "params", "headers", "content", "json", "data", "files")})
        counter[0] += 1
        if bodies is not None and ("json" in kwargs or "content" in kwargs or "data" in kwargs):
            bodies[0] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # noqa: BLE001 - collect, report all at the end
            if len(mine) < 3:
                mine.append(f"{op.label} [{mode.value}] {kwargs.get('method')} {kwargs.get('url')} "
                            f"params={kwargs.get('params')!r} body={str(kwargs.get('json', kwargs.get('content')))[:300]}"
                            f" -> {response.status_code} {response.text[:300]}\n    {str(exc)[:600]}")

    try:
        run()
    except Unsatisfiable:  # nothing to break: an operation without parameters or body has no negative cases
        if mode is GenerationMode.POSITIVE:
            raise
    failures.extend(mine)


@dataclass
class Fuzzed:
    """One auth mode's fuzzing: what it sent and what failed."""

    requests: int
    ingest_bodies: int
    failures: list[str]
    line: str
    per_op: list[tuple[float, int, str]]


_FUZZED: dict[str, Fuzzed] = {}


def fuzzed(apps: dict[str, Any], auth: str) -> Fuzzed:
    """Fuzz every operation in one auth mode, once per session: the tests below share the runs, so
    their order does not matter (any of them run alone does the fuzzing it needs)."""
    if auth in _FUZZED:
        return _FUZZED[auth]
    client, headers, seeded = apps[auth]
    ops = _operations(client)
    failures: list[str] = []
    counter = [0]
    ingest_bodies = [0]
    t0 = time.perf_counter()
    per_op = []
    for op in ops:
        t_op, n_op = time.perf_counter(), counter[0]
        ingest = op.path == INGEST and op.method.upper() == "POST"
        bodies = ingest_bodies if ingest else None
        _fuzz(op, GenerationMode.POSITIVE, INGEST_POSITIVE if ingest else POSITIVE, client, headers, seeded,
              failures, counter, bodies)
        _fuzz(op, GenerationMode.NEGATIVE, INGEST_NEGATIVE if ingest else NEGATIVE, client, headers, seeded,
              failures, counter, bodies)
        per_op.append((time.perf_counter() - t_op, counter[0] - n_op, op.label))
    took = time.perf_counter() - t0
    line = (f"schemathesis, auth {auth}: {counter[0]} requests over {len(ops)} operations in {took:.0f} s, "
            f"{ingest_bodies[0]} of them ingest bodies")
    _FUZZED[auth] = Fuzzed(counter[0], ingest_bodies[0], failures, line, per_op)
    return _FUZZED[auth]


@pytest.mark.parametrize("auth", ["off", "on"])
def test_fuzz_every_operation(apps: dict[str, Any], auth: str, request: pytest.FixtureRequest) -> None:
    run = fuzzed(apps, auth)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\n" + run.line)
        for secs, n, label in sorted(run.per_op, reverse=True)[:8]:
            reporter.write_line(f"    {secs:5.1f} s {n:5d} requests  {label}")
    assert not run.failures, f"{len(run.failures)} failing requests:\n" + "\n".join(run.failures)
    assert run.requests >= MIN_REQUESTS // 2 * 0.9, run.line


def test_total_request_count(apps: dict[str, Any]) -> None:
    """Together the two auth modes made MIN_REQUESTS or more, MIN_INGEST_BODIES of them ingest bodies."""
    runs = [fuzzed(apps, auth) for auth in ("off", "on")]
    assert sum(r.requests for r in runs) >= MIN_REQUESTS, [r.line for r in runs]
    assert sum(r.ingest_bodies for r in runs) >= MIN_INGEST_BODIES, [r.line for r in runs]
