"""The attack registry: each attack class registers itself where it is defined.

    @register_attack("pgd")
    @dataclass(frozen=True, kw_only=True)
    class PGD(IterativeGradientAttack): ...

    list_attacks()                            # ['bim', 'cw_l2', ...]
    get_attack_spec("pgd_l2")                 # AttackEntry: class, budget norm and units, target mode, schema
    build_attack("pgd", eps=8 / 255)          # every parameter checked; ConfigError names the bad one
    build_attack("pgd", model, eps=8 / 255)   # bound to a model: attack(images, labels, ...)
    build_attack_in_units("pgd", eps=8)       # eps / alpha in the attack's budget units (here 8/255)

The modules of this package whose source uses the decorator are imported on the first lookup, so adding an
attack is adding a module (with its test): no list to extend anywhere.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from physical.attacks.base import (
    BUDGET_NORMS,
    BUDGET_UNITS,
    TARGET_MODES,
    Attack,
    AttackResult,
    Param,
    check_float,
)
from testbed.errors import ConfigError

_REGISTRY: dict[str, type[Attack]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DECORATOR = "@register_attack("


def register_attack(name: str | type[Attack]) -> Any:
    """``@register_attack("name")`` on an Attack subclass registers it under ``name`` (and sets ``cls.name``).

    ``register_attack(cls)`` registers a class under its own ``cls.name``. A second attack with a name already
    taken is refused, and so is a class whose declaration is incomplete (a dataclass field without a
    ``param_schema`` entry, an unknown budget norm or unit, a default that fails its own schema).
    """
    if isinstance(name, str):
        def decorate(cls: type[Attack]) -> type[Attack]:
            return _add(cls, name)

        return decorate
    return _add(name, None)


def _add(cls: Any, name: str | None) -> type[Attack]:
    if not (isinstance(cls, type) and issubclass(cls, Attack) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"only Attack dataclasses can be registered, got {cls!r}")
    key = name if name is not None else cls.name
    if not isinstance(key, str) or not _NAME.match(key) or key == Attack.name:
        raise ConfigError(f"attack name must be lower-case letters, digits and '_' (not 'attack'), got {key!r}")
    if key in _REGISTRY:
        raise ConfigError(f"an attack named {key!r} is already registered ({_REGISTRY[key].__qualname__})")
    other = next((k for k, c in _REGISTRY.items() if c is cls), None)
    if other is not None:
        raise ConfigError(f"{cls.__qualname__} is already registered as {other!r}")
    _check_declaration(cls, key)
    cls.name = key  # type: ignore[misc]  # the ClassVar the results and configs report
    try:
        cls()  # the defaults must satisfy the schema
    except ConfigError as exc:
        raise ConfigError(f"attack {key!r}: its default hyper-parameters are invalid: {exc}") from None
    _REGISTRY[key] = cls
    return cls


def _check_declaration(cls: type[Attack], key: str) -> None:
    where = f"attack {key!r} ({cls.__qualname__})"
    if cls.target_mode not in TARGET_MODES:
        raise ConfigError(f"{where}: target_mode must be one of {TARGET_MODES}, got {cls.target_mode!r}")
    if cls.budget_norm not in BUDGET_NORMS:
        raise ConfigError(f"{where}: budget_norm must be one of {BUDGET_NORMS}, got {cls.budget_norm!r}")
    if cls.budget_units not in BUDGET_UNITS:
        raise ConfigError(f"{where}: budget_units must be one of {BUDGET_UNITS}, got {cls.budget_units!r}")
    if (cls.budget_norm is None) != (cls.budget_units is None):
        raise ConfigError(f"{where}: budget_norm and budget_units are declared together (both or neither)")
    params = cls.parameters()  # every field has a schema entry
    if cls.budget_norm is not None and "eps" not in params:
        raise ConfigError(f"{where}: declares a {cls.budget_norm} budget but has no 'eps' parameter")
    norm_field = cls.__dataclass_fields__.get("norm")
    if norm_field is not None and norm_field.default != cls.budget_norm:
        raise ConfigError(f"{where}: budget_norm {cls.budget_norm!r} differs from its default norm "
                          f"{norm_field.default!r}")


def unregister_attack(name: str) -> type[Attack]:
    """Remove ``name`` from the registry (tests, plugins reloading); returns its class."""
    _ensure_loaded()
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(_REGISTRY))}") from None


# ------------------------------------------------------------------------------------------------ lookups
@dataclass(frozen=True)
class AttackEntry:
    """What a config needs to know about a registered attack, without running it."""

    name: str
    cls: type[Attack]
    budget_norm: str | None  # "linf" | "l2" | None (no budget)
    budget_units: str | None  # "pixel/255" | "absolute" | None
    target_mode: str  # "optional" | "never" | "least_likely"
    params: dict[str, Param]
    defaults: dict[str, Any]
    summary: str  # first line of the class docstring

    def budget(self, params: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
        """(norm, units) of the budget with these parameters (``pgd`` with ``norm="l2"`` is an L2 attack)."""
        return self.cls.budget_of(params)

    def describe(self) -> str:
        """One line for help texts: name, budget, targeting."""
        budget = "no budget" if self.budget_norm is None else f"{_NORM_TEXT[self.budget_norm]} budget in " \
                                                              f"{self.budget_units} units"
        target = {"optional": "untargeted or targeted", "never": "untargeted only",
                  "least_likely": "targets the least-likely class"}[self.target_mode]
        return f"{self.name}: {budget}; {target}"


_NORM_TEXT = {"linf": "L∞", "l2": "L2"}


def _ensure_loaded() -> None:
    """Import the modules of this package that register attacks (their source uses the decorator)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        path = here / f"{info.name}.py"
        if info.name != "registry" and path.is_file() and _DECORATOR in path.read_text(encoding="utf-8"):
            importlib.import_module(f"{__package__}.{info.name}")


