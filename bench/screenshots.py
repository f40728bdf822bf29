"""Screenshots of every dashboard page at 1280x800, with 3 demo-like runs and with a sweep of 20 runs.

    .venv/bin/python bench/screenshots.py [--out /tmp/shots] [--steps 2000]

Starts a real server (tests/_server_process.py) on a fresh SQLite file, makes the runs through the public
API with the series of ``losswatch demo`` (train/loss and its box/cls/l1/l2 components, lr, grad_norm,
val/loss, val/accuracy, val/precision, val/mIoU; a NaN in one run, which fires an alert), and saves one
PNG per page and size: projects, runs table, compare, run page, alerts. Not part of ``make test``: the
pictures are for a person to look at (issue 11: "screenshots ... looked at and described").
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._server_process import ServerProcess, uvicorn_factory  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WEIGHTS = {"box": 7.5, "cls": 0.5, "l1": 5.0}
NAMES = ["healthy", "diverging", "plateauing"]


def _run(client: Any, project: str, i: int, name: str, group: str, steps: int, nan: bool) -> str:
    run_id = uuid.uuid4().hex
    lr0 = 3e-3 * (1 + i % 4)
    config = {"optimizer": ["adam", "sgd", "adamw"][i % 3], "lr": lr0, "weights": WEIGHTS, "hidden": 64 * (1 + i % 2),
              "batch": 64, "steps": steps, "seed": i}
    r = client.post(f"/api/v1/projects/{project}/runs", json={"id": run_id, "name": name, "group": group,
                                                               "tags": ["demo", name.split()[0]], "config": config})
    r.raise_for_status()
    t0 = time.time() - steps / 20
    train = list(range(steps))
    evals = list(range(99, steps, 100))
    tau = steps / (3 + i % 5)
    noise = [math.sin(s * 12.9898 + i * 78.233) * 0.5 + 0.5 for s in train]  # repeatable jitter in 0..1
    comps = {
        "box": [0.2 + math.exp(-s / tau) + 0.05 * noise[s] for s in train],
        "cls": [0.1 + 0.8 * math.exp(-s / (tau / 2)) + 0.03 * noise[s] for s in train],
        "l1": [0.05 + 0.3 * math.exp(-s / tau) for s in train],
        "l2": [0.01 * (1 + i % 3) for _ in train],
    }
    loss: list[float | str] = [sum(WEIGHTS.get(k, 1.0) * v[s] for k, v in comps.items()) for s in train]
    if nan:
        loss[steps * 3 // 4] = "NaN"
    series: list[dict[str, Any]] = [
        {"key": "train/loss", "kind": "loss", "steps": train, "values": loss},
        *({"key": f"train/loss/{k}", "kind": "loss_component", "steps": train, "values": v} for k, v in comps.items()),
        {"key": "lr", "kind": "lr", "steps": train, "values": [lr0 * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in train]},
        {"key": "grad_norm", "kind": "grad_norm", "steps": train, "values": [2 * math.exp(-s / tau) + 0.3 * noise[s] for s in train]},
        {"key": "val/loss", "kind": "loss", "steps": evals, "values": [1.1 * loss[s] if isinstance(loss[s], float) else 1.0 for s in evals]},
        {"key": "val/accuracy", "kind": "metric", "steps": evals, "values": [0.9 * (1 - math.exp(-s / tau)) for s in evals]},
        {"key": "val/precision", "kind": "metric", "steps": evals, "values": [0.8 * (1 - math.exp(-s / tau)) for s in evals]},
        {"key": "val/mIoU", "kind": "metric", "steps": evals, "values": [0.6 * (1 - math.exp(-s / (2 * tau))) for s in evals]},
    ]
    for s in series:
        s["wall_times"] = [t0 + x / 20 for x in s["steps"]]
    client.post(f"/api/v1/runs/{run_id}/points", json={"series": series}).raise_for_status()
    client.post(f"/api/v1/runs/{run_id}/finish", json={"status": "failed" if nan else "finished"}).raise_for_status()
    return run_id


def fill(url: str, steps: int) -> dict[str, list[str]]:
    import httpx

    out: dict[str, list[str]] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        out["demo"] = [_run(client, "demo", i, n, "demo-1", steps, nan=(n == "diverging")) for i, n in enumerate(NAMES)]
        out["sweep"] = [_run(client, "sweep", i, f"sweep lr={3e-3 * (1 + i % 4):.0e} seed={i} optimizer=" +
                             ["adam", "sgd", "adamw"][i % 3], f"seed-{i % 3}", steps, nan=(i % 7 == 3))
                        for i in range(20)]
    return out


def shoot(url: str, runs: dict[str, list[str]], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved: list[Path] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        def snap(name: str, path: str, ready: bool = True) -> None:
            page.goto(url + path)
            if ready:
                page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
            page.wait_for_timeout(400)
            page.screenshot(path=str(out / f"{name}.png"))
            # Panels far from the viewport draw when they come near it: scroll through the page first.
            height = page.evaluate("document.documentElement.scrollHeight")
            for y in range(0, height, 600):
                page.evaluate(f"window.scrollTo(0, {y})")
                page.wait_for_timeout(150)
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / f"{name}-full.png"), full_page=True)
            saved.extend([out / f"{name}.png", out / f"{name}-full.png"])

        snap("projects", "/", ready=False)
        for project, ids in runs.items():
            n = len(ids)
            snap(f"runs-table-{n}", f"/p/{project}")
            snap(f"compare-{n}", f"/p/{project}/compare?runs={','.join(ids)}")
            snap(f"run-page-{n}", f"/runs/{ids[1]}")
            snap(f"alerts-{n}", f"/p/{project}/alerts")
        browser.close()
    if errors:
        print("page errors:", *errors, sep="\n  ", file=sys.stderr)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/shots", help="folder of the PNGs (default /tmp/shots)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (default 2000)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        server = ServerProcess(env={"LOSSWATCH_DATABASE_URL": f"sqlite:///{work}/shots.db", "LOSSWATCH_AUTH": "off"},
                               log_path=Path(work) / "server.log",
                               argv=uvicorn_factory("losswatch.server.app:create_app")).start()
        try:
            runs = fill(server.url, args.steps)
            for path in shoot(server.url, runs, out):
                print(path)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
