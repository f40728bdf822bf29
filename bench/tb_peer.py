"""TensorBoard as a peer for the client overhead (issue 3): ``SummaryWriter.add_scalar`` per call.

The training-thread cost of torch's ``torch.utils.tensorboard.SummaryWriter.add_scalar`` with 3
scalars per step (Python floats, then 0-dim CPU tensors), and the writer's ``close()`` at the end.

Our virtualenv has no ``tensorboard``; when it is missing here the measurement runs in
``bench/.venv-tb`` (created once and reused, git-ignored: ``pip install torch==2.13.0`` first, so the
CPU build pinned on this machine is used, then ``pip install tensorboard``) through a subprocess
that runs this file. Its top level therefore imports only the standard library.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-tb"
TORCH_PIN = "torch==2.13.0"
KEYS = ("train/loss", "train/loss/box", "lr")


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _summary(prefix: str, samples_s: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_median_us": statistics.median(samples_s) * 1e6,
        f"{prefix}_p99_us": _pct(samples_s, 0.99) * 1e6,
        f"{prefix}_mean_us": statistics.fmean(samples_s) * 1e6,
    }


def _measure_here(steps: int, logdir: str, seconds: float) -> dict[str, Any]:
    """Time add_scalar in this interpreter (needs torch and tensorboard importable)."""
    import tensorboard
    import torch
    from torch.utils.tensorboard import SummaryWriter

    out: dict[str, Any] = {"tensorboard_version": tensorboard.__version__, "torch_version": torch.__version__}
    clock = time.perf_counter
    deadline = clock() + seconds
    for kind in ("floats", "tensors"):
        writer = SummaryWriter(log_dir=os.path.join(logdir, kind))
        calls: list[float] = []
        per_step: list[float] = []
        for step in range(steps):
            v = 1.0 / (1.0 + step * 1e-4)
            values: list[Any] = [v, v * 0.5, 1e-3]
            if kind == "tensors":
                values = [torch.tensor(x) for x in values]
            s0 = clock()
            for key, value in zip(KEYS, values, strict=True):
                t0 = clock()
                writer.add_scalar(key, value, step)
                calls.append(clock() - t0)
            per_step.append(clock() - s0)
            if clock() > deadline:
                break
        t0 = clock()
        writer.close()
        close_s = clock() - t0
        name = "add_scalar" if kind == "floats" else "add_scalar_tensor"
        out.update(_summary(name, calls))
        out.update(_summary("step_3_scalars" if kind == "floats" else "step_3_tensors", per_step))
        out[f"{name}_steps"] = len(per_step)
        out[f"{name}_close_s"] = close_s
    return out


def ensure_venv(log_path: Path, timeout_s: float = 1800.0) -> tuple[bool, str]:
    py = VENV / "bin" / "python"
    check = [str(py), "-c", "import tensorboard, torch, sys; sys.stdout.write(tensorboard.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return True, "reused"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        for cmd in (
            ["python3" if shutil.which("python3") else sys.executable, "-m", "venv", str(VENV)],
            [str(py), "-m", "pip", "install", "-q", TORCH_PIN],  # first: the pinned CPU build
            [str(py), "-m", "pip", "install", "-q", "tensorboard"],
        ):
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                return False, f"`{' '.join(cmd[-2:])}` did not finish within {timeout_s:.0f} s"
            if rc != 0:
                return False, f"`{' '.join(cmd[-2:])}` failed (exit {rc}): {log_path.read_text()[-600:]}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return False, "tensorboard does not import after the install"
    return True, "created"


def measure(max_seconds: float = 120.0, work_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    """TensorBoard add_scalar figures: 3 scalars per step, 10,000 steps (1,000 with quick)."""
    steps = 1_000 if quick else 10_000
    work = Path(work_dir) if work_dir else HERE / "work" / "tensorboard"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "title": "TensorBoard SummaryWriter.add_scalar (peer)",
        "notes": [
            f"3 scalars per step ({', '.join(KEYS)}), {steps:,} steps, timed on the calling thread with "
            "perf_counter around each call; first as Python floats, then as 0-dim CPU tensors.",
        ],
    }
    with tempfile.TemporaryDirectory(dir=work) as logdir:
        try:
            import tensorboard  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            result["where"] = "our virtualenv"
            result.update(_measure_here(steps, logdir, max_seconds))
            return result
        t0 = time.perf_counter()
        ok, info = ensure_venv(work / "install.log")
        result["venv_setup_s"] = round(time.perf_counter() - t0, 1)
        if not ok:
            result["error"] = f"tensorboard could not be installed into {VENV}: {info}"
            return result
        result["where"] = "bench/.venv-tb (subprocess)"
        cmd = [str(VENV / "bin" / "python"), str(Path(__file__).resolve()), str(steps), logdir, str(max_seconds)]
        env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max_seconds + 60, env=env)
        except subprocess.TimeoutExpired:
            result["error"] = f"did not finish within {max_seconds + 60:.0f} s"
            return result
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            result["error"] = f"exit {proc.returncode}: {proc.stderr[-800:]}"
            return result
        result.update(json.loads(lines[-1]))
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_measure_here(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))) + "\n")
