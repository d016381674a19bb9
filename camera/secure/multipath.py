"""Multi-path synchronous prediction: several independent paths (models and/or input transformations) classify
each frame; if they disagree, the frame is flagged as possibly perturbed.

Integrity checks (sealing) cannot see a perturbation that was in the scene when the camera captured it — a
physical patch is authentic pixels. Consistency across paths is what can catch it, at the price of false positives
on clean frames. :func:`evaluate_detection` reports both rates with sample sizes and Wilson 95% intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from testbed.errors import ConfigError
from testbed.stats import Rate, wilson


# ------------------------------------------------------------------------------------------- input transformations
# JPEG and bit-depth paths use the defences' transforms (``pipelines.defences.transforms``: the project's one JPEG
# and one bit-depth reduction); any callable BCHW -> BCHW is a path's transform.
@dataclass(frozen=True)
class Identity:
    def __call__(self, x: Any) -> Any:
        return x


@dataclass(frozen=True)
class GaussianBlur:
    """Separable Gaussian blur (reflect padding), kernel radius ceil(3 sigma)."""

    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"GaussianBlur.sigma must be > 0, got {self.sigma!r}")

    def __call__(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        r = max(1, math.ceil(3 * self.sigma))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / self.sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        y = F.pad(x, (r, r, 0, 0), mode="reflect")
        y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        y = F.pad(y, (0, 0, r, r), mode="reflect")
        return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass(frozen=True)
class Rescale:
    """Down-sample by ``factor`` (antialiased bilinear) and back up to the input size."""

    factor: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise ConfigError(f"Rescale.factor must lie in (0, 1), got {self.factor!r}")

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, round(h * self.factor)), max(1, round(w * self.factor))),
                              mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


# ------------------------------------------------------------------------------------------------------- paths
@dataclass
class PredictionPath:
    """One path: ``model(transform(x))`` -> logits. ``model`` is any callable BCHW float -> logits."""

    name: str
    model: Callable[[Any], Any]
    transform: Callable[[Any], Any] | None = None

    def __call__(self, x: Any) -> Any:
        return self.model(self.transform(x) if self.transform is not None else x)


@dataclass
class MultiPathDecision:
    """Per-frame outcome: every path's top-1 (``labels``: P x B), the majority label, how many paths agree with
    it, and whether the frame is flagged (fewer than ``min_agree`` paths agree)."""

    path_names: list[str]
    labels: Any  # LongTensor P x B
    majority: Any  # LongTensor B
    agree: Any  # LongTensor B
    flagged: Any  # BoolTensor B


class MultiPathPredictor:
    """Runs every path on the same frame; flags frames on which fewer than ``min_agree`` paths agree
    (default: all paths must agree)."""

    def __init__(self, paths: Sequence[PredictionPath | Callable[[Any], Any]], *, min_agree: int | None = None,
                 device: Any = None) -> None:
        if len(paths) < 2:
            raise ConfigError(f"multi-path prediction needs at least 2 paths, got {len(paths)}")
        self.paths = [p if isinstance(p, PredictionPath) else PredictionPath(f"path{i}", p)
                      for i, p in enumerate(paths)]
        names = [p.name for p in self.paths]
        if len(set(names)) != len(names):
            raise ConfigError(f"path names must be unique, got {names}")
        self.min_agree = len(self.paths) if min_agree is None else int(min_agree)
        if not 1 <= self.min_agree <= len(self.paths):
            raise ConfigError(f"min_agree must lie in [1, {len(self.paths)}], got {min_agree}")
        self.device = device

    def predict(self, x: Any) -> MultiPathDecision:
        import torch

        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"frames must be a BCHW RGB float tensor, got {getattr(x, 'shape', type(x))}")
        if self.device is not None:
            x = x.to(self.device)
        with torch.no_grad():
            labels = torch.stack([p(x).argmax(-1).cpu() for p in self.paths])  # P x B
        # Majority label per frame (ties: the smallest label among the most frequent, deterministic).
        counts = (labels[:, None, :] == labels[None, :, :]).sum(1)  # P x B: how many paths share path p's label
        score = counts * (int(labels.max()) + 2) - labels
        majority = labels.gather(0, score.argmax(0, keepdim=True))[0]
        agree = (labels == majority[None]).sum(0)
        return MultiPathDecision([p.name for p in self.paths], labels, majority, agree, agree < self.min_agree)


# ------------------------------------------------------------------------------------------------------- rates
@dataclass
class DetectionReport:
    """False-positive rate on clean frames; per attacked set, the flag rate over all frames (``detection``) and
    over the frames whose attack succeeded against the first path (``detection_on_fooled``, when labels given)."""

    false_positive: Rate
    detection: dict[str, Rate] = field(default_factory=dict)
    detection_on_fooled: dict[str, Rate] = field(default_factory=dict)
    fooled_first_path: dict[str, Rate] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"false_positive": self.false_positive.as_dict(),
                "detection": {k: v.as_dict() for k, v in self.detection.items()},
                "detection_on_fooled": {k: v.as_dict() for k, v in self.detection_on_fooled.items()},
                "fooled_first_path": {k: v.as_dict() for k, v in self.fooled_first_path.items()}}

    def table(self) -> str:
        lines = [f"{'inputs':24s} {'flagged':40s} {'flagged | path 0 fooled':40s}",
                 f"{'clean (false positives)':24s} {str(self.false_positive):40s}"]
        for k, v in self.detection.items():
            lines.append(f"{k:24s} {str(v):40s} {str(self.detection_on_fooled.get(k, '')):40s}")
        return "\n".join(lines)


def _batches(x: Any, batch_size: int) -> Iterable[Any]:
    import torch

    if isinstance(x, torch.Tensor):
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size]
    else:
        yield from x


def evaluate_detection(predictor: MultiPathPredictor, clean: Any, attacked: Mapping[str, Any], *,
                       labels: Mapping[str, Sequence[int]] | None = None, batch_size: int = 16) -> DetectionReport:
    """Flag rates of ``predictor`` on clean frames (false positives) and on each attacked set (detections).

    ``clean`` and each ``attacked[name]``: an N x 3 x H x W tensor or an iterable of BCHW batches.
    ``labels[name]``: true labels of that attacked set, to report detection among frames that fool path 0.
    """
    import torch

    def run(x: Any) -> tuple[Any, Any]:
        flags, first = [], []
        for b in _batches(x, batch_size):
            d = predictor.predict(b)
            flags.append(d.flagged)
            first.append(d.labels[0])
        return torch.cat(flags), torch.cat(first)

    fc, _ = run(clean)
    report = DetectionReport(wilson(int(fc.sum()), int(fc.numel())))
    for name, x in attacked.items():
        f, first = run(x)
        report.detection[name] = wilson(int(f.sum()), int(f.numel()))
        if labels is not None and name in labels:
            y = torch.as_tensor(list(labels[name]))
            if y.numel() != first.numel():
                raise ConfigError(f"{first.numel()} frames in {name!r} but {y.numel()} labels")
            fooled = first != y
            report.fooled_first_path[name] = wilson(int(fooled.sum()), int(fooled.numel()))
            report.detection_on_fooled[name] = wilson(int((f & fooled).sum()), int(fooled.sum()))
    return report


__all__ = ["Identity", "GaussianBlur", "Rescale", "PredictionPath", "MultiPathDecision",
           "MultiPathPredictor", "Rate", "wilson", "DetectionReport", "evaluate_detection"]
