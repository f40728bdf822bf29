"""The OpenAPI document describes every request body, so that schemathesis fuzzes them (issue 12,
item 7): ``POST /runs/{id}/points`` refers to ``IngestBatch``, which ingest parses by hand; before
it was in the document's components, schemathesis sent that endpoint no body at all."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from losswatch.server.api.openapi import _refs
from tests.conftest import make_client

pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

INGEST = "/api/v1/runs/{run_id}/points"


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('spec') / 'lw.db'}"
    with make_client(url, background_workers=False) as c:
        r = c.get("/openapi.json")
        assert r.status_code == 200
        return r.json()  # type: ignore[no-any-return]


def test_every_schema_the_document_refers_to_is_in_it(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    assert {"IngestBatch", "SeriesPoints"} <= set(components)
    assert set(_refs(spec)) <= set(components), sorted(set(_refs(spec)) - set(components))
    body = spec["paths"][INGEST]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/IngestBatch"}
    series = components["SeriesPoints"]["properties"]
    assert series["steps"]["items"]["minimum"] == 0 and "pattern" in series["key"]


def _operations_with_bodies(spec: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(spec)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if op.body]


def _bodies(op: Any, n: int) -> list[Any]:
    bodies: list[Any] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def collect(case: Any) -> None:
        bodies.append(case.body)

    collect()
    return bodies


def test_schemathesis_generates_a_body_for_every_operation_that_takes_one(spec: dict[str, Any]) -> None:
    ops = _operations_with_bodies(spec)
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m, op in item.items()
                  if isinstance(op, dict) and "requestBody" in op}
    assert {(op.method.upper(), op.path) for op in ops} == documented
    assert ("POST", INGEST) in documented
    without: list[str] = []
    for op in ops:
        real = [b for b in _bodies(op, 10) if isinstance(b, (dict, list, str, bytes))]
        if not real:
            without.append(op.label)
        if op.path == INGEST:  # ingest bodies are batches: {"series": [{key, steps, values, ...}]}
            assert all(isinstance(b, dict) and isinstance(b.get("series"), list) for b in real), real[:3]
            assert any(b["series"] for b in real), "every generated batch was empty"
    assert not without, f"schemathesis generated no body for: {without}"
