"""The digital attacks the source documents measure.

Notation: x the clean batch, y the true labels, t a target, L the attacker's loss (``physical.losses``:
untargeted -CE(y), targeted CE(t)), Π the projection onto the eps-ball around x intersected with [0, 1].

=============  =====================================================================================
FGSM           x' = clip_[0,1](x - ε·sign ∇L)                         (Goodfellow et al. 2015)
Step-LL        FGSM towards y_LL = argmin_k Z_k(x)                    (Kurakin et al. 2017)
BIM / I-FGSM   x_{i+1} = clip_{x,ε}(x_i - α·sign ∇L), α = 1/255, n = ⌊min(255ε + 4, 1.25·255ε)⌋ (Kurakin 2016)
Iter-LL        BIM towards y_LL
PGD (L∞)       x_0 = x (+ U(-ε, ε)), x_{i+1} = Π(x_i - α·sign ∇L)      (Madry et al. 2018)
PGD (L2)       x_{i+1} = Π(x_i - α·∇L/‖∇L‖₂)
C&W-L2         min_w ‖x' - x‖² + c·max(Z_y - max_{i≠y} Z_i, -κ), x' = (tanh w + 1)/2, binary search on c
DeepFool       linearise, step to the nearest boundary among candidate classes, overshoot 0.02
Fooling        from noise, descend CE(class) until its softmax ≥ confidence   (Nguyen et al. 2015)
=============  =====================================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from physical.attacks.base import (
    AttackResult,
    GradientAttack,
    IterativeGradientAttack,
    Param,
    _logits,
    clip_to_box_and_ball,
    uniform_like,
)
from physical.attacks.registry import register_attack
from physical.losses import class_confidence, is_adversarial
from testbed.errors import ConfigError


def kurakin_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count ``min(ε + 4, 1.25 ε)`` on the 0-255 scale, truncated (as torchattacks), ≥ 1."""
    e = round(eps * 255, 6)  # 8/255*255 must give 8, not 7.999...
    return max(1, int(min(e + 4, 1.25 * e)))


