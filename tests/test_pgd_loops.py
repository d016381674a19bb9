"""The defences' and secure evaluation's PGD loops now run on the iterative base of ``physical.attacks``.

The hand-written loops they replaced are kept below, verbatim, as references (``_old_*``): on CPU, for the same
seed, the new code must return the same images bit for bit and leave the generator in the same state (same draws).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physical.attacks import IterativeGradientAttack, MadryPGD, MaskedPGD, TradesPGD
from physical.attacks.variants import trades_kl
from physical.losses import margin
from pipelines.defences.adaptive import detector_aware_pgd
from pipelines.defences.training import pgd_examples, roa_examples, roa_mask, trades_examples
from pipelines.secure_eval import masked_pgd_patch
from testbed.errors import ConfigError


# ------------------------------------------------------------------------------------------------ the old loops
def _old_input_grad(model, x, loss_fn):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(model(x)), x)
    return g


def _old_pgd_examples(model, x, y, eps, alpha, steps, generator, loss="ce"):  # pipelines/defences/training.py
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
    xa = (x + delta).clamp(0, 1)
    for _ in range(steps):
        if loss == "ce":
            g = _old_input_grad(model, xa, lambda z: F.cross_entropy(z, y))
        else:
            g = _old_input_grad(model, xa, lambda z: -margin(z, y).sum())
        xa = torch.min(torch.max(xa + alpha * g.sign(), x - eps), x + eps).clamp(0, 1).detach()
    return xa


def _old_trades_examples(model, x, eps, alpha, steps, generator):  # pipelines/defences/training.py
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    xa = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0, 1)
    for _ in range(steps):
        g = _old_input_grad(model, xa, lambda z: F.kl_div(F.log_softmax(z, 1), p_clean, reduction="sum"))
        xa = torch.min(torch.max(xa + alpha * g.sign(), x - eps), x + eps).clamp(0, 1).detach()
    return xa


def _old_roa_examples(model, x, y, rect, stride, steps, alpha, generator):  # pipelines/defences/training.py
    m = roa_mask(model, x, y, rect, stride)  # the placement, unchanged (moved into its own function)
    xa = x * (1 - m) + m * torch.rand(x.shape, generator=generator).to(x.device)
    for _ in range(steps):
        gg = _old_input_grad(model, xa, lambda z: F.cross_entropy(z, y))
        xa = (xa + alpha * gg.sign() * m).clamp(0, 1).detach()
    return xa


def _old_detector_aware_pgd(model, score_fn, images, labels, *, eps, steps=30, lam=10.0, kappa=2.0, threshold,
                            generator):  # pipelines/defences/adaptive.py
    alpha = 2.5 * eps / steps
    x0 = images.detach()
    x = (x0 + (torch.rand(x0.shape, generator=generator).to(x0.device) * 2 - 1) * eps).clamp(0, 1)
    best = x0.clone()
    found = torch.zeros(len(labels), dtype=torch.bool, device=x0.device)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        s = score_fn(x)
        loss = margin(logits, labels).clamp(min=-kappa).sum() + lam * s.sum()
        (g,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            ok = (logits.argmax(1) != labels) & (s < threshold)
            best[ok] = x.detach()[ok]
            found |= ok
        x = torch.min(torch.max(x.detach() - alpha * g.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    with torch.no_grad():
        ok = (model(x).argmax(1) != labels) & (score_fn(x) < threshold)
    best[ok] = x[ok]
    found |= ok
    best[~found] = x[~found]
    return best.detach()


def _old_masked_pgd_patch(model, x, labels, boxes, steps, alpha, generator):  # pipelines/secure_eval.py
    mask = torch.zeros(x.shape[0], 1, *x.shape[-2:], device=x.device)
    for i, (t, l, s) in enumerate(boxes):
        mask[i, :, t:t + s, l:l + s] = 1
    p = torch.rand(x.shape, generator=generator).to(x.device)
    for _ in range(steps):
        p = p.detach().requires_grad_(True)
        xa = x * (1 - mask) + p * mask
        loss = nn.functional.cross_entropy(model(xa), labels)
        (g,) = torch.autograd.grad(loss, p)
        p = (p + alpha * g.sign()).clamp(0, 1)
    return (x * (1 - mask) + p.detach() * mask).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ fixtures
def _net(seed: int = 3, classes: int = 10) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(64, classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim > 1 else 0.05))
    return net.eval()


@pytest.fixture(scope="module", params=[8, 7], ids=["batch8", "batch7"])
def batch(request):
    """A model whose weights require grad (as during adversarial training) and a batch (a power of two and not)."""
    g = torch.Generator().manual_seed(11)
    x = torch.rand(request.param, 3, 16, 16, generator=g)
    model = _net()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _same(new: Tensor, old: Tensor) -> None:
    assert new.dtype == old.dtype and new.shape == old.shape
    assert torch.equal(new, old), f"max |new - old| = {(new - old).abs().max().item():.3g}"


def _twin_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ equality
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_at_examples_equal_the_old_loop(batch, loss):
    model, x, y = batch
    g_new, g_old = _twin_generators(5)
    new = pgd_examples(model, x, y, 8 / 255, 2.5 * (8 / 255) / 3, 3, g_new, loss=loss)
    old = _old_pgd_examples(model, x, y, 8 / 255, 2.5 * (8 / 255) / 3, 3, g_old, loss=loss)
    _same(new, old)
    assert torch.equal(g_new.get_state(), g_old.get_state())  # the training loop's later draws are unchanged
    assert (new - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(new, x)
    assert all(p.requires_grad for p in model.parameters())  # the attack restored the training flags


def test_trades_examples_equal_the_old_loop(batch):
    model, x, _ = batch
    g_new, g_old = _twin_generators(6)
    _same(trades_examples(model, x, 16 / 255, 4 / 255, 4, g_new), _old_trades_examples(model, x, 16 / 255, 4 / 255, 4,
                                                                                        g_old))
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_roa_examples_equal_the_old_loop(batch):
    model, x, y = batch
    g_new, g_old = _twin_generators(7)
    new = roa_examples(model, x, y, rect=4, stride=2, steps=3, alpha=0.25, generator=g_new)
    _same(new, _old_roa_examples(model, x, y, rect=4, stride=2, steps=3, alpha=0.25, generator=g_old))
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_detector_aware_pgd_equals_the_old_loop(batch):
    model, x, y = batch

    def score(z: Tensor) -> Tensor:  # a differentiable "detector": the entropy of the prediction
        p = F.softmax(model(z), 1)
        return -(p * p.clamp_min(1e-12).log()).sum(1)

    with torch.no_grad():
        threshold = float(score(x).median())  # some iterates pass, some do not: the keep logic is exercised
    for lam in (0.0, 1.0):
        g_new, g_old = _twin_generators(8)
        kw = dict(eps=16 / 255, steps=6, lam=lam, threshold=threshold)
        _same(detector_aware_pgd(model, score, x, y, generator=g_new, **kw),
              _old_detector_aware_pgd(model, score, x, y, generator=g_old, **kw))
    # a function (not a module) as the attacker's model, e.g. MC-dropout logits
    g_new, g_old = _twin_generators(9)
    _same(detector_aware_pgd(lambda z: model(z), score, x, y, eps=8 / 255, steps=3, threshold=threshold,
                             generator=g_new),
          _old_detector_aware_pgd(lambda z: model(z), score, x, y, eps=8 / 255, steps=3, threshold=threshold,
                                  generator=g_old))


def test_masked_pgd_patch_equals_the_old_loop(batch):
    model, x, y = batch
    boxes = [(i % 5, (2 * i) % 7, 6) for i in range(len(y))]
    g_new, g_old = _twin_generators(10)
    new = masked_pgd_patch(model, x, y, boxes, 4, 16 / 255, g_new)
    _same(new, _old_masked_pgd_patch(model, x, y, boxes, 4, 16 / 255, g_old))
    assert torch.equal(g_new.get_state(), g_old.get_state())
    outside = torch.ones_like(x, dtype=torch.bool)
    for i, (t, l, s) in enumerate(boxes):
        outside[i, :, t:t + s, l:l + s] = False
    assert torch.equal(new[outside], x[outside])  # nothing outside the square changes


# ------------------------------------------------------------------------------------------------ the hooks
def test_variants_use_the_shared_loop():
    for cls in (MadryPGD, TradesPGD, MaskedPGD):
        assert issubclass(cls, IterativeGradientAttack)
        assert cls._run is IterativeGradientAttack._run  # no private loop: the base's, tested against torchattacks


def test_loss_hook_is_increased_and_summed(batch):
    """The hook's loss goes up; with the hook equal to CE, the result equals the built-in CE loss."""
    model, x, y = batch
    ce = lambda m, z, lab: F.cross_entropy(m(z), lab, reduction="none")  # noqa: E731
    hooked = MadryPGD(eps=8 / 255, alpha=2 / 255, steps=5, loss_fn=ce)(model, x, y)
    builtin = MadryPGD(eps=8 / 255, alpha=2 / 255, steps=5)(model, x, y)
    assert hooked.loss_history[-1] < hooked.loss_history[0]  # recorded as the attacker's (negated) loss
    with torch.no_grad():
        assert F.cross_entropy(model(hooked.adversarial), y) > F.cross_entropy(model(x), y)
    # the same sign steps up to float rounding of the mean vs sum: most pixels identical
    assert (hooked.adversarial == builtin.adversarial).float().mean() > 0.95


