"""``losswatch demo``: three small real torch trainings against a running server.

    make serve          # terminal 1
    make demo           # terminal 2: losswatch demo [--url URL] [--project demo] [--steps 1500]

A toy detector (a shared MLP trunk, a class head and a box head) learns a synthetic task, three
times, side by side in one loop, logging through the ordinary client:

- ``healthy``: Adam with a linear warm-up and a cosine decay; the loss falls, the metrics rise.
- ``diverging``: SGD whose learning rate keeps growing until it is far too high; the loss explodes
  (then turns NaN). The run uses ``stop_on={"non_finite", "divergence"}`` and stops itself.
- ``plateau``: SGD with a learning rate far too low; the loss hardly moves. Its rule configuration
  (``init(alerts=...)``) shortens the plateau rule's patience to fit the demo's length.

Every step logs the total loss and its weighted components (box: GIoU, 7.5; cls: cross-entropy, 0.5;
l1: box L1, 1.5; plus an L2 term) through :class:`~losswatch.client.torch_helpers.LossComponents`,
the learning rate and the gradient norm; every ``--eval-every`` steps a validation pass logs
``val/loss``, ``val/accuracy``, ``val/precision`` and ``val/mIoU``. At the end the dashboard URLs
are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from losswatch.client import settings

WEIGHTS = {"box": 7.5, "cls": 0.5, "l1": 1.5}
N_FEATURES, N_CLASSES, HIDDEN = 16, 4, 64


def _server_ok(url: str, timeout: float = 3.0) -> str | None:
    """None if the server answers its health check, else why not."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout) as r:
            return None if r.status == 200 else f"it answered HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        return f"it answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


