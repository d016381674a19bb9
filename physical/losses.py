"""Classification losses, written as quantities the attacker MINIMISES.

* untargeted cross-entropy:  ``-CE(logits, y_true)``          (push the true class down)
* targeted cross-entropy:    ``CE(logits, y_target)``          (pull the target class up)
* untargeted C&W margin:     ``max(Z_y - max_{i!=y} Z_i, -kappa)``
* targeted C&W margin:       ``max(max_{i!=t} Z_i - Z_t, -kappa)``

``labels`` are the true labels in the untargeted form and the target labels in the targeted form.
All functions work on any device and keep the dtype of ``logits`` (float32 in this project).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from testbed.errors import ConfigError

LossKind = Literal["ce", "cw"]
Reduction = Literal["mean", "none", "sum"]

LOSS_KINDS: tuple[str, ...] = ("ce", "cw")
REDUCTIONS: tuple[str, ...] = ("mean", "none", "sum")


def check_loss_kind(kind: str) -> str:
    """Validate a loss kind name."""
    if kind not in LOSS_KINDS:
        raise ConfigError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    return kind


def _check(logits: torch.Tensor, labels: torch.Tensor, reduction: str, kappa: float) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"logits must be a 2-D tensor (batch, classes), got {shape}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ConfigError(f"labels must be a 1-D tensor of length {logits.shape[0]}, got {shape}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ConfigError(
            f"labels must lie in [0, {logits.shape[1] - 1}], got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (kappa >= 0.0):
        raise ConfigError(f"kappa (C&W confidence) must be >= 0, got {kappa!r}")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``Z_label - max_{i != label} Z_i`` (positive: ``label`` wins)."""
    label_logit = logits.gather(1, labels[:, None].long())[:, 0]
    others = logits.scatter(1, labels[:, None].long(), float("-inf"))
    return label_logit - others.amax(dim=1)


def cw_margin_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool, kappa: float = 0.0
) -> torch.Tensor:
    """Per-sample Carlini-Wagner ``f``: ``max(m, -kappa)`` with ``m`` the margin the attacker wants negative."""
    m = margin(logits, labels)
    m = -m if targeted else m
    return torch.clamp(m, min=-kappa)


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    targeted: bool,
    kind: LossKind = "ce",
    kappa: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """The loss the attacker minimises (see the module docstring for the four forms).

    Cross-entropy uses ``F.cross_entropy`` directly so that gradients equal those of
    ``nn.CrossEntropyLoss`` bit for bit (the sign flip of the untargeted form is exact).
    """
    check_loss_kind(kind)
    _check(logits, labels, reduction, kappa)
    labels = labels.long()
    if kind == "ce":
        ce = F.cross_entropy(logits, labels, reduction=reduction)
        return ce if targeted else -ce
    return _reduce(cw_margin_loss(logits, labels, targeted=targeted, kappa=kappa), reduction)


def is_adversarial(
    logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool, kappa: float = 0.0
) -> torch.Tensor:
    """Per-sample success (bool): the prediction is the target (targeted) or not the label (untargeted).

    With ``kappa > 0`` the decision must hold with a logit margin of at least ``kappa`` (C&W's criterion).
    """
    labels = labels.long()
    m = margin(logits, labels)
    pred = logits.argmax(dim=1)
    if targeted:
        return (pred == labels) & (m >= kappa)
    return (pred != labels) & (m <= -kappa)


def least_likely(logits: torch.Tensor) -> torch.Tensor:
    """The least-likely class per sample, ``argmin`` of the logits (Kurakin et al.'s ``y_LL``)."""
    return logits.argmin(dim=1)


def class_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``labels`` per sample."""
    return logits.softmax(dim=1).gather(1, labels[:, None].long())[:, 0]
