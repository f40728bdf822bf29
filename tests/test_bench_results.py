"""``bench/run.py`` keeps what it did not measure: a run of some sections on a fresh clone (no
bench/work/results.json) reads the other sections back from RESULTS.md and writes them unchanged."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import run as bench_run  # noqa: E402

RESULTS = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")


def _blocks(text: str) -> dict[str, list[str]]:
    """Section name -> its non-empty lines after the italic line."""
    out = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, rest = block.partition("\n")
        m = re.fullmatch(r".* \(`([\w-]+)`\)", head.strip())
        if m:
            out[m.group(1)] = [ln for ln in rest.splitlines() if ln.strip()][1:]
    return out


def test_every_section_of_results_md_reads_back_to_the_same_markdown() -> None:
    sections = bench_run.sections_from_markdown(RESULTS)
    blocks = _blocks(RESULTS)
    assert set(sections) == set(blocks) and len(sections) >= 10
    for name, entry in sections.items():
        data = {k: v for k, v in entry.get("data", {}).items() if k != "title"}
        drawn = [ln for ln in bench_run.render_data(data) if ln.strip()]
        assert drawn == blocks[name], name


def test_figures_read_back_as_numbers() -> None:
    sections = bench_run.sections_from_markdown(
        "## Machine\n\n| figure | value |\n|---|---|\n| date | 2026-12-02 04:40 UTC |\n| git commit | abc |\n\n"
        "## ingest (`ingest`)\n\n_bench/server_bench.py, 12 s, load average at its start 1 / 2 / 3_\n\n"
        "- a note\n\n| figure | value |\n|---|---|\n| points_per_s | 1,219,299 |\n| ratio | 0.43 |\n"
        "| goal_met | no |\n| missing | — |\n\n### per client\n\n| clients | points_per_s |\n|---|---|\n"
        "| 1 | 726,133 |\n| 8 | 625,647 |\n")
    entry = sections["ingest"]
    assert entry["alias"] == "server" and entry["date"] == "2026-12-02 04:40 UTC" and entry["commit"] == "abc"
    assert entry["data"] == {"notes": ["a note"], "points_per_s": 1219299, "ratio": 0.43, "goal_met": False,
                             "missing": None,
                             "per client": [{"clients": 1, "points_per_s": 726133}, {"clients": 8, "points_per_s": 625647}]}
    # what a comparison reads (figures from sections that were not rerun)
    assert bench_run.lookup(sections, "server", "points_per_s") == (1219299, "RESULTS.md")


def test_a_run_of_one_section_keeps_the_others(tmp_path, monkeypatch) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text(RESULTS, encoding="utf-8")
    monkeypatch.setattr(bench_run, "RESULTS_MD", md)
    monkeypatch.setattr(bench_run, "RESULTS_JSON", tmp_path / "missing" / "results.json")  # a fresh clone
    previous = bench_run._load_previous()
    assert set(previous) == set(_blocks(RESULTS))
