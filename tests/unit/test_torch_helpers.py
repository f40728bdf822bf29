"""losswatch.client.torch_helpers with a tiny real model and a run that records what ``log`` got."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from tests.conftest import need_module

torch = need_module("torch")
nn = torch.nn

from losswatch.client.torch_helpers import (  # noqa: E402
    LossComponents,
    clip_and_log_grad_norm,
    grad_norm,
    l2_penalty,
    log_grad_norm,
    log_lr,
)

WEIGHTS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


class RecordingRun:
    """The caller's side of ``Run.log``: stores every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def log(self, values, step=None, kinds=None):
        self.calls.append({"values": dict(values), "step": step, "kinds": dict(kinds or {})})


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _terms(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g)
    out = model(x)
    return {
        "box": (out[:, 0] - 1).abs().mean(),
        "cls": nn.functional.binary_cross_entropy_with_logits(out[:, 1], torch.ones(16)),
        "dfl": out[:, 2].pow(2).mean(),
    }


def _assert_detached_tensors(values: dict[str, Any]) -> None:
    for key, value in values.items():
        assert isinstance(value, torch.Tensor), key  # no .item() / float() happened
        assert not value.requires_grad and value.grad_fn is None, key
        assert value.numel() == 1, key


# --------------------------------------------------------------------------------------------
# LossComponents


def test_total_is_the_exact_sum_of_weighted_parts_and_everything_is_logged():
    model, run = _model(), RecordingRun()
    criterion = LossComponents(run, weights=WEIGHTS, prefix="train/loss")
    terms = _terms(model)
    l2 = l2_penalty(model, 5e-4)
    total = criterion(**terms, l2=l2, step=7)

    expected = terms["box"] * 7.5 + terms["cls"] * 0.5 + terms["dfl"] * 1.5 + l2
    assert torch.equal(total, expected)
    assert total.requires_grad

    (call,) = run.calls
    assert call["step"] == 7
    values = call["values"]
    assert list(values) == [
        "train/loss",
        "train/loss/box",
        "train/loss/box_weighted",
        "train/loss/cls",
        "train/loss/cls_weighted",
        "train/loss/dfl",
        "train/loss/dfl_weighted",
        "train/loss/l2",
    ]
    _assert_detached_tensors(values)
    assert call["kinds"] == {key: ("loss" if key == "train/loss" else "loss_component") for key in values}
    assert torch.equal(values["train/loss"], total.detach())
    for name, weight in WEIGHTS.items():
        assert torch.equal(values[f"train/loss/{name}"], terms[name].detach())
        assert torch.equal(values[f"train/loss/{name}_weighted"], terms[name].detach() * weight)
    assert torch.equal(values["train/loss/l2"], l2.detach())
    # the documented invariant, bit for bit (same summation order)
    parts = [values[f"train/loss/{n}_weighted"] for n in WEIGHTS] + [values["train/loss/l2"]]
    assert torch.equal(parts[0] + parts[1] + parts[2] + parts[3], values["train/loss"])


def test_gradients_flow_through_the_total():
    model = _model()
    reference = copy.deepcopy(model)
    criterion = LossComponents(None, weights=WEIGHTS)
    criterion(**_terms(model), l2=l2_penalty(model, 1e-2)).backward()

    ref_terms = _terms(reference)
    ref_total = sum(ref_terms[n] * w for n, w in WEIGHTS.items()) + l2_penalty(reference, 1e-2)
    ref_total.backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad, q.grad)


def test_mapping_and_keywords_numbers_and_no_weighted_series():
    run = RecordingRun()
    criterion = LossComponents(run, weights={"seg": 2.0, "cls": 1.0}, prefix="val/loss", log_weighted=False)
    seg = torch.tensor(0.25, requires_grad=True)
    total = criterion({"seg": seg}, cls=0.0, step=None)  # a batch without objects: cls is a number
    assert torch.equal(total, seg * 2.0 + torch.tensor(0.0))
    (call,) = run.calls
    assert call["step"] is None
    assert list(call["values"]) == ["val/loss", "val/loss/seg", "val/loss/cls"]
    _assert_detached_tensors(call["values"])


