"""Attack objects (foolbox-3 style) and their named result.

An attack is a frozen dataclass of hyper-parameters; the model and the data come in at call time::

    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    result = attack(model, images, labels, generator=torch.Generator().manual_seed(0))
    result.adversarial, result.success, result.loss_history

Conventions every attack here follows:

* images are BCHW RGB float in [0, 1]; the model maps them to logits (normalisation is a layer inside it);
* gradients are taken with ``torch.autograd.grad`` w.r.t. the input only: no parameter ``.grad`` is ever
  written, and nothing about the model (train/eval mode, ``requires_grad``) is changed;
* the model must treat the samples of a batch independently (eval mode), since the batch is attacked at once;
* randomness (random start, EOT draws) comes from one ``torch.Generator``: the one passed in, else a CPU
  generator seeded with ``seed``; its state before the attack is kept in the result, so any run replays exactly;
* an optional expectation over transformation: ``eot(x, generator) -> x'`` is called on ``eot_samples``
  stacked copies of the batch (sample-major: copy ``s`` of image ``b`` is row ``s * B + b``), one forward pass,
  and the loss is averaged over all copies.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from physical.losses import LOSS_KINDS, classification_loss, is_adversarial
from physical.speed import prepared_model
from testbed.errors import ConfigError, ImageError
from testbed.imageio import check_images

EOTCallable = Callable[[Tensor, torch.Generator], Tensor]
Norm = Literal["linf", "l2"]


# ----------------------------------------------------------------------------------------------- results
@dataclass
class AttackResult:
    """What an attack returns (all tensors on the images' device, detached)."""

    adversarial: Tensor  # BCHW in [0, 1]
    perturbation: Tensor  # adversarial - images (fooling images: adversarial - the noise they started from)
    success: Tensor  # (B,) bool: targeted -> prediction == target; untargeted -> prediction != label
    predictions: Tensor  # (B,) argmax of the model on ``adversarial``
    labels: Tensor  # (B,) the true labels passed in
    target: Tensor | None  # (B,) the target classes of a targeted attack, else None
    loss_history: list[float]  # the attacker's loss (batch mean) at each gradient step
    seed: int | None  # the generator's initial seed
    config: dict[str, Any]  # the attack's JSON-serialisable configuration
    generator_state: Tensor | None = None  # torch.Generator state before the attack (for exact replay)
    transform_params: list[Any] | None = None  # EOT parameters per step, when the transform exposes them
    extras: dict[str, Any] = field(default_factory=dict)  # attack-specific values (C&W constants, ...)

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")

    @property
    def misclassified(self) -> Tensor:
        """(B,) bool: the prediction differs from the true label (whatever the goal)."""
        return self.predictions != self.labels

    def norms(self, p: float | str = 2) -> Tensor:
        """Per-sample norm of the perturbation (``p`` = 2, 1 or ``"inf"``)."""
        flat = self.perturbation.flatten(1)
        if p in ("inf", float("inf")):
            return flat.abs().amax(dim=1)
        return flat.norm(p=float(p), dim=1)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no image tensors)."""
        return {
            "config": self.config,
            "seed": self.seed,
            "targeted": self.targeted,
            "success_rate": self.success_rate,
            "success": self.success.tolist(),
            "labels": self.labels.tolist(),
            "target": None if self.target is None else self.target.tolist(),
            "predictions": self.predictions.tolist(),
            "l2": self.norms(2).tolist(),
            "linf": self.norms("inf").tolist(),
            "loss_history": list(self.loss_history),
            "extras": {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in self.extras.items()},
        }


# ----------------------------------------------------------------------------------------------- validation
def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if open_lo else value < lo):
        raise ConfigError(f"{name} must be {'>' if open_lo else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {value!r}")


def check_int(name: str, value: Any, lo: int) -> None:
    """Raise ConfigError unless ``value`` is an int >= ``lo``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def describe_callable(fn: Any) -> Any:
    """A JSON-serialisable description of an EOT callable (its ``config()`` when it has one)."""
    if fn is None:
        return None
    cfg = getattr(fn, "config", None)
    if callable(cfg):
        try:
            return cfg()
        except TypeError:
            pass
    return getattr(fn, "__qualname__", type(fn).__qualname__)


