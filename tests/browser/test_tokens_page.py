"""The dashboard's tokens page in real Chromium against a real `losswatch serve` with auth on: sign in
with the cookie, list the project's tokens, revoke one and make one with the page's own scripts
(which must pass the API's CSRF check: same origin, JSON), and see the revoked token refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from losswatch.server.services.tokens import create_token
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database, prepare_database


def test_revoke_and_make_tokens_from_the_dashboard(browser: Any, server_factory: Any, tmp_path: Path) -> None:
    """Uses the session's Chromium (tests/browser/conftest.py): a second sync Playwright in the same
    process fails while that one runs."""
    url = f"sqlite:///{tmp_path / 'page.db'}"
    settings = Settings(database_url=url)
    db = Database(settings)
    prepare_database(settings, db)
    with db.write() as s:
        admin = create_token(s, "P", "admin", "me")[1]
        spare_row, spare = create_token(s, "P", "read", "laptop")
        spare_id = spare_row.id
    db.dispose()
    sp = server_factory(url, env={"LOSSWATCH_AUTH": "on"}).start()
    assert httpx.get(f"{sp.url}/api/v1/projects/P", headers={"Authorization": f"Bearer {spare}"}).status_code == 200
    errors: list[str] = []
    context = browser.new_context()
    try:
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
        page.goto(f"{sp.url}/login?next=/p/P/tokens")
        page.fill("input[name=token]", admin)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=15_000)
        assert page.locator(f"tr[data-id='{spare_id}'][data-revoked='0']").count() == 1
        assert spare not in page.content() and admin not in page.content()  # never a secret on the page
        page.click(f"button[data-token='{spare_id}']")
        page.wait_for_selector(f"tr[data-id='{spare_id}'][data-revoked='1']", timeout=15_000)
        page.fill("#create input[name=name]", "from-the-page")
        page.select_option("#create select[name=scope]", "read")
        page.click("#create button[type=submit]")
        page.wait_for_selector("#created:not([hidden])", timeout=15_000)
        made = page.locator("#new-token").text_content() or ""
    finally:
        context.close()
    assert not errors, errors
    time.sleep(1.1)  # LOSSWATCH_AUTH_CACHE_SECONDS
    assert httpx.get(f"{sp.url}/api/v1/projects/P", headers={"Authorization": f"Bearer {spare}"}).status_code == 401
    assert made.startswith("lw_")
    assert httpx.get(f"{sp.url}/api/v1/projects/P", headers={"Authorization": f"Bearer {made}"}).status_code == 200
    listed = httpx.get(f"{sp.url}/api/v1/projects/P/tokens", headers={"Authorization": f"Bearer {admin}"}).json()
    names = {t["name"]: t for t in listed["tokens"]}
    assert names["laptop"]["revoked_at"] is not None and names["from-the-page"]["scope"] == "read"
    assert names["from-the-page"]["parent_id"] == names["me"]["id"]  # made with the signed-in token
