"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): g(x) = argmax_c P(f(x + N(0, σ²I)) = c).

* :meth:`SmoothedClassifier.predict` — PREDICT: n noisy samples; the top class if a two-sided binomial test of
  its count against the runner-up's rejects at ``alpha``, else abstain (-1);
* :meth:`SmoothedClassifier.certify` — CERTIFY: n0 samples pick the class ĉ, n fresh samples count it,
  p_A = the one-sided (1 − alpha) Clopper–Pearson lower bound; certified L2 radius R = σ·Φ⁻¹(p_A) when
  p_A > ½, else abstain (radius 0, prediction -1).

All noise comes from an explicit ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor, nn

from pipelines.defences import DefenceError

ABSTAIN = -1


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson lower confidence bound of a binomial proportion (k of n)."""
    if not (0 <= k <= n and n > 0):
        raise DefenceError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise DefenceError(f"alpha must be in (0, 1), got {alpha!r}")
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """σ · Φ⁻¹(p_A) (Cohen et al. Theorem 1 with p_B = 1 − p_A); 0 when p_A <= ½."""
    if p_lower <= 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_lower))


@dataclass
class Certificate:
    """Per-image CERTIFY output."""

    prediction: Tensor  # (B,) class or ABSTAIN
    radius: Tensor  # (B,) certified L2 radius (0 when abstaining)
    p_lower: Tensor  # (B,)
    counts: Tensor  # (B, K) counts of the n selection-free samples


class SmoothedClassifier:
    """The smoothed classifier of a base ``model`` (BCHW in [0, 1] -> logits) at noise level ``sigma``."""

    def __init__(self, model: nn.Module, sigma: float, num_classes: int, batch_size: int = 1000) -> None:
        if not sigma > 0:
            raise DefenceError(f"sigma must be > 0, got {sigma!r}")
        self.model, self.sigma, self.num_classes, self.batch_size = model, float(sigma), int(num_classes), batch_size

    @torch.no_grad()
    def sample_counts(self, x: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """(B, K) counts of the base model's top-1 over ``n`` noisy copies of each image (noise not clipped)."""
        b = x.shape[0]
        counts = torch.zeros(b, self.num_classes, dtype=torch.long)
        per = max(1, self.batch_size // b)
        left = n
        while left > 0:
            m = min(per, left)
            xs = x.repeat(m, 1, 1, 1)
            noise = torch.randn(xs.shape, generator=generator).to(x.device) * self.sigma
            pred = self.model(xs + noise).argmax(1).view(m, b).cpu()
            counts += torch.nn.functional.one_hot(pred, self.num_classes).sum(0)
            left -= m
        return counts

    def predict(self, x: Tensor, n: int, alpha: float, generator: torch.Generator) -> Tensor:
        """Cohen et al.'s PREDICT: (B,) classes, ABSTAIN where the top two counts are not separated at ``alpha``."""
        counts = self.sample_counts(x, n, generator)
        top2 = counts.topk(2, dim=1)
        out = top2.indices[:, 0].clone()
        for i in range(x.shape[0]):
            na, nb = int(top2.values[i, 0]), int(top2.values[i, 1])
            if binomtest(na, na + nb, 0.5).pvalue > alpha:
                out[i] = ABSTAIN
        return out

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, generator: torch.Generator) -> Certificate:
        """Cohen et al.'s CERTIFY for each image of ``x``."""
        c0 = self.sample_counts(x, n0, generator).argmax(1)
        counts = self.sample_counts(x, n, generator)
        preds, radii, lows = [], [], []
        for i in range(x.shape[0]):
            k = int(counts[i, c0[i]])
            pl = clopper_pearson_lower(k, n, alpha)
            r = certified_radius(pl, self.sigma)
            preds.append(int(c0[i]) if pl > 0.5 else ABSTAIN)
            radii.append(r)
            lows.append(pl)
        return Certificate(torch.tensor(preds), torch.tensor(radii), torch.tensor(lows), counts)


class NoisyModel(nn.Module):
    """The base model on x + N(0, σ²) with ``samples`` draws averaged in probability (log of the mean softmax);
    a differentiable, randomised stand-in for the smoothed classifier (the EOT attacker's target)."""

    def __init__(self, model: nn.Module, sigma: float, samples: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.model, self.sigma, self.samples = model, float(sigma), int(samples)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        xs = x.repeat(self.samples, 1, 1, 1)
        z = self.model(xs + torch.randn(xs.shape, generator=self.generator).to(x.device) * self.sigma)
        p = torch.softmax(z, 1).view(self.samples, b, -1).mean(0)
        return torch.log(p.clamp_min(1e-30))


def gaussian_eot(sigma: float):
    """``eot(x, generator) -> x + N(0, σ²)`` for ``physical.attacks`` (EOT over the smoothing noise)."""

    def eot(x: Tensor, generator: torch.Generator) -> Tensor:
        return x + torch.randn(x.shape, generator=generator).to(x.device) * sigma

    eot.config = lambda: {"eot": "gaussian", "sigma": sigma}  # type: ignore[attr-defined]
    return eot
