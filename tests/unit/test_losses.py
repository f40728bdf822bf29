"""losswatch.client.losses: hand-computed values, limiting cases, reductions, shapes and gradcheck."""

from __future__ import annotations

import math

import pytest

from tests.conftest import need_module

torch = need_module("torch")
F = torch.nn.functional

from losswatch.client.losses import (  # noqa: E402
    box_iou,
    ciou_loss,
    dice_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    sigmoid_focal_loss,
)

D = torch.float64
BOX_LOSSES = [iou_loss, giou_loss, diou_loss, ciou_loss]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=D) * 10
    wh = torch.rand(n, 2, generator=g, dtype=D) * 5 + 0.5
    return torch.cat([xy, xy + wh], dim=-1)


def _overlapping_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs that overlap partly, with no coordinate ties (smooth points for gradcheck)."""
    b1 = _random_boxes(n, seed)
    g = _gen(seed + 1)
    shift = (torch.rand(n, 2, generator=g, dtype=D) - 0.5) * 0.6
    scale = torch.rand(n, 2, generator=g, dtype=D) * 0.4 + 0.8
    wh = (b1[:, 2:] - b1[:, :2]) * scale
    xy = b1[:, :2] + shift
    return b1, torch.cat([xy, xy + wh], dim=-1)


def _naive_focal(logits, targets, alpha, gamma):
    """torchvision's formulation, written out."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


# --------------------------------------------------------------------------------------------
# focal


def test_focal_hand_computed():
    logits = torch.tensor([0.0, 0.0, math.log(3.0)], dtype=D)  # p = 0.5, 0.5, 0.75
    targets = torch.tensor([1.0, 0.0, 1.0], dtype=D)
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    ln2 = math.log(2.0)
    expected = torch.tensor([0.25 * 0.25 * ln2, 0.75 * 0.25 * ln2, 0.25 * 0.25**2 * -math.log(0.75)], dtype=D)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_gamma0_without_alpha_is_bce(reduction):
    g = _gen(3)
    logits = torch.randn(4, 5, generator=g) * 8
    targets = (torch.rand(4, 5, generator=g) > 0.5).float()
    for alpha in (None, -1):
        got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0, reduction=reduction)
        expected = F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 2.0), (0.5, 0.5), (0.75, 1.0), (-1, 3.0)])
def test_focal_matches_reference_formula(alpha, gamma):
    g = _gen(4)
    logits = torch.randn(3, 7, generator=g, dtype=D) * 3
    targets = torch.rand(3, 7, generator=g, dtype=D).round()
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    torch.testing.assert_close(got, _naive_focal(logits, targets, alpha, gamma), rtol=1e-10, atol=1e-14)


def test_focal_soft_targets_match_reference():
    g = _gen(5)
    logits = torch.randn(10, generator=g, dtype=D) * 2
    targets = torch.rand(10, generator=g, dtype=D)
    got = sigmoid_focal_loss(logits, targets, reduction="none")
    torch.testing.assert_close(got, _naive_focal(logits, targets, 0.25, 2.0), rtol=1e-10, atol=1e-14)


def test_focal_is_stable_for_large_logits():
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(logits, targets, reduction="none")
    assert torch.isfinite(loss).all()
    assert loss[0] == 0 and loss[1] == 0
    # confidently wrong: ce = 100, (1 - p_t)^2 = 1
    torch.testing.assert_close(loss[2:], torch.tensor([0.75 * 100.0, 0.25 * 100.0]))
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_reductions_and_shapes():
    g = _gen(6)
    logits = torch.randn(2, 3, 4, generator=g)
    targets = torch.randint(0, 2, (2, 3, 4), generator=g)  # integer labels are accepted
    none = sigmoid_focal_loss(logits, targets, reduction="none")
    assert none.shape == (2, 3, 4)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), none.mean())
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="sum"), none.sum())


def test_focal_rejects_bad_arguments():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, x, gamma=-1.0)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 0.0), (0.5, 1.5)])
def test_focal_gradcheck(alpha, gamma):
    g = _gen(7)
    logits = (torch.randn(3, 4, generator=g, dtype=D) * 2).requires_grad_()
    targets = torch.rand(3, 4, generator=g, dtype=D).round()
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, reduction="sum"), (logits,)
    )


# --------------------------------------------------------------------------------------------
# boxes