def test_combine_and_key_without_logging():
    criterion = LossComponents(weights={"box": 2.0})
    box = torch.tensor([1.5])  # one element, any shape
    total, logged = criterion.combine({"box": box})
    assert total.shape == () and total.item() == 3.0
    assert set(logged) == {"train/loss", "train/loss/box", "train/loss/box_weighted"}
    assert criterion.key("box") == "train/loss/box"
    assert criterion.key("box", weighted=True) == "train/loss/box_weighted"


def test_loss_components_errors():
    criterion = LossComponents(RecordingRun(), weights=WEIGHTS)
    one = torch.tensor(1.0)
    with pytest.raises(KeyError, match="dfl"):
        criterion(box=one, cls=one, dfI=one)  # misspelt term: the real one is missing
    with pytest.raises(ValueError, match="one element"):
        criterion(box=torch.ones(2), cls=one, dfl=one)
    with pytest.raises(TypeError, match="tensor"):
        criterion(box=1.0, cls=1.0, dfl=1.0)
    with pytest.raises(TypeError, match="number"):
        criterion(box=one, cls=one, dfl="1")
    with pytest.raises(ValueError, match="prefix"):
        LossComponents(weights=WEIGHTS, prefix="")
    with pytest.raises(ValueError, match="_weighted"):
        LossComponents(weights={"box_weighted": 1.0})


# --------------------------------------------------------------------------------------------
# l2_penalty


def test_l2_penalty_value_and_gradient_match_weight_decay():
    model = _model()
    wd = 1e-2
    penalty = l2_penalty(model, wd)
    expected = sum(p.detach().pow(2).sum() for p in model.parameters()) * wd / 2
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, wd * p.detach())


def test_l2_penalty_skip_1d_and_frozen_parameters():
    model = _model()
    model[0].weight.requires_grad_(False)
    penalty = l2_penalty(model, 2.0, skip_1d=True)  # only the second Linear's weight is left
    torch.testing.assert_close(penalty, model[2].weight.detach().pow(2).sum())
    assert l2_penalty([], 1.0).item() == 0.0


# --------------------------------------------------------------------------------------------
# learning rate


def test_log_lr_one_group():
    model, run = _model(), RecordingRun()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    assert log_lr(run, optimizer, step=0) == {"lr": 0.1}
    optimizer.step()
    scheduler.step()
    log_lr(run, optimizer, step=1)
    assert [c["values"] for c in run.calls] == [{"lr": 0.1}, {"lr": 0.05}]
    assert [c["step"] for c in run.calls] == [0, 1]
    assert all(c["kinds"] == {"lr": "lr"} for c in run.calls)


def test_log_lr_per_param_group_and_tensor_lr():
    model, run = _model(), RecordingRun()
    optimizer = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-3},
            {"params": model[2].parameters(), "lr": torch.tensor(1e-4)},
        ]
    )
    values = log_lr(run, optimizer, step=3, prefix="opt/lr")
    assert list(values) == ["opt/lr/pg0", "opt/lr/pg1"]
    assert values["opt/lr/pg0"] == 1e-3
    assert isinstance(values["opt/lr/pg1"], torch.Tensor) and not values["opt/lr/pg1"].requires_grad
    (call,) = run.calls
    assert call["kinds"] == {"opt/lr/pg0": "lr", "opt/lr/pg1": "lr"} and call["step"] == 3
    assert list(log_lr(None, optimizer, prefix="opt/lr")) == list(values)  # no run: computes only


# --------------------------------------------------------------------------------------------
# gradient norm


def _backward(model: nn.Module, scale: float = 10.0) -> None:
    model.zero_grad()
    (sum(_terms(model).values()) * scale).backward()


