"""The docs quote measured figures only from ``bench/RESULTS.md``, and only as citations.

A figure in the docs is written as a link to the results file whose title names it::

    [1.1 µs](../bench/RESULTS.md "client.scalars_median_us")       quoted: must equal the file's value
    [bench/RESULTS.md](../bench/RESULTS.md "client.scalars_median_us")   linked: must exist there

``section.figure``: the section is the backticked name of a ``## ...`` heading of RESULTS.md, the
figure a row of its table. A quoted number must be the file's value at the precision the doc writes
(1.12 may be quoted as 1.1, 30,600 as 31,000). A timing or throughput (µs, ns, ms, points per second) anywhere else in
the docs is a figure nobody can trace, and fails; the few that are not measurements are listed.
Timings are noisy, so the docs mostly link: a quoted figure goes stale with every ``make bench``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
CITATION = re.compile(r"""\[([^\]]*)\]\(([^)\s]*RESULTS\.md(?:#[^)\s]*)?)\s+"([\w-]+)\.([^"]+)"\)""")
MEASURED = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:µs|ns|ms)(?!\w)|\bpoints?/s\b|\bpoints per second\b")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
# (file, text): timings in the docs that are not our measurements
NOT_MEASURED = {
    ("docs/deploy.md", "44 ms"),  # TCP's delayed ACK, a property of the network stack
    ("docs/dashboard.md", "150 ms"),  # the compare view's own threshold for narrowing panels during a zoom
}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def read_results(text: str) -> dict[str, dict[str, str]]:
    """``## title (`section`)`` headings and their ``| figure | value |`` rows."""
    out: dict[str, dict[str, str]] = {}
    section = None
    for line in text.splitlines():
        heading = re.match(r"^## .*\(`([\w-]+)`\)\s*$", line)
        if heading:
            section = out.setdefault(heading.group(1), {})
            continue
        if line.startswith("## "):
            section = None
        row = re.match(r"^\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|$", line)
        if section is not None and row and row.group(1) != "figure" and not row.group(1).startswith("-"):
            section[row.group(1)] = row.group(2)
    return out


def quote_matches(quoted: str, value: str) -> bool:
    """Whether a number written in the docs is the value, at the precision the docs write it."""
    digits = quoted.replace(",", "")
    try:
        q, v = float(digits), float(value.replace(",", ""))
    except ValueError:  # a figure that is not a number ("yes") cannot be quoted as one
        return False
    # 1.12 quoted as 1.1 (one decimal), 45,071 as 45,000 (trailing zeros: to the thousand); a figure in
    # seconds may be quoted in ms or µs (9.90e-03 s as 9.9 ms), one in MiB in KiB or GiB
    decimals = len(digits.partition(".")[2]) if "." in digits else len(digits.rstrip("0")) - len(digits)
    return any(round(v * scale, decimals) == q for scale in (1, 1e3, 1e6, 1e-3))


def citation_problems(doc: str, text: str, results: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for m in CITATION.finditer(text):
        label, section, figure = m.group(1), m.group(3), m.group(4)
        value = results.get(section, {}).get(figure)
        if value is None:
            problems.append(f"{doc}: {section}.{figure} is not in bench/RESULTS.md")
            continue
        problems += [f"{doc}: {label!r} quotes {section}.{figure} = {value}"
                     for n in NUMBER.findall(label.replace("RESULTS.md", "")) if not quote_matches(n, value)]
    return problems


def uncited(doc: str, text: str) -> list[str]:
    problems = []
    for n, line in enumerate(CITATION.sub("", text).splitlines(), 1):
        problems += [f"{doc}:{n}: {m.group(0)!r}" for m in MEASURED.finditer(line)
                     if (doc, m.group(0)) not in NOT_MEASURED]
    return problems


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, str]]:
    parsed = read_results(RESULTS.read_text(encoding="utf-8"))
    assert parsed, "bench/RESULTS.md has no `## ... (`section`)` tables"
    return parsed


def test_cited_figures_are_the_results(results: dict[str, dict[str, str]]) -> None:
    problems = []
    for path in doc_files():
        problems += citation_problems(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"), results)
    assert problems == []


def test_no_timing_without_a_citation() -> None:
    problems = []
    for path in doc_files():
        problems += uncited(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
    assert problems == [], "cite bench/RESULTS.md (see this test's docstring) or link to it"


def test_the_checks_catch_stale_and_untraced_figures() -> None:
    results = read_results("## client (`client`)\n\n| figure | value |\n|---|---|\n| scalars_median_us | 1.12 |\n"
                           "| points_sent | 30,600 |\n\n## Side by side\n| x | 1 |\n")
    assert results == {"client": {"scalars_median_us": "1.12", "points_sent": "30,600"}}
    ok = 'about [1.1 µs](../bench/RESULTS.md "client.scalars_median_us"), [31,000](RESULTS.md "client.points_sent")'
    assert citation_problems("d", ok, results) == [] and uncited("d", ok) == []
    stale = 'about [1.6 µs](../bench/RESULTS.md "client.scalars_median_us")'
    assert citation_problems("d", stale, results) == ["d: '1.6 µs' quotes client.scalars_median_us = 1.12"]
    gone = '[see](../bench/RESULTS.md#client "client.tensors_median_us")'
    assert citation_problems("d", gone, results) == ["d: client.tensors_median_us is not in bench/RESULTS.md"]
    assert uncited("d", "log() takes about 1.6 µs;\nsends 45,000 points/s") == ["d:1: '1.6 µs'", "d:2: 'points/s'"]
    results = read_results("## py (`python_api`)\n| figure | value |\n|---|---|\n| flush -> stop: median (s) | 9.90e-03 |\n")
    ok = 'after [9.9 ms](../bench/RESULTS.md "python_api.flush -> stop: median (s)")'
    assert citation_problems("d", ok, results) == [] and uncited("d", ok) == []
    assert citation_problems("d", ok.replace("9.9", "12"), results) != []
