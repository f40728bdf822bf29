"""Framework curves for the labelled corpus: real PyTorch Lightning trainings logged by losswatch's own
Lightning integration into a real ``losswatch serve``, read back with :class:`losswatch.Api`.

    .venv/bin/python bench/corpus/frameworks.py      # writes data/lightning-blobs.npz and .json (its runs)

What the hand-written loops of ``train.py`` cannot show: the keys, kinds, steps and cadence a framework
produces — ``train_loss`` and a ``train_ce`` / ``train_l2`` component every batch (``LosswatchCallback``),
``grad_norm`` before clipping, ``lr`` per param group, ``val_loss`` / ``val_acc`` from Lightning's
validation loop at ``val_check_interval``, and Lightning's own logger interval landing on the same points.

Labels work as in ``train.py``: a cause is injected at a known step ``t`` from inside the training (the
LR ×k for a few steps or for good, gradient clipping off, one corrupted batch, the LR dropped to ~0,
every layer frozen, batches from a tiny subset, a label permutation, Inf/NaN written into the weights)
and the label is (type, ``t``), written at generation. These runs were added after the detectors were
tuned, so every one of them is held out (``heldout.txt`` lists them; nothing was tuned on them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from corpus.train import DATA, HELDOUT, TASKS, schedule  # noqa: E402
from corpus.train import _facts as train_facts  # noqa: E402

RUNS = 24
#: project -> the keys its framework gives the training loss, the validation loss and the metric
PROJECTS = {
    "lightning-blobs": {"train": "train/loss", "val_loss": "val_loss", "metric": "val_acc"},  # callback, module
    "hf-blobs": {"train": "loss", "val_loss": "eval_loss", "metric": "eval_accuracy"},  # the Trainer's names
}
#: the causes a Lightning run can carry (fp16 skipping needs a grad scaler: left to train.py's loops)
LIGHTNING_CAUSES = ("lr_burst", "corrupt_batch", "lr_forever", "explode", "lr_to_zero", "freeze",
                    "overfit_subset", "label_permutation", "fp16_nan")


def plan(project: str) -> list[dict[str, Any]]:
    rnd = random.Random(f"{project}-1")
    causes: list[str | None] = list(LIGHTNING_CAUSES) + ["lr_burst", "lr_forever", "lr_to_zero",
                                                          "label_permutation", "overfit_subset"]
    causes += [None] * (RUNS - len(causes))
    rnd.shuffle(causes)
    specs = []
    for i, cause in enumerate(causes):
        n = int(math.exp(rnd.uniform(math.log(300), math.log(2500))))
        opt = rnd.choice(("sgd", "adam", "adamw"))
        sched = rnd.choice(("const", "cosine", "step"))
        warm = int(n * rnd.uniform(0.03, 0.1)) if sched == "cosine" else 0
        every = min(rnd.choice((25, 50, 100)), max(10, n // 12))
        spec: dict[str, Any] = {
            "id": f"{project}-{i:03d}", "project": project, "task": "blobs", "seed": rnd.randrange(1 << 30),
            "steps": n, "eval_every": every, "optimizer": opt, "schedule": sched, "warmup": warm,
            "lr": {"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3}[opt] * rnd.choice((0.5, 1.0, 2.0)),
            "batch": 32, "val_size": rnd.choice((64, 256, 2048)), "clip": rnd.choice((1.0, None)),
        }
        if cause is not None:
            spec["cause"] = cause
            first = max(warm + n // 20, n // 10)
            spec["t"] = int(rnd.uniform(first, n * 0.7))
            if cause in ("lr_to_zero", "freeze"):
                spec["t"] = int(rnd.uniform(max(warm, n * 0.04), n * 0.2))
            if cause == "lr_burst":
                spec["k"], spec["dur"] = rnd.choice((30.0, 100.0, 300.0)), rnd.randint(1, 20)
            elif cause == "lr_forever":
                spec["k"] = rnd.choice((20.0, 50.0, 200.0))
            elif cause == "explode":
                spec["k"] = rnd.choice((100.0, 1000.0))
            elif cause == "overfit_subset":
                spec["subset"], spec["val_size"] = rnd.choice((16, 32, 64)), max(spec["val_size"], 256)
        specs.append(spec)
    return specs


class Injection:
    """The run's task and its injected cause, as both frameworks apply it: the LR at each step, what
    happens to a training batch, and what happens to the weights at the cause's step."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        torch.manual_seed(spec["seed"])
        self.spec = spec
        self.task = TASKS[spec["task"]](spec["task"], spec["seed"], spec["val_size"])
        self.lrs, _, _ = schedule(spec["schedule"], spec["steps"], spec["lr"], spec["warmup"])
        self.cause, self.t, self.k = spec.get("cause"), spec.get("t", -1), spec.get("k", 1.0)
        self.subset = self.task.sample(spec.get("subset", 32)) if self.cause == "overfit_subset" else None
        self.perm = torch.roll(torch.arange(self.task.classes), 1)

    def lr(self, s: int) -> float:
        lr = self.lrs[min(s, len(self.lrs) - 1)]
        if self.cause in ("lr_burst", "lr_forever", "explode") and s >= self.t and (
                self.cause != "lr_burst" or s < self.t + self.spec["dur"]):
            lr *= self.k
        if self.cause == "lr_to_zero" and s >= self.t:
            lr *= 1e-4
        return lr

    def batch(self, x: Any, y: Any, s: int) -> tuple[Any, Any]:
        if self.subset is not None and s >= self.t:
            idx = self.torch.randint(0, self.subset[0].shape[0], (x.shape[0],))
            x, y = self.subset[0][idx], self.subset[1][idx]
        if self.cause == "label_permutation" and s >= self.t:
            y = self.perm[y]
        if self.cause == "corrupt_batch" and s == self.t:
            x = x * 100.0
        return x, y

    def weights(self, params: Any, s: int) -> None:
        if self.cause == "freeze" and s == self.t:
            for p in params:
                p.requires_grad_(False)
        if self.cause == "fp16_nan" and s == self.t:
            with self.torch.no_grad():
                for p in params:
                    p.add_(math.inf).sub_(math.inf)


