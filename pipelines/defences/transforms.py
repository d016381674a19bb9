"""Input-transformation defences as model wrappers, with BPDA and EOT for the adaptive attacker.

Transforms follow the kornia split: ``forward_parameters(x, generator) -> params`` (the random draw; ``None`` for
deterministic transforms), then ``apply(x, params)``.

* :class:`JPEG` (Dziugaite et al. 2016; Guo et al. 2018) — the real codec at ``quality`` in [1, 100]
  (``testbed.imageio.jpeg_round_trip``, the project's one non-differentiable JPEG); not differentiable. The attacks'
  differentiable JPEG is kornia's (``physical.eot_stages``): both are needed, a defence must be the real codec;
* :class:`BitDepth` (Xu et al. 2018) — round to ``bits`` bits per channel; its autograd gradient is zero (the
  project's one bit-depth reduction: the secure path's multi-path predictor uses it too);
* :class:`MedianFilter` (Xu et al. 2018) — k×k median, reflect padding; differentiable almost everywhere;
* :class:`RandomResizePad` (Xie et al. 2018) — resize to a random side in [min_side, size], zero-pad at a random
  offset back to the input size; random, differentiable.

:class:`TransformDefence` (``transform(x)`` then the classifier) has three gradient modes:

* ``"naive"`` — what autograd gives through the transform as implemented (zero for JPEG and bit depth: the output
  is a constant of the input): the non-adaptive white-box attacker's view;
* ``"bpda"`` — Athalye et al. 2018's Backward Pass Differentiable Approximation with g(x) = x: the forward pass is
  the real transform, the backward pass the identity (straight-through);
* random transforms draw fresh parameters on every call from the wrapper's own generator (``reseed``), so the
  EOT attacker (:func:`eot_callable`) averages gradients over draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.defences import DefenceError
from testbed.errors import ConfigError
from testbed.imageio import JPEG_QUALITY_RANGE, jpeg_round_trip
from testbed.inputs import bounded_int

GRAD_MODES = ("naive", "bpda")


class InputTransform:
    """Base: deterministic unless ``random`` is true. A dataclass subclass lists its integer hyper-parameters in
    ``int_params`` (field -> (words for the error, lo, hi)); they are checked on construction."""

    name = "transform"
    random = False
    differentiable = True
    int_params: ClassVar[dict[str, tuple[str, int, int]]] = {}

    def __post_init__(self) -> None:
        for field_name, (words, lo, hi) in self.int_params.items():
            try:
                bounded_int(words, getattr(self, field_name), lo, hi)
            except ConfigError as exc:
                raise DefenceError(str(exc)) from None

    def forward_parameters(self, x: Tensor, generator: torch.Generator | None) -> Any:
        return None

    def apply(self, x: Tensor, params: Any = None) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(x, self.forward_parameters(x, generator))

    def config(self) -> dict[str, Any]:
        return {"transform": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


@dataclass
class JPEG(InputTransform):
    """The real codec's round trip at ``quality`` (one image at a time, on the CPU)."""

    quality: int = 75
    name = "jpeg"
    differentiable = False
    int_params = {"quality": ("JPEG quality", *JPEG_QUALITY_RANGE)}

    def apply(self, x: Tensor, params: Any = None) -> Tensor:
        arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([jpeg_round_trip(np.ascontiguousarray(a), self.quality) for a in arr])
        y = torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0
        # a constant of the input as far as autograd is concerned: d y / d x = 0 (what a naive attacker sees)
        return y + 0.0 * x


@dataclass
class BitDepth(InputTransform):
    """Round each channel of the [0, 1]-clamped input to ``bits`` bits (2**bits levels)."""

    bits: int = 3
    name = "bit_depth"
    differentiable = False
    int_params = {"bits": ("bits", 1, 8)}

    def apply(self, x: Tensor, params: Any = None) -> Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels  # autograd: round has zero gradient


