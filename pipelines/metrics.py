"""Metrics with their sample sizes and Wilson 95% intervals.

Every rate the harness reports is a ``Rate``: successes, n, the point estimate and a Wilson score interval.
Destruction rate follows Kurakin, Goodfellow & Bengio (2016), Eq. 1.
"""
from __future__ import annotations

import torch

from testbed.stats import Rate, rate, wilson, wilson_interval  # noqa: F401  (re-exported: the harness's rates)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean per sample: is the label among the top-k predictions?"""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels.view(-1, 1)).any(-1)


def destruction_rate(clean_ok: torch.Tensor, adv_ok: torch.Tensor, adv_photo_ok: torch.Tensor) -> Rate:
    """Kurakin et al. 2016, Eq. 1: among images whose clean version is classified correctly and whose adversarial
    version is misclassified (before the photo), the fraction whose adversarial *photo* is classified correctly.

    Each argument is a boolean vector over the same images: clean correct, adversarial correct (digital),
    adversarial correct after the channel (photo). Use top-1 or top-k correctness consistently.
    """
    clean_ok, adv_ok, adv_photo_ok = (torch.as_tensor(t, dtype=torch.bool).flatten() for t in
                                      (clean_ok, adv_ok, adv_photo_ok))
    if not (clean_ok.numel() == adv_ok.numel() == adv_photo_ok.numel()):
        raise ValueError("clean_ok, adv_ok and adv_photo_ok must have the same length")
    eligible = clean_ok & ~adv_ok
    return rate(adv_photo_ok[eligible])


def prefilter(clean_ok: torch.Tensor, adv_ok: torch.Tensor, adv_confidence: torch.Tensor,
              threshold: float = 0.8) -> torch.Tensor:
    """Kurakin's prefiltered case: clean correct, adversarial wrong with confidence >= ``threshold``."""
    clean_ok = torch.as_tensor(clean_ok, dtype=torch.bool)
    adv_ok = torch.as_tensor(adv_ok, dtype=torch.bool)
    return clean_ok & ~adv_ok & (torch.as_tensor(adv_confidence) >= threshold)
