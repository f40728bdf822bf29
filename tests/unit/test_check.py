"""`losswatch check FILE|DIR` (issue 10): the rules run offline over a CSV, an archive or a log dir."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np

from losswatch import check
from losswatch.cli import main as cli_main


def _loss(n: int = 1500, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return (0.4 + 2.0 * np.exp(-t / 300)) * np.random.default_rng(seed).lognormal(0.0, 0.1, n)


def _long_csv(path: Path, loss: list[float], lr: float = 1e-3) -> None:
    lines = ["key,step,value,wall_time"]
    lines += [f"train/loss,{s},{'NaN' if math.isnan(v) else repr(v)},{s}" for s, v in enumerate(loss)]
    lines += [f"lr,{s},{lr},{s}" for s in range(0, len(loss), 100)]
    path.write_text("\n".join(lines) + "\n")


def test_a_nan_and_a_divergence_in_an_export_csv(tmp_path, capsys):
    loss = _loss()
    loss[900:] *= np.linspace(1.0, 4.0, 600)  # climbs to 4x
    loss[1400] = math.nan
    _long_csv(tmp_path / "run.csv", loss.tolist())
    assert cli_main(["check", str(tmp_path / "run.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [ln.split("\t") for ln in out if "\t" in ln]
    assert ["run", "non_finite", "train/loss", "1400", "critical"] in [r[:5] for r in rows]
    div = [r for r in rows if r[1] == "divergence"]
    assert div and 900 < int(div[0][3]) < 1400 and "diverged" in div[0][5]
    assert out[-1] == f"{len(rows)} finding(s)"


def test_config_tries_other_settings_and_json_output(tmp_path, capsys):
    loss = _loss()
    loss[900:] *= np.linspace(1.0, 4.0, 600)
    _long_csv(tmp_path / "run.csv", loss.tolist())
    (tmp_path / "rules.json").write_text(json.dumps({"silenced": ["divergence"]}))
    assert check.main(str(tmp_path / "run.csv"), str(tmp_path / "rules.json"), as_json=True) == 0
    found = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert all(f["rule"] != "divergence" for f in found)
    (tmp_path / "bad.json").write_text(json.dumps({"plateau": {"share": -1}}))
    assert check.main(str(tmp_path / "run.csv"), str(tmp_path / "bad.json")) == 2
    assert "plateau.share" in capsys.readouterr().out


def test_wide_csv_and_archive_in_a_directory(tmp_path, capsys):
    loss = _loss(800, seed=1)
    loss[500] = math.inf
    wide = ["step,train/loss,val/accuracy"] + [
        f"{s},{'inf' if math.isinf(v) else v},{0.5 if s % 100 == 99 else ''}" for s, v in enumerate(loss.tolist())]
    (tmp_path / "wide.csv").write_text("\n".join(wide) + "\n")
    lines = [
        {"format": "losswatch-archive", "version": 1, "project": {"name": "p"}},
        {"type": "run", "run": {"id": "r1", "name": "archived"}},
        {"type": "series", "run": "r1", "series": {"key": "train/loss", "kind": "loss"}},
        {"type": "points", "run": "r1", "key": "train/loss", "steps": list(range(300)),
         "values": [1.0] * 200 + ["NaN"] + [1.0] * 99},
        {"type": "end", "runs": 1},
    ]
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(x) for x in lines) + "\n")
    assert check.main(str(tmp_path)) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if "\t" in ln]
    assert ["wide", "non_finite", "train/loss", "500"] in [r[:4] for r in rows]
    assert ["archived", "non_finite", "train/loss", "200"] in [r[:4] for r in rows]


def test_a_file_it_cannot_read_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hello")
    assert check.main(str(tmp_path / "x.txt")) == 2
    assert "not a CSV" in capsys.readouterr().out
    assert check.main(str(tmp_path / "missing.csv")) == 2