_loaded = False


def list_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``; an unknown name lists the known ones."""
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_attack_spec(name: str) -> AttackEntry:
    """The registry entry of ``name``: class, budget norm and units, target mode, parameter schema, defaults."""
    cls = attack_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = {k: (f.default if f.default is not dataclasses.MISSING else None) for k, f in fields.items()}
    doc = (cls.__doc__ or "").strip().splitlines()
    return AttackEntry(name, cls, cls.budget_norm, cls.budget_units, cls.target_mode, cls.parameters(), defaults,
                       doc[0] if doc else "")


def hyperparameters(name: str) -> list[str]:
    """The hyper-parameter names ``build_attack(name, ...)`` accepts."""
    return list(get_attack_spec(name).params)


@dataclass(frozen=True)
class BoundAttack:
    """An attack bound to its model: ``bound(images, labels, target=..., generator=...)``."""

    attack: Attack
    model: nn.Module

    def __call__(self, images: Tensor, labels: Tensor, **kwargs: Any) -> AttackResult:
        return self.attack(self.model, images, labels, **kwargs)


def build_attack(name: str, model: nn.Module | None = None, /, **params: Any) -> Any:
    """Build the attack ``name`` with ``params`` (values on the [0, 1] image scale), every one checked against the
    schema: an unknown attack, an unknown parameter or a bad value raises ConfigError naming it. With a ``model``,
    returns a ``BoundAttack``; without, the ``Attack``."""
    entry = get_attack_spec(name)
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        raise ConfigError(f"attack {name!r} has no hyper-parameter(s) {unknown}; it accepts: {sorted(entry.params)}")
    try:
        attack = entry.cls(**params)
    except ConfigError as exc:
        raise ConfigError(f"attack {name!r}: {exc}") from None
    if model is None:
        return attack
    if not isinstance(model, nn.Module):
        raise ConfigError(f"build_attack's model must be a torch.nn.Module, got {type(model).__name__}")
    return BoundAttack(attack, model)


def from_units(name: str, key: str, value: Any, units: str | None) -> float:
    """``value`` given in ``units`` ("pixel/255": divided by 255; "absolute" or None: as is), checked first."""
    check_float(f"attack {name!r}: {key}", value, 0.0)
    return value / 255 if units == "pixel/255" else float(value)


def build_attack_in_units(name: str, *, eps: float | None = None, alpha: float | None = None,
                          **params: Any) -> Attack:
    """Build ``name`` with ``eps`` and ``alpha`` given in the attack's budget units (``pixel/255``: 8 means 8/255;
    ``absolute``: as is; L2 and C&W values are never divided by 255); other ``params`` as ``build_attack``.

    ``eps`` for an attack without a budget (C&W, DeepFool, fooling images) is refused, naming the attack."""
    entry = get_attack_spec(name)
    norm, units = entry.budget(params)
    out = dict(params)
    for key, value in (("eps", eps), ("alpha", alpha)):
        if value is None:
            continue
        if key == "eps" and norm is None:
            raise ConfigError(f"attack {name!r} has no perturbation budget (eps does not apply): {entry.summary}")
        if key not in entry.params:
            raise ConfigError(f"attack {name!r} has no hyper-parameter {key!r}; it accepts: {sorted(entry.params)}")
        out[key] = from_units(name, key, value, units)
    return build_attack(name, **out)


def get_attack(name: str, **hparams: Any) -> Attack:
    """``build_attack(name, **hparams)`` (the older name)."""
    return build_attack(name, **hparams)


def from_config(config: dict[str, Any]) -> Attack:
    """Rebuild an attack from ``Attack.config()`` (an EOT transform, stored as a description, must be re-attached)."""
    cfg = dict(config)
    name = cfg.pop("attack", None)
    if name is None:
        raise ConfigError("attack config has no 'attack' key naming the attack")
    for hook in ("eot", "loss_fn"):
        if cfg.get(hook) is not None:
            raise ConfigError(f"this config used a Python callable as {hook}; rebuild it and pass it with "
                              f"build_attack(..., {hook}=...)")
    return build_attack(name, **cfg)
