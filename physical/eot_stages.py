"""The stages of the EOT distribution (``physical.eot``): one class per physical step, each owning its config
fields, its validation, its parameter draw and its application.

A stage is a :class:`Stage` subclass with

* ``name`` — the stage's key in an ``EOTConfig``'s stage list, in ``EOTParams`` and in its random stream;
* ``Config`` — a frozen dataclass of its settings, every field defaulted to the identity, validated in
  ``__post_init__`` (the flat keys of ``EOTConfig`` are these fields, so field names are unique across stages);
* ``enabled`` — whether ``apply`` changes anything under this config (a disabled stage still samples, so a
  stage's draws never depend on another stage's settings);
* ``sample(n, generator, device) -> dict[str, Tensor]`` — its parameters, drawn only from ``generator`` (the
  stage's own stream, a CPU ``torch.Generator``; see ``physical.eot.stage_generator``), always the same amount
  of randomness whatever its config;
* ``apply(x, params) -> x`` — BCHW float images, differentiable w.r.t. ``x``.

A deterministic stage (``random = False``, e.g. ``resize``) draws nothing, so it also applies to parameters drawn
by a transform without it.

Two optional capabilities let the pipeline fuse adjacent stages without changing a stage's draws:
``colour_affine = True`` stages also give ``colour_map(params)``, a per-sample affine colour map (consecutive
ones are composed into one multiply-add); ``commutes_with_colour`` says a spatial stage may be crossed by a
pending colour map (a bilinear warp whose weights sum to 1 commutes with per-pixel affine colour maps).

``register_stage`` adds a class to ``STAGES`` (by name); ``physical.eot.EOTConfig`` builds stages from it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from physical.hyper import check_known_keys
from testbed.errors import ConfigError

Range = tuple[float, float]
Params = dict[str, Tensor]


# ------------------------------------------------------------------------------------------------ validation
def _range(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> Range:
    """Validate a (min, max) pair (a single number means (v, v))."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"EOT config {name} must be a [min, max] pair, got {value!r}")
    a, b = value
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"EOT config {name} must hold finite numbers, got {value!r}")
    if a > b:
        raise ConfigError(f"EOT config {name} must have min <= max, got {value!r}")
    if lo is not None and a < lo:
        raise ConfigError(f"EOT config {name} must be >= {lo}, got {value!r}")
    if hi is not None and b > hi:
        raise ConfigError(f"EOT config {name} must be <= {hi}, got {value!r}")
    return (float(a), float(b))