def test_box_losses_hand_computed_square_overlap():
    b1 = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=D)
    b2 = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=D)
    # intersection 1, union 4 + 4 - 1 = 7, enclosing box [0,0,3,3]: area 9, diagonal^2 18,
    # centres (1,1) and (2,2): rho^2 = 2; same aspect ratio, so v = 0 and CIoU == DIoU.
    iou = 1 / 7
    kw = {"reduction": "none", "eps": 0.0}
    assert iou_loss(b1, b2, **kw).item() == pytest.approx(1 - iou, rel=1e-14)
    assert giou_loss(b1, b2, **kw).item() == pytest.approx(1 - iou + 2 / 9, rel=1e-14)
    assert diou_loss(b1, b2, **kw).item() == pytest.approx(1 - iou + 2 / 18, rel=1e-14)
    assert ciou_loss(b1, b2, **kw).item() == pytest.approx(1 - iou + 2 / 18, rel=1e-14)


def test_ciou_hand_computed_aspect_ratio_term():
    b1 = torch.tensor([0.0, 0.0, 2.0, 1.0], dtype=D)  # w/h = 2
    b2 = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=D)  # w/h = 1/2
    # intersection 1, union 3, IoU 1/3; centres (1, .5), (.5, 1): rho^2 = .5; enclosing [0,0,2,2]: c^2 = 8
    iou = 1 / 3
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    alpha = v / (1 - iou + v)
    expected = 1 - iou + 0.5 / 8 + alpha * v
    got = ciou_loss(b1, b2, reduction="none", eps=0.0).item()
    assert got == pytest.approx(expected, rel=1e-14)
    assert diou_loss(b1, b2, reduction="none", eps=0.0).item() == pytest.approx(1 - iou + 0.5 / 8, rel=1e-14)


@pytest.mark.parametrize("loss_fn", BOX_LOSSES)
def test_identical_boxes_give_zero(loss_fn):
    boxes = _random_boxes(6)
    loss = loss_fn(boxes, boxes.clone(), reduction="none")
    torch.testing.assert_close(loss, torch.zeros(6, dtype=D), rtol=0, atol=1e-7)
    exact = loss_fn(boxes, boxes.clone(), reduction="none", eps=0.0)
    torch.testing.assert_close(exact, torch.zeros(6, dtype=D), rtol=0, atol=1e-15)


def test_disjoint_boxes():
    b1 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=D)
    b2 = torch.tensor([[2.0, 0.0, 3.0, 1.0], [10.0, 0.0, 11.0, 1.0]], dtype=D)  # near, far
    iou = iou_loss(b1, b2, reduction="none")
    assert torch.equal(iou, torch.ones(2, dtype=D))  # IoU loss cannot tell near from far
    giou = giou_loss(b1, b2, reduction="none", eps=0.0)
    # near: enclosing area 3, union 2 -> 1 + 1/3; far: 11, 2 -> 1 + 9/11
    torch.testing.assert_close(giou, torch.tensor([1 + 1 / 3, 1 + 9 / 11], dtype=D))
    diou = diou_loss(b1, b2, reduction="none", eps=0.0)
    # centre distance^2 4 and 100; enclosing diagonal^2 9 + 1 and 121 + 1
    torch.testing.assert_close(diou, torch.tensor([1 + 4 / 10, 1 + 100 / 122], dtype=D))
    ciou = ciou_loss(b1, b2, reduction="none", eps=0.0)
    torch.testing.assert_close(ciou, diou)  # same aspect ratio
    for loss in (giou, diou, ciou):
        assert (loss > 1).all() and (loss < 2).all() and loss[1] > loss[0]


def test_giou_has_gradient_for_disjoint_boxes_iou_has_none():
    b1 = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=D, requires_grad=True)
    b2 = torch.tensor([2.0, 0.0, 3.0, 1.0], dtype=D)
    (g_iou,) = torch.autograd.grad(iou_loss(b1, b2), b1)
    assert torch.equal(g_iou, torch.zeros(4, dtype=D))
    for fn in (giou_loss, diou_loss, ciou_loss):
        (g,) = torch.autograd.grad(fn(b1, b2), b1)
        assert g.abs().sum() > 0


def test_ciou_alpha_carries_no_gradient():
    b1, b2 = _overlapping_pairs(5, seed=11)
    b1 = b1.clone().requires_grad_()
    # different aspect ratios so that v > 0
    b2 = b2 * torch.tensor([1.0, 1.0, 1.3, 0.8], dtype=D)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    v = 4 / math.pi**2 * (torch.atan((x2g - x1g) / (y2g - y1g)) - torch.atan((x2 - x1) / (y2 - y1))) ** 2
    iou = 1 - iou_loss(b1, b2, reduction="none", eps=0.0)
    diou = diou_loss(b1, b2, reduction="none", eps=0.0)
    detached_alpha = (v / (1 - iou + v)).detach()
    (expected,) = torch.autograd.grad((diou + detached_alpha * v).sum(), b1, retain_graph=True)
    (got,) = torch.autograd.grad(ciou_loss(b1, b2, reduction="sum", eps=0.0), b1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    (with_alpha_grad,) = torch.autograd.grad((diou + (v / (1 - iou + v)) * v).sum(), b1)
    assert not torch.allclose(got, with_alpha_grad)


def test_giou_matches_definition_on_random_pairs():
    b1 = _random_boxes(50, seed=1)
    b2 = _random_boxes(50, seed=2)
    # the definition, written pair by pair in plain Python
    expected = []
    for p, q in zip(b1.tolist(), b2.tolist(), strict=True):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        enc = (max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1]))
        expected.append(1 - (inter / union - (enc - union) / enc))
    got = giou_loss(b1, b2, reduction="none", eps=0.0)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=D), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_fn", BOX_LOSSES)
