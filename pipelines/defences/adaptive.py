"""Adaptive attacks for each defence, and the masking checks AutoAttack / Carlini et al. 2019 recommend.

Attacks are ``physical.attacks`` objects (foolbox-3 style) run on the right *attack model*:

* non-adaptive: FGSM and PGD-CE on the deployed model as autograd sees it (zero gradients through JPEG / bit
  depth, one random draw per step for random defences, the base classifier for smoothing);
* adaptive: PGD on the C&W margin of the logits (distillation), PGD through a BPDA model (JPEG, bit depth,
  median), EOT-PGD (random resize-and-pad, smoothing noise), transfer from the undefended model, and a
  detector-aware PGD (:func:`detector_aware_pgd`) that fools the classifier while keeping the detector's score low.

Masking checks (:func:`masking_checks`): zero-gradient fraction, randomness of the output, a stronger attack
(more steps) doing at least as well as a weaker one, an unbounded attack reaching ~100%, and transfer (black-box)
not beating white-box.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from physical.attacks.digital import FGSM, PGD
from physical.attacks.variants import MadryPGD
from physical.attacks.sanity import zero_gradient_fraction
from physical.losses import margin


def pgd(eps: float, steps: int = 10, loss: str = "ce", *, eot: Any = None, eot_samples: int = 1, seed: int = 0,
        rel_alpha: float = 2.5) -> PGD:
    """L∞ PGD with random start, step ``rel_alpha·eps/steps`` (Madry et al.'s 2.5ε/steps)."""
    return PGD(eps=eps, alpha=rel_alpha * eps / steps, steps=steps, random_start=True, loss=loss,
               eot=eot, eot_samples=eot_samples if eot is not None else 1, seed=seed)


def fgsm(eps: float) -> FGSM:
    return FGSM(eps=eps)


@dataclass
class AttackSpec:
    """One attack of an evaluation: run ``attack`` on ``model`` (the attacker's view), or reuse ``fixed`` images."""

    name: str
    attack: Any = None
    model: nn.Module | None = None
    fixed: Tensor | None = None  # precomputed adversarial images (transfer)
    note: str = ""

    def run(self, images: Tensor, labels: Tensor, seed: int = 0) -> Tensor:
        if self.fixed is not None:
            return self.fixed
        r = self.attack(self.model, images, labels, generator=torch.Generator().manual_seed(seed))
        return r.adversarial


def batched_attack(spec: AttackSpec, images: Tensor, labels: Tensor, batch: int = 100, seed: int = 0) -> Tensor:
    if spec.fixed is not None:
        return spec.fixed
    outs = []
    for i in range(0, len(labels), batch):
        outs.append(spec.run(images[i:i + batch], labels[i:i + batch], seed + i))
    return torch.cat(outs)


# ------------------------------------------------------------------------------------------------ detector-aware
def detector_aware_pgd(model: nn.Module | Callable[[Tensor], Tensor], score_fn: Callable[[Tensor], Tensor],
                       images: Tensor, labels: Tensor, *, eps: float, steps: int = 30, lam: float = 10.0,
                       kappa: float = 2.0, threshold: float, generator: torch.Generator) -> Tensor:
    """Fool ``model`` and stay under the detector ``threshold`` (Carlini & Wagner 2017, "bypassing ten detection
    methods"): minimise clamp(margin, −κ) + λ·score by L∞ PGD (``physical.attacks.MadryPGD``, step 2.5ε/steps,
    random start); per image keep the last iterate that is both misclassified and below the threshold (the loss
    hook's keep mask), else the last iterate."""

    def objective(net: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, s = net(x), score_fn(x)
        keep = (logits.argmax(1) != y) & (s < threshold)
        return -(margin(logits, y).clamp(min=-kappa) + lam * s), keep

    attack = MadryPGD(eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True, loss_fn=objective)
    net = model if isinstance(model, nn.Module) else _AsModule(model)  # e.g. MC-dropout logits as a function
    return attack(net, images, labels, generator=generator).adversarial


class _AsModule(nn.Module):
    """A function of the images (the attacker's view of a stochastic model) as a parameter-less module."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


# ------------------------------------------------------------------------------------------------ masking checks
@dataclass
class MaskingReport:
    """The checks for one defence; ``flags`` lists the ones that fired."""

    zero_gradient_fraction: float
    all_zero_gradient_samples: int
    randomised_fraction: float  # images whose logits differ between two calls
    weak_success: float  # PGD-CE, ``weak_steps`` steps, ε = eps
    strong_success: float  # PGD-CE, ``strong_steps`` steps (+ restarts)
    unbounded_success: float  # PGD-CE at ε = unbounded_eps
    transfer_success: float | None = None  # transfer from the undefended model at ε (filled by the caller)
    whitebox_success: float | None = None  # the naive white-box attack at ε (filled by the caller)
    n: int = 0
    eps: float = 8 / 255
    unbounded_eps: float = 0.5
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finalise(self, tolerance: float = 0.05) -> "MaskingReport":
        f = []
        if self.zero_gradient_fraction >= 0.5 or self.all_zero_gradient_samples > 0:
            f.append("zero_gradients")
        if self.randomised_fraction > 0:
            f.append("randomised_output")
        if self.strong_success < self.weak_success - tolerance:
            f.append("stronger_attack_worse")
        if self.strong_success > self.weak_success + 0.1:
            f.append("weak_attack_insufficient")
        if self.unbounded_success < 0.95:
            f.append("unbounded_attack_fails")
        if (self.transfer_success is not None and self.whitebox_success is not None
                and self.transfer_success > self.whitebox_success + tolerance):
            f.append("transfer_beats_whitebox")
        self.flags = f
        return self


def _success(model: nn.Module, adv: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) != labels).float().mean())


def masking_checks(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float = 8 / 255, weak_steps: int = 10,
                   strong_steps: int = 50, unbounded_eps: float = 0.5, seed: int = 0) -> MaskingReport:
    """Run the attacker-side checks on the model *as the naive attacker sees it* (``model``)."""
    grad = zero_gradient_fraction(model, images, labels, atol=0.0)
    with torch.no_grad():
        a, b = model(images), model(images)
    randomised = float((a != b).any(1).float().mean())
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    weak = pgd(eps, weak_steps)(model, images, labels, generator=gen()).adversarial
    strong = pgd(eps, strong_steps)(model, images, labels, generator=gen()).adversarial
    unb = pgd(unbounded_eps, strong_steps)(model, images, labels, generator=gen()).adversarial
    return MaskingReport(
        zero_gradient_fraction=grad.zero_fraction, all_zero_gradient_samples=grad.all_zero_samples,
        randomised_fraction=randomised, weak_success=_success(model, weak, labels),
        strong_success=_success(model, strong, labels), unbounded_success=_success(model, unb, labels),
        n=int(len(labels)), eps=eps, unbounded_eps=unbounded_eps,
    )
