"""Printability and smoothness regularisers for physical perturbations (all differentiable, float32, batched).

* ``nps`` — non-printability score (Sharif et al. 2016): how far each pixel is from the nearest colour a printer
  can reproduce. Sharif's definition is the product over the palette of the distances,
  ``NPS(p) = prod_c |p - c|``; Thys et al. 2019's implementation uses the minimum ``min_c |p - c|``. Both are zero
  exactly on palette colours. ``kind="min"`` (default) is scale-free and does not underflow; ``kind="product"``
  follows the paper but underflows to 0 in float32 for large palettes (say > 40 colours).
* ``total_variation`` — anisotropic L1 (Thys), squared L2, or isotropic (Sharif's ``sum sqrt(dx^2 + dy^2)``).
* ``lp_norm`` — per-sample L1 / L2 / L-inf of a perturbation, optionally inside a mask (RP2).
* ``lab_distance`` — mean CIE76 colour difference (Delta E) via ``kornia.color.rgb_to_lab``.

Palettes are ``(K, 3)`` float tensors in [0, 1] RGB; ``palette=None`` means the shipped default. The file format,
its loader and the default live in ``testbed.palette`` (``load_palette``, ``resolve_palette``). A printer profile
(``physical.printer_profile``, ``testbed printer-profile``) is also a palette file: its ``colors`` are the gamut
of the user's measured printer (``PrinterProfile.gamut``), so ``palette="profile.json"`` is its NPS gamut.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from testbed.errors import ConfigError
from testbed.palette import resolve_palette

NPSKind = Literal["min", "product"]
TVKind = Literal["l1", "l2", "isotropic"]


# ------------------------------------------------------------------------------------------------ helpers
def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with a zero (not NaN) gradient at 0 and an exact 0 value there."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-sample mean of (B, 1, H, W) ``values`` over ``mask`` (B or 1, 1, H, W) weights."""
    if mask is None:
        return values.flatten(1).mean(dim=1)
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp_min(1e-12)


def _check_image(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{name} must be a BCHW tensor, got {shape}")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ConfigError(f"reduction must be mean, sum or none, got {reduction!r}")


# ------------------------------------------------------------------------------------------------ losses
def nps_map(image: Tensor, palette: Tensor | None = None, *, kind: NPSKind = "min") -> Tensor:
    """Per-pixel non-printability (B, 1, H, W): min or product over palette colours of the RGB distance."""
    _check_image(image, "image")
    # a tensor is used as given (the attacks resolve and check their palette once per call, not per step)
    pal = palette if isinstance(palette, Tensor) else resolve_palette(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ConfigError(f"a palette must be a (K, 3) tensor of RGB colours, got {tuple(pal.shape)}")
    pal = pal.to(device=image.device, dtype=image.dtype)
    diff = image[:, None, :, :, :] - pal[None, :, :, None, None]  # (B, K, 3, H, W)
    dist = _safe_sqrt((diff * diff).sum(dim=2))  # (B, K, H, W)
    if kind == "min":
        return dist.amin(dim=1, keepdim=True)
    if kind == "product":
        return dist.prod(dim=1, keepdim=True)
    raise ConfigError(f"NPS kind must be 'min' or 'product', got {kind!r}")


def nps(
    image: Tensor,
    palette: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    kind: NPSKind = "min",
    reduction: str = "mean",
) -> Tensor:
    """Non-printability score: per-sample mean over (masked) pixels of ``nps_map``, reduced over the batch."""
    return _reduce(_masked_mean(nps_map(image, palette, kind=kind), mask), reduction)


def total_variation(
    image: Tensor, *, mask: Tensor | None = None, kind: TVKind = "l1", reduction: str = "mean"
) -> Tensor:
    """Total variation per sample, normalised by the number of (masked) pixels; 0 on a constant image.

    With a mask, only differences between two pixels both inside the mask count.
    """
    _check_image(image, "image")
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    if mask is not None:
        m = mask.to(image.dtype)
        dx = dx * (m[..., :, 1:] * m[..., :, :-1])
        dy = dy * (m[..., 1:, :] * m[..., :-1, :])
        count = m.expand(image.shape[0], 1, -1, -1).flatten(1).sum(dim=1).clamp_min(1.0)
    else:
        count = torch.full((image.shape[0],), float(image.shape[-1] * image.shape[-2]), device=image.device)
    if kind == "l1":
        tv = dx.abs().flatten(1).sum(1) + dy.abs().flatten(1).sum(1)
    elif kind == "l2":
        tv = (dx * dx).flatten(1).sum(1) + (dy * dy).flatten(1).sum(1)
    elif kind == "isotropic":
        g2 = dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2
        tv = _safe_sqrt(g2).flatten(1).sum(1)
    else:
        raise ConfigError(f"TV kind must be l1, l2 or isotropic, got {kind!r}")
    return _reduce(tv / count.to(tv.dtype), reduction)


def lp_norm(
    delta: Tensor, p: float | str = 2, *, mask: Tensor | None = None, reduction: str = "none"
) -> Tensor:
    """Per-sample Lp norm of a perturbation (p = 1, 2 or "inf"), optionally of ``mask * delta`` (RP2)."""
    _check_image(delta, "delta")
    d = delta if mask is None else delta * mask.to(delta.dtype)
    flat = d.flatten(1)
    if p in ("inf", float("inf")):
        out = flat.abs().amax(dim=1)
    elif p in (1, 1.0, "1"):
        out = flat.abs().sum(dim=1)
    elif p in (2, 2.0, "2"):
        out = _safe_sqrt((flat * flat).sum(dim=1))
    else:
        raise ConfigError(f"p must be 1, 2 or 'inf', got {p!r}")
    return _reduce(out, reduction)


def lab_distance(a: Tensor, b: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Mean CIE76 Delta E between two RGB [0, 1] batches (per sample, over (masked) pixels)."""
    from kornia.color import rgb_to_lab

    _check_image(a, "a")
    _check_image(b, "b")
    if a.shape[1] != 3 or b.shape[1] != 3:
        raise ConfigError(f"lab_distance needs RGB images, got {tuple(a.shape)} and {tuple(b.shape)}")
    d = rgb_to_lab(a.clamp(0, 1)) - rgb_to_lab(b.clamp(0, 1))
    de = _safe_sqrt((d * d).sum(dim=1, keepdim=True))
    return _reduce(_masked_mean(de, mask), reduction)
