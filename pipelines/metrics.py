"""Metrics with their sample sizes and Wilson 95% intervals.

Every rate the harness reports is a ``Rate``: successes, n, the point estimate and a Wilson score interval.
Destruction rate follows Kurakin, Goodfellow & Bengio (2016), Eq. 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Rate:
    """``k`` successes out of ``n`` with a Wilson 95% interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "value": self.value}

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n})"


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n = 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: torch.Tensor | list[bool]) -> Rate:
    """A Rate from a boolean vector."""
    s = torch.as_tensor(successes, dtype=torch.bool).flatten()
    k, n = int(s.sum()), int(s.numel())
    return Rate(k, n, *wilson_interval(k, n))


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
