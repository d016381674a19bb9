"""The attack registry: attacks register where they are defined, declare their budget norm, units and parameter
schema, and the CLI and the experiment runner read those declarations.

``toy_attack`` shows what adding a digital attack takes: one class with ``@register_attack`` (here defined in the
test itself), driven through the registry, ``parse_config`` and ``testbed attack digital``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

import physical.attacks.digital as digital
from physical.attacks import Attack, IterativeGradientAttack, MadryPGD, MaskedPGD, Param, TradesPGD
from physical.attacks.registry import (
    BoundAttack,
    build_attack,
    build_attack_in_units,
    get_attack_spec,
    list_attacks,
    register_attack,
    unregister_attack,
)
import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
from pipelines.experiment import AttackSpec, parse_config, run_experiment
from test_experiment import TINY, register_tiny, tiny_config
from pipelines.main import main
from testbed.errors import ConfigError

BUILT_IN = {"bim", "cw_l2", "deepfool", "fgsm", "fooling", "iter_ll", "pgd", "pgd_l2", "step_ll"}


# ------------------------------------------------------------------------------------------------ a toy attack
def _lower_true_logit(model: nn.Module, x_adv: Tensor, labels: Tensor) -> Tensor:
    """Per-sample minus the true-class logit: the toy attack pushes that logit down."""
    return -model(x_adv).gather(1, labels[:, None])[:, 0] * 1.0


@pytest.fixture
def toy_attack():
    """Define and register a toy digital attack the way a new module would; unregister it afterwards."""

    @register_attack("toy")
    @dataclass(frozen=True, kw_only=True)
    class Toy(IterativeGradientAttack):
        """Toy attack: L∞ sign steps that lower the true-class logit, ``gain`` times the step size."""

        param_schema: ClassVar[dict[str, Param]] = {"gain": Param("float", lo=0.0, hi=2.0, open_lo=True)}
        steps: int = 3
        loss_fn: object = _lower_true_logit
        gain: float = 1.0

        def step_size(self) -> float:
            return self.alpha * self.gain

    yield Toy
    unregister_attack("toy")


def test_toy_attack_through_registry_config_and_cli(toy_attack, tmp_path):
    # registry
    assert "toy" in list_attacks() and toy_attack.name == "toy"
    spec = get_attack_spec("toy")
    assert (spec.budget_norm, spec.budget_units) == ("linf", "pixel/255") and spec.params["gain"].hi == 2.0
    assert build_attack_in_units("toy", eps=4, gain=0.5).eps == 4 / 255
    with pytest.raises(ConfigError, match=r"attack 'toy': gain must be <= 2.0, got 3"):
        build_attack("toy", gain=3)
    # an experiment config: parsed (and built at every eps) at parse time
    cfg = parse_config(tiny_config(attacks=[{"name": "toy", "gain": 0.5}], eps=[4]))
    assert cfg.attacks[0].build(4).gain == 0.5
    with pytest.raises(ConfigError, match=r"attacks\[0\].*gain must be > 0.0"):
        parse_config(tiny_config(attacks=[{"name": "toy", "gain": 0}]))
    # the CLI: --attack choices come from the registry, --eps in the toy's declared units
    register_tiny()
    out = tmp_path / "toy"
    rc = main(["attack", "digital", "--attack", "toy", "--model", TINY, "--image", "chelsea", "--out", str(out),
               "--eps", "4", "--alpha", "2", "--param", "gain=0.5"])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["attack"] == "toy" and result["config"]["eps"] == 4 / 255
    assert result["config"]["alpha"] == 2 / 255 and result["config"]["gain"] == 0.5
    assert 0 < max(result["linf"]) <= 4 / 255 + 1e-6
    assert result["loss_history"][-1] < result["loss_history"][0]  # the true logit went down


def test_cli_refuses_unknown_attack_and_budget_of_budget_free_attack(tmp_path, capsys):
    rc = main(["attack", "digital", "--attack", "nope", "--image", "chelsea", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown attack 'nope'; known attacks: bim, cw_l2" in err and "pgd_l2" in err
    rc = main(["attack", "digital", "--attack", "cw_l2", "--eps", "2", "--image", "chelsea", "--out",
               str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "'cw_l2' has no perturbation budget" in err
    assert not (tmp_path / "b" / "result.json").exists()


# ------------------------------------------------------------------------------------------------ the registry
def test_registry_lists_every_attack_exactly_once():
    names = list_attacks()
    assert names == sorted(set(names)) and set(names) == BUILT_IN
    classes = [get_attack_spec(n).cls for n in names]
    assert len(set(classes)) == len(classes)  # no class under two names
    for n, cls in zip(names, classes):
        assert cls.name == n
    # every attack class defined in physical.attacks.digital is registered (the decorator, not a list)
    defined = {c for _, c in inspect.getmembers(digital, inspect.isclass)
               if issubclass(c, Attack) and c.__module__ == digital.__name__}
    assert defined == set(classes)


def test_every_field_has_a_schema_and_budgets_are_declared():
    expected = {"fgsm": ("linf", "pixel/255"), "step_ll": ("linf", "pixel/255"), "bim": ("linf", "pixel/255"),
                "iter_ll": ("linf", "pixel/255"), "pgd": ("linf", "pixel/255"), "pgd_l2": ("l2", "absolute"),
                "cw_l2": (None, None), "deepfool": (None, None), "fooling": (None, None)}
    for name in list_attacks():
        spec = get_attack_spec(name)
        assert (spec.budget_norm, spec.budget_units) == expected[name]
        assert set(spec.params) == {f.name for f in dataclasses.fields(spec.cls)}
        assert spec.describe().startswith(name + ": ")
    for cls in (MadryPGD, TradesPGD, MaskedPGD):  # the unregistered variants are fully declared too
        assert set(cls.parameters()) == {f.name for f in dataclasses.fields(cls)}
    assert get_attack_spec("pgd").budget({"norm": "l2"}) == ("l2", "absolute")
    assert get_attack_spec("iter_ll").target_mode == "least_likely"
    assert get_attack_spec("deepfool").target_mode == "never"


def test_registration_refuses_duplicates_and_incomplete_declarations():
    with pytest.raises(ConfigError, match="already registered"):
        register_attack("pgd")(MadryPGD)
    with pytest.raises(ConfigError, match="no param_schema entry for field"):

        @register_attack("no_schema")
        @dataclass(frozen=True, kw_only=True)
        class NoSchema(IterativeGradientAttack):
            extra: int = 1

    with pytest.raises(ConfigError, match="budget_norm and budget_units are declared together"):

        @register_attack("half_declared")
        @dataclass(frozen=True, kw_only=True)
        class Half(IterativeGradientAttack):
            budget_units: ClassVar[str | None] = None

    with pytest.raises(ConfigError, match="default hyper-parameters are invalid"):

        @register_attack("bad_default")
        @dataclass(frozen=True, kw_only=True)
        class BadDefault(IterativeGradientAttack):
            steps: int = 0

    assert not {"no_schema", "half_declared", "bad_default"} & set(list_attacks())


@pytest.mark.parametrize("name, params, needle", [
    ("nope", {}, "unknown attack 'nope'; known attacks: bim, cw_l2"),
    ("pgd", {"epsilon": 0.1}, r"no hyper-parameter\(s\) \['epsilon'\]"),
    ("pgd", {"steps": "ten"}, "attack 'pgd': steps must be an integer >= 1, got 'ten'"),
    ("pgd", {"random_start": "yes"}, "attack 'pgd': random_start must be True or False"),
    ("bim", {"eps": 2.0}, "attack 'bim': eps must be <= 1.0, got 2.0"),
    ("cw_l2", {"lr": 0}, "attack 'cw_l2': lr must be > 0.0, got 0"),
    ("fooling", {"init": "zeros"}, "attack 'fooling': init must be one of"),
])
def test_build_attack_names_the_bad_parameter(name, params, needle):
    with pytest.raises(ConfigError, match=needle):
        build_attack(name, **params)


def test_build_attack_with_a_model_binds_it():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    bound = build_attack("fgsm", net, eps=4 / 255)
    assert isinstance(bound, BoundAttack)
    assert torch.equal(bound(x, torch.tensor([0, 1])).adversarial,
                       build_attack("fgsm", eps=4 / 255)(net, x, torch.tensor([0, 1])).adversarial)


def test_budget_units():
    assert build_attack_in_units("pgd", eps=8, alpha=2).eps == 8 / 255
    assert build_attack_in_units("pgd", eps=8, alpha=2).alpha == 2 / 255
    assert build_attack_in_units("pgd_l2", eps=0.5, alpha=0.1).eps == 0.5  # L2: absolute, never /255
    assert build_attack_in_units("pgd_l2", eps=0.5, alpha=0.1).alpha == 0.1
    assert build_attack_in_units("pgd", eps=0.5, norm="l2").eps == 0.5  # pgd made L2 by its parameter
    assert build_attack_in_units("fooling", alpha=0.01).alpha == 0.01  # no budget: absolute
    with pytest.raises(ConfigError, match="'deepfool' has no perturbation budget"):
        build_attack_in_units("deepfool", eps=1)


# ------------------------------------------------------------------------------------------------ experiments
def test_parse_config_fails_on_unknown_attack_or_bad_parameter():
    with pytest.raises(ConfigError, match=r"attacks\[1\]: unknown attack 'nope'"):
        parse_config(tiny_config(attacks=["fgsm", "nope"]))
    with pytest.raises(ConfigError, match=r"attacks\[0\] at eps 4: attack 'pgd': steps must be an integer >= 1"):
        parse_config(tiny_config(attacks=[{"name": "pgd", "steps": 0}]))
    with pytest.raises(ConfigError, match=r"attacks\[0\].*no hyper-parameter\(s\) \['stepz'\]"):
        parse_config(tiny_config(attacks=[{"name": "bim", "stepz": 3}]))
    # C&W has no budget: the cell would refuse it, so parse_config does, naming it
    with pytest.raises(ConfigError, match=r"attacks\[0\] at eps 4: attack 'cw_l2' has no perturbation budget"):
        parse_config(tiny_config(attacks=[{"name": "cw_l2", "steps": 10}]))
    with pytest.raises(ConfigError, match=r"attacks\[0\] at eps 4: attack 'pgd': random_start must be True or False"):
        parse_config(tiny_config(attacks=[{"name": "pgd", "random_start": "yes"}]))


def test_cell_attack_divides_only_pixel_budgets():
    assert AttackSpec("pgd").build(8).eps == 8 / 255
    assert AttackSpec("bim", {"alpha": 1 / 255}).build(16).eps == 16 / 255
    assert AttackSpec("pgd_l2").build(0.5).eps == 0.5
    assert AttackSpec("pgd", {"norm": "l2"}).build(0.5).eps == 0.5


def test_l2_experiment_cell_is_not_divided_by_255(tmp_path):
    cfg = tiny_config(attacks=[{"name": "pgd_l2", "steps": 2, "alpha": 0.1}], eps=[0.5], channel={"kind": "none"},
                      images={"names": ["chelsea"], "crops_per_photo": 1}, examples=0)
    run = run_experiment(cfg, tmp_path / "l2", progress=False)
    cell = run.cells[f"{TINY}/pgd_l2(alpha=0.1,steps=2)/eps0.5"]
    assert cell["attack_config"]["attack"] == "pgd_l2" and cell["attack_config"]["eps"] == 0.5
    # an L2 radius of 0.5 on a 32x32x3 image allows an L∞ change far above 0.5/255
    assert max(cell["linf_255"]) > 0.5
