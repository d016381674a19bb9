"""Adversarial-example detectors and their thresholds.

* :class:`FeatureSqueezing` (Xu, Evans & Qi 2018): score(x) = max over squeezers s of
  ‖softmax(f(x)) − softmax(f(s(x)))‖₁; flag x when the score exceeds a threshold set on clean data at a stated
  false-positive rate. Squeezers default to CIFAR's: 5-bit depth and a 2×2 median filter.
* :class:`MCDropoutUncertainty` (Feinman et al. 2017, "Bayesian uncertainty"): T stochastic forward passes with
  dropout on; score = Σ_c Var_t[softmax(f_t(x))_c] (= E‖y‖² − ‖E y‖²); flag above the threshold.

Both expose ``score(x)`` (no grad) and ``score_differentiable(x)`` for the detector-aware attacker (BPDA through
bit depth; EOT over dropout masks happens by drawing fresh masks in each pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.defences import DefenceError
from pipelines.defences.transforms import BitDepth, InputTransform, MedianFilter, bpda
from testbed.stats import Rate, wilson


def threshold_at_fpr(clean_scores: Tensor, fpr: float) -> float:
    """The smallest threshold t with at most ``fpr`` of ``clean_scores`` strictly above t."""
    if not 0 <= fpr < 1:
        raise DefenceError(f"fpr must be in [0, 1), got {fpr!r}")
    s = clean_scores.flatten().sort().values
    n = s.numel()
    if n == 0:
        raise DefenceError("need clean scores to set a threshold")
    k = int(torch.floor(torch.tensor(fpr * n)))  # allowed false positives
    return float(s[n - 1 - k]) if k < n else float(s[0])


@dataclass
class DetectionResult:
    threshold: float
    fpr: Rate  # clean images flagged
    detection: Rate  # adversarial images flagged (among those given)


def detection_rates(clean_scores: Tensor, adv_scores: Tensor, threshold: float) -> DetectionResult:
    fp = int((clean_scores > threshold).sum())
    tp = int((adv_scores > threshold).sum())
    return DetectionResult(threshold, wilson(fp, clean_scores.numel()), wilson(tp, adv_scores.numel()))


class FeatureSqueezing:
    """Xu et al.'s joint detector over ``squeezers`` (default: 5-bit depth, 2×2 median) on ``model``."""

    def __init__(self, model: nn.Module, squeezers: list[InputTransform] | None = None) -> None:
        self.model = model
        self.squeezers = squeezers if squeezers is not None else [BitDepth(5), MedianFilter(2)]
        if not self.squeezers:
            raise DefenceError("feature squeezing needs at least one squeezer")

    def score_differentiable(self, x: Tensor) -> Tensor:
        """(B,) L1 scores, differentiable w.r.t. ``x`` (BPDA through non-differentiable squeezers)."""
        p = F.softmax(self.model(x), 1)
        scores = []
        for s in self.squeezers:
            xs = s.apply(x) if s.differentiable else bpda(s, x)
            scores.append((p - F.softmax(self.model(xs), 1)).abs().sum(1))
        return torch.stack(scores).amax(0)

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        return self.score_differentiable(x)


class MCDropoutUncertainty:
    """Feinman et al.'s uncertainty over ``samples`` dropout passes of a model with a ``GeneratorDropout``."""

    def __init__(self, model: nn.Module, samples: int = 20, seed: int = 0) -> None:
        from pipelines.defences.training import GeneratorDropout

        self.model = model
        self.samples = int(samples)
        self.dropouts = [m for m in model.modules() if isinstance(m, GeneratorDropout)]
        if not self.dropouts:
            raise DefenceError("MC-dropout needs a model with a GeneratorDropout layer (training method 'dropout')")
        self.seed = seed
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        for i, d in enumerate(self.dropouts):
            d.reseed(seed * 1000 + i)

    def mc_probs(self, x: Tensor) -> Tensor:
        """(T, B, K) softmax outputs of T dropout passes (one stacked forward)."""
        for d in self.dropouts:
            d.mc = True
        try:
            b = x.shape[0]
            z = self.model(x.repeat(self.samples, 1, 1, 1))
        finally:
            for d in self.dropouts:
                d.mc = False
        return F.softmax(z, 1).view(self.samples, b, -1)

    def score_differentiable(self, x: Tensor) -> Tensor:
        p = self.mc_probs(x)
        return p.var(0, unbiased=False).sum(1)

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        return self.score_differentiable(x)

    def mc_logits(self, x: Tensor) -> Tensor:
        """log of the MC-averaged softmax (the Bayesian prediction)."""
        return torch.log(self.mc_probs(x).mean(0).clamp_min(1e-30))


class FeatureNormDetector:
    """A patch detector from feature norms (after Yu et al. 2021, "Defending against universal adversarial patches
    by clipping feature norms": a patch drives unusually large activations at its location): score(x) = the
    largest channel-L2 norm over the spatial positions of ``layer``'s output (a module inside ``model``); flag x
    above a threshold set on clean images at a stated false-positive rate."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        if not any(m is layer for m in model.modules()):
            raise DefenceError("the feature-norm layer must be a module of the model")
        self.model, self.layer = model, layer

    def score_differentiable(self, x: Tensor) -> Tensor:
        """(B,) scores, differentiable w.r.t. ``x`` (for the detector-aware attack)."""
        got: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda m, i, o: got.append(o))
        try:
            self.model(x)
        finally:
            handle.remove()
        return got[0].norm(dim=1).flatten(1).amax(1)

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        return torch.cat([self.score_differentiable(x[i:i + 256]) for i in range(0, len(x), 256)])


def first_stage(model: nn.Module) -> nn.Module:
    """The module whose output feeds a convolutional model's first max-pooling (its first stage's features)."""
    mods = list(model.modules())
    for i, m in enumerate(mods):
        if isinstance(m, nn.MaxPool2d) and i > 0:
            return mods[i - 1]
    raise DefenceError("the model has no max-pooling layer to take the first stage's features before")
