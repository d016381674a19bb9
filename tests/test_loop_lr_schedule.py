"""The learning-rate schedule of the one physical loop (``lr_schedule``): cosine annealing takes the rates it says
at every step, a constant schedule leaves runs as before, the option round-trips through the run's config and the
command line, and a cosine run resumes bit for bit after a kill but refuses to be extended."""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from killed_runs import run_until_killed
from test_patch import _patch, _register_tiny_cli_model, _scenes, _tiny_model
from testbed.errors import ConfigError


@pytest.fixture(scope="module")
def setup():
    scenes = _scenes()
    return _tiny_model(scenes), scenes


def test_cosine_rates_and_the_optimiser_takes_them(setup, monkeypatch):
    attack = _patch(steps=8, lr=0.4, lr_schedule="cosine", eval_samples=4)
    assert attack.lr_at(0) == pytest.approx(0.4)
    assert attack.lr_at(4) == pytest.approx(0.2)
    assert attack.lr_at(8) == pytest.approx(0.0, abs=1e-12)
    assert _patch(steps=8, lr=0.4).lr_at(5) == 0.4
    seen: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    model, scenes = setup
    attack(model, scenes, target=1)
    assert seen == pytest.approx([0.4 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)])


def test_constant_schedule_changes_nothing_and_cosine_changes_the_result(setup):
    model, scenes = setup
    plain = _patch(steps=6, eval_samples=20)
    assert "lr_schedule" not in plain.config()  # run directories from before the option still resume
    same = _patch(steps=6, eval_samples=20, lr_schedule="constant")(model, scenes, target=1)
    assert torch.equal(plain(model, scenes, target=1).colours, same.colours)
    cos = _patch(steps=6, eval_samples=20, lr_schedule="cosine")
    assert cos.config()["lr_schedule"] == "cosine"
    assert not torch.equal(cos(model, scenes, target=1).colours, same.colours)
    with pytest.raises(ConfigError, match="lr_schedule"):
        _patch(lr_schedule="linear")


def test_cosine_run_resumes_bit_for_bit_and_refuses_extension(setup, tmp_path):
    model, scenes = setup
    attack = _patch(steps=8, lr_schedule="cosine", eval_samples=20, checkpoint_every=2)
    full = attack(model, scenes, target=4, run_dir=tmp_path / "full")
    run_until_killed(functools.partial(attack, model, scenes, target=4, run_dir=tmp_path / "cut"), step=5)
    resumed = attack(model, scenes, target=4, run_dir=tmp_path / "cut")
    assert torch.equal(resumed.colours, full.colours)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["lr_schedule"] == "cosine"
    with pytest.raises(ConfigError, match="cannot be extended"):
        attack.replace(steps=12)(model, scenes, target=4, run_dir=tmp_path / "cut")
    with pytest.raises(ConfigError):  # a constant-rate run is a different configuration
        attack.replace(lr_schedule="constant")(model, scenes, target=4, run_dir=tmp_path / "cut")


def test_cli_lr_schedule_reaches_the_run_config(tmp_path, capsys):
    from pipelines.main import main

    model = _register_tiny_cli_model()
    out = tmp_path / "run"
    argv = ["patch", "--model", model, "--target", "two", "--scenes", "chelsea,coffee", "--area", "0.2",
            "--steps", "3", "--batch-size", "4", "--eval", "10", "--eot", "thys", "--out", str(out),
            "--no-progress", "--device", "cpu", "--lr-schedule", "cosine"]
    assert main(argv) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["lr_schedule"] == "cosine"
    assert main(argv[:-2] + ["--lr-schedule", "nope"]) == 2
