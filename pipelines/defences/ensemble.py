"""Ensembles: the average of members' softmax outputs (Tramèr et al.-style averaging), as one model.

The forward returns log(mean_i softmax(Z_i)) so that it can be used as logits (argmax = the ensemble's vote;
CE on it = CE of the averaged probabilities). The adaptive attacker differentiates through the whole ensemble;
the non-adaptive one attacks a single member and transfers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.defences import DefenceError


class Ensemble(nn.Module):
    """log of the mean of the members' softmax probabilities (or of their logits, ``mode="logits"``)."""

    def __init__(self, members: list[nn.Module], mode: str = "prob") -> None:
        super().__init__()
        if len(members) < 2:
            raise DefenceError(f"an ensemble needs at least 2 members, got {len(members)}")
        if mode not in ("prob", "logits"):
            raise DefenceError(f"mode must be 'prob' or 'logits', got {mode!r}")
        self.members = nn.ModuleList(members)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        outs = [m(x) for m in self.members]
        if self.mode == "logits":
            return torch.stack(outs).mean(0)
        p = torch.stack([F.softmax(o, dim=1) for o in outs]).mean(0)
        return torch.log(p.clamp_min(1e-30))
