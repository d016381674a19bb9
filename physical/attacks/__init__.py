"""Attacks: foolbox-3-style objects of hyper-parameters; the model and data come in at call time.

Attacks register themselves where they are defined (``@register_attack("name")``); look them up with
``list_attacks()``, ``get_attack_spec(name)`` and build them with ``build_attack(name, **params)``. The names
below are re-exported for ``from physical.attacks import PGD``; registration does not depend on them.
"""
from physical.attacks.base import (
    Attack,
    AttackResult,
    EOTCallable,
    GradientAttack,
    IterativeGradientAttack,
    LossFn,
    Param,
)
from physical.attacks.digital import (
    BIM,
    FGSM,
    PGD,
    PGDL2,
    CarliniWagnerL2,
    DeepFool,
    FoolingImages,
    IterLL,
    StepLL,
    kurakin_steps,
)
from physical.attacks.registry import (
    AttackEntry,
    BoundAttack,
    build_attack,
    build_attack_in_units,
    get_attack,
    get_attack_spec,
    list_attacks,
    register_attack,
)
from physical.attacks.variants import MadryPGD, MaskedPGD, TradesPGD

__all__ = [
    "Attack",
    "AttackResult",
    "EOTCallable",
    "GradientAttack",
    "IterativeGradientAttack",
    "LossFn",
    "Param",
    "FGSM",
    "StepLL",
    "BIM",
    "IterLL",
    "PGD",
    "PGDL2",
    "CarliniWagnerL2",
    "DeepFool",
    "FoolingImages",
    "MadryPGD",
    "MaskedPGD",
    "TradesPGD",
    "kurakin_steps",
    "AttackEntry",
    "BoundAttack",
    "build_attack",
    "build_attack_in_units",
    "get_attack",
    "get_attack_spec",
    "list_attacks",
    "register_attack",
]