@dataclass
class MedianFilter(InputTransform):
    """k x k median, reflect padding (even k: the window reaches one more pixel right and down)."""

    k: int = 3
    name = "median"
    int_params = {"k": ("median filter size k", 2, 7)}

    def apply(self, x: Tensor, params: Any = None) -> Tensor:
        lo = (self.k - 1) // 2
        hi = self.k - 1 - lo
        xp = F.pad(x, (lo, hi, lo, hi), mode="reflect")
        b, c, h, w = x.shape
        patches = F.unfold(xp, self.k).view(b, c, self.k * self.k, h * w)
        return patches.median(dim=2).values.view(b, c, h, w)


@dataclass
class RandomResizePad(InputTransform):
    """Xie et al. 2018 at the sign model's scale: resize to a side in [min_side, size], pad at a random offset."""

    min_side: int = 26
    name = "resize_pad"
    random = True
    int_params = {"min_side": ("min_side", 4, 2**31 - 1)}

    def forward_parameters(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        if generator is None:
            raise DefenceError("RandomResizePad needs a torch.Generator for its draw")
        size = x.shape[-1]
        if self.min_side > size:
            raise DefenceError(f"min_side {self.min_side} exceeds the image side {size}")
        b = x.shape[0]
        side = torch.randint(self.min_side, size + 1, (b,), generator=generator)
        u = torch.rand(b, 2, generator=generator)
        off = (u * (size - side + 1).unsqueeze(1)).floor().long()
        return {"side": side, "top": off[:, 0], "left": off[:, 1]}

    def apply(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        if params is None:
            raise DefenceError("RandomResizePad.apply needs the parameters from forward_parameters")
        size = x.shape[-1]
        outs = []
        for i in range(x.shape[0]):
            s, t, l = int(params["side"][i]), int(params["top"][i]), int(params["left"][i])
            r = F.interpolate(x[i:i + 1], size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            outs.append(F.pad(r, (l, size - s - l, t, size - s - t)))
        return torch.cat(outs)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``y`` (the transform's output); backward: the incoming gradient unchanged (g(x) = x)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return y.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def bpda(transform: InputTransform, x: Tensor, params: Any = None) -> Tensor:
    """The transform's output with an identity backward pass (BPDA, Athalye et al. 2018)."""
    return _StraightThrough.apply(x, transform.apply(x.detach(), params))


class TransformDefence(nn.Module):
    """``model(transform(x))`` with the gradient mode ``grad`` ("naive" or "bpda"); random transforms draw from
    the wrapper's generator (seed ``seed``; ``reseed`` restarts it)."""

    def __init__(self, model: nn.Module, transform: InputTransform, grad: str = "naive", seed: int = 0) -> None:
        super().__init__()
        if grad not in GRAD_MODES:
            raise DefenceError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        self.model = model
        self.transform = transform
        self.grad = grad
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def with_grad(self, grad: str) -> "TransformDefence":
        """The same defence (same classifier, transform and generator) with another gradient mode."""
        other = TransformDefence(self.model, self.transform, grad)
        other.generator = self.generator
        return other

    def forward(self, x: Tensor) -> Tensor:
        params = self.transform.forward_parameters(x, self.generator)
        xt = bpda(self.transform, x, params) if self.grad == "bpda" else self.transform.apply(x, params)
        return self.model(xt)


def eot_callable(transform: InputTransform, *, use_bpda: bool | None = None):
    """An ``eot(x, generator) -> x'`` for ``physical.attacks`` (``eot=``, ``eot_samples=``): a fresh draw of the
    transform per copy, with BPDA when the transform is not differentiable (or ``use_bpda``)."""
    straight = (not transform.differentiable) if use_bpda is None else use_bpda

    def eot(x: Tensor, generator: torch.Generator) -> Tensor:
        params = transform.forward_parameters(x, generator)
        return bpda(transform, x, params) if straight else transform.apply(x, params)

    eot.config = lambda: {"eot": transform.config(), "bpda": straight}  # type: ignore[attr-defined]
    return eot
