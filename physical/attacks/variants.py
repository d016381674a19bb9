"""PGD variants that defences and evaluations run: short subclasses of the iterative base (foolbox-3 style).

They are not in the registry: each exists for a caller that supplies per-call context (a gradient mask, a loss
hook built from the clean batch), so none is a complete attack to run from a config or the CLI by name.

===========  ==========================================================================================
MadryPGD     PGD with Madry et al.'s clipping ``clip(min(max(x', x − ε), x + ε), 0, 1)``: adversarial training
             (``pipelines.defences.training``), the detector-aware attack (``pipelines.defences.adaptive``)
TradesPGD    MadryPGD starting at ``x + 0.001·N(0, I)`` (Zhang et al. 2019); its loss is ``trades_kl(p_clean)``
MaskedPGD    MadryPGD from uniform noise inside a per-call ``grad_mask`` (ε = 1: unbounded inside the mask):
             the rectangular occlusion attack (Wu et al. 2020) and the masked-patch fallback
===========  ==========================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physical.attacks.base import LossFn, Param, clip_to_box_and_ball, normal_like
from physical.attacks.digital import PGD
from testbed.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class MadryPGD(PGD):
    """L∞ PGD (random start) projected as Madry et al.'s reference code does: ``min(max(x', x − ε), x + ε)``
    clipped to [0, 1] (the same point as ``PGD``'s projection; different float rounding)."""

    name: ClassVar[str] = "pgd_madry"

    def project(self, x_adv: Tensor, images: Tensor) -> Tensor:
        if self.norm != "linf":
            return super().project(x_adv, images)
        return clip_to_box_and_ball(x_adv, images, self.eps)


@dataclass(frozen=True, kw_only=True)
class TradesPGD(MadryPGD):
    """TRADES' inner maximisation (Zhang et al. 2019): start ``x + start_std·N(0, I)``, then L∞ sign steps on
    ``loss_fn`` (pass ``trades_kl(softmax(model(x)))``: KL(f(x) ‖ f(x')) per sample)."""

    name: ClassVar[str] = "pgd_trades"
    param_schema: ClassVar[dict[str, Param]] = {"start_std": Param("float", lo=0.0, doc="σ of the Gaussian start")}
    start_std: float = 0.001

    def init(self, images: Tensor, generator: torch.Generator, mask: Tensor | None = None) -> Tensor:
        if not self.random_start:
            return images.clone()
        noise = self.start_std * normal_like(images, generator)
        return torch.clamp(images + (noise if mask is None else noise * mask), 0, 1)


def trades_kl(p_clean: Tensor) -> LossFn:
    """The per-sample ``KL(p_clean ‖ softmax(model(x_adv)))`` as a ``loss_fn`` hook (the attack increases it)."""

    def loss(model: nn.Module, x_adv: Tensor, labels: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="none").sum(dim=1)

    return loss


@dataclass(frozen=True, kw_only=True)
class MaskedPGD(MadryPGD):
    """Sign steps restricted to a per-call ``grad_mask`` (1 inside the region the attacker owns), starting from
    uniform noise inside it; ε = 1 by default, i.e. unbounded inside the mask, untouched outside."""

    name: ClassVar[str] = "masked_pgd"
    eps: float = 1.0
    alpha: float = 16 / 255

    def init(self, images: Tensor, generator: torch.Generator, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            raise ConfigError("masked_pgd needs grad_mask= (1 where the attack may change pixels)")
        if not self.random_start:
            return images.clone()
        noise = torch.rand(images.shape, dtype=images.dtype, device=generator.device, generator=generator)
        return self.project(images * (1 - mask) + mask * noise.to(images.device), images)
