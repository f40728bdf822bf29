"""MLflow's search syntax, parsed by server/api/mlflow_filters.py into plain conditions, and page tokens."""

from __future__ import annotations

import pytest

from losswatch.server.api import mlflow_filters as mf
from losswatch.server.api import mlflow_protocol as mp
from losswatch.server.api.mlflow_protocol import MlflowError
from losswatch.server.services.mlflow_search import Condition, Order


@pytest.mark.parametrize(("text", "expected"), [
    ("metrics.`val/mAP50-95` > 0.3", [Condition("metric", "val/mAP50-95", ">", 0.3)]),
    ('metrics."val loss" <= -1e-3', [Condition("metric", "val loss", "<=", -1e-3)]),
    ("metric.acc != 1 and params.optim = 'adamw'",
     [Condition("metric", "acc", "!=", 1.0), Condition("param", "optim", "=", "adamw")]),
    ("tags.mlflow.runName LIKE 'lr-%'", [Condition("tag", "mlflow.runName", "LIKE", "lr-%")]),
    ("tags.team ILIKE \"Vis%\"", [Condition("tag", "team", "ILIKE", "Vis%")]),
    ("attributes.run_id IN ('a', 'b''c')", [Condition("attribute", "run_id", "IN", ("a", "b'c"))]),
    ("run_name NOT IN ('x')", [Condition("attribute", "run_name", "NOT IN", ("x",))]),
    ("attr.start_time >= 1700000000000", [Condition("attribute", "start_time", ">=", 1.7e12)]),
    ("created < 5", [Condition("attribute", "start_time", "<", 5.0)]),
    ("params.lr IS NULL", [Condition("param", "lr", "IS NULL", None)]),
    ("tags.x IS NOT NULL", [Condition("tag", "x", "IS NOT NULL", None)]),
    ("", []),
])
def test_filters(text: str, expected: list[Condition]) -> None:
    assert mf.parse_filter(text) == expected


@pytest.mark.parametrize("text", [
    "metrics.a > 'x'", "params.a > 1", "metrics.a >", "foo.a = 1", "metrics.a = 1 OR metrics.b = 2",
    "attributes.nope = 'x'", "metrics.a LIKE 1", "params.a = 'x' AND", "metrics.a = 1 2", "'x' = metrics.a",
    "params.a IN 'x'", "params.a IS 1",
])
def test_bad_filters_are_mlflows_invalid_parameter_value(text: str) -> None:
    with pytest.raises(MlflowError) as err:
        mf.parse_filter(text)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.status == 400


def test_order_by_and_page_tokens() -> None:
    assert mf.parse_order_by(["metrics.`val/mAP50-95` DESC", "params.lr", "attributes.start_time ASC"]) == [
        Order("metric", "val/mAP50-95", False), Order("param", "lr", True), Order("attribute", "start_time", True)]
    for bad in (["metrics.a sideways"], "metrics.a", [1]):
        with pytest.raises(MlflowError):
            mf.parse_order_by(bad)
    assert mp.parse_page_token(mp.page_token(2000)) == 2000 and mp.parse_page_token(None) == 0
    assert mp.page_token(None) is None
    for bad in ("nope", "e30=", mp.page_token(-1)):
        with pytest.raises(MlflowError):
            mp.parse_page_token(bad)
    assert mf.experiment_name_filter("name LIKE 'sw%'") == ("LIKE", "sw%")
    with pytest.raises(MlflowError):
        mf.experiment_name_filter("tags.x = 'y'")
