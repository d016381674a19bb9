"""The two extension points of docs/architecture.md, end to end: a toy EOT stage and a toy digital attack, each
defined in this file, driven through its registry, the preset table / experiment config and the command line."""
from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest
import torch

from physical.attacks import IterativeGradientAttack
from physical.attacks.registry import Param, list_attacks, register_attack, unregister_attack
from physical.eot import DEFAULT_STAGES, PRESETS, EOTTransform, Stage, _nonneg, register_stage, unregister_stage
from pipelines.main import main
from test_experiment import TINY, register_tiny
from test_patch import _register_tiny_cli_model


# ------------------------------------------------------------------------------------------------ a toy EOT stage
@dataclasses.dataclass(frozen=True)
class InkFadeConfig:
    ink_fade: float = 0.0  # printed colours fade towards paper white by U(0, ink_fade) per sample

    def __post_init__(self) -> None:
        object.__setattr__(self, "ink_fade", _nonneg("ink_fade", self.ink_fade, 1.0))


class InkFadeStage(Stage):
    """x -> x + f * (1 - x): the print fades towards white."""

    name = "toy-ink-fade"
    Config = InkFadeConfig

    @property
    def enabled(self) -> bool:
        return self.config.ink_fade > 0

    def sample(self, n, generator, device):
        return {"fade": self.uniforms(n, 1, generator, device)[:, 0] * self.config.ink_fade}

    def apply(self, x, params):
        f = params["fade"].to(x.dtype)[:, None, None, None]
        return x + f * (1 - x)


@pytest.fixture
def ink_fade(monkeypatch):
    register_stage(InkFadeStage)
    monkeypatch.setitem(PRESETS, "toy-faded-print", {**PRESETS["thys"], "stages": ["toy-ink-fade", *DEFAULT_STAGES],
                                                     "ink_fade": 0.3})
    yield InkFadeStage
    unregister_stage(InkFadeStage.name)


def test_toy_stage_through_presets_and_the_patch_command(ink_fade, tmp_path, capsys):
    # the preset table: one row names the stage; the other stages' draws are those of the row without it
    with_fade, without = EOTTransform("toy-faded-print"), EOTTransform("thys")
    a = with_fade.sample(16, torch.Generator().manual_seed(5), torch.device("cpu")).to_dict()
    b = without.sample(16, torch.Generator().manual_seed(5), torch.device("cpu")).to_dict()
    fade = a["stages"].pop("toy-ink-fade")["fade"]
    assert 0 < float(fade.min()) and float(fade.max()) <= 0.3
    assert json.dumps(a, default=lambda t: t.tolist()) == json.dumps(b, default=lambda t: t.tolist())
    # the command line: `--eot FILE` with the row's name, the run records the stage and its draws
    model = _register_tiny_cli_model()
    eot_file = tmp_path / "faded.yaml"
    eot_file.write_text("preset: toy-faded-print\nink_fade: 0.2\n")
    out = tmp_path / "run"
    argv = ["patch", "--model", model, "--target", "two", "--scenes", "chelsea,coffee", "--area", "0.2",
            "--steps", "2", "--batch-size", "4", "--eval", "8", "--eot", str(eot_file), "--out", str(out),
            "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["eot"]["stages"][0] == "toy-ink-fade" and config["eot"]["ink_fade"] == 0.2
    draws = torch.load(out / "eval_draws.pt", weights_only=True)
    fades = torch.cat([d["eot"]["stages"]["toy-ink-fade"]["fade"] for d in draws])
    assert fades.numel() == 8 and 0 < float(fades.min()) and float(fades.max()) <= 0.2


# ------------------------------------------------------------------------------------------------ a toy attack
def _lower_true_logit(model, x, y):
    return -model(x).gather(1, y[:, None])[:, 0]


@pytest.fixture
def darken():
    @register_attack("toy_darken")
    @dataclasses.dataclass(frozen=True)
    class Darken(IterativeGradientAttack):
        """L∞ sign steps that lower the true-class logit, ``gain`` times the step size."""

        param_schema: ClassVar[dict[str, Param]] = {"gain": Param("float", lo=0.0, hi=2.0, open_lo=True)}
        steps: int = 3
        loss_fn: object = _lower_true_logit
        gain: float = 1.0

        def step_size(self) -> float:
            return self.alpha * self.gain

    yield Darken
    unregister_attack("toy_darken")


def test_toy_attack_through_the_registry_and_the_attack_command(darken, tmp_path, capsys):
    assert list_attacks().count("toy_darken") == 1
    register_tiny()
    out = tmp_path / "toy"
    assert main(["attack", "digital", "--attack", "toy_darken", "--model", TINY, "--image", "chelsea",
                 "--out", str(out), "--eps", "4", "--alpha", "2", "--param", "gain=0.5"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["attack"] == "toy_darken" and result["config"]["gain"] == 0.5
    assert 0 < max(result["linf"]) <= 4 / 255 + 1e-6
    assert main(["attack", "digital", "--attack", "toy_darken", "--model", TINY, "--image", "chelsea",
                 "--out", str(tmp_path / "bad"), "--param", "gain=3"]) == 2
    assert "gain" in capsys.readouterr().err
