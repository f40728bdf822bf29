"""Read the labelled corpus written by ``bench/corpus/train.py`` (no torch needed).

    from corpus.load import load_corpus          # bench/ on sys.path, as bench/run.py puts it
    runs = load_corpus()                         # list[CorpusRun], in a realistic per-project order

A run's series are in the order the training script logged them (a resumed run logs some steps
twice); ``pos`` gives every point its place in the script's log order (the training iteration), so a
replay can cut ingest batches as the client would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
HELDOUT = HERE / "heldout.txt"


@dataclass
class CorpusRun:
    id: str
    project: str
    meta: dict[str, Any]
    series: dict[str, tuple[str, np.ndarray, np.ndarray]]  # key -> (kind, steps, values) in log order
    pos: dict[str, np.ndarray] = field(default_factory=dict)  # key -> log position of each point
    heldout: bool = False

    @property
    def label(self) -> dict[str, Any] | None:
        return self.meta.get("label")

    @property
    def split(self) -> str:
        return "held-out" if self.heldout else "tuning"

    def key(self, name: str) -> str:
        """The run's own key for a canonical one: framework runs (bench/corpus/frameworks.py) keep the
        names their framework logs (``loss`` / ``eval_loss`` from the Hugging Face Trainer)."""
        keys = self.meta.get("keys") or {}
        return {"train/loss": keys.get("train", name), "val/loss": keys.get("val_loss", name)}.get(name, name)

    @property
    def length(self) -> int:
        """Training iterations logged (a resume counts its re-logged steps again)."""
        return int(self.series[self.key("train/loss")][1].shape[0])

    @property
    def metric(self) -> str:
        return str(self.meta["metric"])

    def labels(self) -> list[dict[str, Any]]:
        """The cause label, plus a ``non_finite`` label on each training series that carries NaN/±Inf
        (a fact of the data: the first such step)."""
        out = []
        if self.label:
            key = {"overfitting": self.key("val/loss"), "misalignment": self.metric}.get(self.label["type"],
                                                                                      self.key("train/loss"))
            out.append({**self.label, "key": key})
        for key, step in self.meta.get("first_non_finite", {}).items():
            out.append({"type": "non_finite", "step": step, "key": key, "cause": "fact", "visible": True})
        return out


def heldout_ids() -> set[str]:
    return {ln.strip() for ln in HELDOUT.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def _positions(train_steps: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The log position of each point of a series: the k-th time step s is logged lines up with the
    k-th time the training loss logged step s."""
    where: dict[int, list[int]] = {}
    for i, s in enumerate(train_steps.tolist()):
        where.setdefault(s, []).append(i)
    seen: dict[int, int] = {}
    out = np.empty(steps.shape[0], dtype=np.int64)
    for j, s in enumerate(steps.tolist()):
        k = seen.get(s, 0)
        seen[s] = k + 1
        lst = where.get(s)
        out[j] = lst[min(k, len(lst) - 1)] if lst else (out[j - 1] if j else 0)
    return out


def load_corpus(projects: list[str] | None = None) -> list[CorpusRun]:
    manifest = json.loads((DATA / "manifest.json").read_text())
    for extra in sorted(DATA.glob("*.json")):  # the framework projects' runs (bench/corpus/frameworks.py)
        if extra.name != "manifest.json":
            manifest["runs"].update(json.loads(extra.read_text())["runs"])
    held = heldout_ids()
    runs: dict[str, CorpusRun] = {}
    for path in sorted(DATA.glob("*.npz")):
        if projects and path.stem not in projects:
            continue
        with np.load(path) as z:
            for name in z.files:
                rid, key, kind, part = name.split("|")
                if rid not in manifest["runs"]:
                    continue
                run = runs.get(rid)
                if run is None:
                    meta = manifest["runs"][rid]
                    run = runs[rid] = CorpusRun(rid, meta["project"], meta, {}, heldout=rid in held)
                kd, st, v = run.series.get(key, (kind, None, None))
                if part == "s":
                    st = np.cumsum(z[name].astype(np.int64))
                else:
                    v = z[name].astype(np.float64)
                run.series[key] = (kd, st, v)
    for run in runs.values():
        train_key = run.key("train/loss")
        train_steps = run.series[train_key][1]
        for key, (_, st, _) in run.series.items():
            every_step = key in (train_key, "grad_norm")
            run.pos[key] = np.arange(st.shape[0]) if every_step else _positions(train_steps, st)
    return [runs[k] for k in sorted(runs)]
