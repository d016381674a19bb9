"""Rates with their sample sizes and Wilson 95% intervals, shared by every part that reports a rate."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from testbed.errors import ConfigError

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Rate:
    """``k`` successes out of ``n`` with a Wilson 95% interval [low, high]."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": self.value}

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (k={self.k}, n={self.n})"


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; exact 0 / 1 ends at k = 0 / k = n; (nan, nan) when n = 0."""
    if n < 0 or k < 0 or k > n:
        raise ConfigError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """A Rate from counts."""
    return Rate(int(k), int(n), *wilson_interval(int(k), int(n), z))


def rate(successes: torch.Tensor | list[bool]) -> Rate:
    """A Rate from a boolean vector."""
    s = torch.as_tensor(successes, dtype=torch.bool).flatten()
    return wilson(int(s.sum()), int(s.numel()))
