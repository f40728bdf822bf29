"""No block of more than 10 lines is written twice outside the tests (issue 15).

The check runs in `make test`, so it cannot lean on a tool that only some machines have. It
compares code lines with their indentation and trailing comments stripped, blank lines, comment
lines and import lines left out (import blocks are alike by nature), in every source file of the
package, the bench and the dashboard's own scripts. Two places that share WINDOW consecutive such
lines are one pair. The machine's `duplicates` tool also finds lines of the same shape with other
names, which this exact comparison does not: it is the floor, not the whole review."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 11  # a pair of 11 lines or more is "longer than 10 lines"
_NOT_OURS = {"node_modules", "vendor", "work", "__pycache__"}  # installed or generated, not written here


def _ours(path: Path) -> bool:
    return not any(part in _NOT_OURS or part.startswith(".") for part in path.relative_to(ROOT).parts)


SOURCES = [
    *(p for folder in ("client", "server", "dashboard", "integrations", "pkg", "migrations", "bench")
      for p in (ROOT / folder).rglob("*.py") if _ours(p)),
    *(ROOT / "dashboard" / "static").glob("*.js"),
]
_SKIP = re.compile(r"^(#|//|\*|/\*|\"\"\"|'''|from \S+ import|import |\)|\]|\}|\}\)|\);|\];|else:|try:|pass$)")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or _SKIP.match(line):
            continue
        out.append((number, line))
    return out


def duplicate_pairs(paths: list[Path], window: int = WINDOW) -> list[tuple[str, str]]:
    """("file:line", "file:line") of the first line of each repeated window, one pair per run."""
    seen: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    for path in paths:
        lines = _code_lines(path)
        for i in range(len(lines) - window + 1):
            seen[tuple(text for _, text in lines[i : i + window])].append((path, lines[i][0]))
    pairs: list[tuple[str, str]] = []
    reported: set[tuple[Path, Path]] = set()
    for places in seen.values():
        for (a, la), (b, lb) in zip(places, places[1:], strict=False):
            if (a, b) in reported:
                continue  # a longer run of the same pair: report it once
            reported.add((a, b))
            pairs.append((f"{a.relative_to(ROOT)}:{la}", f"{b.relative_to(ROOT)}:{lb}"))
    return pairs


def test_no_block_longer_than_ten_lines_is_written_twice() -> None:
    assert len(SOURCES) > 50
    pairs = duplicate_pairs(SOURCES)
    assert not pairs, "blocks of more than 10 lines written twice:\n" + "\n".join(f"  {a} ~ {b}" for a, b in pairs)


def test_the_check_finds_a_copied_block(tmp_path: Path) -> None:
    block = "\n".join(f"value_{i} = compute({i}, scale={i * 2})" for i in range(WINDOW))
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text("import os\n\n" + block + "\n", encoding="utf-8")
    b.write_text("x = 1\n# a comment\n" + block.replace("\n", "\n\n") + "\n", encoding="utf-8")  # blank lines between
    c.write_text("\n".join(block.splitlines()[: WINDOW - 1]) + "\n", encoding="utf-8")  # 10 lines: not a pair
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert duplicate_pairs([a, b, c]) == [("a.py:3", "b.py:3")]
    finally:
        ROOT = saved
