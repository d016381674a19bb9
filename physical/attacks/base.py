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
  and the loss is averaged over all copies;
* every class declares what a config needs to know without running it: ``param_schema`` (one ``Param`` per
  dataclass field: kind, range, choices; merged along the MRO and checked by ``validate``), ``budget_norm``
  (``"linf"``, ``"l2"`` or None for attacks without a perturbation budget) and ``budget_units`` (``"pixel/255"``:
  configs and the CLI give 8 for ε = 8/255; ``"absolute"``: the value as is), and ``target_mode``.
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
#: ``loss_fn(model, x_adv, labels)`` -> per-sample loss (B,) that the attack *increases*, or ``(loss, keep)`` with
#: ``keep`` (B,) bool marking the iterates worth returning (see ``IterativeGradientAttack``).
LossFn = Callable[[nn.Module, Tensor, Tensor], "Tensor | tuple[Tensor, Tensor]"]
Norm = Literal["linf", "l2"]
BUDGET_NORMS: tuple[str | None, ...] = ("linf", "l2", None)
BUDGET_UNITS: tuple[str | None, ...] = ("pixel/255", "absolute", None)
TARGET_MODES = ("optional", "never", "least_likely")
#: The units budgets of each norm are given in by configs and the CLI.
UNITS_OF_NORM: dict[str, str] = {"linf": "pixel/255", "l2": "absolute"}


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
            **outcome_summary(self),
            "labels": self.labels.tolist(),
            "target": None if self.target is None else self.target.tolist(),
            "predictions": self.predictions.tolist(),
            "l2": self.norms(2).tolist(),
            "linf": self.norms("inf").tolist(),
            "loss_history": list(self.loss_history),
            "extras": {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in self.extras.items()},
        }


def outcome_summary(result: Any) -> dict[str, Any]:
    """The keys every attack result's ``summary()`` starts with (``AttackResult`` and the physical attacks'
    ``PhysicalResult``): config, seed, targeted, success_rate and the per-sample success list."""
    return {"config": result.config, "seed": result.seed, "targeted": result.targeted,
            "success_rate": result.success_rate, "success": result.success.tolist()}


