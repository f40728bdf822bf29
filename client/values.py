"""Turning logged values into floats, in the sender thread.

``run.log()`` keeps values as they came (a tensor is only detached) and this module converts them
when a batch is cut, away from the training thread:

- Python ``float`` and ``int`` (and ``bool``), numpy scalars and one-element arrays, anything with
  ``__float__``;
- torch tensors of one element, on any device. They are brought to the host in bulk: the pending
  tensors of one (device, dtype) are concatenated on their device and copied at once, with
  ``.tolist()`` for CPU tensors and, for CUDA, one ``non_blocking`` copy into pinned host memory
  followed by a wait on that copy's event only (in the sender thread, never on the training thread).

torch is never imported here unless a tensor was logged, which means the caller imported it.
A value that cannot be converted becomes ``None`` and the caller drops that point.
"""

from __future__ import annotations

import sys
from typing import Any


def _scalar(value: Any) -> float | None:
    if isinstance(value, (str, bytes)):
        return None
    try:
        item = getattr(value, "item", None)
        if item is not None and getattr(value, "size", 1) == 1:  # numpy scalar or one-element array
            value = item()
            if isinstance(value, (str, bytes)):
                return None
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def materialize(columns: list[list[Any]]) -> None:
    """Replace, in place, every value of every column by a float, or by ``None`` if it is not one."""
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None) if torch is not None else None
    found: list[tuple[list[Any], int, Any]] = []
    for values in columns:
        for i, v in enumerate(values):
            t = type(v)
            if t is float:
                continue
            if t is int:
                try:
                    values[i] = float(v)
                except OverflowError:
                    values[i] = None
            elif tensor_type is not None and isinstance(v, tensor_type):
                found.append((values, i, v))
            else:
                values[i] = _scalar(v)
    if found:
        fetched = fetch_tensors([t for _, _, t in found])
        for (values, i, _), f in zip(found, fetched, strict=True):
            values[i] = f


def fetch_tensors(tensors: list[Any]) -> list[float | None]:
    """The values of one-element tensors, fetched in bulk per (device, dtype); ``None`` for the others."""
    import torch  # only reached when the caller logged tensors, so torch is already loaded

    out: list[float | None] = [None] * len(tensors)
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, t in enumerate(tensors):
        try:
            if t.numel() == 1 and not t.is_complex():
                groups.setdefault((t.device, t.dtype), []).append(i)
        except Exception:  # noqa: BLE001 - an exotic tensor subclass: leave it None
            continue
    for (device, _dtype), idx in groups.items():
        try:
            flat = torch.cat([tensors[i].reshape(1) for i in idx])
            if device.type == "cpu":
                host_values = flat.tolist()
            elif device.type == "cuda":
                host_values = _cuda_to_host(torch, flat)
            else:  # mps, xla, ...: one blocking copy, still in the sender thread
                host_values = flat.to("cpu").tolist()
        except Exception:  # noqa: BLE001 - fall back to one copy per tensor
            host_values = []
            for i in idx:
                try:
                    host_values.append(tensors[i].reshape(()).to("cpu").item())
                except Exception:  # noqa: BLE001
                    host_values.append(None)
        for i, v in zip(idx, host_values, strict=True):
            out[i] = None if v is None else float(v)
    return out


def _cuda_to_host(torch: Any, flat: Any) -> list[Any]:
    """One non-blocking device-to-host copy into pinned memory, then wait for that copy only."""
    with torch.cuda.device(flat.device):
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        done = torch.cuda.Event()
        done.record()  # on this (sender) thread's current stream, right after the copy
        done.synchronize()
    return host.tolist()
