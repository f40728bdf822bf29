"""Loss functions the field uses that torch lacks: focal, IoU-family box losses, soft Dice.

Every function is vectorised, differentiable and free of host-device synchronisation (no ``.item()``,
no boolean-mask indexing, no data-dependent Python branches), so it can run every step on a GPU
without stalling it. ``reduction`` is one of ``"none"``, ``"mean"`` or ``"sum"``; ``"mean"`` of an
empty input is ``0`` (still connected to the graph), not NaN.

- :func:`sigmoid_focal_loss` -- Lin et al. 2017, "Focal Loss for Dense Object Detection".
- :func:`iou_loss`, :func:`giou_loss`, :func:`diou_loss`, :func:`ciou_loss` on ``xyxy`` boxes --
  Rezatofighi et al. 2019 (GIoU), Zheng et al. 2020 (DIoU, CIoU). Boxes of shape ``(..., 4)`` are
  compared element by element (broadcasting); :func:`box_iou` gives the pairwise ``(N, M)`` matrix.
- :func:`dice_loss` -- soft Dice (Milletari et al. 2016), binary (sigmoid) or multi-class (softmax).

Results agree with torchvision's ``sigmoid_focal_loss`` and ``*_box_iou_loss`` up to ``eps``.
This module imports torch; ``import losswatch`` never imports it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_focal_loss",
    "box_iou",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "dice_loss",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # numel() is shape metadata: no device synchronisation.
    return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0


# --------------------------------------------------------------------------------------------
# Focal loss


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid focal loss: ``-alpha_t * (1 - p_t) ** gamma * log(p_t)`` per element.

    ``logits`` are raw scores of any shape; ``targets`` has the same shape and holds 0/1 labels
    (soft labels in ``[0, 1]`` work too). ``alpha`` weighs positives by ``alpha`` and negatives by
    ``1 - alpha``; ``None`` or a negative value disables the weighting. ``gamma=0`` without alpha is
    ``F.binary_cross_entropy_with_logits``. Stable for large ``|logits|``: ``log(p_t)`` comes from
    ``binary_cross_entropy_with_logits`` and ``1 - p_t`` from ``sigmoid(-logits)`` directly.
    """
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    targets = targets.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        p = torch.sigmoid(logits)
        q = torch.sigmoid(-logits)  # 1 - p without cancellation
        one_minus_p_t = targets * q + (1 - targets) * p
        loss = loss * one_minus_p_t.pow(gamma)
    if alpha is not None and alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


# --------------------------------------------------------------------------------------------
# Box losses (xyxy)


def _check_boxes(boxes1: Tensor, boxes2: Tensor) -> None:
    if boxes1.shape[-1:] != (4,) or boxes2.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must have shape (..., 4) in xyxy format, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of paired (broadcast) xyxy boxes."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    inter_w = (torch.minimum(x2, x2g) - torch.maximum(x1, x1g)).clamp(min=0)
    inter_h = (torch.minimum(y2, y2g) - torch.maximum(y1, y1g)).clamp(min=0)
    inter = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def _iou_and_enclosure(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """IoU, union, and the enclosing box's width and height."""
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    enc_w = torch.maximum(x2, x2g) - torch.minimum(x1, x1g)
    enc_h = torch.maximum(y2, y2g) - torch.minimum(y1, y1g)
    return iou, union, enc_w, enc_h


def _diou_terms(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """IoU and the DIoU penalty ``rho^2 / c^2`` (centre distance over enclosing diagonal, squared)."""
    iou, _, enc_w, enc_h = _iou_and_enclosure(boxes1, boxes2, eps)
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    diag2 = enc_w.pow(2) + enc_h.pow(2) + eps
    # (centre difference * 2)^2 / 4
    rho2 = ((x1 + x2 - x1g - x2g).pow(2) + (y1 + y2 - y1g - y2g).pow(2)) / 4
    return iou, rho2 / diag2


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise IoU of ``boxes1`` ``(..., N, 4)`` and ``boxes2`` ``(..., M, 4)``: shape ``(..., N, M)``."""
    _check_boxes(boxes1, boxes2)
    inter, union = _inter_union(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3))
    return inter / (union + eps)


def iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "mean", eps: float = 1e-7) -> Tensor:
    """``1 - IoU`` of paired xyxy boxes (``boxes1`` predicted, ``boxes2`` target; shapes broadcast).

    In ``[0, 1]``: 0 for identical boxes (up to ``eps``), 1 for disjoint boxes whatever their distance.
    """
    _check_reduction(reduction)
    _check_boxes(boxes1, boxes2)
    inter, union = _inter_union(boxes1, boxes2)
    return _reduce(1 - inter / (union + eps), reduction)


def giou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "mean", eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` where ``GIoU = IoU - (C - U) / C`` and ``C`` is the smallest enclosing box's area.

    In ``[0, 2)``: 0 for identical boxes, above 1 for disjoint boxes, growing toward 2 as they move apart.
    """
    _check_reduction(reduction)
    _check_boxes(boxes1, boxes2)
    iou, union, enc_w, enc_h = _iou_and_enclosure(boxes1, boxes2, eps)
    enc_area = enc_w * enc_h
    giou = iou - (enc_area - union) / (enc_area + eps)
    return _reduce(1 - giou, reduction)


def diou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "mean", eps: float = 1e-7) -> Tensor:
    """``1 - IoU + rho^2 / c^2``: ``rho`` the distance of the centres, ``c`` the enclosing box's diagonal.

    In ``[0, 2)``: 0 for identical boxes, above 1 for disjoint boxes.
    """
    _check_reduction(reduction)
    _check_boxes(boxes1, boxes2)
    iou, penalty = _diou_terms(boxes1, boxes2, eps)
    return _reduce(1 - iou + penalty, reduction)


def ciou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "mean", eps: float = 1e-7) -> Tensor:
    """DIoU loss plus ``alpha * v``, the aspect-ratio term of Zheng et al. 2020.

    ``v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 / h1))^2`` and ``alpha = v / (1 - IoU + v)``;
    ``alpha`` is a trade-off weight computed without gradient, as in the paper and torchvision.
    """
    _check_reduction(reduction)
    _check_boxes(boxes1, boxes2)
    iou, penalty = _diou_terms(boxes1, boxes2, eps)
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    w1, h1 = x2 - x1, y2 - y1
    w2, h2 = x2g - x1g, y2g - y1g
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
    with torch.no_grad():
        # v == 0 (same aspect ratio) needs no weight; the guard keeps eps=0 on identical boxes finite
        alpha = torch.where(v > 0, v / (1 - iou + v + eps), torch.zeros_like(v))
    return _reduce(1 - iou + penalty + alpha * v, reduction)


