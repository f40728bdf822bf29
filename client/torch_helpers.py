"""Torch helpers: weighted loss components, learning rates and gradient norms, logged without syncs.

Nothing here calls ``.item()``, ``float()`` or anything else that waits for the device: every value
handed to ``run.log`` is a detached one-element tensor that stays where it was computed, and the run
copies such tensors to the host in bulk later. ``run`` may be ``None`` everywhere: the helpers then
only compute.

Keys logged by :class:`LossComponents` with ``prefix="train/loss"`` and ``weights={"box": 7.5, ...}``,
called with ``box=..., l2=...`` (``l2`` not in ``weights``)::

    train/loss               kind "loss"            the total returned for backward()
    train/loss/box           kind "loss_component"  the unweighted term as passed in
    train/loss/box_weighted  kind "loss_component"  7.5 * box, its contribution to the total
    train/loss/l2            kind "loss_component"  an extra term, added to the total as it is

so that ``train/loss == sum of every */<name>_weighted + sum of the extra terms``.

This module imports torch; ``import losswatch`` never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "LossComponents",
    "l2_penalty",
    "log_lr",
    "clip_and_log_grad_norm",
    "grad_norm",
    "log_grad_norm",
]

Parameters = Tensor | Iterable[Tensor] | torch.nn.Module


class _Run(Protocol):  # what the helpers need from losswatch.client.run.Run
    def log(
        self,
        values: Mapping[str, Any],
        step: int | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> Any: ...


def _as_tensors(parameters: Parameters) -> list[Tensor]:
    if isinstance(parameters, torch.nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, Tensor):
        return [parameters]
    return list(parameters)


class LossComponents:
    """Weighted sum of named loss terms that logs every term, its weighted contribution and the total.

    ::

        criterion = LossComponents(run, weights={"box": 7.5, "cls": 0.5, "dfl": 1.5}, prefix="train/loss")
        loss = criterion(box=box_loss, cls=cls_loss, dfl=dfl_loss, l2=l2_penalty(model, 5e-4), step=step)
        loss.backward()

    Every name in ``weights`` must be given at each call (a missing or misspelt term is an error, not a
    silent zero). Terms not in ``weights`` are *extra* terms (a regulariser that carries its own
    coefficient): they are added to the total unchanged and logged once, under their own name. Terms
    are one-element tensors (or Python numbers, e.g. ``0.0`` for a batch without objects). The total is
    summed in a fixed order: weighted terms in the order of ``weights``, then extra terms in the order
    given. Logged values are ``detach()``-ed tensors; nothing waits for the device.
    """

    def __init__(
        self,
        run: _Run | None = None,
        weights: Mapping[str, float] | None = None,
        prefix: str = "train/loss",
        *,
        log_weighted: bool = True,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must be a non-empty series key such as 'train/loss'")
        self.run = run
        self.weights: dict[str, float] = dict(weights or {})
        self.prefix = prefix
        self.log_weighted = log_weighted
        for name in self.weights:
            if not name or name.endswith("_weighted"):
                raise ValueError(f"invalid term name {name!r}: non-empty, not ending in '_weighted'")

    def key(self, name: str, *, weighted: bool = False) -> str:
        """The series key of a term, e.g. ``train/loss/box`` or ``train/loss/box_weighted``."""
        return f"{self.prefix}/{name}_weighted" if weighted else f"{self.prefix}/{name}"

    def combine(self, terms: Mapping[str, Tensor | float]) -> tuple[Tensor, dict[str, Tensor]]:
        """The total (with its graph) and the detached values by series key, without logging."""
        missing = [name for name in self.weights if name not in terms]
        if missing:
            raise KeyError(
                f"missing loss terms {missing}; expected {list(self.weights)} (plus any extra terms)"
            )
        ref = next((t for t in terms.values() if isinstance(t, Tensor)), None)
        if ref is None:
            raise TypeError("at least one loss term must be a tensor")
        values = {name: self._scalar(name, term, ref) for name, term in terms.items()}

        parts: list[Tensor] = []
        logged: dict[str, Tensor] = {}
        for name, weight in self.weights.items():
            term = values[name]
            contribution = term * weight
            parts.append(contribution)
            logged[self.key(name)] = term.detach()
            if self.log_weighted:
                logged[self.key(name, weighted=True)] = contribution.detach()
        for name, term in values.items():
            if name not in self.weights:
                parts.append(term)
                logged[self.key(name)] = term.detach()
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        logged = {self.prefix: total.detach(), **logged}
        return total, logged

    def __call__(
        self,
        terms: Mapping[str, Tensor | float] | None = None,
        /,
        *,
        step: int | None = None,
        **named: Tensor | float,
    ) -> Tensor:
        """Combine the terms (a mapping and/or keywords), log them with ``step`` and return the total."""
        all_terms = {**(terms or {}), **named}
        total, logged = self.combine(all_terms)
        if self.run is not None:
            kinds = {key: "loss_component" for key in logged}
            kinds[self.prefix] = "loss"
            self.run.log(logged, step=step, kinds=kinds)
        return total

    @staticmethod
    def _scalar(name: str, term: Tensor | float, ref: Tensor) -> Tensor:
        if isinstance(term, Tensor):
            if term.numel() != 1:
                raise ValueError(
                    f"loss term {name!r} has shape {tuple(term.shape)}; reduce it to one element first"
                )
            return term.reshape(())
        if isinstance(term, int | float):
            return torch.tensor(float(term), dtype=ref.dtype, device=ref.device)
        raise TypeError(f"loss term {name!r} must be a tensor or a number, got {type(term).__name__}")

    def __repr__(self) -> str:
        return f"LossComponents(weights={self.weights!r}, prefix={self.prefix!r})"


def l2_penalty(parameters: Parameters, weight_decay: float, *, skip_1d: bool = False) -> Tensor:
    """``weight_decay / 2 * sum ||p||^2`` over the parameters that require grad, as a 0-dim tensor.

    The factor 1/2 makes its gradient ``weight_decay * p``, exactly what an optimizer's
    ``weight_decay=`` adds for SGD, so moving the decay from the optimizer into the loss (to log it)
    changes nothing else. ``skip_1d=True`` leaves out biases and normalisation weights (tensors of at
    most one dimension), the usual convention. With no parameter left, the result is a CPU zero.
    """
    params = [p for p in _as_tensors(parameters) if p.requires_grad and (not skip_1d or p.dim() > 1)]
    if not params:
        return torch.zeros(())
    device = params[0].device
    squares = [p.pow(2).sum().to(device) for p in params]
    return torch.stack(squares).sum() * (weight_decay / 2)


def log_lr(
    run: _Run | None,
    optimizer: torch.optim.Optimizer,
    step: int | None = None,
    prefix: str = "lr",
) -> dict[str, float | Tensor]:
    """Log each param group's learning rate: ``lr`` for one group, ``lr/pg0``, ``lr/pg1``... otherwise.

    A tensor learning rate (``capturable`` optimizers, tensor schedulers) is logged detached, as is.
    Returns what was logged.
    """
    groups = optimizer.param_groups
    values: dict[str, float | Tensor] = {}
    for index, group in enumerate(groups):
        lr = group["lr"]
        key = prefix if len(groups) == 1 else f"{prefix}/pg{index}"
        values[key] = lr.detach() if isinstance(lr, Tensor) else lr
    if run is not None and values:
        run.log(values, step=step, kinds=dict.fromkeys(values, "lr"))
    return values


def clip_and_log_grad_norm(
    run: _Run | None,
    parameters: Parameters,
    max_norm: float,
    step: int | None = None,
    key: str = "grad_norm",
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also logs the total norm it returns (before clipping).

    No extra computation and no sync: the norm clip_grad_norm_ computed anyway is logged detached.
    (``error_if_nonfinite=True`` makes torch itself check the norm on the host, which does sync.)
    """
    total = torch.nn.utils.clip_grad_norm_(
        _as_tensors(parameters),
        max_norm,
        norm_type=norm_type,
        error_if_nonfinite=error_if_nonfinite,
        foreach=foreach,
    )
    if run is not None:
        run.log({key: total.detach()}, step=step, kinds={key: "grad_norm"})
    return total


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.no_grad()
def grad_norm(parameters: Parameters, norm_type: float = 2.0) -> Tensor:
    """The global norm of the gradients (as ``clip_grad_norm_`` computes it), on device, without clipping.

    Parameters without ``.grad`` are skipped; with none, the result is a CPU zero. Per-tensor norms
    come from ``torch._foreach_norm`` (one fused launch per device and dtype); half-precision norms
    are combined in float32. Equal to what ``clip_grad_norm_`` returns for float32/float64 grads.
    """
    grads = [p.grad for p in _as_tensors(parameters) if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm_type = float(norm_type)
    device = grads[0].device
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms: list[Tensor] = []
    for group in groups.values():
        norms.extend(torch._foreach_norm(group, norm_type))
    # half-precision norms are summed in float32 so that many of them cannot overflow
    stacked = torch.stack([n.to(device=device, dtype=_sum_dtype(n.dtype)) for n in norms])
    return torch.linalg.vector_norm(stacked, norm_type)


def log_grad_norm(
    run: _Run | None,
    parameters: Parameters,
    step: int | None = None,
    key: str = "grad_norm",
    norm_type: float = 2.0,
) -> Tensor:
    """Compute :func:`grad_norm` and log it (kind ``grad_norm``) without clipping; returns the norm."""
    total = grad_norm(parameters, norm_type)
    if run is not None:
        run.log({key: total}, step=step, kinds={key: "grad_norm"})
    return total
