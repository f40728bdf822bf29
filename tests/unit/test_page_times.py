"""The runs list writes SQLite's stored times without parsing them: the text must come out exactly as
the datetime path (and so RunRead) writes it, a zero fraction included."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy.dialects import sqlite

from losswatch.server.services.runs import _iso, _iso_text


@pytest.mark.parametrize("dt", [
    datetime(2026, 12, 2, 9, 24, 26, 228580),
    datetime(2026, 12, 2, 9, 24, 26, 11000),
    datetime(2026, 12, 2, 9, 24, 26, 0),
    datetime(2026, 1, 1, 0, 0, 0, 1),
])
def test_stored_text_is_written_as_the_datetime_would_be(dt: datetime) -> None:
    stored = sqlite.DATETIME().bind_processor(sqlite.dialect())(dt)  # what SQLAlchemy writes to SQLite
    assert _iso_text(stored) == _iso(dt)


def test_a_missing_time_stays_missing() -> None:
    assert _iso_text(None) is None and _iso(None) is None