# --------------------------------------------------------------------------------------------
# Dice


def dice_loss(
    inputs: Tensor,
    targets: Tensor,
    smooth: float = 1.0,
    multiclass: bool = False,
    from_logits: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Soft Dice loss ``1 - (2 * |P.T| + smooth) / (|P| + |T| + smooth)``, per sample (and class).

    Binary (``multiclass=False``): ``inputs`` of shape ``(N, ...)`` are logits (``sigmoid`` is applied)
    or probabilities (``from_logits=False``); ``targets`` has the same shape with values in ``[0, 1]``.
    The sums run over every dimension but the first; ``"none"`` gives shape ``(N,)``.

    Multi-class (``multiclass=True``): ``inputs`` of shape ``(N, C, ...)`` are logits (``softmax`` over
    dim 1) or probabilities; ``targets`` are class indices of shape ``(N, ...)`` or one-hot / soft labels
    of shape ``(N, C, ...)``. The sums run over the spatial dimensions; ``"none"`` gives ``(N, C)``.
    A class absent from both prediction and target scores ``smooth / smooth = 1`` (loss 0).
    """
    _check_reduction(reduction)
    if inputs.dim() < 1:
        raise ValueError("dice_loss needs a batch dimension: inputs of shape (N, ...)")
    if multiclass:
        if inputs.dim() < 2:
            raise ValueError("multi-class dice_loss needs inputs of shape (N, C, ...)")
        probs = inputs.softmax(dim=1) if from_logits else inputs
        if targets.dim() == inputs.dim() - 1 and not targets.is_floating_point():
            # class indices -> one-hot along dim 1 (scatter: no device synchronisation)
            onehot = torch.zeros_like(probs)
            targets = onehot.scatter_(1, targets.unsqueeze(1).long(), 1.0)
        elif targets.shape != inputs.shape:
            raise ValueError(
                "targets must be class indices of shape (N, ...) or one-hot of shape (N, C, ...); "
                f"got {tuple(targets.shape)} for inputs {tuple(inputs.shape)}"
            )
        dims = tuple(range(2, inputs.dim()))
    else:
        if targets.shape != inputs.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != inputs shape {tuple(inputs.shape)}")
        probs = torch.sigmoid(inputs) if from_logits else inputs
        dims = tuple(range(1, inputs.dim()))
    targets = targets.to(probs.dtype)
    if dims:
        inter = (probs * targets).sum(dim=dims)
        cardinality = probs.sum(dim=dims) + targets.sum(dim=dims)
    else:  # one value per sample
        inter = probs * targets
        cardinality = probs + targets
    dice = (2 * inter + smooth) / (cardinality + smooth)
    return _reduce(1 - dice, reduction)
