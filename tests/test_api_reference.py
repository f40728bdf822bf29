"""docs/api-reference.md is generated from the app's OpenAPI document and must match it."""

from __future__ import annotations

from pathlib import Path

from losswatch.server.openapi_docs import render

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "api-reference.md").read_text()
    assert committed == render(), "regenerate: python -m losswatch.server.openapi_docs > docs/api-reference.md"