# ------------------------------------------------------------------------------------------- single step
@register_attack("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(IterativeGradientAttack):
    """Fast gradient sign method: one step of size ε, clipped to [0, 1]."""

    param_schema: ClassVar[dict[str, Param]] = {
        "alpha": Param("float", lo=0.0, open_lo=True, doc="unused: the step is ε"),
        "steps": Param("int", lo=1, doc="must be 1"),
        "random_start": Param("bool", doc="must be False"),
    }
    eps: float = 8 / 255
    alpha: float = 8 / 255  # unused: the step is ε
    steps: int = 1

    def validate(self) -> None:
        super().validate()
        if self.steps != 1 or self.norm != "linf" or self.random_start:
            raise ConfigError(
                f"FGSM is one L∞ step from x: steps must be 1, norm 'linf', random_start False "
                f"(got steps={self.steps}, norm={self.norm!r}, random_start={self.random_start}); use PGD"
            )

    def step_size(self) -> float:
        return self.eps

    def project(self, x_adv: Tensor, images: Tensor) -> Tensor:
        return torch.clamp(x_adv, min=0, max=1).detach()


@register_attack("step_ll")
@dataclass(frozen=True, kw_only=True)
class StepLL(FGSM):
    """Single-step least-likely class: FGSM descending CE(y_LL)."""

    target_mode: ClassVar[str] = "least_likely"


# ------------------------------------------------------------------------------------------- iterative L∞
@register_attack("bim")
@dataclass(frozen=True, kw_only=True)
class BIM(IterativeGradientAttack):
    """Basic iterative method / I-FGSM with Kurakin et al.'s defaults (``steps=None`` → the paper's count)."""

    param_schema: ClassVar[dict[str, Param]] = {
        "steps": Param("int", lo=1, optional=True, doc="None: Kurakin's count min(255ε + 4, 1.25·255ε)")}
    eps: float = 8 / 255
    alpha: float = 1 / 255
    steps: int | None = None  # type: ignore[assignment]

    def num_steps(self) -> int:
        return kurakin_steps(self.eps) if self.steps is None else self.steps

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["steps"] = self.num_steps()  # resolved, so the config replays without the rule
        return cfg

    def validate(self) -> None:
        super().validate()
        if self.norm != "linf" or self.random_start:
            raise ConfigError(f"BIM is L∞ without random start (got norm={self.norm!r}, random_start={self.random_start}); use PGD")

    def project(self, x_adv: Tensor, images: Tensor) -> Tensor:
        # torchattacks' BIM clipping, in the same float order: max(x' , max(x-ε, 0)), min(·, x+ε), min(·, 1).
        return clip_to_box_and_ball(x_adv, images, self.eps)


@register_attack("iter_ll")
@dataclass(frozen=True, kw_only=True)
class IterLL(BIM):
    """Iterative least-likely class: BIM descending CE(y_LL)."""

    target_mode: ClassVar[str] = "least_likely"


@register_attack("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(IterativeGradientAttack):
    """Projected gradient descent, L∞ or L2, with an optional random start (Madry et al.)."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = True


@register_attack("pgd_l2")
@dataclass(frozen=True, kw_only=True)
class PGDL2(PGD):
    """PGD in the L2 ball (torchattacks' PGDL2 defaults: ε = 1, α = 0.2)."""

    budget_norm: ClassVar[str | None] = "l2"
    budget_units: ClassVar[str | None] = "absolute"
    eps: float = 1.0
    alpha: float = 0.2
    norm: Literal["linf", "l2"] = "l2"


# ------------------------------------------------------------------------------------------- C&W L2
def _to_tanh_space(x: Tensor) -> Tensor:
    return torch.atanh((x * 2 - 1) * (1 - 1e-6))


def _from_tanh_space(w: Tensor) -> Tensor:
    return (torch.tanh(w) + 1) / 2


@register_attack("cw_l2")
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(GradientAttack):
    """Carlini & Wagner's L2 attack: Adam in tanh space, per-sample binary search over the constant c.

    Minimises ``‖x' - x‖² + c·f(x')`` with ``f`` the C&W margin (``kappa`` = confidence). Each outer step restarts
    Adam from ``w = atanh(2x - 1)``; a sample that succeeded lowers its upper bound on c, otherwise c grows ×10 until
    an upper bound exists, then bisects. The smallest-L2 successful iterate over all steps is returned.
    """

    param_schema: ClassVar[dict[str, Param]] = {
        "binary_search_steps": Param("int", lo=1, doc="outer searches over the constant c"),
        "steps": Param("int", lo=1, doc="Adam steps per search"),
        "lr": Param("float", lo=0.0, open_lo=True, doc="Adam learning rate"),
        "initial_const": Param("float", lo=0.0, open_lo=True, doc="first c"),
        "abort_early": Param("bool", doc="stop a search when the loss stalls"),
    }
    loss: Literal["ce", "cw"] = "cw"
    binary_search_steps: int = 9
    steps: int = 1000
    lr: float = 0.01
    initial_const: float = 1e-3
    abort_early: bool = True

    def validate(self) -> None:
        super().validate()
        if self.loss != "cw":
            raise ConfigError(f"C&W-L2 uses the C&W margin loss: loss must be 'cw', got {self.loss!r}")

    def _run(
        self, model: nn.Module, images: Tensor, labels: Tensor, target: Tensor | None, generator: torch.Generator
    ) -> AttackResult:
        targeted = target is not None
        goal = target if targeted else labels
        b = images.shape[0]
        dev = images.device
        w0 = _to_tanh_space(images)
        lower = torch.zeros(b, device=dev)
        upper = torch.full((b,), 1e10, device=dev)
        const = torch.full((b,), float(self.initial_const), device=dev)
        best_l2 = torch.full((b,), float("inf"), device=dev)
        best_adv = images.clone()
        history: list[Tensor] = []
        params_log: list[Any] | None = [] if (self.eot is not None and self.record_transforms) else None
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(b, dtype=torch.bool, device=dev)
            prev = math.inf
            for i in range(self.steps):
                adv = _from_tanh_space(w)
                l2 = (adv - images).pow(2).flatten(1).sum(dim=1)
                logits = self.forward_logits(model, adv, generator, params_log)
                f = self.per_sample_loss(logits, goal, targeted)
                total = (l2 + const * f).sum()
                (g,) = torch.autograd.grad(total, w)
                history.append(total.detach() / b)
                # Success of this iterate (on the untransformed image).
                with torch.no_grad():
                    clean_logits = logits[:b] if self.eot is None else _logits(model, adv.detach())
                    ok = is_adversarial(clean_logits, goal, targeted=targeted, kappa=self.kappa)
                    better = ok & (l2.detach() < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best_adv = torch.where(better.view(-1, 1, 1, 1), adv.detach(), best_adv)
                    found |= ok
                w.grad = g
                opt.step()
                if self.abort_early and i % check_every == 0:
                    cur = float(total.detach())
                    if cur > prev * 0.9999:
                        break
                    prev = cur
            # Binary search on c, per sample.
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            bisect = (lower + upper) / 2
            const = torch.where(found | (upper < 1e9), bisect, const * 10)
        adv = best_adv.clamp(0, 1)
        return self._finish(
            model,
            images,
            adv,
            labels,
            target,
            history,
            transform_params=params_log,
            extras={"const": const, "best_l2_squared": best_l2},
        )


# ------------------------------------------------------------------------------------------- DeepFool
@register_attack("deepfool")
@dataclass(frozen=True, kw_only=True)
class DeepFool(GradientAttack):
    """Multi-class DeepFool (L2), batched over samples, looping over the candidate classes.

    Candidates: the true label plus the ``candidates - 1`` other classes with the highest clean logits
    (all classes when ``candidates`` is None). With EOT, the classifier linearised is the EOT mean of the logits.
    The perturbation accumulates as in the paper: ``x' = clip(x + (1 + overshoot)·Σ r_i)``.
    """

    target_mode: ClassVar[str] = "never"
    param_schema: ClassVar[dict[str, Param]] = {
        "steps": Param("int", lo=1, doc="linearisation steps"),
        "overshoot": Param("float", lo=0.0, doc="η: x' = x + (1 + η)·Σ r_i"),
        "candidates": Param("int", lo=2, optional=True, doc="classes considered (None: all)"),
    }
    steps: int = 50
    overshoot: float = 0.02
    candidates: int | None = 10

    def _mean_logits(self, model: nn.Module, x: Tensor, generator: torch.Generator, log: list[Any] | None) -> Tensor:
        logits = self.forward_logits(model, x, generator, log)
        b = x.shape[0]
        return logits.view(-1, b, logits.shape[1]).mean(dim=0)

    def _run(
        self, model: nn.Module, images: Tensor, labels: Tensor, target: Tensor | None, generator: torch.Generator
    ) -> AttackResult:
        b = images.shape[0]
        with torch.no_grad():
            clean = _logits(model, images)
        k = clean.shape[1]
        n_cand = k if self.candidates is None else min(self.candidates, k)
        others = clean.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)[:, : n_cand - 1]
        r_tot = torch.zeros_like(images)
        history: list[Tensor] = []
        params_log: list[Any] | None = [] if (self.eot is not None and self.record_transforms) else None
        x = images
        for _ in range(self.steps):
            x = images + (1 + self.overshoot) * r_tot
            x = torch.clamp(x, 0, 1).detach().requires_grad_(True)
            logits = self._mean_logits(model, x, generator, params_log)
            active = logits.argmax(dim=1) == labels
            f_label = logits.gather(1, labels[:, None])[:, 0]
            history.append((f_label - logits.scatter(1, labels[:, None], float("-inf")).amax(1)).mean().detach())
            if not bool(active.any()):
                break
            best_dist = torch.full((b,), float("inf"), device=images.device)
            best_w = torch.zeros_like(images)
            best_f = torch.zeros(b, device=images.device)
            for j in range(n_cand - 1):
                f_k = logits.gather(1, others[:, j : j + 1])[:, 0] - f_label  # (B,), negative while y wins
                (w_k,) = torch.autograd.grad(f_k.sum(), x, retain_graph=j < n_cand - 2)
                dist = f_k.detach().abs() / (w_k.flatten(1).norm(dim=1) + 1e-8)
                closer = dist < best_dist
                best_dist = torch.where(closer, dist, best_dist)
                best_w = torch.where(closer.view(-1, 1, 1, 1), w_k, best_w)
                best_f = torch.where(closer, f_k.detach(), best_f)
            wn2 = best_w.flatten(1).pow(2).sum(dim=1) + 1e-8
            r_i = ((best_f.abs() + 1e-4) / wn2).view(-1, 1, 1, 1) * best_w
            r_tot = r_tot + torch.where(active.view(-1, 1, 1, 1), r_i, torch.zeros_like(r_i))
        adv = torch.clamp(images + (1 + self.overshoot) * r_tot, 0, 1)
        return self._finish(model, images, adv, labels, None, history, transform_params=params_log)


# ------------------------------------------------------------------------------------------- fooling images
@register_attack("fooling")
@dataclass(frozen=True, kw_only=True)
class FoolingImages(GradientAttack):
    """Fooling images (Nguyen et al. 2015, gradient-ascent variant): from noise, raise one class's score.

    ``images`` only give the shape and device (the start is fresh noise from the generator); the class to raise is
    ``target`` when passed, else ``labels``. Each step descends CE(class) (= ascends log-softmax) with signed steps
    of size ``alpha``, clipped to [0, 1], with an optional pull ``l2_decay``·(x - 0.5) toward grey (Simonyan's L2
    regulariser). A sample stops moving once its softmax for the class reaches ``confidence``; success means it did.
    """

    param_schema: ClassVar[dict[str, Param]] = {
        "steps": Param("int", lo=1, doc="signed steps at most"),
        "alpha": Param("float", lo=0.0, open_lo=True, doc="step size on [0, 1] images"),
        "confidence": Param("float", lo=0.0, hi=1.0, open_lo=True, doc="stop once softmax(class) reaches it"),
        "init": Param("choice", choices=("uniform", "gaussian"), doc="starting noise"),
        "noise_std": Param("float", lo=0.0, doc="σ of the gaussian start"),
        "l2_decay": Param("float", lo=0.0, doc="pull toward grey"),
    }
    steps: int = 200
    alpha: float = 2 / 255
    confidence: float = 0.99
    init: Literal["uniform", "gaussian"] = "uniform"
    noise_std: float = 0.1  # gaussian start: N(0.5, noise_std²), clipped
    l2_decay: float = 0.0

    def _run(
        self, model: nn.Module, images: Tensor, labels: Tensor, target: Tensor | None, generator: torch.Generator
    ) -> AttackResult:
        cls = target if target is not None else labels
        if self.init == "uniform":
            start = uniform_like(images, 0.0, 1.0, generator)
        else:
            noise = torch.randn(images.shape, dtype=images.dtype, device=generator.device, generator=generator)
            start = torch.clamp(0.5 + self.noise_std * noise.to(images.device), 0, 1)
        x = start.clone()
        history: list[Tensor] = []
        params_log: list[Any] | None = [] if (self.eot is not None and self.record_transforms) else None
        for _ in range(self.steps):
            with torch.no_grad():
                conf = class_confidence(_logits(model, x), cls)
            moving = conf < self.confidence
            if not bool(moving.any()):
                break
            loss, grad = self.loss_and_grad(model, x, cls, True, generator, params_log)
            history.append(loss)
            step = self.alpha * grad.sign() + self.l2_decay * (x - 0.5)
            x = torch.where(moving.view(-1, 1, 1, 1), torch.clamp(x - step, 0, 1), x).detach()
        with torch.no_grad():
            conf = class_confidence(_logits(model, x), cls)
        return self._finish(
            model,
            images,
            x,
            labels,
            cls,
            history,
            start=start,
            transform_params=params_log,
            extras={"confidence": conf},
            success=conf >= self.confidence,
        )
