"""Secrets and the server's outward edges: tokens hashed and compared in constant time; no token,
webhook secret, Slack URL or SMTP password in logs, error messages or delivery records (a real
server process, its whole log captured); SSRF refusal (loopback, link-local, private, IPv6, names
that resolve to them, redirects); the dashboard's security headers and cookie flags on every page."""

from __future__ import annotations

import hmac
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from losswatch.server.services import channels, tokens
from losswatch.server.settings import Settings
from losswatch.server.storage.db import Database
from tests.conftest import BIN, free_port, make_client
from tests.receivers import WebhookReceiver, wait_for

# --- tokens ------------------------------------------------------------------------------------


def test_tokens_are_compared_in_constant_time_and_only_their_digest_is_read(sqlite_url: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(sqlite_url):
        pass  # migrated
    db = Database(Settings(database_url=sqlite_url))
    with db.write() as s:
        row, good = tokens.create_token(s, "p", "read", "ci")
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    digests: list[str] = []
    real_digest = tokens._digest
    monkeypatch.setattr(tokens, "_digest", lambda t: digests.append(t) or real_digest(t))
    with db.read() as s:
        assert tokens.authenticate(s, good) is not None
        wrong = good[:-1] + ("A" if good[-1] != "A" else "B")  # same lookup part, wrong secret
        assert tokens.authenticate(s, wrong) is None
        assert tokens.authenticate(s, "lw_ffffffffffff_" + "x" * 43) is None  # unknown lookup: same digest work
    db.dispose()
    assert len(calls) == 2 and all(len(a) == len(b) == 64 for a, b in calls)  # digest vs digest, never plaintext
    assert len(digests) == 3
    assert row.digest != good and good not in row.digest


# --- secrets never in logs or answers ----------------------------------------------------------


class _Redirector:
    """Answers every POST with a 302 to ``target``."""

    def __init__(self, target: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack/T000/B000/slack-url-secret-part"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_no_secret_in_the_server_log_or_in_answers(sqlite_url: str, server_factory: Any, tmp_path: Any) -> None:
    smtp_password = "smtp-pa55word-never-logged"
    webhook_secret = "whsec-signing-key-never-logged"
    closed = free_port()  # nothing listens here: deliveries fail
    # make the tokens before the server starts (the CLI prints the token once, on stdout only)
    out = subprocess.run([str(BIN / "losswatch"), "token", "create", "--project", "p", "--scope", "admin",
                          "--db", sqlite_url], capture_output=True, text=True, check=True)
    admin = out.stdout.strip()
    assert admin.startswith("lw_") and admin not in out.stderr
    other = subprocess.run([str(BIN / "losswatch"), "token", "create", "--project", "q", "--scope", "read",
                            "--db", sqlite_url], capture_output=True, text=True, check=True).stdout.strip()
    env = {"LOSSWATCH_ALLOW_PRIVATE_CHANNELS": "true", "LOSSWATCH_SMTP_HOST": "127.0.0.1",
           "LOSSWATCH_SMTP_PORT": str(closed), "LOSSWATCH_SMTP_USERNAME": "alerts",
           "LOSSWATCH_SMTP_PASSWORD": smtp_password, "LOSSWATCH_LOG_LEVEL": "debug",
           "LOSSWATCH_DELIVERY_TIMEOUT_SECONDS": "1"}
    with WebhookReceiver() as victim:
        redirector = _Redirector(victim.url)
        try:
            server = server_factory(sqlite_url, env=env, args=["--auth", "on", "--access-log"]).start()
            h = {"Authorization": f"Bearer {admin}"}
            answers: list[str] = []
            with httpx.Client(base_url=server.url, timeout=10) as c:
                def add(body: dict[str, Any]) -> None:
                    r = c.post("/api/v1/projects/p/channels", json=body, headers=h)
                    assert r.status_code == 201, r.text
                    answers.append(r.text)
                add({"name": "hook", "kind": "webhook", "min_severity": "info",
                     "config": {"url": f"http://127.0.0.1:{closed}/hook", "secret": webhook_secret}})
                add({"name": "slack", "kind": "slack", "min_severity": "info", "config": {"url": redirector.url}})
                add({"name": "mail", "kind": "email", "min_severity": "info", "config": {"to": ["ops@example.com"]}})
                rid = c.post("/api/v1/projects/p/runs", json={}, headers=h).json()["id"]
                r = c.post(f"/api/v1/runs/{rid}/points", headers=h,
                           json={"series": [{"key": "train/loss", "steps": [0, 1], "values": [1.0, "NaN"]}]})
                assert r.status_code == 200 and r.json()["alerts"], r.text
                # failing requests that carry tokens, every way they can be carried
                for headers in ({"Authorization": f"Bearer {other}"}, {"Authorization": f"Token {admin}"},
                                {"Authorization": f"Bearer {admin}x"}, {"Authorization": f"Basic {admin}"},
                                {"Cookie": f"losswatch_token={admin}zz"}):
                    for method, path in (("GET", f"/api/v1/runs/{rid}"), ("POST", "/api/v1/projects/p/tokens"),
                                         ("GET", "/api/2.0/mlflow/runs/get?run_id=" + rid)):
                        r = c.request(method, path, headers=headers, json={})
                        assert r.status_code in (401, 403, 404), (headers, path, r.text)
                        answers.append(r.text)
                r = c.get(f"/api/v1/runs/{rid}", params={"token": admin})  # a token in the query: still 401
                assert r.status_code == 401
                answers.append(r.text)

                def attempts() -> list[dict[str, Any]]:
                    out: list[dict[str, Any]] = []
                    for ch in c.get("/api/v1/projects/p/channels", headers=h).json()["channels"]:
                        got = c.get(f"/api/v1/projects/p/channels/{ch['id']}/attempts", headers=h)
                        answers.append(got.text)
                        out.extend(got.json()["attempts"])
                    return out

                wait_for(lambda: len({a["outbox_id"] for a in attempts()}) >= 3, timeout=20)
                listed = c.get("/api/v1/projects/p/channels", headers=h)
                answers.append(listed.text)
                by_kind = {ch["kind"]: ch for ch in listed.json()["channels"]}
                assert by_kind["webhook"]["config"]["secret"] == "…"
                assert "slack-url-secret-part" not in by_kind["slack"]["config"]["url"]
                all_attempts = attempts()
                assert not any(a["ok"] for a in all_attempts)  # every delivery failed ...
                slack = [a for a in all_attempts if a["status_code"] == 302]
                assert slack, all_attempts  # ... the Slack one on the redirect, not following it
            assert victim.requests == []  # the redirect target was never called
        finally:
            redirector.close()
        server.stop()
    log = server.output()
    assert "delivery" in log.lower() or "GET /api/v1" in log  # the log did capture the activity
    for secret in (admin, other, webhook_secret, smtp_password, "slack-url-secret-part", admin[16:]):
        assert secret not in log, f"a secret leaked into the server log: {secret[:6]}…"
        for text in answers:
            assert secret not in text, f"a secret leaked into an answer: {secret[:6]}…"


# --- SSRF --------------------------------------------------------------------------------------

REFUSED_URLS = [
    "http://127.0.0.1/hook", "http://127.1/hook", "http://2130706433/hook", "http://0x7f000001/hook",
    "http://localhost:8000/hook", "http://LOCALHOST./hook", "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook", "http://[::]/hook", "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook", "http://[fe80::1%25eth0]/hook", "http://10.0.0.5/hook", "http://172.16.3.4/hook",
    "http://192.168.1.1/hook", "http://[fd00::1]/hook", "http://100.64.0.1/hook", "http://224.0.0.1/hook",
    "https://user:pw@127.0.0.1:8443/x", "ftp://example.com/x", "file:///etc/passwd", "http:///nohost",
    "gopher://127.0.0.1:6379/_INFO",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_channel_urls_to_private_addresses_are_refused(url: str) -> None:
    assert channels.private_address_reason(url) is not None


def test_ssrf_refusal_through_the_api_and_the_operator_override(sqlite_url: str, tmp_path: Any) -> None:
    with make_client(sqlite_url, background_workers=False) as c:
        c.post("/api/v1/projects/p/runs", json={})
        for url in ("http://localhost:9/h", "http://[fe80::1]/h", "http://169.254.169.254/", "http://[::1]:9/h"):
            for kind in ("webhook", "slack"):
                r = c.post("/api/v1/projects/p/channels", json={"name": "x", "kind": kind, "config": {"url": url}})
                assert r.status_code == 422 and r.json()["error"]["code"] == "channel_url_refused", r.text
                assert "LOSSWATCH_ALLOW_PRIVATE_CHANNELS" in r.json()["error"]["message"]
    other = f"sqlite:///{tmp_path / 'allow.db'}"
    with make_client(other, background_workers=False, allow_private_channels=True) as c:
        c.post("/api/v1/projects/p/runs", json={})
        r = c.post("/api/v1/projects/p/channels",
                   json={"name": "x", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/h"}})
        assert r.status_code == 201
        r = c.post("/api/v1/projects/p/channels", json={"name": "x", "kind": "webhook", "config": {"url": "file:///x"}})
        assert r.status_code == 422  # the override opens private addresses, not other schemes


def test_the_delivery_client_does_not_follow_redirects() -> None:
    """The worker's client is built with follow_redirects=False (server/alerts/delivery.py): a
    receiver cannot bounce a delivery to an internal address."""
    import inspect

    from losswatch.server.alerts import delivery

    source = inspect.getsource(delivery.BackgroundWorkers._deliver_loop)
    assert "follow_redirects=False" in source


# --- dashboard headers and cookies -------------------------------------------------------------

PAGES = ["/", "/p/proj", "/p/proj/compare", "/p/proj/alerts", "/runs/abc", "/login", "/login?next=/p/proj",
         "/no/such/page", "/runs/not%20an%20id", "/static/no-such-file.js"]


@pytest.mark.parametrize("auth", ["off", "on"])
def test_every_page_sends_csp_and_security_headers(sqlite_url: str, auth: str) -> None:
    with make_client(sqlite_url, auth=auth) as c:
        if auth == "off":
            c.post("/api/v1/projects/proj/runs", json={"id": "abc"})
        for page in PAGES:
            r = c.get(page, headers={"Accept": "text/html"})
            assert r.status_code in (200, 404), (page, r.status_code)
            csp = r.headers.get("content-security-policy", "")
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, page
            assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], page
            assert r.headers.get("x-content-type-options") == "nosniff", page
            assert r.headers.get("x-frame-options") == "DENY", page
            assert r.headers.get("referrer-policy") == "same-origin", page
            if r.headers.get("content-type", "").startswith("text/html"):
                assert "<script>" not in r.text and "onload=" not in r.text.lower(), page
        r = c.get("/api/v1/projects")
        assert r.headers.get("x-content-type-options") == "nosniff"


def test_sign_in_cookie_is_httponly_samesite_strict(sqlite_url: str) -> None:
    with make_client(sqlite_url, auth="on") as c:
        r = c.post("/login", data={"token": "lw_abcdefabcdef_secret", "next": "/p/x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/p/x"
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith("losswatch_token=") and "httponly" in cookie and "samesite=strict" in cookie
        assert "path=/" in cookie
        assert r.headers.get("content-security-policy")
        r = c.post("/login", data={"token": "lw_x", "next": "https://evil.example/"}, follow_redirects=False)
        assert r.headers["location"] == "/"  # no open redirect
        r = c.post("/login", data={"token": "lw_x"}, headers={"Origin": "https://evil.example"}, follow_redirects=False)
        assert r.status_code == 403 and "set-cookie" not in r.headers  # no login CSRF
        r = c.post("/logout", follow_redirects=False)
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=0" in cookie


def test_https_sign_in_cookie_is_secure(sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from losswatch.server.app import create_app

    app = create_app(Settings(database_url=sqlite_url, auth="on"))
    with TestClient(app, base_url="https://testserver") as c:
        r = c.post("/login", data={"token": "lw_abcdefabcdef_secret"}, follow_redirects=False)
        assert "secure" in r.headers["set-cookie"].lower()