def _module(spec: dict[str, Any]) -> Any:
    import lightning as L
    import torch

    inj = Injection(spec)
    task = inj.task

    class Batches(torch.utils.data.IterableDataset):  # type: ignore[misc]
        """Training batches drawn from the task forever (``max_steps`` ends the fit)."""

        def __iter__(self):  # type: ignore[no-untyped-def]
            while True:
                yield task.sample(spec["batch"])

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = task.model()
            self.save_hyperparameters({k2: v for k2, v in spec.items() if k2 not in ("label",)})

        def configure_optimizers(self) -> Any:
            params = self.net.parameters()
            if spec["optimizer"] == "sgd":
                return torch.optim.SGD(params, lr=spec["lr"], momentum=0.9)
            cls = torch.optim.Adam if spec["optimizer"] == "adam" else torch.optim.AdamW
            return cls(params, lr=spec["lr"])

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            for group in self.optimizers().param_groups:
                group["lr"] = inj.lr(self.global_step)
            inj.weights(list(self.net.parameters()), self.global_step)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = inj.batch(*batch, self.global_step)
            ce = torch.nn.functional.cross_entropy(self.net(x), y)
            l2 = 1e-4 * sum((p.float() ** 2).sum() for p in self.net.parameters())
            loss = ce + l2
            self.log("train_ce", ce, on_step=True)
            self.log("train_l2", l2, on_step=True)
            if not loss.requires_grad:  # every layer frozen: nothing to train, the loss is still logged
                loss = loss + 0.0 * torch.zeros((), requires_grad=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            out = self.net(x)
            self.log("val_loss", torch.nn.functional.cross_entropy(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(Batches(), batch_size=None)

        def val_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(list(zip(task.xv.split(512), task.yv.split(512), strict=True)),
                                               batch_size=None)

    return Module()


def train_lightning(spec: dict[str, Any], url: str) -> str:
    import lightning as L
    import torch

    from losswatch.integrations.lightning import LosswatchCallback, LosswatchLogger

    torch.set_num_threads(1)
    logger = LosswatchLogger(project=spec["project"], name=spec["id"], url=url, flush_interval=0.5)
    trainer = L.Trainer(max_steps=spec["steps"], val_check_interval=spec["eval_every"], check_val_every_n_epoch=None,
                        logger=logger, callbacks=[LosswatchCallback()], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        gradient_clip_val=None if spec["clip"] is None or spec.get("cause") == "explode"
                        else spec["clip"], accelerator="cpu", devices=1, limit_val_batches=None)
    trainer.fit(_module(spec))
    return str(logger.version)


def train_hf(spec: dict[str, Any], url: str, out_dir: str) -> str:
    """One Hugging Face ``Trainer`` run logged by ``losswatch.integrations.huggingface.LosswatchCallback``
    as its docs say (``logging_steps=1``, ``logging_nan_inf_filter=False``). The injected LR goes through
    the Trainer's own scheduler (so the logged ``learning_rate`` shows it, as a mis-set schedule would);
    batch-level causes are applied in the model's forward at the Trainer's step."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from losswatch.integrations.huggingface import LosswatchCallback

    torch.set_num_threads(1)
    inj = Injection(spec)
    task = inj.task

    def lr_factor(s: int) -> float:
        return inj.lr(s) / spec["lr"]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = task.model()
            self.step = 0

        def forward(self, x: Any, labels: Any = None) -> Any:
            if self.training:
                x, labels = inj.batch(x, labels, self.step)
            out = self.net(x)
            loss = torch.nn.functional.cross_entropy(out, labels)
            if self.training and not loss.requires_grad:  # every layer frozen: the loss is still reported
                loss = loss + 0.0 * torch.zeros((), requires_grad=True)
            return {"loss": loss, "logits": out}

    class Examples(torch.utils.data.IterableDataset):  # type: ignore[misc]
        def __iter__(self):  # type: ignore[no-untyped-def]
            while True:
                x, y = task.sample(spec["batch"])
                for i in range(x.shape[0]):
                    yield {"x": x[i], "labels": y[i]}

    val = [{"x": x, "labels": y} for x, y in zip(task.xv, task.yv, strict=True)]
    model = Net()

    class Inject(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            model.step = state.global_step
            inj.weights(list(model.parameters()), state.global_step)

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.asarray(pred.predictions).argmax(1) == np.asarray(pred.label_ids)).mean())}

    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec["optimizer"]]
    extra = {"momentum": 0.9} if spec["optimizer"] == "sgd" else {}
    opt = opt_cls(model.parameters(), lr=spec["lr"], **extra)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    # No clipping in the spec (or the gradient-explosion cause): a bound no norm reaches, so the Trainer
    # still reports the norm (it reports it only when it clips).
    clip = 1e12 if spec["clip"] is None or inj.cause == "explode" else spec["clip"]
    args = TrainingArguments(out_dir, max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
                             per_device_eval_batch_size=512, logging_steps=1, logging_nan_inf_filter=False,
                             eval_strategy="steps", eval_steps=spec["eval_every"], save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, max_grad_norm=clip,
                             remove_unused_columns=False, dataloader_num_workers=0, seed=spec["seed"])
    cb = LosswatchCallback(project=spec["project"], name=spec["id"], url=url, flush_interval=0.5)
    trainer = Trainer(model=model, args=args, train_dataset=Examples(), eval_dataset=val,
                      compute_metrics=accuracy, optimizers=(opt, sched), callbacks=[Inject(), cb])
    trainer.train()
    return str(cb.run.id)


def _series(url: str, run_id: str) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    import losswatch

    run = losswatch.Api(url).run(run_id)
    hist = run.history()
    kinds = {k: s["kind"] for k, s in run.summary.items()}
    return {k: (kinds[k], np.asarray(hist[k]["step"], dtype=np.int64), np.asarray(hist[k]["value"], dtype=np.float64))
            for k in run.keys}


def _facts(spec: dict[str, Any], series: dict[str, Any]) -> dict[str, Any]:
    """``train.py``'s facts and label, computed on the framework's series under the canonical names,
    then with the framework's own keys recorded (``keys``, and ``first_non_finite`` under its key)."""
    keys = PROJECTS[spec["project"]]
    canon = {"train/loss": series[keys["train"]], "grad_norm": series["grad_norm"],
             "val/loss": series[keys["val_loss"]], keys["metric"]: series[keys["metric"]]}
    drops = [int(spec["steps"] * 0.5), int(spec["steps"] * 0.8)] if spec["schedule"] == "step" else []
    run = train_facts(spec, {"series": canon, "warmup_end": spec["warmup"], "lr_drops": drops,
                             "metric": keys["metric"]})
    run["first_non_finite"] = {keys["train"] if k == "train/loss" else k: s
                               for k, s in run["first_non_finite"].items()}
    run["keys"] = keys
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    import lightning
    import transformers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=list(PROJECTS), help="projects to (re)generate")
    ap.add_argument("--limit", type=int, default=None, help="the first N runs of each (a smoke test)")
    a = ap.parse_args()
    versions = {"lightning-blobs": f"lightning {lightning.__version__}",
                "hf-blobs": f"transformers {transformers.__version__}"}
    warnings.filterwarnings("ignore")
    os.environ.setdefault("LOSSWATCH_SYSTEM_METRICS", "0")
    bin_dir = Path(sys.executable).parent
    for project in a.only:
        with tempfile.TemporaryDirectory() as tmp:
            port = _free_port()
            server = subprocess.Popen([str(bin_dir / "losswatch"), "serve", "--host", "127.0.0.1", "--port",
                                       str(port), "--db", f"sqlite:///{tmp}/corpus.db"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(200):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                runs: dict[str, Any] = {}
                arrays: dict[str, np.ndarray] = {}
                t0 = time.perf_counter()
                for spec in plan(project)[: a.limit]:
                    if project == "hf-blobs":
                        run_id = train_hf(spec, url, f"{tmp}/out")
                    else:
                        run_id = train_lightning(spec, url)
                    series = _series(url, run_id)
                    facts = _facts(spec, series)
                    facts["framework"] = versions[project]
                    runs[spec["id"]] = facts
                    for key, (kind, st, v) in series.items():
                        base = f"{spec['id']}|{key}|{kind}"
                        arrays[base + "|s"] = np.diff(st, prepend=0).astype(np.int32)
                        arrays[base + "|v"] = v.astype(np.float32)
                    print(f"{spec['id']}: {spec.get('cause') or 'healthy'}, {spec['steps']} steps, "
                          f"{len(series)} series", file=sys.stderr)
            finally:
                server.terminate()
                server.wait(10)
        np.savez_compressed(DATA / f"{project}.npz", **arrays)
        (DATA / f"{project}.json").write_text(json.dumps({"runs": runs}, indent=1, sort_keys=True) + "\n")
        held = HELDOUT.read_text()
        new = [s["id"] for s in plan(project) if s["id"] not in held]
        if new and a.limit is None:
            HELDOUT.write_text(held + f"# {project}: framework curves (bench/corpus/frameworks.py), added after "
                               "the detectors were tuned: all held out\n" + "\n".join(new) + "\n")
        print(f"{project}: {len(runs)} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