# ----------------------------------------------------------------------------------------------- base classes
@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base of all attacks: hyper-parameters only; ``__call__(model, images, labels)`` runs it."""

    name: ClassVar[str] = "attack"
    #: "optional": targeted iff ``target`` is passed; "never": refuses a target; "least_likely": picks its own.
    target_mode: ClassVar[str] = "optional"

    seed: int = 0
    # Run the model in NHWC layout during the attack (faster convolutions; restored afterwards). The weights are
    # always frozen during the call (only input gradients are needed) and their flags restored.
    channels_last: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the hyper-parameters (raise ConfigError naming the bad value)."""
        check_int("seed", self.seed, 0)
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last must be True or False, got {self.channels_last!r}")

    def config(self) -> dict[str, Any]:
        """The attack's name and hyper-parameters, JSON-serialisable."""
        out: dict[str, Any] = {"attack": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = describe_callable(v) if callable(v) else v
        return out

    def replace(self, **changes: Any) -> "Attack":
        """A copy with some hyper-parameters changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- calling
    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        *,
        target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        images = _check_images(images)
        labels = _check_labels(labels, images, "labels")
        if target is not None:
            if self.target_mode == "never":
                raise ConfigError(f"{self.name} is untargeted; do not pass target=")
            if self.target_mode == "least_likely":
                raise ConfigError(f"{self.name} chooses its own target (the least-likely class); do not pass target=")
            target = _check_labels(target, images, "target")
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
            seed: int | None = self.seed
        else:
            if not isinstance(generator, torch.Generator):
                raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            seed = generator.initial_seed()
        state = generator.get_state().clone()
        with prepared_model(model, channels_last=self.channels_last, compile=False) as net:
            result = self._run(net, images, labels, target, generator)
        result.seed = seed
        result.generator_state = state
        return result

    def _run(
        self, model: nn.Module, images: Tensor, labels: Tensor, target: Tensor | None, generator: torch.Generator
    ) -> AttackResult:
        raise NotImplementedError

    # -- helpers for subclasses
    def _finish(
        self,
        model: nn.Module,
        images: Tensor,
        adversarial: Tensor,
        labels: Tensor,
        target: Tensor | None,
        history: list[Tensor],
        *,
        start: Tensor | None = None,
        transform_params: list[Any] | None = None,
        extras: dict[str, Any] | None = None,
        success: Tensor | None = None,
    ) -> AttackResult:
        adversarial = adversarial.detach()
        with torch.no_grad():
            logits = _logits(model, adversarial)
        preds = logits.argmax(dim=1)
        if success is None:
            success = is_adversarial(logits, target if target is not None else labels, targeted=target is not None)
        loss_history = torch.stack(history).tolist() if history else []
        return AttackResult(
            adversarial=adversarial,
            perturbation=adversarial - (images if start is None else start),
            success=success,
            predictions=preds,
            labels=labels,
            target=target,
            loss_history=loss_history,
            seed=None,
            config=self.config(),
            transform_params=transform_params,
            extras=extras or {},
        )


def _check_images(images: Tensor) -> Tensor:
    check_images(images)
    if images.dtype == torch.float64:
        raise ImageError("images must be float32 (attacks do not run in float64), got torch.float64")
    return images.detach()


def _check_labels(labels: Tensor, images: Tensor, name: str) -> Tensor:
    if not isinstance(labels, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ConfigError(f"{name} must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ConfigError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    return labels.detach().to(device=images.device, dtype=torch.int64)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"the model must return logits of shape ({x.shape[0]}, classes), got {shape}")
    return out


def uniform_like(x: Tensor, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    """Uniform noise shaped like ``x``, drawn on the generator's device, then moved to ``x``'s device."""
    return torch.empty(x.shape, dtype=x.dtype, device=generator.device).uniform_(lo, hi, generator=generator).to(x.device)


def normal_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``x`` (drawn on the generator's device)."""
    return torch.randn(x.shape, dtype=x.dtype, device=generator.device, generator=generator).to(x.device)


@dataclass(frozen=True, kw_only=True)
class GradientAttack(Attack):
    """An attack that follows input gradients of a classification loss, optionally under EOT."""

    loss: Literal["ce", "cw"] = "ce"
    kappa: float = 0.0
    eot: EOTCallable | None = None
    eot_samples: int = 1
    # EOT copies per forward pass: None = all ``eot_samples`` copies in one pass of S*B images; k = passes of k*B
    # images whose input gradients are summed (same expectation, peak memory / (S/k); the draws then come from
    # S/k calls of ``eot`` on the same generator, so the result differs from eot_batch=None draw for draw).
    eot_batch: int | None = None
    record_transforms: bool = False  # keep ``eot.last_params`` after each draw (when the transform has it)

    def validate(self) -> None:
        super().validate()
        check_choice("loss", self.loss, LOSS_KINDS)
        check_float("kappa", self.kappa, 0.0)
        check_int("eot_samples", self.eot_samples, 1)
        if self.eot is not None and not callable(self.eot):
            raise ConfigError(f"eot must be a callable (images, generator) -> images, got {type(self.eot).__name__}")
        if self.eot is None and self.eot_samples != 1:
            raise ConfigError(f"eot_samples={self.eot_samples} needs an eot transform (eot is None)")
        if self.eot_batch is not None:
            check_int("eot_batch", self.eot_batch, 1)
            if self.eot_samples % self.eot_batch:
                raise ConfigError(f"eot_batch={self.eot_batch} must divide eot_samples={self.eot_samples}")

    def forward_logits(
        self, model: nn.Module, x: Tensor, generator: torch.Generator, params_log: list[Any] | None = None,
        copies: int | None = None,
    ) -> Tensor:
        """Logits of ``x`` (B rows), or of ``copies`` (default ``eot_samples``) transformed copies stacked
        sample-major (S*B rows)."""
        if self.eot is None:
            return _logits(model, x)
        xs = x.repeat(copies or self.eot_samples, 1, 1, 1)
        xt = self.eot(xs, generator)
        if not isinstance(xt, Tensor) or xt.shape[0] != xs.shape[0]:
            shape = tuple(xt.shape) if isinstance(xt, Tensor) else type(xt).__name__
            raise ConfigError(f"the eot transform must return {xs.shape[0]} images, got {shape}")
        if params_log is not None and self.record_transforms:
            params_log.append(getattr(self.eot, "last_params", None))
        return _logits(model, xt)

    def per_sample_loss(self, logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
        """The attacker's loss per image (B,), averaged over the EOT copies when there are any."""
        b = labels.shape[0]
        s = logits.shape[0] // b
        per = classification_loss(
            logits, labels.repeat(s), targeted=targeted, kind=self.loss, kappa=self.kappa, reduction="none"
        )
        return per.view(s, b).mean(dim=0)

    def loss_and_grad(
        self,
        model: nn.Module,
        x: Tensor,
        labels: Tensor,
        targeted: bool,
        generator: torch.Generator,
        params_log: list[Any] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(batch-mean loss, d loss / d x), the loss being the attacker's (minimised)."""
        x = x.detach().requires_grad_(True)
        chunk = self.eot_batch
        if self.eot is not None and chunk is not None and chunk < self.eot_samples:
            total, grad = torch.zeros((), device=x.device), torch.zeros_like(x)
            for _ in range(self.eot_samples // chunk):
                logits = self.forward_logits(model, x, generator, params_log, copies=chunk)
                part = self.per_sample_loss(logits, labels, targeted).mean() * (chunk / self.eot_samples)
                (g,) = torch.autograd.grad(part, x)
                total, grad = total + part.detach(), grad + g
            return total, grad
        logits = self.forward_logits(model, x, generator, params_log)
        if self.eot is None:
            # Batch mean straight from F.cross_entropy(reduction="mean"): equal to torchattacks bit for bit.
            loss = classification_loss(logits, labels, targeted=targeted, kind=self.loss, kappa=self.kappa)
        else:
            loss = self.per_sample_loss(logits, labels, targeted).mean()
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad


@dataclass(frozen=True, kw_only=True)
class IterativeGradientAttack(GradientAttack):
    """Shared loop of the L∞ / L2 gradient attacks: init, then ``steps`` × (gradient step, projection).

    A subclass changes the defaults and, where its definition differs, ``init``/``step``/``project``.
    """

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    norm: Norm = "linf"
    random_start: bool = False

    def validate(self) -> None:
        super().validate()
        check_choice("norm", self.norm, ("linf", "l2"))
        if self.norm == "linf":
            check_float("eps", self.eps, 0.0, 1.0)
        else:
            check_float("eps", self.eps, 0.0)
        check_float("alpha", self.alpha, 0.0, open_lo=True)
        check_int("steps", self.num_steps(), 1)
        if not isinstance(self.random_start, bool):
            raise ConfigError(f"random_start must be a bool, got {self.random_start!r}")

    def num_steps(self) -> int:
        return self.steps

    def step_size(self) -> float:
        return self.alpha

    def init(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not self.random_start:
            return images.clone()
        if self.norm == "linf":
            return torch.clamp(images + uniform_like(images, -self.eps, self.eps, generator), 0, 1)
        # L2: a Gaussian direction scaled to a radius drawn uniformly in [0, eps] (torchattacks' PGDL2 start).
        d = normal_like(images, generator)
        n = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        r = torch.empty(images.shape[0], dtype=images.dtype, device=generator.device).uniform_(0, 1, generator=generator)
        d = d / n * r.to(images.device).view(-1, 1, 1, 1) * self.eps
        return torch.clamp(images + d, 0, 1)

    def step(self, x_adv: Tensor, grad: Tensor) -> Tensor:
        """One descent step on the attacker's loss."""
        if self.norm == "linf":
            return x_adv.detach() - self.step_size() * grad.sign()
        g = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10
        return x_adv.detach() - self.step_size() * (grad / g)

    def project(self, x_adv: Tensor, images: Tensor) -> Tensor:
        """Back into the eps-ball around ``images`` and the [0, 1] box."""
        delta = x_adv - images
        if self.norm == "linf":
            delta = torch.clamp(delta, min=-self.eps, max=self.eps)
        else:
            n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * torch.clamp(self.eps / (n + 1e-12), max=1.0)
        return torch.clamp(images + delta, min=0, max=1).detach()

    def _run(
        self, model: nn.Module, images: Tensor, labels: Tensor, target: Tensor | None, generator: torch.Generator
    ) -> AttackResult:
        if self.target_mode == "least_likely":
            with torch.no_grad():
                target = _logits(model, images).argmin(dim=1)
        targeted = target is not None
        goal = target if targeted else labels
        params_log: list[Any] | None = [] if (self.eot is not None and self.record_transforms) else None
        x_adv = self.init(images, generator)
        history: list[Tensor] = []
        for _ in range(self.num_steps()):
            loss, grad = self.loss_and_grad(model, x_adv, goal, targeted, generator, params_log)
            history.append(loss)
            x_adv = self.project(self.step(x_adv, grad), images)
        return self._finish(model, images, x_adv, labels, target, history, transform_params=params_log)