def test_clip_and_log_grad_norm_logs_what_clip_grad_norm_returned():
    model, run = _model(), RecordingRun()
    twin = copy.deepcopy(model)
    _backward(model)
    _backward(twin)
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=1.0)
    total = clip_and_log_grad_norm(run, model.parameters(), max_norm=1.0, step=5)
    assert torch.equal(total, expected)
    assert expected > 1.0  # it did clip
    (call,) = run.calls
    assert call["step"] == 5 and call["kinds"] == {"grad_norm": "grad_norm"}
    _assert_detached_tensors(call["values"])
    assert torch.equal(call["values"]["grad_norm"], expected)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)  # clipped exactly as torch clips
    clipped = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])
    )
    assert clipped <= 1.0 + 1e-6


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_grad_norm_equals_clip_grad_norm(norm_type):
    model = _model()
    _backward(model)
    before = [p.grad.clone() for p in model.parameters()]
    norm = grad_norm(model, norm_type)
    assert torch.equal(before[0], next(model.parameters()).grad)  # nothing clipped
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf, norm_type=norm_type)
    assert torch.equal(norm, expected)  # same per-tensor norms, same reduction
    assert not norm.requires_grad


def test_grad_norm_skips_missing_grads_and_logs():
    model, run = _model(), RecordingRun()
    assert grad_norm(model).item() == 0.0  # no backward yet
    _backward(model)
    model[0].bias.grad = None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    norm = log_grad_norm(run, model.parameters(), step=2, key="train/grad_norm")
    torch.testing.assert_close(norm, expected)
    (call,) = run.calls
    assert call["kinds"] == {"train/grad_norm": "grad_norm"} and call["step"] == 2
    _assert_detached_tensors(call["values"])


# --------------------------------------------------------------------------------------------
# a training loop, and the no-sync promise on a GPU


def test_training_loop_logs_tensors_only():
    model, run = _model(), RecordingRun()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = LossComponents(run, weights=WEIGHTS)
    first = last = None
    for step in range(20):
        optimizer.zero_grad()
        loss = criterion(**_terms(model), l2=l2_penalty(model, 1e-4), step=step)
        loss.backward()
        clip_and_log_grad_norm(run, model.parameters(), max_norm=5.0, step=step)
        log_lr(run, optimizer, step=step)
        optimizer.step()
        first = loss.detach() if first is None else first
        last = loss.detach()
    assert last < first
    assert len(run.calls) == 60
    for call in run.calls:
        for value in call["values"].values():
            assert isinstance(value, torch.Tensor | float)
            if isinstance(value, torch.Tensor):
                assert not value.requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_helpers_and_losses_do_not_synchronise_the_device():
    from losswatch.client import losses

    device = torch.device("cuda")
    model = _model().to(device)
    run = RecordingRun()
    optimizer = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.01, device=device))
    criterion = LossComponents(run, weights=WEIGHTS)
    x = torch.randn(8, 4, device=device)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device).repeat(8, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(x)
        pred = boxes + out[:, :1].abs()
        terms = {
            "box": losses.ciou_loss(pred, boxes)
            + losses.giou_loss(pred, boxes)
            + losses.diou_loss(pred, boxes),
            "cls": losses.sigmoid_focal_loss(out[:, 1], (x[:, 0] > 0).float()),
            "dfl": losses.dice_loss(
                out[:, 1:].unsqueeze(-1), torch.zeros(8, 1, dtype=torch.long, device=device), multiclass=True
            )
            + losses.dice_loss(out[:, 2:], (x[:, :1] > 0).float()),
        }
        loss = criterion(**terms, l2=l2_penalty(model, 1e-4), step=0)
        loss.backward()
        clip_and_log_grad_norm(run, model.parameters(), max_norm=1.0, step=0)
        log_grad_norm(run, model.parameters(), step=0)
        log_lr(run, optimizer, step=0)  # optimizer.step() itself is torch's business, not checked here
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for call in run.calls:
        for value in call["values"].values():
            assert value.device.type == "cuda"
