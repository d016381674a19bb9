"""The print-and-photograph transformation distribution (Expectation over Transformation, Athalye et al. 2018).

The distribution is an ordered list of stage objects (``physical.eot_stages``): by default

1. **print** (printer colour error): per-channel gain and offset, ``x -> g * x + o``;
2. **geometry** (viewpoint): one homography per sample = translation . rotation . scale . perspective, one
   bilinear resampling (``warp_pixels``: kornia's sampling positions, one batched grid matmul + ``grid_sample``);
3. **light**: illuminant colour (mean 1), contrast about ``contrast_pivot``, brightness, saturation;
4. **optics**: defocus (Gaussian or disk) and linear motion blur, one per-sample kernel, one ``filter2d`` pass;
5. **sensor**: Gaussian (or uniform) noise, clamping to [0, 1], differentiable JPEG at a per-sample quality;

and, where a caller names it, **resize** (the camera's resampling, e.g. between geometry and light in
``SignSticker.photograph``). Each stage owns its config fields, their validation, ``sample`` and ``apply``.

Two steps, kornia-style: ``params = eot.sample(batch_size, generator, device)`` draws one batch of parameters;
``eot.apply(images, params)`` applies them, differentiably w.r.t. the images. ``eot(x, generator)`` does both
(and keeps the draw in ``eot.last_params``), so an ``EOTTransform`` plugs into the digital attacks' ``eot=``.

**Random streams.** ``sample`` draws ONE 64-bit base seed from the caller's generator (so the caller's stream
advances by the same amount whatever the stage list), and every stage draws from its own CPU ``torch.Generator``
seeded with ``stage_seed(base, stage name)`` (BLAKE2b of both). Adding, removing or reordering a stage never
changes another stage's draws, and a stage draws the same amount of randomness whatever its own settings.

**Fused application.** Consecutive colour-affine stages (print, light) are composed into one per-sample colour
map and applied as one multiply-add (a 3x3 matrix when saturation is on); a pending colour map may cross a stage
that commutes with it (geometry with border/reflection padding, resize), so print + light still cost one pass.

**Parameters** (``EOTParams``) are grouped by stage and serialise with a format version (``to_dict()`` holds
``"format": 2``); the flat dicts written before the stage streams (format 1) still load and replay.

Every enabled op is applied to every sample (probability 1); an op is enabled when its range is not the identity.
Units: rotation in degrees; scale as a zoom factor (>1 is closer); translation and perspective as fractions of
the image size; blur sizes in pixels of the image passed to ``apply``; colour values on the [0, 1] scale.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from physical.eot_presets import PRESETS
from physical.eot_stages import (  # noqa: F401 - re-exported: the engine's public names live here
    DEFAULT_STAGES,
    STAGES,
    ColourMap,
    GeometryStage,
    LightStage,
    OpticsStage,
    PrintStage,
    Range,
    ResizeStage,
    SensorStage,
    Stage,
    _nonneg,
    _range,
    field_owners,
    register_stage,
    unregister_stage,
    warp_pixels,
)
from testbed.errors import ConfigError

#: version of ``EOTParams.to_dict()``: 1 = one flat dict drawn from a single uniform layout (before stages),
#: 2 = {"format": 2, "batch_size": B, "stages": {stage name: {param name: tensor}}}
FORMAT_VERSION = 2
_SEED_MASK = (1 << 63) - 1


# ------------------------------------------------------------------------------------------------ streams
def stage_seed(base_seed: int, stage_name: str) -> int:
    """The seed of a stage's own generator: BLAKE2b of (base seed, stage name), 63 bits (stable across runs and
    Python versions; never Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{int(base_seed)}:{stage_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK


def stage_generator(base_seed: int, stage_name: str) -> torch.Generator:
    """A CPU generator for one stage's draws (same parameters on any device)."""
    return torch.Generator().manual_seed(stage_seed(base_seed, stage_name))


def draw_base_seed(generator: torch.Generator) -> int:
    """One 63-bit seed from the caller's generator: the only randomness ``sample`` takes from it."""
    return int(torch.randint(0, _SEED_MASK, (), generator=generator, device=generator.device, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------ config
def _stage_order(stages: Any) -> tuple[str, ...]:
    if stages is None:
        return DEFAULT_STAGES
    if isinstance(stages, str) or not isinstance(stages, (list, tuple)):
        raise ConfigError(f"EOT config stages must be a list of stage names, got {stages!r}")
    order = tuple(stages)
    for name in order:
        if name not in STAGES:
            raise ConfigError(f"unknown EOT stage {name!r}; known stages: {', '.join(sorted(map(str, STAGES)))}")
    dup = sorted({n for n in order if order.count(n) > 1})
    if dup:
        raise ConfigError(f"EOT config stages name {dup} more than once")
    return order


def _as_value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


class EOTConfig:
    """The distribution's settings: an ordered stage list and each stage's config (JSON/YAML-serialisable,
    validated on construction, immutable).

    Built from flat keyword fields (``EOTConfig(rotation=22.5, scale=(0.9, 1.4))``): each key goes to the stage
    that owns it (``rotation`` -> geometry, ``printer_gain`` -> print, ...); ``stages=[...]`` sets the order
    (default ``DEFAULT_STAGES``). Symmetric ranges are given as a maximum magnitude (``rotation=22.5`` means
    uniform in [-22.5, 22.5]); others as ``(min, max)``. Anything left out is the identity. Fields read as
    attributes (``cfg.rotation``); a field of a stage not in the list reads as its stage's default.
    """

    __slots__ = ("_order", "_configs")

    def __init__(self, *, stages: Sequence[str] | None = None, **fields: Any) -> None:
        order = _stage_order(stages)
        owners = field_owners()
        if stages is None:  # a key of an opt-in stage (e.g. printer_profile) puts that stage where it belongs
            for name in dict.fromkeys(owners[k] for k in fields if k in owners):
                anchor = STAGES[name].insert_before
                if name not in order and anchor in order:
                    order = order[:order.index(anchor)] + (name,) + order[order.index(anchor):]
        grouped: dict[str, dict[str, Any]] = {name: {} for name in order}
        unknown = []
        for key, value in fields.items():
            owner = owners.get(key)
            if owner is None:
                unknown.append(key)
            elif owner not in grouped:
                raise ConfigError(f"EOT config {key} belongs to stage {owner!r}, which is not in the stage list "
                                  f"{list(order)}")
            else:
                grouped[owner][key] = _as_value(value)
        if unknown:
            known = sorted(f for name in order for f in STAGES[name].field_names()) + ["stages"]
            raise ConfigError(f"unknown EOT config key(s) {sorted(unknown)}; known keys: {known}")
        configs = {name: STAGES[name].Config(**grouped[name]) for name in order}
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_configs", configs)

    # -- reading
    @property
    def stage_names(self) -> tuple[str, ...]:
        return self._order

    def stage_config(self, name: str) -> Any:
        """The frozen config dataclass of stage ``name``."""
        try:
            return self._configs[name]
        except KeyError:
            raise ConfigError(f"EOT config has no stage {name!r}; its stages: {list(self._order)}") from None

    def build_stages(self) -> tuple[Stage, ...]:
        """Fresh stage objects, in order."""
        return tuple(STAGES[name](self._configs[name]) for name in self._order)

    def enabled(self, name: str) -> bool:
        """Whether stage ``name`` is in the list and changes anything."""
        return name in self._configs and STAGES[name](self._configs[name]).enabled

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        owner = field_owners().get(name)
        if owner is None:
            raise AttributeError(f"EOTConfig has no field {name!r}")
        cfg = self._configs.get(owner)
        return getattr(cfg if cfg is not None else STAGES[owner].Config(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"EOTConfig is immutable; use replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EOTConfig):
            return NotImplemented
        return self._order == other._order and self._configs == other._configs

    def __hash__(self) -> int:
        return hash((self._order, tuple(self._configs.values())))

    def __repr__(self) -> str:
        parts = [] if self._order == DEFAULT_STAGES else [f"stages={list(self._order)!r}"]
        for cfg in self._configs.values():
            default = type(cfg)()
            parts += [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
                      if getattr(cfg, f.name) != getattr(default, f.name)]
        return f"EOTConfig({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_config_from_dict, (self.to_dict(),))

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Flat: every field of every stage in the list (tuples as lists), and ``stages`` when not the default."""
        out: dict[str, Any] = {} if self._order == DEFAULT_STAGES else {"stages": list(self._order)}
        for cfg in self._configs.values():
            for f in dataclasses.fields(cfg):
                v = getattr(cfg, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EOTConfig":
        """Build from a flat dict; ``{"preset": name, ...overrides}`` starts from a preset. Unknown keys are refused."""
        if not isinstance(data, dict):
            raise ConfigError(f"EOT config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        base: dict[str, Any] = {}
        if "preset" in data:
            base = preset(data.pop("preset")).to_dict()
        return cls(**_merged(base, data))

    def replace(self, **changes: Any) -> "EOTConfig":
        """A copy with some fields (or ``stages``) changed; fields of stages dropped from the list are dropped."""
        return EOTConfig(**_merged(self.to_dict(), changes))

    def with_stage(self, name: str, *, after: str | None = None, before: str | None = None,
                   **fields: Any) -> "EOTConfig":
        """A copy with stage ``name`` inserted after stage ``after`` (or before ``before``; else at the end),
        configured by ``fields``."""
        if name in self._order:
            raise ConfigError(f"EOT config already has a {name!r} stage")
        if after is not None and before is not None:
            raise ConfigError("with_stage takes after= or before=, not both")
        order = list(self._order)
        anchor = after if after is not None else before
        if anchor is None:
            order.append(name)
        else:
            if anchor not in order:
                raise ConfigError(f"EOT config has no stage {anchor!r} to insert {name!r} next to; its stages: {order}")
            order.insert(order.index(anchor) + (1 if after is not None else 0), name)
        return EOTConfig(**{**self.to_dict(), **fields, "stages": order})

    def save(self, path: str | Path) -> Path:
        """Write as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
        from testbed.runs import write_atomic

        p = Path(path)
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=True)
        else:
            text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        return write_atomic(p, text)

    @classmethod
    def load(cls, path: str | Path) -> "EOTConfig":
        from testbed.inputs import load_config_file

        p = Path(path)
        data = load_config_file(p, what="EOT config file")  # size, UTF-8, nesting, parse errors: ConfigError
        if not isinstance(data, dict):
            raise ConfigError(f"EOT config file {p} must hold a mapping of settings, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"EOT config file {p}: {exc}") from None


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; when ``override`` sets ``stages``, base fields of stages no longer in
    the list are dropped."""
    out = dict(base)
    if "stages" in override:
        order = set(_stage_order(override["stages"]))
        owners = field_owners()
        out = {k: v for k, v in out.items() if k == "stages" or owners.get(k) in order}
    out.update(override)
    return {k: _as_value(v) for k, v in out.items()}


def _config_from_dict(data: dict[str, Any]) -> EOTConfig:
    return EOTConfig.from_dict(data)


# ------------------------------------------------------------------------------------------------ presets
def preset(name: str) -> EOTConfig:
    """The named preset configuration (from ``physical.eot_presets.PRESETS``, the one table)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown EOT preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    try:
        return EOTConfig(**PRESETS[name])
    except ConfigError as exc:
        raise ConfigError(f"EOT preset {name!r}: {exc}") from None


def resolve_config(config: "EOTConfig | str | dict[str, Any] | None") -> EOTConfig:
    """An ``EOTConfig`` from a config, a preset name, a dict (see ``EOTConfig.from_dict``) or None (identity)."""
    if config is None:
        return EOTConfig()
    if isinstance(config, EOTConfig):
        return config
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, dict):
        return EOTConfig.from_dict(config)
    raise ConfigError(f"EOT config must be an EOTConfig, a preset name or a dict, got {type(config).__name__}")


# ------------------------------------------------------------------------------------------------ params
#: format 1 (flat) parameter name -> the stage that draws it now
_FORMAT1_STAGE = {
    "printer_gain": "print", "printer_offset": "print",
    "angle": "geometry", "scale": "geometry", "translate": "geometry", "perspective": "geometry",
    "illuminant": "light", "brightness": "light", "contrast": "light", "saturation": "light",
    "blur": "optics", "motion_length": "optics", "motion_angle": "optics",
    "noise_std": "sensor", "jpeg_quality": "sensor", "noise_seed": "sensor",
}


class EOTParams:
    """One batch of drawn parameters, grouped by stage: ``params["geometry"]["angle"]`` is (B,) degrees.

    A parameter also reads (and writes) as an attribute when its name is unique across stages
    (``params.angle``). A 0-d tensor (e.g. ``noise_seed``) belongs to the whole batch; the others have B rows.
    """

    __slots__ = ("_stages", "_batch_size")

    def __init__(self, stages: dict[str, dict[str, Tensor]], batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"EOT params batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(stages, dict):
            raise ConfigError(f"EOT params stages must be a mapping, got {type(stages).__name__}")
        checked: dict[str, dict[str, Tensor]] = {}
        for name, params in stages.items():
            if not isinstance(name, str) or not isinstance(params, dict):
                raise ConfigError(f"EOT params: stage {name!r} must map parameter names to tensors")
            checked[name] = {}
            for k, v in params.items():
                t = v if isinstance(v, Tensor) else torch.as_tensor(v)
                if t.ndim > 0 and t.shape[0] != batch_size:
                    raise ConfigError(f"EOT params {name}.{k} has {t.shape[0]} rows, the batch has {batch_size}")
                checked[name][str(k)] = t
        object.__setattr__(self, "_stages", checked)
        object.__setattr__(self, "_batch_size", batch_size)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self._stages)

    def __contains__(self, stage: object) -> bool:
        return stage in self._stages

    def __getitem__(self, stage: str) -> dict[str, Tensor]:
        try:
            return self._stages[stage]
        except KeyError:
            raise ConfigError(f"EOT params hold no draw of stage {stage!r}; "
                              f"stages drawn: {list(self._stages)}") from None

    def _owner(self, name: str) -> str:
        owners = [s for s, p in self._stages.items() if name in p]
        if len(owners) != 1:
            why = "no stage" if not owners else f"stages {owners} (use params[stage][name])"
            raise AttributeError(f"EOT params: {name!r} is a parameter of {why}")
        return owners[0]

    def __getattr__(self, name: str) -> Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._stages[self._owner(name)][name]

    def __setattr__(self, name: str, value: Tensor) -> None:
        self._stages[self._owner(name)][name] = value

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}: [{', '.join(p)}]" for s, p in self._stages.items())
        return f"EOTParams(batch_size={self._batch_size}, {inner})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (EOTParams, (self._stages, self._batch_size))

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """``{"format": 2, "batch_size": B, "stages": {stage: {name: tensor}}}`` (tensors on their device)."""
        return {"format": FORMAT_VERSION, "batch_size": self._batch_size,
                "stages": {s: dict(p) for s, p in self._stages.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EOTParams":
        """Read ``to_dict()``'s format 2, or format 1 (the flat dict written before per-stage streams; no
        ``format`` key). Any other version is refused with a ConfigError naming it."""
        if not isinstance(data, dict):
            raise ConfigError(f"EOT params must be a mapping, got {type(data).__name__}")
        fmt = data.get("format", 1)
        if isinstance(fmt, Tensor) and fmt.numel() == 1:
            fmt = fmt.item()
        if fmt == 1 and not isinstance(fmt, bool):
            return cls._from_format1({k: v for k, v in data.items() if k != "format"})
        if fmt != FORMAT_VERSION or isinstance(fmt, bool):
            raise ConfigError(f"EOT params format {fmt!r} is not supported: this version reads formats 1 and "
                              f"{FORMAT_VERSION}")
        unknown = sorted(set(data) - {"format", "batch_size", "stages"})
        missing = sorted({"batch_size", "stages"} - set(data))
        if missing or unknown:
            raise ConfigError(f"EOT params dict (format 2): missing keys {missing}, unknown keys {unknown}")
        b = data["batch_size"]
        return cls(data["stages"], int(b) if isinstance(b, Tensor) else b)

    @classmethod
    def _from_format1(cls, data: dict[str, Any]) -> "EOTParams":
        missing = sorted(set(_FORMAT1_STAGE) - set(data))
        unknown = sorted(set(data) - set(_FORMAT1_STAGE))
        if missing or unknown:
            raise ConfigError(f"EOT params dict (format 1): missing keys {missing}, unknown keys {unknown}")
        stages: dict[str, dict[str, Tensor]] = {}
        for k, stage in _FORMAT1_STAGE.items():
            stages.setdefault(stage, {})[k] = torch.as_tensor(data[k])
        return cls(stages, int(stages["geometry"]["angle"].shape[0]))

    def to(self, device: torch.device | str) -> "EOTParams":
        return EOTParams({s: {k: v.to(device) for k, v in p.items()} for s, p in self._stages.items()},
                         self._batch_size)

    def cpu(self) -> "EOTParams":
        return self.to("cpu")

    def save(self, path: str | Path) -> Path:
        from testbed.runs import atomic_torch_save

        return atomic_torch_save(self.cpu().to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "EOTParams":
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))

    def equal(self, other: "EOTParams") -> bool:
        """Bit-for-bit equality of every stage's every parameter."""
        if self._batch_size != other._batch_size or list(self._stages) != list(other._stages):
            return False
        for s, p in self._stages.items():
            q = other._stages[s]
            if set(p) != set(q) or not all(torch.equal(p[k].cpu(), q[k].cpu()) for k in p):
                return False
        return True

    @staticmethod
    def cat(items: list["EOTParams"]) -> "EOTParams":
        """Concatenate draws (a batch-wide 0-d parameter, e.g. the noise seed, is the first item's)."""
        if not items:
            raise ConfigError("EOTParams.cat needs at least one item")
        first = items[0]
        layout = {s: sorted(p) for s, p in first._stages.items()}
        if any({s: sorted(p) for s, p in it._stages.items()} != layout for it in items[1:]):
            raise ConfigError("EOTParams.cat needs draws of the same stages and parameters")
        out = {s: {k: v if v.ndim == 0 else torch.cat([it._stages[s][k] for it in items]) for k, v in p.items()}
               for s, p in first._stages.items()}
        return EOTParams(out, sum(it._batch_size for it in items))


# ------------------------------------------------------------------------------------------------ transform
class EOTTransform:
    """The distribution: ``sample`` parameters (one stream per stage), ``apply`` them (adjacent colour stages
    fused); ``__call__(x, generator)`` does both."""

    def __init__(self, config: EOTConfig | str | dict[str, Any] | None = None) -> None:
        self.cfg = resolve_config(config)
        self.stages: tuple[Stage, ...] = self.cfg.build_stages()
        self.last_params: EOTParams | None = None
        self._derived: dict[Any, EOTTransform] = {}

    def __repr__(self) -> str:
        return f"EOTTransform({self.cfg!r})"

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (used by the attacks' ``config()``)."""
        return {"eot": self.cfg.to_dict()}

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"this EOT transform has no {name!r} stage; its stages: {list(self.cfg.stage_names)}")

    def with_stage(self, stage: Stage, *, after: str | None = None, before: str | None = None) -> "EOTTransform":
        """This distribution with ``stage`` (a registered stage's object) inserted after/before a stage; the other
        stages' draws are unchanged. Cached: calling it every step costs a dict look-up."""
        key = (stage.name, stage.config, after, before)
        t = self._derived.get(key)
        if t is None:
            fields = {f.name: getattr(stage.config, f.name) for f in dataclasses.fields(stage.config)}
            t = EOTTransform(self.cfg.with_stage(stage.name, after=after, before=before, **fields))
            self._derived[key] = t
        return t

    # -- sampling
    def sample(
        self, batch_size: int, generator: torch.Generator, device: torch.device | str | None = None
    ) -> EOTParams:
        """Draw ``batch_size`` transformations: one base seed from ``generator``, then every stage from its own
        stream (see the module docstring)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        base = draw_base_seed(generator)
        dev = torch.device(device) if device is not None else generator.device
        return EOTParams({s.name: s.sample(batch_size, stage_generator(base, s.name), dev) for s in self.stages},
                         batch_size)

    # -- applying
    def apply(self, images: Tensor, params: EOTParams, *, print_stage: bool = True,
              skip: Collection[str] = ()) -> Tensor:
        """Apply drawn transformations to a BCHW batch (differentiable w.r.t. ``images``), stage by stage in order.

        ``skip`` names stages to leave out; ``print_stage=False`` skips the printer's stages (``print``, ``profile``:
        for callers that apply them to the printed part only, with ``apply_print``, before compositing it).
        """
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ConfigError(f"EOT images must be BCHW with 3 channels, got {shape}")
        if params.batch_size != images.shape[0]:
            raise ConfigError(f"EOT params hold {params.batch_size} draws but the batch has {images.shape[0]} images")
        x = images
        pending: ColourMap | None = None  # colour-affine stages not applied yet (composed)
        for s in self._active(skip if print_stage else (*skip, *(t.name for t in self.stages if t.printed))):
            p = _on(params[s.name], x.device) if s.random or s.name in params else {}
            if s.colour_affine:
                cm = s.colour_map(p)
                pending = cm if pending is None else pending.then(cm)
                continue
            if pending is not None and not s.commutes_with_colour:
                x, pending = pending.apply(x), None
            x = s.apply(x, p)
        return x if pending is None else pending.apply(x)

    def _active(self, skip: Iterable[str]) -> list[Stage]:
        skip = set(skip)
        return [s for s in self.stages if s.enabled and s.name not in skip]

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Sample one transformation per image and apply it; the draw is kept in ``self.last_params``."""
        params = self.sample(images.shape[0], generator, images.device)
        self.last_params = params
        return self.apply(images, params)

    # -- single stages (callers that print a part before compositing it; tests)
    def apply_print(self, x: Tensor, params: EOTParams) -> Tensor:
        """The printer's stages alone (``printed``: the printer profile, then the print error), in order; identity
        when none is enabled."""
        for s in self.stages:
            if s.printed and s.enabled:
                x = s.apply(x, _on(params[s.name], x.device))
        return x

    def homography(self, params: EOTParams, height: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, 3, 3) source -> destination pixel homography of the geometry stage."""
        stage = self.stage("geometry")
        assert isinstance(stage, GeometryStage)
        return stage.homography(params["geometry"], height, width, dtype)


def _on(params: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in params.items()}


def make_eot(config: EOTConfig | str | dict[str, Any] | None) -> EOTTransform:
    """An ``EOTTransform`` from a config, a preset name, or a dict."""
    return EOTTransform(config)
