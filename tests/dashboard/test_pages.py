"""The dashboard's HTML pages in process: thin shells, escaped, with security headers and HTML errors.

The pages carry no data (their scripts read /api/v1, see tests/browser for those), so these tests pin
what the server itself writes: status codes, headers, escaping of what the URL puts into a page, the
HTML error page, and the token sign-in cookie.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from losswatch.dashboard import views
from losswatch.dashboard.security import CONTENT_SECURITY_POLICY, TOKEN_COOKIE
from tests.conftest import make_client

XSS = "<img src=x onerror=alert(1)>"
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)


@pytest.fixture
def app_client(sqlite_url: str) -> Iterator[Any]:
    with make_client(sqlite_url) as c:
        r = c.post("/api/v1/projects/demo/runs", json={"id": "run1", "name": XSS, "tags": [XSS], "config": {XSS: XSS}})
        assert r.status_code == 201, r.text
        yield c


def assert_security_headers(response: Any) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "unsafe-eval" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"


@pytest.mark.parametrize("path", ["/", "/p/demo", "/p/demo/compare?runs=run1&smooth=0.6&log=1", "/p/demo/alerts",
                                  "/runs/run1", "/login"])
def test_pages_are_html_shells_with_security_headers(app_client: Any, path: str) -> None:
    r = app_client.get(path, headers={"accept": "text/html"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert_security_headers(r)
    # No inline script anywhere: the CSP forbids it and the pages must not need it.
    assert not INLINE_SCRIPT.search(r.text)
    # Run data never comes from the server-rendered HTML: it is fetched and written as text by the scripts.
    assert XSS not in r.text


def test_static_assets_and_chart_library_are_served(app_client: Any) -> None:
    for path in ["/static/app.css", "/static/compare.js", "/static/chart.js", "/static/lib.js"]:
        r = app_client.get(path)
        assert r.status_code == 200, path
    r = app_client.get("/static/vendor/uPlot.iife.min.js")
    assert r.status_code == 200, "run `make assets`: the pinned uPlot is copied into dashboard/static/vendor"
    assert "uPlot" in r.text[:2000] or "uPlot" in r.text


@pytest.mark.parametrize("path, message", [
    ("/runs/no-such-run", "no run"),
    ("/runs/bad%20id!", "no run"),
    ("/p/no-such-project", "no project"),
    ("/p/no-such-project/compare?runs=run1", "no project"),
    ("/no/such/page", "no page"),
])
def test_missing_pages_are_html_404(app_client: Any, path: str, message: str) -> None:
    r = app_client.get(path, headers={"accept": "text/html"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert_security_headers(r)
    assert '<p class="error" id="error-message">' in r.text
    assert message in r.text.lower().replace("there is ", "")


def test_api_errors_stay_json(app_client: Any) -> None:
    r = app_client.get("/api/v1/runs/no-such-run", headers={"accept": "text/html"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "run_not_found"


def test_strings_from_the_url_are_escaped() -> None:
    # A bare app (no database) so any project name reaches the template: Jinja2 must escape it.
    app = FastAPI()
    app.include_router(views.router)
    with TestClient(app) as c:
        r = c.get("/p/" + XSS.replace(" ", "%20").replace("/", "%2F") + "/compare")
        assert r.status_code == 200
        assert XSS not in r.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in r.text
        assert 'data-project="&lt;img src=x onerror=alert(1)&gt;"' in r.text
        r = c.get("/login", params={"next": '"><script>alert(1)</script>'})
        assert "<script>alert(1)" not in r.text
        assert 'name="next" value="/"' in r.text


def test_login_sets_an_httponly_strict_cookie(app_client: Any) -> None:
    r = app_client.post("/login", data={"token": "lw_abc123", "next": "/p/demo"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/p/demo"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}=lw_abc123")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    # An open redirect is refused: only local paths come back.
    r = app_client.post("/login", data={"token": "t", "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/"
    # A form posted from another site is refused (login CSRF).
    r = app_client.post("/login", data={"token": "t"}, headers={"origin": "http://evil.example"},
                        follow_redirects=False)
    assert r.status_code == 403
    r = app_client.post("/login", data={"token": ""}, follow_redirects=False)
    assert r.status_code == 400
    r = app_client.post("/logout", follow_redirects=False)
    assert r.status_code == 303
    assert f'{TOKEN_COOKIE}=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]


def test_token_sign_in_opens_the_api_when_auth_is_on(sqlite_url: str) -> None:
    from losswatch.server.services.tokens import create_token

    with make_client(sqlite_url, auth="on") as c:
        with c.app.state.db.write() as session:
            _, token = create_token(session, "demo", "read")
        assert c.get("/", headers={"accept": "text/html"}).status_code == 200  # the shell needs no token
        assert c.get("/api/v1/projects").status_code == 401
        r = c.get("/login", params={"next": "/p/demo", "reason": "unauthorized"})
        assert "requires a token" in r.text
        r = c.post("/login", data={"token": token, "next": "/p/demo"}, follow_redirects=False)
        assert r.status_code == 303
        # The cookie now travels with same-origin requests, as the page scripts' fetches do.
        r = c.get("/api/v1/projects")
        assert r.status_code == 200, r.text
        assert [p["name"] for p in r.json()["projects"]] == ["demo"]
