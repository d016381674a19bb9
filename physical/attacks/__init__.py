"""Attacks: foolbox-3-style objects of hyper-parameters; the model and data come in at call time.

Attacks register themselves where they are defined (``@register_attack("name")``); look them up with
``list_attacks()``, ``get_attack_spec(name)`` and build them with ``build_attack(name, **params)``. The names
below are re-exported for ``from physical.attacks import PGD``; registration does not depend on them.
"""
from types import ModuleType as _ModuleType

from physical.attacks.base import (Attack, AttackResult, EOTCallable, GradientAttack, IterativeGradientAttack,
                                   LossFn, Param)
from physical.attacks.digital import (BIM, FGSM, PGD, PGDL2, CarliniWagnerL2, DeepFool, FoolingImages, IterLL, StepLL,
                                      kurakin_steps)
from physical.attacks.registry import (AttackEntry, BoundAttack, build_attack, build_attack_in_units, get_attack,
                                       get_attack_spec, list_attacks, register_attack)
from physical.attacks.variants import MadryPGD, MaskedPGD, TradesPGD

#: every name imported above (the submodules themselves, bound as attributes on import, are not API)
__all__ = sorted(n for n, v in dict(globals()).items() if not n.startswith("_") and not isinstance(v, _ModuleType))
