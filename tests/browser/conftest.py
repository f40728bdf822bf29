"""Real Chromium (Debian's, driven by Playwright) against a real losswatch server process.

One uvicorn process on 127.0.0.1 with a fresh SQLite file serves the whole module set; every test
makes its own project through the real HTTP API. Screenshots of each page land in one folder,
printed at the end of the session (set LOSSWATCH_SCREENSHOTS to choose it).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._server_process import ServerProcess, uvicorn_factory
from tests.conftest import need_or_skip

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
_SHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SHOTS:
        terminalreporter.write_line(f"dashboard screenshots: {_SHOTS[0]}")


class Server(ServerProcess):
    """``python -m uvicorn --factory losswatch.server.app:create_app`` on a free port, auth off."""

    def __init__(self, db_path: Path, log_path: Path) -> None:
        super().__init__(env={"LOSSWATCH_DATABASE_URL": f"sqlite:///{db_path}", "LOSSWATCH_AUTH": "off"},
                         log_path=log_path, argv=uvicorn_factory("losswatch.server.app:create_app"))
        self.start()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("browser-server")
    srv = Server(work / "losswatch.db", work / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    need_or_skip(None if CHROMIUM.exists() else f"{CHROMIUM} is missing (make browser installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ["LOSSWATCH_SCREENSHOTS"]) if os.environ.get("LOSSWATCH_SCREENSHOTS") \
        else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    _SHOTS.append(folder)
    print(f"\ndashboard screenshots: {folder}")
    return folder


class Page:
    """A Playwright page that records dialogs (none may fire) and script errors."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Console errors fail the test too, except the browser's note that the document itself came back
        # 4xx, which a test asking for an error page expects (and asserts through the response).
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and message.location.get("url") == self.page.url:
            return
        self.errors.append(f"console.error: {message.text} ({message.location.get('url')})")

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def wait_ready(self, timeout: float = 15_000) -> dict[str, Any]:
        # A selector, not wait_for_function: the CSP forbids the eval that the latter needs.
        self.page.wait_for_selector("body[data-ready='1']", state="attached", timeout=timeout)
        return self.info()

    def info(self) -> dict[str, Any]:
        return self.page.evaluate("window.__losswatch.info()")  # type: ignore[no-any-return]

    def wait_info(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        info = self.info()
        while not predicate(info):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; last state: {info}")
            self.page.wait_for_timeout(50)
            info = self.info()
        return info

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
def page(browser: Any, server: Server, shots: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    p = Page(context.new_page(), server.url, shots)
    yield p
    context.close()
    assert not p.errors, f"script errors on the page: {p.errors}"


@pytest.fixture
def project() -> str:
    return "p-" + uuid.uuid4().hex[:10]


def make_run(api: httpx.Client, project: str, name: str, *, steps: int = 2000, start: int = 0,
             running: bool = False, nan_at: int | None = None, spike_at: int | None = None,
             run_id: str | None = None, **fields: Any) -> str:
    """A run with a loss, two weighted components, an eval metric and the lr, made through the API."""
    run_id = run_id or uuid.uuid4().hex
    r = api.post(f"/api/v1/projects/{project}/runs", json={"id": run_id, "name": name, **fields})
    assert r.status_code in (200, 201), r.text
    add_points(api, run_id, start, steps, nan_at=nan_at, spike_at=spike_at)
    if not running:
        r = api.post(f"/api/v1/runs/{run_id}/finish", json={"status": "finished"})
        assert r.status_code == 200, r.text
    return run_id


def add_points(api: httpx.Client, run_id: str, start: int, count: int, *, nan_at: int | None = None,
               spike_at: int | None = None) -> None:
    steps = list(range(start, start + count))
    box = [7.5 * (0.2 + math.exp(-s / 700)) for s in steps]
    cls = [0.5 * (0.1 + math.exp(-s / 300)) for s in steps]
    loss: list[float | str] = [a + b for a, b in zip(box, cls, strict=True)]
    if spike_at is not None and start <= spike_at < start + count:
        loss[spike_at - start] = 50.0
    if nan_at is not None and start <= nan_at < start + count:
        loss[nan_at - start] = "NaN"
    evals = [s for s in steps if s % 200 == 0]
    # Wall times as a 20-steps-per-second run started an hour ago would have them.
    t0 = time.time() - 3600
    wall = [t0 + s / 20 for s in steps]
    batch = {"series": [
        {"key": "train/loss", "kind": "loss", "steps": steps, "values": loss, "wall_times": wall},
        {"key": "train/loss/box_weighted", "kind": "loss_component", "steps": steps, "values": box, "wall_times": wall},
        {"key": "train/loss/cls_weighted", "kind": "loss_component", "steps": steps, "values": cls, "wall_times": wall},
        {"key": "val/mAP50-95", "kind": "metric", "steps": evals, "wall_times": [t0 + s / 20 for s in evals],
         "values": [0.5 * (1 - math.exp(-s / 900)) for s in evals]},
    ]}
    r = api.post(f"/api/v1/runs/{run_id}/points", json=batch)
    assert r.status_code == 200, r.text