# ----------------------------------------------------------------------------------------------- validation
def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if open_lo else value < lo):
        raise ConfigError(f"{name} must be {'>' if open_lo else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {value!r}")


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Raise ConfigError unless ``value`` is an int >= ``lo`` (and <= ``hi``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be an integer <= {hi}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class Param:
    """The schema of one hyper-parameter: what a config may put there, checked without running anything.

    ``kind``: "float" (finite real, ``lo``/``hi`` bounds, ``open_lo`` for a strict lower bound), "int" (``lo``/``hi``),
    "bool", "choice" (one of ``choices``) or "callable" (Python only: EOT transforms, loss hooks; ``signature`` says
    how it is called). ``optional``: None is allowed too.
    """

    kind: Literal["float", "int", "bool", "choice", "callable"]
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    signature: str = ""
    doc: str = ""

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError naming ``name`` unless ``value`` fits this schema."""
        if value is None and self.optional:
            return
        if self.kind == "float":
            check_float(name, value, self.lo, self.hi, open_lo=self.open_lo)
        elif self.kind == "int":
            check_int(name, value, int(self.lo if self.lo is not None else -(2**63)),
                      None if self.hi is None else int(self.hi))
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        elif self.kind == "choice":
            check_choice(name, value, self.choices)
        elif not callable(value):
            raise ConfigError(f"{name} must be a callable {self.signature}, got {type(value).__name__}".replace("  ", " "))

    def describe(self) -> str:
        """One line: kind and range, e.g. ``float in [0, 1]``, ``int >= 1 or None``."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("float", "int"):
            lo = "" if self.lo is None else f"{'(' if self.open_lo else '['}{self.lo:g}"
            if self.lo is not None and self.hi is not None:
                text = f"{self.kind} in {lo}, {self.hi:g}]"
            elif self.lo is not None:
                text = f"{self.kind} {'>' if self.open_lo else '>='} {self.lo:g}"
            else:
                text = self.kind if self.hi is None else f"{self.kind} <= {self.hi:g}"
        else:
            text = self.kind + (f" {self.signature}" if self.signature else "")
        return text + (" or None" if self.optional else "")


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

    #: The registry name (``@register_attack("name")`` sets it; unregistered variants set their own).
    name: ClassVar[str] = "attack"
    #: "optional": targeted iff ``target`` is passed; "never": refuses a target; "least_likely": picks its own.
    target_mode: ClassVar[str] = "optional"
    #: The norm of the perturbation budget ``eps`` ("linf", "l2"), or None: the attack has no budget.
    budget_norm: ClassVar[str | None] = None
    #: How configs and the CLI give the budget: "pixel/255" (8 means ε = 8/255), "absolute" (as is), None.
    budget_units: ClassVar[str | None] = None
    #: Whether ``__call__`` accepts ``grad_mask=`` (a per-call mask on the input gradient).
    supports_grad_mask: ClassVar[bool] = False
    #: One ``Param`` per dataclass field this class adds or changes (merged along the MRO by ``parameters()``).
    param_schema: ClassVar[dict[str, Param]] = {
        "seed": Param("int", lo=0, doc="seed of the CPU generator used when none is passed"),
        "channels_last": Param("bool", doc="run the model in NHWC layout during the attack"),
    }

    seed: int = 0
    # Run the model in NHWC layout during the attack (faster convolutions; restored afterwards). The weights are
    # always frozen during the call (only input gradients are needed) and their flags restored.
    channels_last: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def parameters(cls) -> dict[str, Param]:
        """The full parameter schema (every dataclass field), subclasses' entries overriding their bases'."""
        merged: dict[str, Param] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("param_schema", {}))
        fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(merged)
        missing = [f for f in fields if f not in merged]
        if missing:
            raise ConfigError(f"attack class {cls.__qualname__} has no param_schema entry for field(s) {missing}")
        return {f: merged[f] for f in fields}

    @classmethod
    def budget_of(cls, params: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
        """(norm, units) of the budget of this attack built with ``params`` (the class declaration by default)."""
        return cls.budget_norm, cls.budget_units

    def validate(self) -> None:
        """Check every hyper-parameter against the schema (ConfigError naming the bad value); subclasses add the
        checks that involve several fields."""
        for key, spec in type(self).parameters().items():
            spec.check(key, getattr(self, key))

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
        grad_mask: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``images`` (true ``labels``); ``grad_mask`` (attacks with ``supports_grad_mask``): a tensor
        broadcastable to the images, 1 where the attack may change pixels, 0 where not (its gradient is multiplied
        by it before each step)."""
        images = _check_images(images)
        labels = _check_labels(labels, images, "labels")
        extra: dict[str, Any] = {}
        if grad_mask is not None:
            if not self.supports_grad_mask:
                raise ConfigError(f"{self.name} does not take a grad_mask")
            extra["grad_mask"] = _check_mask(grad_mask, images)
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
            result = self._run(net, images, labels, target, generator, **extra)
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


def _check_mask(mask: Tensor, images: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.ndim != 4:
        raise ConfigError(f"grad_mask must be a 4-D tensor broadcastable to the images {tuple(images.shape)}, "
                          f"got {tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    ok = all(m in (1, n) for m, n in zip(mask.shape, images.shape))
    if not ok:
        raise ConfigError(f"grad_mask of shape {tuple(mask.shape)} does not broadcast to the images "
                          f"{tuple(images.shape)}")
    return mask.detach().to(device=images.device, dtype=images.dtype)


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


def clip_to_box_and_ball(x_adv: Tensor, images: Tensor, eps: float) -> Tensor:
    """The L∞ projection as ``max(x', max(x − ε, 0))``, ``min(·, x + ε)``, ``min(·, 1)`` (torchattacks' BIM float order;
    equal bit for bit to ``clamp(min(max(x', x − ε), x + ε), 0, 1)``: both only select values)."""
    lo = torch.clamp(images - eps, min=0)
    out = torch.maximum(x_adv, lo)
    out = torch.minimum(out, images + eps)
    return torch.clamp(out, max=1).detach()


@dataclass(frozen=True, kw_only=True)
class GradientAttack(Attack):
    """An attack that follows input gradients of a classification loss, optionally under EOT."""

    param_schema: ClassVar[dict[str, Param]] = {
        "loss": Param("choice", choices=LOSS_KINDS, doc="attacker's loss: cross-entropy or the C&W margin"),
        "kappa": Param("float", lo=0.0, doc="C&W confidence margin"),
        "eot": Param("callable", optional=True, signature="(images, generator) -> images",
                     doc="expectation over this random transformation"),
        "eot_samples": Param("int", lo=1, doc="transformed copies per step"),
        "eot_batch": Param("int", lo=1, optional=True, doc="copies per forward pass (None: all)"),
        "record_transforms": Param("bool", doc="keep eot.last_params after each draw"),
    }

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
        if self.eot is None and self.eot_samples != 1:
            raise ConfigError(f"eot_samples={self.eot_samples} needs an eot transform (eot is None)")
        if self.eot_batch is not None and self.eot_samples % self.eot_batch:
            raise ConfigError(f"eot_batch={self.eot_batch} must divide eot_samples={self.eot_samples}")

    def transformed(
        self, x: Tensor, generator: torch.Generator, params_log: list[Any] | None = None, copies: int | None = None
    ) -> Tensor:
        """``copies`` (default ``eot_samples``) EOT-transformed copies of ``x`` stacked sample-major (S*B rows)."""
        xs = x.repeat(copies or self.eot_samples, 1, 1, 1)
        xt = self.eot(xs, generator)
        if not isinstance(xt, Tensor) or xt.shape[0] != xs.shape[0]:
            shape = tuple(xt.shape) if isinstance(xt, Tensor) else type(xt).__name__
            raise ConfigError(f"the eot transform must return {xs.shape[0]} images, got {shape}")
        if params_log is not None and self.record_transforms:
            params_log.append(getattr(self.eot, "last_params", None))
        return xt

    def forward_logits(
        self, model: nn.Module, x: Tensor, generator: torch.Generator, params_log: list[Any] | None = None,
        copies: int | None = None,
    ) -> Tensor:
        """Logits of ``x`` (B rows), or of ``copies`` (default ``eot_samples``) transformed copies stacked
        sample-major (S*B rows)."""
        if self.eot is None:
            return _logits(model, x)
        return _logits(model, self.transformed(x, generator, params_log, copies))

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

    A variant is a short subclass (foolbox-3 style) that changes the defaults and, where its definition differs,
    ``init`` (the start), ``step`` (the update), ``project`` (back into the feasible set). Two hooks cover the
    hand-written loops of defences and evaluations without a new loop:

    * ``loss_fn(model, x_adv, labels)``: replaces the classification loss; it returns the per-sample loss (B,)
      that the attack *increases* (summed over the batch, so sign steps see unscaled per-sample gradients; averaged
      over EOT copies when ``eot`` is set). It may return ``(loss, keep)`` with ``keep`` (B,) bool: the attack
      then returns, per image, the last iterate marked ``keep`` (the final one is checked too), else the last one.
    * ``grad_mask`` (per call, ``attack(model, x, y, grad_mask=m)``): the gradient is multiplied by ``m`` before
      each step and the random start is confined to it, so pixels where ``m == 0`` never change.
    """

    budget_norm: ClassVar[str | None] = "linf"
    budget_units: ClassVar[str | None] = "pixel/255"
    supports_grad_mask: ClassVar[bool] = True
    param_schema: ClassVar[dict[str, Param]] = {
        "eps": Param("float", lo=0.0, doc="budget (radius of the norm ball); <= 1 for L∞"),
        "alpha": Param("float", lo=0.0, open_lo=True, doc="step size"),
        "steps": Param("int", lo=1, doc="gradient steps"),
        "norm": Param("choice", choices=("linf", "l2"), doc="norm of the budget and of the step"),
        "random_start": Param("bool", doc="start from a random point of the ball"),
        "loss_fn": Param("callable", optional=True, signature="(model, x_adv, labels) -> per-sample loss",
                         doc="replaces the classification loss; the attack increases it"),
    }

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    norm: Norm = "linf"
    random_start: bool = False
    loss_fn: LossFn | None = None

    @classmethod
    def budget_of(cls, params: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
        norm = (params or {}).get("norm", cls.budget_norm)
        if norm == cls.budget_norm:
            return cls.budget_norm, cls.budget_units
        return norm, UNITS_OF_NORM.get(norm)

    def validate(self) -> None:
        super().validate()
        if self.norm == "linf":
            check_float("eps", self.eps, 0.0, 1.0)
        check_int("steps", self.num_steps(), 1)

    def num_steps(self) -> int:
        return self.steps

    def step_size(self) -> float:
        return self.alpha

    def init(self, images: Tensor, generator: torch.Generator, mask: Tensor | None = None) -> Tensor:
        """The first iterate: ``images``, or a random point of the ball (confined to ``mask`` when given)."""
        if not self.random_start:
            return images.clone()
        if self.norm == "linf":
            noise = uniform_like(images, -self.eps, self.eps, generator)
            return torch.clamp(images + (noise if mask is None else noise * mask), 0, 1)
        # L2: a Gaussian direction scaled to a radius drawn uniformly in [0, eps] (torchattacks' PGDL2 start).
        d = normal_like(images, generator)
        if mask is not None:
            d = d * mask
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

    # -- the loss hook
    def _hook(self, model: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.loss_fn(model, x, labels)
        loss, keep = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
        n = x.shape[0]
        if not isinstance(loss, Tensor) or loss.shape != (n,):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ConfigError(f"loss_fn must return a per-sample loss of shape ({n},), got {shape}")
        if keep is not None and (not isinstance(keep, Tensor) or keep.shape != (n,) or keep.dtype != torch.bool):
            raise ConfigError(f"loss_fn's second value must be a ({n},) bool tensor of iterates to keep")
        return loss, keep

    def hook_loss_and_grad(
        self, model: nn.Module, x: Tensor, labels: Tensor, generator: torch.Generator,
        params_log: list[Any] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(batch-mean attacker's loss = −loss_fn, its gradient, keep mask or None) for the ``loss_fn`` hook."""
        x = x.detach().requires_grad_(True)
        b = x.shape[0]
        if self.eot is None:
            per, keep = self._hook(model, x, labels)
            (grad,) = torch.autograd.grad(-per.sum(), x)
            return -per.detach().mean(), grad, None if keep is None else keep.detach()
        copies = self.eot_batch or self.eot_samples
        total, grad = torch.zeros((), device=x.device), torch.zeros_like(x)
        for _ in range(self.eot_samples // copies):
            xt = self.transformed(x, generator, params_log, copies)
            per, keep = self._hook(model, xt, labels.repeat(copies))
            if keep is not None:
                raise ConfigError("a loss_fn that returns (loss, keep) cannot be combined with eot")
            part = -per.view(copies, b).mean(dim=0).sum() * (copies / self.eot_samples)
            (g,) = torch.autograd.grad(part, x)
            total, grad = total + part.detach() / b, grad + g
        return total, grad, None

    def _run(
        self, model: nn.Module, images: Tensor, labels: Tensor, target: Tensor | None, generator: torch.Generator,
        grad_mask: Tensor | None = None,
    ) -> AttackResult:
        if self.target_mode == "least_likely":
            with torch.no_grad():
                target = _logits(model, images).argmin(dim=1)
        targeted = target is not None
        goal = target if targeted else labels
        params_log: list[Any] | None = [] if (self.eot is not None and self.record_transforms) else None
        x_adv = self.init(images, generator, grad_mask)
        history: list[Tensor] = []
        best: Tensor | None = None
        found: Tensor | None = None
        for _ in range(self.num_steps()):
            if self.loss_fn is None:
                loss, grad = self.loss_and_grad(model, x_adv, goal, targeted, generator, params_log)
                keep = None
            else:
                loss, grad, keep = self.hook_loss_and_grad(model, x_adv, goal, generator, params_log)
            if keep is not None:
                best, found = _keep(best, found, x_adv, keep)
            history.append(loss)
            if grad_mask is not None:
                grad = grad * grad_mask
            x_adv = self.project(self.step(x_adv, grad), images)
        if found is not None:  # the hook marks keepers: check the final iterate too, return the last keeper
            with torch.no_grad():
                _, keep = self._hook(model, x_adv, goal)
            best, found = _keep(best, found, x_adv, keep)
            x_adv = torch.where(found.view(-1, 1, 1, 1), best, x_adv)
        return self._finish(model, images, x_adv, labels, target, history, transform_params=params_log)


def _keep(best: Tensor | None, found: Tensor | None, x: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per image, remember ``x`` where ``keep`` (the last such iterate wins)."""
    x = x.detach()
    if best is None or found is None:
        best, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if keep is None:
        raise ConfigError("loss_fn returned a keep mask on some steps and not on others")
    keep = keep.to(x.device)
    return torch.where(keep.view(-1, 1, 1, 1), x, best), found | keep