def test_hook_and_mask_errors(batch):
    model, x, y = batch
    with pytest.raises(ConfigError, match=r"loss_fn must return a per-sample loss of shape \(\d+,\)"):
        MadryPGD(steps=1, loss_fn=lambda m, z, lab: m(z).sum())(model, x, y)
    with pytest.raises(ConfigError, match="masked_pgd needs grad_mask"):
        MaskedPGD(steps=1)(model, x, y)
    with pytest.raises(ConfigError, match="does not broadcast"):
        MaskedPGD(steps=1)(model, x, y, grad_mask=torch.ones(1, 1, 5, 5))
    from physical.attacks import DeepFool

    with pytest.raises(ConfigError, match="does not take a grad_mask"):
        DeepFool()(model, x, y, grad_mask=torch.ones(1, 1, 16, 16))


def test_grad_mask_confines_pgd_and_its_random_start(batch):
    model, x, y = batch
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    r = MadryPGD(eps=16 / 255, alpha=4 / 255, steps=4, random_start=True)(model, x, y, grad_mask=mask)
    changed = (r.adversarial != x).any(1, keepdim=True)
    assert bool(changed[..., 4:10, 4:10].any()) and not bool((changed & (mask == 0)).any())


def test_trades_kl_is_zero_at_the_clean_point(batch):
    model, x, _ = batch
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = trades_kl(p)(model, x, p.argmax(1))
    assert kl.shape == (x.shape[0],) and float(kl.abs().max()) < 1e-6