def test_box_loss_reductions_shapes_and_broadcast(loss_fn):
    b1 = _random_boxes(6, seed=3).reshape(2, 3, 4)
    b2 = _random_boxes(6, seed=4).reshape(2, 3, 4)
    none = loss_fn(b1, b2, reduction="none")
    assert none.shape == (2, 3)
    torch.testing.assert_close(loss_fn(b1, b2), none.mean())
    torch.testing.assert_close(loss_fn(b1, b2, reduction="sum"), none.sum())
    # one target broadcast against many predictions
    target = b2[0, 0]
    torch.testing.assert_close(
        loss_fn(b1, target, reduction="none"), loss_fn(b1, target.expand_as(b1), reduction="none")
    )


@pytest.mark.parametrize("loss_fn", BOX_LOSSES)
def test_box_loss_empty_mean_is_zero_with_graph(loss_fn):
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = loss_fn(empty, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert empty.grad.shape == (0, 4)


def test_box_losses_reject_bad_shapes_and_reduction():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        giou_loss(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="reduction"):
        iou_loss(torch.zeros(4), torch.zeros(4), reduction="batchmean")


def test_box_iou_pairwise():
    b1 = _random_boxes(4, seed=5)
    b2 = _random_boxes(3, seed=6)
    pairwise = box_iou(b1, b2)
    assert pairwise.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            expected = 1 - iou_loss(b1[i], b2[j], reduction="none")
            torch.testing.assert_close(pairwise[i, j], expected, rtol=1e-12, atol=1e-12)
    square = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    torch.testing.assert_close(box_iou(square, square + 1, eps=0.0), torch.tensor([[1 / 7]]))
    assert box_iou(b1.expand(2, 4, 4), b2.expand(2, 3, 4)).shape == (2, 4, 3)


def _finite_difference_grad(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = h
        step = step.view_as(x)
        flat[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def test_ciou_gradient_is_the_derivative_with_alpha_frozen():
    """gradcheck cannot apply to CIoU as such: alpha is a constant for autograd but not for finite
    differences. The gradient must be the derivative of DIoU + alpha(x0) * v(x) at x0."""
    b1, b2 = _overlapping_pairs(3, seed=13)
    b2 = b2 * torch.tensor([1.0, 1.0, 1.2, 0.85], dtype=D)

    def v_of(a):
        w1, h1 = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
        return 4 / math.pi**2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2

    iou0 = 1 - iou_loss(b1, b2, reduction="none", eps=0.0)
    alpha0 = v_of(b1) / (1 - iou0 + v_of(b1))
    assert (alpha0 > 0).all()

    def frozen(a):
        return (diou_loss(a, b2, reduction="none", eps=0.0) + alpha0 * v_of(a)).sum()

    expected = _finite_difference_grad(frozen, b1)
    x = b1.clone().requires_grad_()
    (got,) = torch.autograd.grad(ciou_loss(x, b2, reduction="sum", eps=0.0), x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("loss_fn", [iou_loss, giou_loss, diou_loss])
def test_box_loss_gradcheck(loss_fn):
    b1, b2 = _overlapping_pairs(4, seed=8)
    b2 = b2 * torch.tensor([1.0, 1.0, 1.1, 0.9], dtype=D)  # unequal aspect ratios for CIoU
    b1.requires_grad_()
    b2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b, reduction="sum"), (b1, b2))


def test_ciou_gradcheck_where_alpha_term_vanishes():
    """With equal aspect ratios v = 0 and its gradient is 0, so alpha's missing gradient cannot show:
    plain gradcheck applies (the general case is the frozen-alpha test above)."""
    b1 = _random_boxes(4, seed=14)
    centre = (b1[:, :2] + b1[:, 2:]) / 2 + 0.3
    half = (b1[:, 2:] - b1[:, :2]) / 2 * 1.2
    b2 = torch.cat([centre - half, centre + half], dim=-1)
    b1.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ciou_loss(a, b2, reduction="sum"), (b1,))


def test_giou_gradcheck_disjoint():
    b1 = torch.tensor([[0.0, 0.0, 1.0, 1.5]], dtype=D, requires_grad=True)
    b2 = torch.tensor([[2.0, 0.5, 3.5, 1.0]], dtype=D, requires_grad=True)
    for fn in (giou_loss, diou_loss):
        assert torch.autograd.gradcheck(lambda a, b, fn=fn: fn(a, b, reduction="mean"), (b1, b2))


# --------------------------------------------------------------------------------------------
# dice


def test_dice_hand_computed_binary():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=D)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    got = dice_loss(probs, targets, from_logits=False, reduction="none")
    # row 0: inter .5, |P| + |T| = 2 -> 1 - 2/3;  row 1: inter .75, 2 -> 1 - 2.5/3
    torch.testing.assert_close(got, torch.tensor([1 / 3, 1 - 2.5 / 3], dtype=D))
    got0 = dice_loss(probs, targets, smooth=0.0, from_logits=False, reduction="none")
    torch.testing.assert_close(got0, torch.tensor([0.5, 0.25], dtype=D))


