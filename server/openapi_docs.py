"""The API reference page, generated from the app's OpenAPI document (a composition root, like
``create_app``: it builds the app; the document and its pages are ``losswatch.server.api.openapi``).

:func:`render` writes the API reference (docs/api-reference.md) from the document::

      python -m losswatch.server.openapi_docs > docs/api-reference.md

  A test regenerates it and compares, so the reference cannot drift from the routes.
"""

from __future__ import annotations

import sys
from typing import Any

from losswatch.server.api.openapi import _refs, complete_components, install  # noqa: F401 - their old home

_METHODS = ("get", "post", "put", "patch", "delete")


def _params(op: dict[str, Any]) -> str:
    out = []
    for p in op.get("parameters", []):
        if p.get("in") == "path":
            continue
        name = p["name"] + ("" if p.get("required") else "?")
        out.append(f"`{name}`")
    return ", ".join(out)


def _body(op: dict[str, Any]) -> str:
    content = op.get("requestBody", {}).get("content", {})
    for media in content.values():
        ref = media.get("schema", {}).get("$ref", "")
        if ref:
            return f"`{ref.rsplit('/', 1)[-1]}`"
        return "JSON"
    return ""


def _answers(op: dict[str, Any]) -> str:
    return ", ".join(sorted(op.get("responses", {})))


def render() -> str:
    from losswatch.server.app import create_app
    from losswatch.server.settings import Settings

    app = create_app(Settings(database_url="sqlite://", background_workers=False))
    spec = app.openapi()
    lines = [
        "# API reference",
        "",
        "Generated from the server's OpenAPI document by `python -m losswatch.server.openapi_docs`",
        "(the live document is at `/openapi.json`, browsable at `/docs`). Conventions, encodings and",
        "examples: [api.md](api.md).",
        "",
    ]
    groups: dict[str, list[str]] = {}
    for path, item in spec["paths"].items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append(
                f"| {method.upper()} | `{path}` | {op.get('summary', '')} | {_params(op)} | {_body(op)} | "
                f"{_answers(op)} |"
            )
    for tag in sorted(groups):
        lines += [f"## {tag}", "", "| method | path | what | query | body | answers |",
                  "|---|---|---|---|---|---|", *groups[tag], ""]
    lines += ["## Schemas", ""]
    for name in sorted(spec.get("components", {}).get("schemas", {})):
        schema = spec["components"]["schemas"][name]
        fields = ", ".join(f"`{f}`" for f in schema.get("properties", {}))
        lines.append(f"- **{name}**: {fields}" if fields else f"- **{name}**")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
