"""Iterate selection and early stopping of the one physical loop (``select_every``, ``select_samples``,
``stop_at``): the result is the best iterate on validation draws that are neither the optimisation's nor the
evaluation's, early stopping ends the run, and both survive a kill and resume bit for bit."""
from __future__ import annotations

import functools

import pytest
import torch

from killed_runs import run_until_killed
from physical.loop import VALIDATION_SEED_OFFSET
from test_patch import _patch, _register_tiny_cli_model, _scenes, _tiny_model
from testbed.errors import ConfigError


@pytest.fixture(scope="module")
def setup():
    scenes = _scenes()
    return _tiny_model(scenes), scenes


def test_selected_iterate_is_the_best_checked_one_and_equals_a_run_stopped_there(setup):
    model, scenes = setup
    r = _patch(steps=12, select_every=3, select_samples=40, eval_samples=50)(model, scenes, target=1)
    checks = r.extras["validation_checks"]
    assert [c[0] for c in checks] == [3, 6, 9, 12]
    best = max(rate for _, rate in checks)
    assert r.extras["validation_success"] == best
    step = r.extras["selected_step"]
    assert max(s for s, rate in checks if rate == best) == step  # the later of equal iterates
    # the selected colours are exactly the iterate after `step` steps (same training draws, selection off)
    plain = _patch(steps=step, eval_samples=50)(model, scenes, target=1)
    assert torch.equal(r.colours, plain.colours)
    assert len(r.loss_history) == 12 and r.extras["stopped_early"] is False


def test_validation_draws_are_neither_training_nor_evaluation_draws(setup):
    model, scenes = setup
    attack = _patch(steps=2, select_every=1, select_samples=16, eval_samples=16, eval_batch_size=16)
    ctx = attack.context(model, scenes, target=1)
    val = torch.cat([d.angle for d in attack._validation_draws(ctx)])
    r = attack(model, scenes, target=1)
    train = torch.cat([torch.as_tensor(d["angle"]) for d in r.train_draws])
    evals = torch.cat([torch.as_tensor(d["angle"]) for d in r.eval_draws])
    assert not bool((val[:, None] == train[None, :]).any())
    assert not bool((val[:, None] == evals[None, :]).any())
    assert VALIDATION_SEED_OFFSET not in (0, 1_000_003)


def test_stop_at_ends_the_run_once_validation_success_reaches_it(setup):
    model, scenes = setup
    full = _patch(steps=40, select_every=4, select_samples=40, eval_samples=50)(model, scenes, target=1)
    reached = [s for s, rate in full.extras["validation_checks"] if rate >= 0.5]
    assert reached, full.extras["validation_checks"]  # the tiny model's patch passes 50% within 40 steps
    early = _patch(steps=40, select_every=4, select_samples=40, eval_samples=50, stop_at=0.5)(model, scenes, target=1)
    assert early.extras["stopped_early"] is True
    assert len(early.loss_history) == reached[0] < 40
    assert early.extras["validation_success"] >= 0.5
    with pytest.raises(ConfigError, match="select_every"):
        _patch(stop_at=0.9)
    with pytest.raises(ConfigError, match="stop_at"):
        _patch(select_every=2, stop_at=1.5)


def test_selection_resumes_bit_for_bit_after_a_kill(setup, tmp_path):
    model, scenes = setup
    attack = _patch(steps=8, select_every=2, select_samples=24, eval_samples=20, checkpoint_every=2)
    full = attack(model, scenes, target=4, run_dir=tmp_path / "full")
    run_until_killed(functools.partial(attack, model, scenes, target=4, run_dir=tmp_path / "cut"), step=7)
    resumed = attack(model, scenes, target=4, run_dir=tmp_path / "cut")
    assert torch.equal(resumed.colours, full.colours)
    assert resumed.extras["validation_checks"] == full.extras["validation_checks"]
    assert resumed.extras["selected_step"] == full.extras["selected_step"]
    assert torch.equal(resumed.success, full.success)


def test_selection_off_leaves_the_config_and_result_as_before(setup):
    model, scenes = setup
    attack = _patch(steps=3, eval_samples=10)
    assert not {"select_every", "select_samples", "stop_at"} & set(attack.config())
    r = attack(model, scenes, target=1)
    assert "selected_step" not in r.extras


def test_select_from_skips_the_early_checks_and_keeps_the_trajectory(setup):
    model, scenes = setup
    every = _patch(steps=12, select_every=3, select_samples=40, eval_samples=20)(model, scenes, target=1)
    late = _patch(steps=12, select_every=3, select_samples=40, eval_samples=20, select_from=7)(model, scenes, target=1)
    assert [c[0] for c in late.extras["validation_checks"]] == [9, 12]
    assert late.extras["validation_checks"] == every.extras["validation_checks"][2:]  # same draws, same iterates
    assert late.loss_history == every.loss_history  # checks never touch the optimisation's draws
    # the last step is checked even before select_from; 0 (the default) stays out of the config
    last = _patch(steps=5, select_every=3, select_samples=16, eval_samples=10, select_from=50)
    assert [c[0] for c in last(model, scenes, target=1).extras["validation_checks"]] == [5]
    assert "select_from" not in _patch(select_every=3).config()
    assert _patch(select_every=3, select_from=6).config()["select_from"] == 6
    with pytest.raises(ConfigError, match="select_from"):
        _patch(select_from=5)
    with pytest.raises(ConfigError, match="select_from"):
        _patch(select_every=2, select_from=-1)


def test_cli_select_from_reaches_the_run(tmp_path, capsys):
    import json

    from pipelines.main import main

    out = tmp_path / "run"
    argv = ["patch", "--model", _register_tiny_cli_model(), "--target", "two", "--scenes", "chelsea,coffee",
            "--area", "0.2", "--steps", "6", "--batch-size", "4", "--eval", "10", "--eot", "thys", "--out", str(out),
            "--no-progress", "--device", "cpu", "--select-every", "2", "--select-samples", "8", "--select-from", "4"]
    assert main(argv) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["select_from"] == 4
    assert [c[0] for c in json.loads((out / "metrics.json").read_text())["validation_checks"]] == [4, 6]
    assert main(argv[:-2] + ["--select-from", "-1"]) == 2