def test_dice_binary_from_logits_equals_sigmoid_probs():
    g = _gen(9)
    logits = torch.randn(3, 1, 4, 4, generator=g, dtype=D)
    targets = torch.randint(0, 2, (3, 1, 4, 4), generator=g)
    a = dice_loss(logits, targets, reduction="none")
    b = dice_loss(torch.sigmoid(logits), targets, from_logits=False, reduction="none")
    assert a.shape == (3,)
    torch.testing.assert_close(a, b)


def test_dice_perfect_prediction_is_zero():
    g = _gen(10)
    targets = torch.randint(0, 2, (2, 5, 5), generator=g).to(D)
    assert dice_loss(targets, targets, from_logits=False).item() == 0.0
    logits = (targets * 2 - 1) * 30  # sigmoid -> 0/1 to ~1e-13
    assert dice_loss(logits, targets).item() == pytest.approx(0.0, abs=1e-10)
    labels = torch.randint(0, 3, (2, 5, 5), generator=g)
    mc_logits = F.one_hot(labels, 3).movedim(-1, 1).to(D) * 60
    assert dice_loss(mc_logits, labels, multiclass=True).item() == pytest.approx(0.0, abs=1e-10)


def test_dice_multiclass_indices_equal_one_hot_and_hand_value():
    g = _gen(11)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=D)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    onehot = F.one_hot(labels, 3).movedim(-1, 1).to(D)
    a = dice_loss(logits, labels, multiclass=True, reduction="none")
    b = dice_loss(logits, onehot, multiclass=True, reduction="none")
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    probs = logits.softmax(1)
    expected = 1 - (2 * (probs * onehot).sum((2, 3)) + 1) / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(dice_loss(logits, labels, multiclass=True), a.mean())
    torch.testing.assert_close(dice_loss(logits, labels, multiclass=True, reduction="sum"), a.sum())
    # one sample, two classes, one pixel each, probabilities given directly
    probs = torch.tensor([[[0.8, 0.4], [0.2, 0.6]]], dtype=D)  # (N=1, C=2, L=2)
    got = dice_loss(
        probs, torch.tensor([[0, 1]]), multiclass=True, from_logits=False, smooth=0.0, reduction="none"
    )
    # class 0: inter .8, |P| 1.2, |T| 1 -> 1 - 1.6/2.2; class 1: inter .6, |P| .8, |T| 1 -> 1 - 1.2/1.8
    torch.testing.assert_close(got, torch.tensor([[1 - 1.6 / 2.2, 1 - 1.2 / 1.8]], dtype=D))


def test_dice_absent_class_scores_zero_loss():
    probs = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=D)  # class 1 never predicted
    labels = torch.tensor([[0, 0]])  # nor present
    got = dice_loss(probs, labels, multiclass=True, from_logits=False, reduction="none")
    torch.testing.assert_close(got, torch.zeros(1, 2, dtype=D))


def test_dice_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one-hot"):
        dice_loss(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4), multiclass=True)
    with pytest.raises(ValueError, match="reduction"):
        dice_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="mean_per_class")


def test_dice_gradcheck():
    g = _gen(12)
    logits = torch.randn(2, 1, 3, 3, generator=g, dtype=D, requires_grad=True)
    targets = torch.rand(2, 1, 3, 3, generator=g, dtype=D).round()
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, targets), (logits,))
    mc = torch.randn(2, 3, 3, 3, generator=g, dtype=D, requires_grad=True)
    labels = torch.randint(0, 3, (2, 3, 3), generator=g)
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, labels, multiclass=True, reduction="sum"), (mc,))
