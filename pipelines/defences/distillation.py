"""Defensive distillation (Papernot et al. 2016) and why it only masks gradients (Carlini & Wagner 2016/2017).

Training (see :mod:`.training`, methods ``distill_teacher`` / ``distill_student``): the teacher learns with
softmax(Z/T); the student learns the teacher's softmax(Z_t/T) at the same T; the student is deployed at T = 1,
i.e. its raw logits Z go into a softmax. Its logits are about T times larger than a normally trained model's,
so softmax(Z) saturates: the cross-entropy gradient (softmax − onehot) underflows to exactly 0 in float32 for
most inputs, and CE-based attacks (FGSM, PGD-CE) stall. Attacking the logits (C&W margin), or CE at
``logits / T``, removes the masking.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.defences import DefenceError


def softmax_t(logits: Tensor, temperature: float) -> Tensor:
    """softmax(Z / T)."""
    if not temperature > 0:
        raise DefenceError(f"temperature must be > 0, got {temperature!r}")
    return F.softmax(logits / temperature, dim=1)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of the student's softmax(Z_s/T) against the teacher's soft labels softmax(Z_t/T)."""
    soft = softmax_t(teacher_logits, temperature)
    return -(soft * F.log_softmax(student_logits / temperature, dim=1)).sum(1).mean()


class TemperatureScaled(nn.Module):
    """``model(x) / T``: the distilled model seen at temperature T (the attacker's fix for saturated softmax)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise DefenceError(f"temperature must be > 0, got {temperature!r}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


@torch.no_grad()
def logit_scale(model: nn.Module, images: Tensor) -> float:
    """Mean gap between the top-1 and top-2 logits: ~T times the undefended model's for a distilled model."""
    z = model(images).topk(2, dim=1).values
    return float((z[:, 0] - z[:, 1]).mean())
