"""/docs in real Chromium (issue 12, item 6): Swagger UI from the locally installed swagger-ui-dist
(never a CDN), started by an external script under the server's own Content-Security-Policy, lists
every operation of the OpenAPI document, with no console error and no request to another origin."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from losswatch.dashboard.security import CONTENT_SECURITY_POLICY
from tests.browser.conftest import Page

pytestmark = pytest.mark.browser


def test_docs_page_lists_the_operations_offline_under_the_csp(page: Page, api: httpx.Client) -> None:
    requests: list[str] = []
    page.page.on("request", lambda r: requests.append(r.url))
    response = page.goto("/docs")
    assert response.status == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    html = response.text()
    assert "<script>" not in html and "cdn" not in html.lower()
    page.page.wait_for_selector(".opblock", timeout=20_000)
    spec: dict[str, Any] = api.get("/openapi.json").json()
    operations = [(m.upper(), p) for p, item in spec["paths"].items() for m in item
                  if m in ("get", "post", "put", "patch", "delete")]
    shown = page.page.locator(".opblock").count()
    assert shown == len(operations), (shown, len(operations))
    paths = page.page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/runs/{run_id}/points" in p.replace("\u200b", "") for p in paths)
    # the ingest operation shows its IngestBatch body once opened
    ingest = page.page.locator("#operations-runs-ingest_points_api_v1_runs__run_id__points_post")
    assert ingest.count() == 1
    ingest.locator(".opblock-summary").click()
    body = ingest.locator(".opblock-section-request-body")
    body.wait_for(timeout=10_000)
    example = body.inner_text()
    assert '"series"' in example and '"steps"' in example and '"values"' in example, example[:500]
    page.shot("docs")
    assert requests and all(u.startswith(page.base) or u.startswith("data:") for u in requests), \
        [u for u in requests if not u.startswith(page.base)]
    assert any(u.endswith("/static/vendor/swagger-ui/swagger-ui-bundle.js") for u in requests)


def test_redoc_leads_to_docs(api: httpx.Client) -> None:
    r = api.get("/redoc", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/docs"
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "oauth2-redirect.js"):
        assert api.get(f"/static/vendor/swagger-ui/{asset}").status_code == 200, asset
    assert api.get("/static/docs.js").status_code == 200
