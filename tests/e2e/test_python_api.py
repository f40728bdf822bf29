"""``losswatch.Api`` against a real `losswatch serve` over real HTTP: runs written by the real client
come back with the REST list's filters and sorts, paged; every raw point (NaN and ±Inf exact) and the
downsampled buckets come back as numpy arrays and DataFrames; alerts; errors are the client's own."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import losswatch
from losswatch.client import api as api_module
from losswatch.client.errors import ServerError, TransportError
from tests.e2e._support import FAST

SPECIAL = {3: math.nan, 4: math.inf, 5: -math.inf, 6: 5e-324, 7: -0.0, 8: 1.0000000000000002}


def _bits(values: Any) -> list[bytes]:
    return [b"nan" if math.isnan(v) else struct.pack("<d", v) for v in values]


@pytest.fixture
def served(server_factory: Callable[..., Any], sqlite_url: str, tmp_path: Any) -> Any:
    server = server_factory(sqlite_url).start()
    maps = [0.31, 0.52, None, 0.44, 0.12]
    ids = []
    for i, m in enumerate(maps):
        run = losswatch.init(project="detector", name=f"lr-{i}", config={"lr": 10.0 ** -i, "optim": {"name": "adamw" if i % 2 else "sgd"}},
                             tags=["sweep"] + (["odd"] if i % 2 else []), url=server.url,
                             spool_dir=tmp_path / "spool", **FAST)
        for step in range(20):
            run.log({"train/loss": SPECIAL.get(step, 1.0 / (step + 1)) if i == 0 else 1.0 / (step + 1 + i)}, step=step)
        if m is not None:
            run.log_eval({"val/mAP50-95": m - 0.1}, step=9)
            run.log_eval({"val/mAP50-95": m}, step=19)
        run.finish()
        ids.append(run.id)
    return server, ids


def test_runs_filter_sort_and_page_like_the_rest_list(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server, ids = served
    monkeypatch.setattr(api_module, "RUN_PAGE", 2)  # 5 runs: three requests, paged here
    with losswatch.Api(server.url) as api:
        assert [p["name"] for p in api.projects()] == ["detector"]
        best = api.runs("detector", sort="-max:val/mAP50-95", limit=3)
        assert [r.name for r in best] == ["lr-1", "lr-3", "lr-0"] and best.total == 5
        everything = api.runs("detector", sort="-max:val/mAP50-95")
        rest = httpx.get(f"{server.url}/api/v1/projects/detector/runs",
                         params={"sort": "-max:val/mAP50-95", "limit": 1000}).json()["runs"]
        assert [r.id for r in everything] == [r["id"] for r in rest]  # runs without the value last
        assert [r.id for r in api.runs("detector", tags=["odd"], sort="name")] == [ids[1], ids[3]]
        assert [r.id for r in api.runs("detector", config={"optim.name": "sgd", "lr": 0.01})] == [ids[2]]
        assert [r.name for r in api.runs("detector", name="lr-4")] == ["lr-4"]
        assert api.runs("detector", status="running") == []

        df = api.runs("detector", sort="config.lr").to_pandas()
        assert list(df.index) == [ids[4], ids[3], ids[2], ids[1], ids[0]]
        assert df.loc[ids[1], "config.lr"] == 0.1 and df.loc[ids[1], "config.optim.name"] == "adamw"
        assert df.loc[ids[1], "max:val/mAP50-95"] == 0.52 and df.loc[ids[1], "min:val/mAP50-95"] == pytest.approx(0.42)
        assert math.isnan(df.loc[ids[2], "max:val/mAP50-95"])  # never logged
        assert df.loc[ids[0], "last:train/loss"] == 1.0 / 20


def test_history_raw_is_exact_and_paged(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server, ids = served
    monkeypatch.setattr(api_module, "POINT_PAGE", 3)  # 20 points: seven pages
    with losswatch.Api(server.url, project="detector") as api:
        run = api.run(ids[0])
        assert run.name == "lr-0" and run.config["lr"] == 1.0 and run.status == "finished"
        assert run.keys == ["train/loss", "val/mAP50-95"]
        h = run.history()
        loss = h["train/loss"]
        expected = [SPECIAL.get(s, 1.0 / (s + 1)) for s in range(20)]
        assert isinstance(loss["value"], np.ndarray) and loss["value"].dtype == np.float64
        assert loss["step"].tolist() == list(range(20))
        assert _bits(loss["value"]) == _bits(expected)  # NaN, ±Inf, subnormal, -0.0 bit for bit
        assert np.isposinf(loss["value"][4]) and np.isneginf(loss["value"][5])
        assert len(loss["wall_time"]) == 20 and np.all(np.diff(loss["wall_time"]) >= 0)
        assert h["val/mAP50-95"]["step"].tolist() == [9, 19]

        part = run.history(["train/loss"], start=4, end=6)
        assert part["train/loss"]["step"].tolist() == [4, 5, 6] and list(part) == ["train/loss"]

        df = run.history(["train/loss", "val/mAP50-95"], pandas=True)
        assert isinstance(df, pd.DataFrame) and df.index.name == "step" and len(df) == 20
        assert math.isnan(df.loc[3, "train/loss"]) and df.loc[4, "train/loss"] == math.inf
        assert df.loc[19, "val/mAP50-95"] == 0.31 and math.isnan(df.loc[18, "val/mAP50-95"])


def test_history_buckets_keep_min_max_and_non_finite(served: Any) -> None:
    server, ids = served
    with losswatch.Api(server.url) as api:
        h = api.run(ids[0]).history("train/loss", buckets=2)
        assert not h.raw
        b = h["train/loss"]
        assert b["count"].sum() == 20 and b["nonfinite"].sum() == 3
        assert b["max"].max() == 1.0000000000000002 and b["min"].min() == 0.0  # -0.0 at step 7
        df = h.to_pandas()
        assert list(df.columns[:3]) == ["key", "step", "last_step"] and set(df["key"]) == {"train/loss"}


def test_alerts_and_typed_errors(served: Any) -> None:
    server, ids = served
    with losswatch.Api(server.url) as api:
        alerts = api.alerts("detector", rule="non_finite")
        assert alerts and {a["run"] for a in alerts} <= {ids[0]}
        assert api.run(ids[0]).alerts() and api.run(ids[1]).alerts() == []
        with pytest.raises(ServerError) as missing:
            api.run("no-such-run")
        assert missing.value.status == 404 and missing.value.code == "run_not_found"
        with pytest.raises(ServerError) as bad:
            api.runs("detector", sort="sideways:x")
        assert bad.value.status == 422
        with pytest.raises(ServerError) as nop:
            api.runs("no-such-project")
        assert nop.value.status == 404
        with pytest.raises(ValueError, match="name a project"):
            api.runs()
    server.stop()
    with pytest.raises(TransportError):
        losswatch.Api(server.url).projects()
