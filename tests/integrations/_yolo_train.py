"""Trains a YOLO model from its yaml for 2 epochs on CPU on a tiny generated dataset, with losswatch
attached, and writes what the trainer computed to a JSON file for test_ultralytics.py to compare.

Runs in .venv-ultralytics (ultralytics needs torchvision, which needs that venv's torch):

    python _yolo_train.py URL WORKDIR OUT.json [--nan-from-batch N]

Offline: YOLO_OFFLINE=1 (no online checks), no weights (model from yolo11n.yaml), amp=False (no AMP
check, which downloads weights), plots=False, and the font Ultralytics wants when it checks a dataset
(Arial.ttf) is put in its config dir beforehand (a copy of matplotlib's DejaVuSans), so nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def make_dataset(root: Path, n_train: int = 16, n_val: int = 4, size: int = 64) -> Path:
    """Images with one or two coloured boxes (red = class 0, blue = class 1) and YOLO labels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {0: (220, 30, 30), 1: (30, 30, 220)}
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), 235, np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 3))):
                cls = int(rng.integers(0, 2))
                w, h = (int(v) for v in rng.integers(12, 28, size=2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y0 : y0 + h, x0 : x0 + w] = colours[cls]
                lines.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return data


def offline_config(config_dir: Path) -> None:
    import matplotlib

    config_dir.mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (config_dir / name).exists():
            shutil.copy(font, config_dir / name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--project", default="yolo")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nan-from-batch", type=int, default=None,
                        help="make every loss from this batch on NaN (tests stop on alert)")
    args = parser.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.workdir / "yolo-config"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    offline_config(Path(os.environ["YOLO_CONFIG_DIR"]))
    data = make_dataset(args.workdir / "data")

    import torch
    from ultralytics import YOLO

    import losswatch.integrations.ultralytics as lw

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    stop_on = ("non_finite",) if args.nan_from_batch is not None else ()
    hooks = lw.attach(model, project=args.project, url=args.url, stop_on=stop_on,
                      spool_dir=args.workdir / "spool", flush_interval=0.2)

    seen: dict = {"batches": [], "epochs": [], "loss_names": None}
    state = {"batch": 0}

    def poison(trainer) -> None:  # runs before losswatch's callback: NaN from the given batch on
        n = state["batch"]
        state["batch"] += 1
        if args.nan_from_batch is not None and n >= args.nan_from_batch:
            trainer.loss_items = {k: v * float("nan") for k, v in trainer.loss_items.items()}
            # give the server's answer (the alert) time to come back before this batch ends,
            # so the stop lands at a known batch
            run = hooks.run
            run.flush(timeout=10)

    def capture_batch(trainer) -> None:  # runs after losswatch's callback
        items = trainer.loss_items
        losses = {k: float(v) for k, v in items.items()} if isinstance(items, dict) else {
            n: float(v) for n, v in zip(trainer.loss_names, items, strict=True)}
        seen["batches"].append({
            "epoch": trainer.epoch, "losses": losses,
            "lrs": [g["lr"] for g in trainer.optimizer.param_groups],
            "stop": bool(trainer.stop),
        })
        seen["nb"] = len(trainer.train_loader)

    def capture_epoch(trainer) -> None:
        seen["epochs"].append({"epoch": trainer.epoch,
                               "metrics": {k: float(v) for k, v in trainer.metrics.items()}})

    # losswatch's callbacks were added first; ours run around them in this order
    model.callbacks["on_train_batch_end"].insert(0, poison)
    model.add_callback("on_train_batch_end", capture_batch)
    model.add_callback("on_fit_epoch_end", capture_epoch)

    model.train(data=str(data), epochs=args.epochs, imgsz=64, batch=4, nbs=4, device="cpu", workers=0,
                amp=False, plots=False, val=True, project=str(args.workdir / "runs"), name="train",
                exist_ok=True, verbose=False, seed=0, deterministic=True, cache=False)
    trainer = model.trainer
    seen["run_id"] = hooks.run.id
    seen["args"] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                    for k, v in vars(trainer.args).items()}
    seen["stopped"] = bool(trainer.stop)
    seen["run_stats"] = hooks.run.stats
    args.out.write_text(json.dumps(seen, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
