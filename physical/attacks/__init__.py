"""Attacks: foolbox-3-style objects of hyper-parameters; the model and data come in at call time."""
from physical.attacks.base import (
    Attack,
    AttackResult,
    EOTCallable,
    GradientAttack,
    IterativeGradientAttack,
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
from physical.attacks.registry import get_attack, list_attacks, register_attack

__all__ = [
    "Attack",
    "AttackResult",
    "EOTCallable",
    "GradientAttack",
    "IterativeGradientAttack",
    "FGSM",
    "StepLL",
    "BIM",
    "IterLL",
    "PGD",
    "PGDL2",
    "CarliniWagnerL2",
    "DeepFool",
    "FoolingImages",
    "kurakin_steps",
    "get_attack",
    "list_attacks",
    "register_attack",
]
