"""Gradient-masking sanity checks (Carlini et al. 2019, "On evaluating adversarial robustness", §4–5).

* ``zero_gradient_fraction``: the share of input-gradient entries that are (near) zero; a model whose loss gradient
  vanishes almost everywhere (quantisation, hard thresholds, saturated softmax) hides its weakness from gradient attacks.
* ``check_stronger``: a stronger attack (more steps, larger budget, random restarts) must do at least as well as a
  weaker one on the same batch; when it does not, the gradients are misleading the stronger one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from physical.attacks.base import Attack, _check_images, _check_labels, _logits
from physical.losses import classification_loss
from testbed.errors import ConfigError


@dataclass
class GradientReport:
    """How much of the input gradient is (near) zero."""

    zero_fraction: float  # share of all gradient entries with |g| <= atol
    per_sample_zero_fraction: list[float]
    all_zero_samples: int  # samples whose whole gradient is (near) zero
    mean_abs_gradient: float
    atol: float

    @property
    def suspicious(self) -> bool:
        """True when at least half the entries, or any whole sample, have no gradient."""
        return self.zero_fraction >= 0.5 or self.all_zero_samples > 0


def zero_gradient_fraction(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    loss: str = "ce",
    atol: float = 0.0,
) -> GradientReport:
    """Measure the input gradient of the untargeted loss at ``images`` (no parameter grads are written)."""
    if atol < 0:
        raise ConfigError(f"atol must be >= 0, got {atol!r}")
    x = _check_images(images).clone().requires_grad_(True)
    y = _check_labels(labels, images, "labels")
    value = classification_loss(_logits(model, x), y, targeted=False, kind=loss, reduction="sum")  # type: ignore[arg-type]
    (g,) = torch.autograd.grad(value, x)
    zero = g.abs().flatten(1) <= atol
    per = zero.float().mean(dim=1)
    return GradientReport(
        zero_fraction=float(zero.float().mean()),
        per_sample_zero_fraction=per.tolist(),
        all_zero_samples=int(zero.all(dim=1).sum()),
        mean_abs_gradient=float(g.abs().mean()),
        atol=atol,
    )


@dataclass
class StrengthCheck:
    """Outcome of 'the stronger attack does at least as well as the weaker one'."""

    weak: dict[str, Any]
    strong: dict[str, Any]
    weak_success_rate: float
    strong_success_rate: float
    weak_loss: float  # mean cross-entropy of the true labels at the weak attack's images
    strong_loss: float
    tolerance: float
    passed: bool
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def check_stronger(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    weak: Attack,
    strong: Attack,
    *,
    tolerance: float = 0.0,
    target: Tensor | None = None,
    generator_seed: int = 0,
) -> StrengthCheck:
    """Run both attacks on the same batch; pass iff strong's success rate >= weak's - ``tolerance``.

    The success rates are fractions in [0, 1]; ``tolerance`` too. Both attacks get a fresh generator seeded with
    ``generator_seed``. The true-label cross-entropy at each attack's images is reported as a finer signal.
    """
    if not 0.0 <= tolerance <= 1.0:
        raise ConfigError(f"tolerance must be in [0, 1], got {tolerance!r}")
    out = []
    for attack in (weak, strong):
        r = attack(model, images, labels, target=target, generator=torch.Generator().manual_seed(generator_seed))
        with torch.no_grad():
            ce = float(classification_loss(_logits(model, r.adversarial), r.labels, targeted=True, kind="ce"))
        out.append((r, ce))
    (rw, cw), (rs, cs) = out
    passed = rs.success_rate >= rw.success_rate - tolerance
    msg = (
        f"{strong.name} success {rs.success_rate:.3f} vs {weak.name} {rw.success_rate:.3f}"
        + ("" if passed else " — the stronger attack does worse: suspect gradient masking or a broken attack")
    )
    return StrengthCheck(
        weak=weak.config(),
        strong=strong.config(),
        weak_success_rate=rw.success_rate,
        strong_success_rate=rs.success_rate,
        weak_loss=cw,
        strong_loss=cs,
        tolerance=tolerance,
        passed=passed,
        message=msg,
    )
