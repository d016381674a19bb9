"""physical.losses: the attacker-minimised classification losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from physical.losses import (
    class_confidence,
    classification_loss,
    cw_margin_loss,
    is_adversarial,
    least_likely,
    margin,
)
from testbed.errors import ConfigError


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return logits, labels


def test_ce_forms(batch):
    logits, labels = batch
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert torch.equal(classification_loss(logits, labels, targeted=True, kind="ce", reduction="none"), ce)
    assert torch.equal(classification_loss(logits, labels, targeted=False, kind="ce", reduction="none"), -ce)
    assert torch.allclose(classification_loss(logits, labels, targeted=False, kind="ce"), -ce.mean())
    assert torch.allclose(classification_loss(logits, labels, targeted=True, kind="ce", reduction="sum"), ce.sum())


def test_untargeted_ce_gradient_is_exact_negation(batch):
    logits, labels = batch
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(classification_loss(a, labels, targeted=False), a)
    (gb,) = torch.autograd.grad(torch.nn.CrossEntropyLoss()(b, labels), b)
    assert torch.equal(ga, -gb)


def test_cw_margin_values():
    logits = torch.tensor([[5.0, 2.0, 1.0], [1.0, 4.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 0, 2])
    # untargeted: Z_y - max_{i != y} Z_i, floored at -kappa
    assert torch.equal(margin(logits, y), torch.tensor([3.0, -3.0, 3.0]))
    assert torch.equal(cw_margin_loss(logits, y, targeted=False), torch.tensor([3.0, 0.0, 3.0]))
    assert torch.equal(cw_margin_loss(logits, y, targeted=False, kappa=2.0), torch.tensor([3.0, -2.0, 3.0]))
    # targeted: max_{i != t} Z_i - Z_t
    t = torch.tensor([1, 1, 0])
    assert torch.equal(cw_margin_loss(logits, t, targeted=True), torch.tensor([3.0, 0.0, 3.0]))
    assert torch.equal(cw_margin_loss(logits, t, targeted=True, kappa=5.0), torch.tensor([3.0, -3.0, 3.0]))
    got = classification_loss(logits, t, targeted=True, kind="cw", kappa=5.0)
    assert got.item() == pytest.approx(1.0)


def test_minimising_the_loss_reaches_the_goal(batch):
    """Gradient descent on each form achieves what it claims (targeted -> target, untargeted -> away from label)."""
    logits, labels = batch
    for kind in ("ce", "cw"):
        for targeted in (False, True):
            z = logits.clone().requires_grad_(True)
            goal = (labels + 1) % 5 if targeted else labels
            opt = torch.optim.SGD([z], lr=0.5)
            for _ in range(200):
                opt.zero_grad()
                classification_loss(z, goal, targeted=targeted, kind=kind, kappa=0.5, reduction="sum").backward()
                opt.step()
            ok = is_adversarial(z.detach(), goal, targeted=targeted)
            assert ok.all(), (kind, targeted, ok)


def test_is_adversarial_with_kappa():
    logits = torch.tensor([[1.0, 1.5], [1.0, 3.0]])
    y = torch.tensor([0, 0])
    assert is_adversarial(logits, y, targeted=False).tolist() == [True, True]
    assert is_adversarial(logits, y, targeted=False, kappa=1.0).tolist() == [False, True]
    t = torch.tensor([1, 1])
    assert is_adversarial(logits, t, targeted=True, kappa=1.0).tolist() == [False, True]


def test_helpers(batch):
    logits, labels = batch
    assert torch.equal(least_likely(logits), logits.argmin(1))
    conf = class_confidence(logits, labels)
    assert torch.allclose(conf, logits.softmax(1)[torch.arange(6), labels])


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"kind": "l1"}, "'l1'"),
        ({"reduction": "avg"}, "'avg'"),
        ({"kappa": -1.0}, "-1.0"),
    ],
)
def test_validation(batch, kwargs, needle):
    logits, labels = batch
    kw = {"targeted": False, **kwargs}
    with pytest.raises(ConfigError, match=needle):
        classification_loss(logits, labels, **kw)


def test_label_validation(batch):
    logits, _ = batch
    with pytest.raises(ConfigError, match=r"\[0, 4\]"):
        classification_loss(logits, torch.tensor([0, 1, 2, 3, 4, 5]), targeted=True)
    with pytest.raises(ConfigError, match="length 6"):
        classification_loss(logits, torch.tensor([0, 1]), targeted=True)
    with pytest.raises(ConfigError, match="integer"):
        classification_loss(logits, torch.zeros(6), targeted=True)
