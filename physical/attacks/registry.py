"""Attacks by name: ``get_attack("pgd", eps=8/255)``, ``list_attacks()``, ``register_attack(cls)``."""
from __future__ import annotations

import dataclasses
from typing import Any

from physical.attacks.base import Attack
from testbed.errors import ConfigError

_REGISTRY: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack], name: str | None = None) -> type[Attack]:
    """Register an attack class under ``name`` (default ``cls.name``); a second one with that name is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ConfigError(f"only Attack subclasses can be registered, got {cls!r}")
    key = name or cls.name
    if key in _REGISTRY:
        raise ConfigError(f"an attack named {key!r} is already registered ({_REGISTRY[key].__qualname__})")
    _REGISTRY[key] = cls
    return cls


def list_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``; an unknown name lists the known ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(_REGISTRY))}") from None


def hyperparameters(name: str) -> list[str]:
    """The hyper-parameter names ``get_attack(name, ...)`` accepts."""
    return [f.name for f in dataclasses.fields(attack_class(name))]


def get_attack(name: str, **hparams: Any) -> Attack:
    """Build the attack ``name`` with the given hyper-parameters (unknown ones are refused by name)."""
    cls = attack_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise ConfigError(f"attack {name!r} has no hyper-parameter(s) {unknown}; it accepts: {sorted(known)}")
    return cls(**hparams)


def from_config(config: dict[str, Any]) -> Attack:
    """Rebuild an attack from ``Attack.config()`` (an EOT transform, stored as a description, must be re-attached)."""
    cfg = dict(config)
    name = cfg.pop("attack", None)
    if name is None:
        raise ConfigError("attack config has no 'attack' key naming the attack")
    if cfg.get("eot") is not None:
        raise ConfigError("this config used an EOT transform; rebuild it and pass it with get_attack(..., eot=...)")
    return get_attack(name, **cfg)


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from physical.attacks import digital

    for cls in (
        digital.FGSM,
        digital.StepLL,
        digital.BIM,
        digital.IterLL,
        digital.PGD,
        digital.PGDL2,
        digital.CarliniWagnerL2,
        digital.DeepFool,
        digital.FoolingImages,
    ):
        if cls.name not in _REGISTRY:
            register_attack(cls)
