"""Hard-draw weighting of the patch / sticker hooks (``tail_fraction``, CVaR over a step's draws): the loss is the
mean of the hardest draws, 1.0 leaves runs as before (and out of the config), bad values and a split batch are
refused, the option changes the optimisation and reaches the run's config from the command line."""
from __future__ import annotations

import json

import pytest
import torch

from physical.universal import tail_mean
from test_patch import _patch, _register_tiny_cli_model, _scenes, _tiny_model
from testbed.errors import ConfigError


@pytest.fixture(scope="module")
def setup():
    scenes = _scenes()
    return _tiny_model(scenes), scenes


def test_tail_mean_is_the_mean_of_the_largest_losses():
    losses = torch.tensor([0.1, 5.0, 0.2, 3.0, 0.05, 0.3, 0.2, 0.1])
    assert float(tail_mean(losses, 0.25)) == pytest.approx(4.0)  # the 2 hardest of 8
    assert float(tail_mean(losses, 0.3)) == pytest.approx((5.0 + 3.0 + 0.3) / 3)  # ceil(2.4) = 3
    assert float(tail_mean(losses, 1.0)) == pytest.approx(float(losses.mean()))
    assert float(tail_mean(losses, 0.01)) == pytest.approx(5.0)  # at least one draw
    w = losses.clone().requires_grad_(True)
    tail_mean(w, 0.25).backward()
    assert w.grad.tolist() == [0, 0.5, 0, 0.5, 0, 0, 0, 0]  # only the hardest draws move the patch


def test_attack_loss_uses_the_hardest_draws_and_default_is_unchanged(setup):
    model, scenes = setup
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    goal = torch.zeros(4, dtype=torch.int64)
    ctx = _patch().context(model, scenes, target=0)
    ce = torch.nn.functional.cross_entropy(logits, goal, reduction="none")
    assert float(_patch()._attack_loss(ctx, logits, goal)) == pytest.approx(float(ce.mean()))
    assert float(_patch(tail_fraction=0.5)._attack_loss(ctx, logits, goal)) == pytest.approx(
        float(ce.topk(2).values.mean()))
    assert "tail_fraction" not in _patch().config()  # earlier run directories still resume
    assert _patch(tail_fraction=0.5).config()["tail_fraction"] == 0.5


def test_bad_tail_fraction_and_split_batch_are_refused():
    for bad in (0, 0.0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ConfigError, match="tail_fraction"):
            _patch(tail_fraction=bad)
    with pytest.raises(ConfigError, match="eot_batch"):
        _patch(tail_fraction=0.5, batch_size=8, eot_batch=4)
    _patch(tail_fraction=1.0, batch_size=8, eot_batch=4)  # the plain mean may be split


def test_tail_fraction_changes_the_run_and_reaches_the_config_from_the_cli(setup, tmp_path, capsys):
    model, scenes = setup
    plain = _patch(steps=5, eval_samples=20)(model, scenes, target=1)
    tail = _patch(steps=5, eval_samples=20, tail_fraction=0.25)(model, scenes, target=1)
    assert not torch.equal(plain.colours, tail.colours)
    from pipelines.main import main

    name = _register_tiny_cli_model()
    out = tmp_path / "run"
    argv = ["patch", "--model", name, "--target", "two", "--scenes", "chelsea,coffee", "--area", "0.2",
            "--steps", "2", "--batch-size", "4", "--eval", "10", "--eot", "thys", "--out", str(out),
            "--no-progress", "--device", "cpu", "--tail-fraction", "0.5"]
    assert main(argv) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["tail_fraction"] == 0.5
    assert main(argv[:-2] + ["--tail-fraction", "0"]) == 2