class _Task:
    """A synthetic detection task: features -> (class, xyxy box), from a fixed random teacher."""

    def __init__(self, torch: Any, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.torch = torch
        self.g = g
        self.w_cls = torch.randn(N_FEATURES, N_CLASSES, generator=g)
        self.w_box = torch.randn(N_FEATURES, 4, generator=g) * 0.5
        self.val = self.sample(2048)

    def sample(self, n: int) -> tuple[Any, Any, Any]:
        torch = self.torch
        x = torch.randn(n, N_FEATURES, generator=self.g)
        noisy = x @ self.w_cls + 0.5 * torch.randn(n, N_CLASSES, generator=self.g)
        y = noisy.argmax(dim=1)
        return x, y, _boxes(torch, x @ self.w_box)


def _boxes(torch: Any, raw: Any) -> Any:
    """(cx, cy, w, h) squashed into the unit square, as xyxy."""
    c = torch.sigmoid(raw[:, :2])
    wh = 0.1 + 0.4 * torch.sigmoid(raw[:, 2:])
    return torch.cat([c - wh / 2, c + wh / 2], dim=1)


class _Trainer:
    """One model, its optimizer and LR schedule, and its losswatch run."""

    def __init__(self, torch: Any, task: _Task, run: Any, name: str, optimizer: str, lr: Any,
                 seed: int) -> None:
        from losswatch.client.torch_helpers import LossComponents

        torch.manual_seed(seed)
        nn = torch.nn
        self.torch, self.task, self.run, self.name = torch, task, run, name
        self.trunk = nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.cls_head = nn.Linear(HIDDEN, N_CLASSES)
        self.box_head = nn.Linear(HIDDEN, 4)
        self.model = nn.ModuleList([self.trunk, self.cls_head, self.box_head])
        params = self.model.parameters()
        if optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=1.0)
        else:
            self.opt = torch.optim.SGD(params, lr=1.0, momentum=0.9)
        self.lr = lr  # step -> learning rate
        self.criterion = LossComponents(run, weights=WEIGHTS, prefix="train/loss")
        self.stopped_at: int | None = None

    def forward(self, x: Any) -> tuple[Any, Any]:
        h = self.trunk(x)
        return self.cls_head(h), _boxes(self.torch, self.box_head(h))

    def step(self, step: int, batch: tuple[Any, Any, Any]) -> None:
        from losswatch.client.losses import giou_loss
        from losswatch.client.torch_helpers import clip_and_log_grad_norm, l2_penalty, log_lr

        F = self.torch.nn.functional
        x, y, boxes = batch
        for group in self.opt.param_groups:
            group["lr"] = self.lr(step)
        logits, pred = self.forward(x)
        loss = self.criterion(
            box=giou_loss(pred, boxes), cls=F.cross_entropy(logits, y), l1=F.l1_loss(pred, boxes),
            l2=l2_penalty(self.model, 5e-4, skip_1d=True), step=step,
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        log_lr(self.run, self.opt, step=step)
        clip_and_log_grad_norm(self.run, self.model.parameters(), max_norm=1e6, step=step)
        self.opt.step()

    def evaluate(self, step: int) -> None:
        from losswatch.client.losses import box_iou, giou_loss

        torch, F = self.torch, self.torch.nn.functional
        x, y, boxes = self.task.val
        with torch.no_grad():
            logits, pred = self.forward(x)
            val_loss = (WEIGHTS["box"] * giou_loss(pred, boxes) + WEIGHTS["cls"] * F.cross_entropy(logits, y)
                        + WEIGHTS["l1"] * F.l1_loss(pred, boxes))
            guess = logits.argmax(dim=1)
            accuracy = (guess == y).float().mean()
            precisions = []
            for c in range(N_CLASSES):
                picked = guess == c
                hits = (picked & (y == c)).sum()
                precisions.append(hits / picked.sum().clamp(min=1))
            precision = torch.stack(precisions).mean()
            miou = box_iou(pred, boxes).diagonal().mean()
        self.run.log_eval({"val/loss": val_loss, "val/accuracy": accuracy, "val/precision": precision,
                           "val/mIoU": miou}, step=step)


def _schedules(steps: int) -> dict[str, Any]:
    warm = max(10, steps // 20)

    def healthy(step: int) -> float:  # linear warm-up, then cosine decay to 5 %
        if step < warm:
            return 3e-3 * (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 3e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    def diverging(step: int) -> float:  # a sane start, then the LR grows 10x every steps/6
        return 0.02 * 10 ** (6 * step / steps)

    def plateau(step: int) -> float:  # far too low
        return 1e-6

    return {"healthy": healthy, "diverging": diverging, "plateau": plateau}


def run_demo(url: str, project: str, steps: int, eval_every: int, token: str | None = None,
             out: Any = None) -> dict[str, Any]:
    """Train the three models; returns {name: {"id", "status", "alerts", "stopped_at"}}."""
    import torch

    import losswatch

    out = out or sys.stdout
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    task = _Task(torch, seed=0)
    group = time.strftime("demo-%Y%m%d-%H%M%S")
    schedules = _schedules(steps)
    plans = [
        ("healthy", "adam", {}, ()),
        ("diverging", "sgd", {}, ("non_finite", "divergence")),
        ("plateau", "sgd", {"plateau": {"warmup": max(20, steps // 10), "window": max(20, steps // 20),
                                        "patience": max(50, steps // 5)}}, ()),
    ]
    trainers: list[_Trainer] = []
    for i, (name, optimizer, rules, stop_on) in enumerate(plans):
        config = {"optimizer": optimizer, "schedule": name, "weights": WEIGHTS, "hidden": HIDDEN,
                  "batch": 64, "steps": steps}
        run = losswatch.init(
            project=project, name=name, group=group, tags=["demo", name], config=config, url=url, token=token,
            alerts=rules or None, stop_on=stop_on, flush_interval=0.5,
        )
        trainers.append(_Trainer(torch, task, run, name, optimizer, schedules[name], seed=1 + i))
    print(f"losswatch demo: training 3 models for {steps} steps against {url} (project {project!r})...",
          file=out, flush=True)
    started = time.monotonic()
    for step in range(steps):
        batch = task.sample(64)
        for t in trainers:
            if t.stopped_at is not None:
                continue
            t.step(step, batch)
            if (step + 1) % eval_every == 0 or step == steps - 1:
                t.evaluate(step)
                # An evaluation is a sync point: flush() returns once the server holds every point so
                # far and has answered with the alerts they raised, so the stop decision below sees all
                # of them, however fast this loop runs. Between evaluations the answers of the
                # background sender set should_stop as they arrive.
                t.run.flush()
            if t.run.should_stop:  # a non_finite or divergence alert came back: stop this one
                t.stopped_at = step
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"  step {step + 1}/{steps}", file=out, flush=True)
    result: dict[str, Any] = {}
    for t in trainers:
        t.run.finish()
        result[t.name] = {"id": t.run.id, "status": "stopped" if t.stopped_at is not None else "finished",
                          "stopped_at": t.stopped_at, "alerts": _run_alerts(url, token, t.run.id)}
    print(f"done in {time.monotonic() - started:.1f} s\n", file=out)
    for name, r in result.items():
        alerts = ", ".join(f"{a['rule']} on {a['series'] or 'the run'} (step {a['onset_step']})"
                           for a in r["alerts"]) or "none"
        state = f"stopped itself at step {r['stopped_at']}" if r["stopped_at"] is not None else r["status"]
        print(f"  {name:<10} {state:<28} alerts: {alerts}", file=out)
    base = url.rstrip("/")
    ids = ",".join(r["id"] for r in result.values())
    print(f"\nOpen the dashboard:\n"
          f"  runs     {base}/p/{project}\n"
          f"  compare  {base}/p/{project}/compare?runs={ids}\n"
          f"  alerts   {base}/p/{project}/alerts", file=out)
    for name, r in result.items():
        print(f"  {name:<8} {base}/runs/{r['id']}", file=out)
    return result


def _run_alerts(url: str, token: str | None, run_id: str) -> list[dict[str, Any]]:
    """The run's alerts as the API lists them (oldest first); empty if the server cannot tell."""
    request = urllib.request.Request(f"{url.rstrip('/')}/api/v1/runs/{run_id}/alerts")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return list(reversed(json.load(r).get("alerts", [])))
    except (OSError, ValueError):
        return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="losswatch demo",
        description="Train three small torch models (healthy, diverging, plateauing) against a running server.",
    )
    parser.add_argument("--url", default=settings.url(),
                        help="server URL (default: $LOSSWATCH_URL or http://127.0.0.1:8000)")
    parser.add_argument("--project", default="demo", help="project of the three runs (default: demo)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model (default: 1500)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between evaluations (default: steps/12)")
    parser.add_argument("--token", default=settings.token(),
                        help="API token with write scope, if the server requires one (default: $LOSSWATCH_TOKEN)")
    args = parser.parse_args(argv)
    if args.steps < 50:
        parser.error("--steps must be at least 50")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("losswatch demo: needs torch: pip install 'losswatch[torch]'", file=sys.stderr)
        return 2
    problem = _server_ok(args.url)
    if problem is not None:
        print(f"losswatch demo: no losswatch server at {args.url} ({problem}). Start one with `make serve` "
              "(or `losswatch serve`), or pass --url.", file=sys.stderr)
        return 1
    eval_every = args.eval_every or max(10, args.steps // 12)
    run_demo(args.url, args.project, args.steps, eval_every, token=args.token)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
