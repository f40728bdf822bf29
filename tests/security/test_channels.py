"""Channel URLs (issue 12, item 6): malformed URLs are a 422, never a 500 and never a password in the
log; channel lists and delivery records mask ``user:password@`` and secret-looking query values;
the SSRF filter judges an IPv6 address that carries an IPv4 one (6to4, Teredo, NAT64, mapped) by
that IPv4 address."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from losswatch.server.services import channels
from tests.conftest import free_port, make_client
from tests.receivers import wait_for

PASSWORD = "hunter2-never-shown"
MALFORMED = [
    "http://[::1", f"http://user:{PASSWORD}@[::1/x", "http://a:99999/", f"http://u:{PASSWORD}@a:99999/",
    "http://example.com/\uff03frag", "http://\uff45xample.com/", "http://exa mple.com/", "http://example.com:0/",
    "http://[zz::1]/", "http://example.com/\x00", "http://example.com/a\r\nX: y", "http://" + "a" * 3000 + ".com/",
    "http://:80/", "http://[::1]:-1/", "https://[v1.fe80::a+en1]/",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_are_refused_by_the_filter(url: str) -> None:
    reason = channels.private_address_reason(url)
    assert reason is not None and PASSWORD not in reason


@pytest.mark.parametrize("allow_private", [False, True])
def test_malformed_channel_urls_are_a_422_never_a_500_and_never_logged(
        db_url: str, allow_private: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), \
            make_client(db_url, background_workers=False, allow_private_channels=allow_private) as c:
        c.post("/api/v1/projects/p/runs", json={})
        for url in MALFORMED:
            for kind in ("webhook", "slack"):
                r = c.post("/api/v1/projects/p/channels", json={"name": "x", "kind": kind, "config": {"url": url}})
                assert r.status_code == 422, (url, r.status_code, r.text)
                assert r.json()["error"]["code"] in ("invalid_channel", "invalid_request", "channel_url_refused")
                assert PASSWORD not in r.text
        assert c.get("/api/v1/projects/p/channels").json()["channels"] == []
    assert PASSWORD not in caplog.text
    assert "unexpected error" not in caplog.text


# --- masking -----------------------------------------------------------------------------------

SECRET_URL = (f"https://alerts:{PASSWORD}@hooks.example.com:8443/services/T0/B0/slack-path-secret"
              "?token=tok-secret&api_key=key-secret&sig=sig-secret&X-Amz-Signature=amz-secret&team=vision")
SECRETS = (PASSWORD, "slack-path-secret", "tok-secret", "key-secret", "sig-secret", "amz-secret")


def test_mask_url() -> None:
    shown = channels.mask_url(SECRET_URL)
    assert shown == "https://…@hooks.example.com:8443/…?token=…&api_key=…&sig=…&X-Amz-Signature=…&team=vision"
    assert channels.mask_url("http://[::1") == "…"
    assert channels.mask_url("https://example.com/?password=p&Secret=s&q=1") == \
        "https://example.com/?password=…&Secret=…&q=1"


def test_channel_lists_and_delivery_records_hide_credentials(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    closed = free_port()  # nothing listens: every delivery fails, and its error is recorded
    url = f"http://alerts:{PASSWORD}@127.0.0.1:{closed}/hook?token=tok-secret&sig=sig-secret&team=vision"
    with caplog.at_level(logging.DEBUG), make_client(db_url, allow_private_channels=True,
                                                     delivery_timeout_seconds=1) as c:
        rid = c.post("/api/v1/projects/p/runs", json={}).json()["id"]
        answers = []
        for kind, u in (("webhook", url), ("slack", SECRET_URL)):
            r = c.post("/api/v1/projects/p/channels", json={"name": kind, "kind": kind, "min_severity": "info",
                                                            "config": {"url": u}})
            assert r.status_code == 201, r.text
            answers.append(r.text)
        c.post(f"/api/v1/runs/{rid}/points", json={"series": [{"key": "train/loss", "steps": [0, 1], "values": [1, "NaN"]}]})
        listed = c.get("/api/v1/projects/p/channels").json()["channels"]
        by_kind = {ch["kind"]: ch["config"]["url"] for ch in listed}
        assert by_kind["webhook"] == f"http://…@127.0.0.1:{closed}/…?token=…&sig=…&team=vision"
        assert by_kind["slack"].startswith("https://…@hooks.example.com:8443/…?token=…")
        hook_id = next(ch["id"] for ch in listed if ch["kind"] == "webhook")

        def failed() -> list[dict[str, Any]]:
            got = c.get(f"/api/v1/projects/p/channels/{hook_id}/attempts")
            answers.append(got.text)
            return [a for a in got.json()["attempts"] if a["error"]]

        attempt = wait_for(failed, timeout=30)[0]
        assert f"127.0.0.1:{closed}" in attempt["error"], attempt
        answers.append(str(listed))
    for secret in (*SECRETS, "tok-secret", "sig-secret"):
        assert all(secret not in a for a in answers), secret
        assert secret not in caplog.text, secret


# --- SSRF: IPv4 inside IPv6 --------------------------------------------------------------------

EMBEDDED_PRIVATE = [
    "http://[2002:7f00:1::1]/h",            # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::]/latest",     # 6to4 of 169.254.169.254 (cloud metadata)
    "http://[2002:c0a8:101::1]:8080/h",     # 6to4 of 192.168.1.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/h",  # Teredo, client 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/h",  # Teredo, client 10.0.0.1
    "http://[64:ff9b::7f00:1]/h",            # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:5]/h",             # NAT64 of 10.0.0.5
    "http://[64:ff9b::a9fe:a9fe]/h",         # NAT64 of 169.254.169.254
    "http://[::ffff:a9fe:a9fe]/h",           # IPv4-mapped 169.254.169.254
]


@pytest.mark.parametrize("url", EMBEDDED_PRIVATE)
def test_ipv6_wrappers_of_private_ipv4_are_refused(url: str) -> None:
    reason = channels.private_address_reason(url)
    assert reason is not None and "LOSSWATCH_ALLOW_PRIVATE_CHANNELS" in reason, reason


@pytest.mark.parametrize("url", ["http://[2002:808:808::1]/h", "http://[64:ff9b::808:808]/h"])
def test_ipv6_wrappers_of_public_ipv4_are_judged_by_it(url: str) -> None:
    assert channels.private_address_reason(url) is None


def test_embedded_ipv4() -> None:
    import ipaddress

    v4 = ipaddress.IPv4Address
    assert channels.embedded_ipv4(ipaddress.ip_address("2002:7f00:1::1")) == [v4("127.0.0.1")]
    assert channels.embedded_ipv4(ipaddress.ip_address("64:ff9b::c000:221")) == [v4("192.0.2.33")]
    assert v4("127.0.0.1") in channels.embedded_ipv4(ipaddress.ip_address("2001:0:4136:e378:8000:63bf:80ff:fffe"))
    assert channels.embedded_ipv4(ipaddress.ip_address("2606:4700::1111")) == []
    assert channels.embedded_ipv4(ipaddress.ip_address("1.1.1.1")) == []