def _nonneg(name: str, value: Any, hi: float | None = None) -> float:
    """Validate a finite number >= 0 (and <= ``hi``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"EOT config {name} must be a finite number >= 0, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"EOT config {name} must be <= {hi}, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"EOT config {name} must be {' or '.join(options)}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"EOT config {name} must be a bool, got {value!r}")
    return value


def _set(obj: Any, **values: Any) -> None:
    """Store normalised values on a frozen dataclass from its ``__post_init__``."""
    for k, v in values.items():
        object.__setattr__(obj, k, v)


def _lin(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _sym(u: Tensor, m: float) -> Tensor:
    return (2.0 * u - 1.0) * m


# ------------------------------------------------------------------------------------------------ colour maps
@dataclass
class ColourMap:
    """A per-sample affine colour map ``x -> mix @ (gain * x) + bias`` (``mix`` None: the identity matrix)."""

    gain: Tensor  # (B, 3)
    bias: Tensor  # (B, 3)
    mix: Tensor | None = None  # (B, 3, 3)

    def then(self, later: "ColourMap") -> "ColourMap":
        """The map ``later(self(x))``."""
        g2, b2, m2 = later.gain, later.bias, later.mix
        if self.mix is None:
            bias = g2 * self.bias
            bias = bias if m2 is None else (m2 @ bias[:, :, None])[:, :, 0]
            return ColourMap(g2 * self.gain, bias + b2, m2)
        m = g2[:, :, None] * self.mix
        m = m if m2 is None else m2 @ m
        bias = g2 * self.bias
        bias = bias if m2 is None else (m2 @ bias[:, :, None])[:, :, 0]
        return ColourMap(self.gain, bias + b2, m)

    def apply(self, x: Tensor) -> Tensor:
        g, b = self.gain.to(x.dtype), self.bias.to(x.dtype)
        if self.mix is None:  # one broadcast multiply-add
            return torch.addcmul(b[:, :, None, None], x, g[:, :, None, None])
        m = self.mix.to(x.dtype) * g[:, None, :]
        return torch.einsum("bij,bjhw->bihw", m, x) + b[:, :, None, None]


# ------------------------------------------------------------------------------------------------ base
class Stage:
    """One step of the distribution. Subclasses set ``name`` and ``Config`` and implement ``enabled``,
    ``sample`` and ``apply`` (see the module docstring)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    colour_affine: ClassVar[bool] = False
    random: ClassVar[bool] = True  # False: draws nothing (applies to params drawn without this stage too)
    printed: ClassVar[bool] = False  # True: acts on the printed part only (EOTTransform.apply_print; print_stage=False skips it)
    insert_before: ClassVar[str | None] = None  # an opt-in stage: a config setting its keys without a stage list gets it here

    def __init__(self, config: Any = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            check_known_keys(self.Config, config, f"EOT {self.name} stage config")
            config = self.Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()})
        elif not isinstance(config, self.Config):
            raise ConfigError(f"EOT {self.name} stage config must be a {self.Config.__name__} or a dict, "
                              f"got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Config))

    @property
    def enabled(self) -> bool:
        raise NotImplementedError

    @property
    def commutes_with_colour(self) -> bool:
        """True when a per-pixel affine colour map may be applied after this stage instead of before it."""
        return False

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        raise NotImplementedError

    def apply(self, x: Tensor, params: Params) -> Tensor:
        if self.colour_affine:
            return self.colour_map(params).apply(x)
        raise NotImplementedError

    def colour_map(self, params: Params) -> ColourMap:
        raise NotImplementedError(f"EOT stage {self.name} is not a colour-affine stage")

    @staticmethod
    def uniforms(n: int, k: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """(n, k) uniforms from the stage's generator, moved to ``device`` (one host-to-device copy)."""
        return torch.rand(n, k, generator=generator, device=generator.device).to(device)


#: stage name -> class (built-in stages below; ``register_stage`` adds more)
STAGES: dict[str, type[Stage]] = {}
_OWNERS: dict[str, str] = {}  # flat config key -> stage name, kept in step with STAGES
_RESERVED_KEYS = ("preset", "stages")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage usable in ``EOTConfig`` stage lists and presets (by ``cls.name``)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"EOT stage class {cls.__name__} needs a name of letters, digits, '-' or '_', got {name!r}")
    if name in STAGES and STAGES[name] is not cls:
        raise ConfigError(f"an EOT stage named {name!r} is already registered ({STAGES[name].__name__})")
    if not dataclasses.is_dataclass(cls.Config) or not cls.Config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ConfigError(f"EOT stage {name!r}: Config must be a frozen dataclass")
    for f in cls.field_names():
        if f in _RESERVED_KEYS:
            raise ConfigError(f"EOT stage {name!r}: config field {f!r} is a reserved key")
        if _OWNERS.get(f, name) != name:
            raise ConfigError(f"EOT stage {name!r}: config field {f!r} is already a field of stage {_OWNERS[f]!r}")
    STAGES[name] = cls
    _OWNERS.update({f: name for f in cls.field_names()})
    return cls


def unregister_stage(name: str) -> None:
    """Remove a registered stage (for tests that define their own)."""
    if STAGES.pop(name, None) is not None:
        for f in [f for f, n in _OWNERS.items() if n == name]:
            del _OWNERS[f]


def field_owners() -> dict[str, str]:
    """Flat config key -> name of the registered stage that owns it (read-only view; do not modify)."""
    return _OWNERS


# ------------------------------------------------------------------------------------------------ print
@dataclass(frozen=True)
class PrintConfig:
    printer_gain: float = 0.0  # gain uniform in [1 - g, 1 + g] per channel
    printer_offset: float = 0.0  # offset uniform in [-o, o] per channel

    def __post_init__(self) -> None:
        _set(self, printer_gain=_nonneg("printer_gain", self.printer_gain, 1.0),
             printer_offset=_nonneg("printer_offset", self.printer_offset, 1.0))


@register_stage
class PrintStage(Stage):
    """Printer colour error: per-channel gain and offset, ``x -> g * x + o``."""

    name = "print"
    Config = PrintConfig
    colour_affine = True
    printed = True

    @property
    def enabled(self) -> bool:
        return self.config.printer_gain > 0 or self.config.printer_offset > 0

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        c, u = self.config, self.uniforms(n, 6, generator, device)
        return {"printer_gain": 1.0 + _sym(u[:, 0:3], c.printer_gain),
                "printer_offset": _sym(u[:, 3:6], c.printer_offset)}

    def colour_map(self, params: Params) -> ColourMap:
        return ColourMap(params["printer_gain"], params["printer_offset"])


# ------------------------------------------------------------------------------------------------ printer profile
@dataclass(frozen=True)
class ProfileConfig:
    printer_profile: str | None = None  # printer-profile JSON (`testbed printer-profile`); None: identity
    printer_profile_jitter: float = 0.0  # per-channel offset uniform in [-j, j] after the profile (its residual)

    def __post_init__(self) -> None:
        path = self.printer_profile
        if path is not None:
            if not isinstance(path, str) or not path:
                raise ConfigError(f"EOT config printer_profile must be a profile file path, got {path!r}")
            from physical.printer_profile import load_profile

            load_profile(path)  # validated now (ConfigError naming the file and the problem); cached
        _set(self, printer_profile_jitter=_nonneg("printer_profile_jitter", self.printer_profile_jitter, 0.5))


@register_stage
class ProfileStage(Stage):
    """The user's printer + paper + camera as measured from their chart (``physical.printer_profile``): intended
    colour -> printed colour as photographed, relative to paper white; then a per-channel offset ``± jitter``.
    Applied to the printed part only, before the ``print`` stage; a config that sets ``printer_profile`` without a
    stage list gets it first."""

    name = "profile"
    Config = ProfileConfig
    printed = True
    insert_before = "print"

    @property
    def enabled(self) -> bool:
        return self.config.printer_profile is not None or self.config.printer_profile_jitter > 0

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        return {"profile_offset": _sym(self.uniforms(n, 3, generator, device), self.config.printer_profile_jitter)}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        if self.config.printer_profile is not None:
            from physical.printer_profile import load_profile

            x = load_profile(self.config.printer_profile).apply(x)
        if self.config.printer_profile_jitter > 0:
            x = x + params["profile_offset"].to(x.dtype)[:, :, None, None]
        return x


# ------------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class GeometryConfig:
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    scale: Range = (1.0, 1.0)  # zoom factor (distance), uniform
    translate: float = 0.0  # fraction of width/height, uniform in [-t, t] per axis
    perspective: float = 0.0  # each corner moves inward by U(0, perspective) * half the size, per axis
    padding: Literal["zeros", "border", "reflection"] = "border"

    def __post_init__(self) -> None:
        _set(self, rotation=_nonneg("rotation", self.rotation, 180.0), scale=_range("scale", self.scale, 1e-3),
             translate=_nonneg("translate", self.translate, 1.0),
             perspective=_nonneg("perspective", self.perspective, 1.0),
             padding=_choice("padding", self.padding, ("zeros", "border", "reflection")))


@register_stage
class GeometryStage(Stage):
    """Viewpoint: one homography per sample = translation . rotation . scale (about the image centre)
    . perspective (corner displacement), one bilinear resampling (``warp_pixels``)."""

    name = "geometry"
    Config = GeometryConfig

    @property
    def enabled(self) -> bool:
        c = self.config
        return c.rotation > 0 or c.scale != (1.0, 1.0) or c.translate > 0 or c.perspective > 0

    @property
    def commutes_with_colour(self) -> bool:
        return self.config.padding != "zeros"  # border / reflection: the warp's weights always sum to 1

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        c, u = self.config, self.uniforms(n, 12, generator, device)
        return {"angle": _sym(u[:, 0], c.rotation), "scale": _lin(u[:, 1], *c.scale),
                "translate": _sym(u[:, 2:4], c.translate), "perspective": (u[:, 4:12] * c.perspective).reshape(n, 4, 2)}

    def homography(self, params: Params, height: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, 3, 3) source -> destination pixel homography."""
        import kornia.geometry.transform as KT

        angle = params["angle"]
        b, dev = angle.shape[0], angle.device
        size = torch.tensor([width - 1.0, height - 1.0], device=dev, dtype=dtype)
        half = size / 2
        theta = torch.deg2rad(angle.to(dtype))
        s = params["scale"].to(dtype)
        cos, sin = torch.cos(theta) * s, torch.sin(theta) * s
        t = half + params["translate"].to(dtype) * size
        # A = T(half + t) R S T(-half)
        row0 = torch.stack([cos, -sin, t[:, 0] - cos * half[0] + sin * half[1]], dim=1)
        row1 = torch.stack([sin, cos, t[:, 1] - sin * half[0] - cos * half[1]], dim=1)
        row2 = torch.tensor([0.0, 0.0, 1.0], device=dev, dtype=dtype).expand(b, 3)
        affine = torch.stack([row0, row1, row2], dim=1)
        if not self.config.perspective > 0:
            return affine
        corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], device=dev, dtype=dtype) * size
        inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], device=dev, dtype=dtype)
        src = corners.expand(b, 4, 2)
        dst = src + inward * params["perspective"].to(dtype) * half
        return affine @ KT.get_perspective_transform(src, dst)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        h, w = x.shape[-2:]
        m = self.homography(params, h, w, torch.float32)
        return warp_pixels(x, m, (h, w), self.config.padding, affine=not self.config.perspective > 0)


# ------------------------------------------------------------------------------------------------ light
_LUMA = (0.299, 0.587, 0.114)  # Rec. 601 luma weights for saturation


@dataclass(frozen=True)
class LightConfig:
    illuminant: float = 0.0  # per-channel gain uniform in [1 - i, 1 + i], renormalised to mean 1
    brightness: float = 0.0  # additive, uniform in [-b, b]
    contrast: Range = (1.0, 1.0)  # multiplicative about contrast_pivot
    contrast_pivot: float = 0.5
    saturation: Range = (1.0, 1.0)  # 0 = grey, 1 = unchanged

    def __post_init__(self) -> None:
        pivot = self.contrast_pivot
        if isinstance(pivot, bool) or not isinstance(pivot, (int, float)) or not 0.0 <= pivot <= 1.0:
            raise ConfigError(f"EOT config contrast_pivot must be in [0, 1], got {pivot!r}")
        _set(self, illuminant=_nonneg("illuminant", self.illuminant, 0.99),
             brightness=_nonneg("brightness", self.brightness, 1.0), contrast=_range("contrast", self.contrast, 0.0),
             contrast_pivot=float(pivot), saturation=_range("saturation", self.saturation, 0.0))


@register_stage
class LightStage(Stage):
    """Illuminant colour (per-channel gain, mean 1), contrast about ``contrast_pivot``, additive brightness and
    luma-preserving saturation: one per-sample 3x3 colour matrix and bias (diagonal when saturation is off)."""

    name = "light"
    Config = LightConfig
    colour_affine = True

    @property
    def enabled(self) -> bool:
        c = self.config
        return c.illuminant > 0 or c.brightness > 0 or c.contrast != (1.0, 1.0) or c.saturation != (1.0, 1.0)

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        c, u = self.config, self.uniforms(n, 6, generator, device)
        illum = 1.0 + _sym(u[:, 0:3], c.illuminant)
        return {"illuminant": illum / illum.mean(dim=1, keepdim=True), "brightness": _sym(u[:, 3], c.brightness),
                "contrast": _lin(u[:, 4], *c.contrast), "saturation": _lin(u[:, 5], *c.saturation)}

    def colour_map(self, params: Params) -> ColourMap:
        contrast = params["contrast"][:, None]
        gain = contrast * params["illuminant"]
        bias = ((1.0 - contrast) * self.config.contrast_pivot + params["brightness"][:, None]).expand_as(gain)
        if self.config.saturation == (1.0, 1.0):
            return ColourMap(gain, bias)
        # S = s I + (1 - s) 1 w^T (luma-preserving), applied after contrast and brightness
        s = params["saturation"][:, None, None]
        w = torch.tensor(_LUMA, device=s.device, dtype=s.dtype)
        sat = s * torch.eye(3, device=s.device, dtype=s.dtype) + (1.0 - s) * w.expand(3, 3)
        return ColourMap(gain, (sat @ bias[:, :, None])[:, :, 0], sat)


# ------------------------------------------------------------------------------------------------ optics
@dataclass(frozen=True)
class OpticsConfig:
    blur_kind: Literal["gaussian", "disk"] = "gaussian"
    blur: Range = (0.0, 0.0)  # defocus: Gaussian sigma or disk radius, pixels
    motion: Range = (0.0, 0.0)  # motion blur length, pixels (direction uniform in [0, 180) degrees)

    def __post_init__(self) -> None:
        _set(self, blur_kind=_choice("blur_kind", self.blur_kind, ("gaussian", "disk")),
             blur=_range("blur", self.blur, 0.0, 50.0), motion=_range("motion", self.motion, 0.0, 100.0))


@register_stage
class OpticsStage(Stage):
    """Defocus (Gaussian or disk) and linear motion blur, convolved into one per-sample kernel and applied with
    one ``kornia.filters.filter2d`` pass."""

    name = "optics"
    Config = OpticsConfig

    @property
    def enabled(self) -> bool:
        return self.config.blur[1] > 0 or self.config.motion[1] > 0

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        c, u = self.config, self.uniforms(n, 3, generator, device)
        return {"blur": _lin(u[:, 0], *c.blur), "motion_length": _lin(u[:, 1], *c.motion),
                "motion_angle": u[:, 2] * 180.0}

    def kernel(self, params: Params, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, K, K) per-sample kernel: defocus convolved with motion blur (normalised to sum 1)."""
        c = self.config
        blur = params["blur"]
        dev, b = blur.device, blur.shape[0]
        kernels: list[Tensor] = []
        if c.blur[1] > 0:
            r = int(math.ceil(3.0 * c.blur[1])) if c.blur_kind == "gaussian" else int(math.ceil(c.blur[1])) + 1
            ax = torch.arange(-r, r + 1, device=dev, dtype=dtype)
            if c.blur_kind == "gaussian":
                sig = blur.to(dtype).clamp_min(1e-3)[:, None]
                g = torch.exp(-0.5 * (ax[None, :] / sig) ** 2)
                g = g / g.sum(dim=1, keepdim=True)
                k = g[:, :, None] * g[:, None, :]
            else:
                dist = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
                k = (blur.to(dtype)[:, None, None] + 0.5 - dist).clamp(0.0, 1.0)
                k = k / k.sum(dim=(1, 2), keepdim=True)
            kernels.append(k)
        if c.motion[1] > 0:
            r = int(math.ceil(c.motion[1] / 2.0)) + 1
            ax = torch.arange(-r, r + 1, device=dev, dtype=dtype)
            yy, xx = torch.meshgrid(ax, ax, indexing="ij")
            theta = torch.deg2rad(params["motion_angle"].to(dtype))
            ux, uy = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
            half = params["motion_length"].to(dtype)[:, None, None] / 2
            along = torch.clamp(xx * ux + yy * uy, min=-half, max=half)
            dx, dy = xx - along * ux, yy - along * uy
            k = (1.0 - torch.sqrt(dx * dx + dy * dy + 1e-12)).clamp_min(0.0)
            kernels.append(k / k.sum(dim=(1, 2), keepdim=True))
        if not kernels:
            return torch.ones(b, 1, 1, device=dev, dtype=dtype)
        if len(kernels) == 1:
            return kernels[0]
        k1, k2 = kernels
        pad = k2.shape[-1] - 1
        # per-sample full convolution k1 * k2 (grouped conv; k2 flipped to turn correlation into convolution)
        return F.conv2d(F.pad(k1[None], (pad, pad, pad, pad)), k2.flip(-1, -2)[:, None], groups=b)[0]

    def apply(self, x: Tensor, params: Params) -> Tensor:
        from kornia.filters import filter2d

        k = self.kernel(params, x.dtype)
        if k.shape[-1] == 1:
            return x
        return filter2d(x, k, border_type="reflect")


# ------------------------------------------------------------------------------------------------ sensor
@dataclass(frozen=True)
class SensorConfig:
    noise_kind: Literal["gaussian", "uniform"] = "gaussian"
    noise: Range = (0.0, 0.0)  # noise standard deviation (gaussian) or half-width (uniform)
    jpeg_quality: Range | None = None  # None: no JPEG; else quality uniform in [min, max] (1..100)
    clamp: bool = True  # clamp to [0, 1] after the noise (JPEG always sees [0, 1])

    def __post_init__(self) -> None:
        _set(self, noise_kind=_choice("noise_kind", self.noise_kind, ("gaussian", "uniform")),
             noise=_range("noise", self.noise, 0.0, 1.0), clamp=_flag("clamp", self.clamp))
        if self.jpeg_quality is not None:
            _set(self, jpeg_quality=_range("jpeg_quality", self.jpeg_quality, 1.0, 100.0))


@register_stage
class SensorStage(Stage):
    """Additive Gaussian (or uniform) noise, then clamping to [0, 1], then differentiable JPEG
    (``kornia.enhance.jpeg_codec_differentiable``) at a per-sample quality. The noise field is regenerated at
    ``apply`` time from the drawn ``noise_seed`` on the images' device (exact replay on the same device type)."""

    name = "sensor"
    Config = SensorConfig

    @property
    def enabled(self) -> bool:
        c = self.config
        return c.noise[1] > 0 or c.clamp or c.jpeg_quality is not None

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        c, u = self.config, self.uniforms(n, 2, generator, device)
        seed = torch.randint(0, 2**62, (), generator=generator, device=generator.device, dtype=torch.int64)
        quality = c.jpeg_quality or (100.0, 100.0)
        return {"noise_std": _lin(u[:, 0], *c.noise), "jpeg_quality": _lin(u[:, 1], *quality), "noise_seed": seed.cpu()}

    def noise_field(self, shape: torch.Size, params: Params, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The unit noise field regenerated from ``params["noise_seed"]`` (on ``device``)."""
        g = torch.Generator(device=device).manual_seed(int(params["noise_seed"]))
        if self.config.noise_kind == "gaussian":
            return torch.randn(shape, generator=g, device=device, dtype=dtype)
        return torch.rand(shape, generator=g, device=device, dtype=dtype).mul_(2.0).sub_(1.0)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        c = self.config
        if c.noise[1] > 0:
            n = self.noise_field(x.shape, params, x.device, x.dtype)
            x = torch.addcmul(x, n, params["noise_std"].to(device=x.device, dtype=x.dtype)[:, None, None, None])
        if c.clamp or c.jpeg_quality is not None:
            x = x.clamp(0.0, 1.0)
        if c.jpeg_quality is not None:
            from kornia.enhance import jpeg_codec_differentiable

            x = jpeg_codec_differentiable(x, params["jpeg_quality"].to(device=x.device, dtype=x.dtype))
        return x


# ------------------------------------------------------------------------------------------------ resize
@dataclass(frozen=True)
class ResizeConfig:
    resize_to: tuple[int, int] | None = None  # (height, width) of the camera image; None: no resampling
    resize_antialias: bool = True

    def __post_init__(self) -> None:
        size = self.resize_to
        if size is not None:
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            if (not isinstance(size, (tuple, list)) or len(size) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)):
                raise ConfigError(f"EOT config resize_to must be a (height, width) pair of integers >= 1, got {size!r}")
            _set(self, resize_to=(int(size[0]), int(size[1])))
        _set(self, resize_antialias=_flag("resize_antialias", self.resize_antialias))


@register_stage
class ResizeStage(Stage):
    """The camera's resampling: a bilinear (antialiased) resize to ``resize_to``; deterministic (draws nothing).
    Put it where the optics sample the scene, e.g. after ``geometry`` (the print seen at its resolution) and
    before ``light``/``optics``/``sensor`` (which act on the camera's pixels)."""

    name = "resize"
    Config = ResizeConfig
    random = False

    @property
    def enabled(self) -> bool:
        return self.config.resize_to is not None

    @property
    def commutes_with_colour(self) -> bool:
        return True  # bilinear weights sum to 1

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Params:
        return {}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        size = self.config.resize_to
        if size is None or tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.config.resize_antialias)


#: the stage list of a config that does not name one (physical order)
DEFAULT_STAGES: tuple[str, ...] = ("print", "geometry", "light", "optics", "sensor")


# ------------------------------------------------------------------------------------------------ warping
_BASE_GRIDS: dict[tuple[int, int, str, torch.dtype], Tensor] = {}


def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, h*w, 3) homogeneous normalised coordinates (x, y, 1) of the output pixels (align_corners=True), cached."""
    key = (h, w, str(device), dtype)
    g = _BASE_GRIDS.get(key)
    if g is None:
        ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype) if h > 1 else torch.zeros(1, device=device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype) if w > 1 else torch.zeros(1, device=device, dtype=dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        g = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, h * w, 3)
        if len(_BASE_GRIDS) > 32:
            _BASE_GRIDS.clear()
        _BASE_GRIDS[key] = g
    return g


def _pixel_to_norm(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """3x3 map from pixel coordinates (0..w-1, 0..h-1) to [-1, 1] (align_corners=True)."""
    sx = 2.0 / (w - 1) if w > 1 else 1.0
    sy = 2.0 / (h - 1) if h > 1 else 1.0
    return torch.tensor([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]], device=device, dtype=dtype)


def warp_pixels(
    x: Tensor, m: Tensor, size: tuple[int, int], padding: str = "zeros", *, affine: bool | None = None
) -> Tensor:
    """Warp ``x`` (B, C, H, W) by per-sample source -> destination pixel maps ``m`` ((B, 2, 3) affine or (B, 3, 3)
    homography) into ``size`` = (h, w): bilinear, ``align_corners=True``, ``padding`` zeros / border / reflection.

    The same sampling positions as ``kornia.geometry.warp_affine`` / ``warp_perspective`` (the matrix is moved to
    normalised coordinates and inverted once per sample), but the grid is one batched matmul of a cached base grid
    and one ``grid_sample``: about 3x cheaper on a CPU than kornia's per-pixel broadcasts."""
    b = x.shape[0]
    h, w = size
    dev, dt = x.device, x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if m.shape[-2:] == (2, 3):
        last = torch.tensor([0.0, 0.0, 1.0], device=dev, dtype=dt).expand(m.shape[0], 1, 3)
        m = torch.cat([m.to(dt), last], dim=1)
        affine = True
    m = m.to(device=dev, dtype=dt).expand(b, 3, 3)
    n_dst = _pixel_to_norm(h, w, dev, dt)
    n_src_inv = torch.linalg.inv(_pixel_to_norm(x.shape[-2], x.shape[-1], dev, dt))
    src_from_dst = torch.linalg.inv(n_dst @ m @ n_src_inv)  # normalised destination -> normalised source
    if affine is None:
        affine = bool((m[:, 2, :2] == 0).all()) and bool((m[:, 2, 2] != 0).all())
    base = _base_grid(h, w, dev, dt)
    if affine:
        src_from_dst = src_from_dst / src_from_dst[:, 2:3, 2:3]
        grid = torch.matmul(base, src_from_dst[:, :2, :].transpose(1, 2))  # (B, h*w, 2)
    else:
        hom = torch.matmul(base, src_from_dst.transpose(1, 2))  # (B, h*w, 3)
        grid = hom[..., :2] / hom[..., 2:3]
    grid = grid.view(b, h, w, 2).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)
