"""A run directory is extended by giving more ``--steps``: 3 steps, then the same command with ``--steps 5``, gives bit
for bit the run a straight 5-step command gives (CPU); fewer steps than done and any other change are refused."""
from __future__ import annotations

import json

import torch

from pipelines.main import main
from testbed.runs import load_checked


def _argv(out, steps: int) -> list[str]:
    from test_patch import _register_tiny_cli_model

    return ["patch", "--model", _register_tiny_cli_model(), "--target", "two", "--scenes", "chelsea,coffee",
            "--area", "0.2", "--steps", str(steps), "--batch-size", "3", "--eval-samples", "12", "--eot", "thys",
            "--out", str(out), "--no-progress", "--device", "cpu"]


def _final(out):
    ckpt = max((out / "checkpoints").glob("step_*.pt"))
    state = load_checked(ckpt, what="checkpoint", expect=dict)
    return state, torch.load(out / "perturbation.pt", weights_only=True), json.loads((out / "metrics.json").read_text())


def test_three_steps_extended_to_five_equal_five_straight(tmp_path, capsys):
    grown, straight = tmp_path / "grown", tmp_path / "straight"
    assert main(_argv(grown, 3)) == 0
    assert json.loads((grown / "config.json").read_text())["steps"] == 3
    assert main(_argv(grown, 5)) == 0  # continues from the step-3 checkpoint
    assert main(_argv(straight, 5)) == 0
    capsys.readouterr()
    (g_state, g_patch, g_m), (s_state, s_patch, s_m) = _final(grown), _final(straight)
    assert g_state["step"] == s_state["step"] == 5
    assert torch.equal(g_state["w"], s_state["w"]) and torch.equal(g_patch, s_patch)
    assert g_state["history"] == s_state["history"] and len(g_state["history"]) == 5
    assert torch.equal(g_state["generator"], s_state["generator"])
    for k in ("success_rate", "initial_success_rate", "final_loss", "steps"):
        assert g_m[k] == s_m[k], k
    assert json.loads((grown / "config.json").read_text())["steps"] == 5  # the run's end is recorded

    assert main(_argv(grown, 4)) == 2  # fewer steps than done: refused, nothing changed
    assert "5 steps done" in capsys.readouterr().err
    assert main(_argv(grown, 6) + ["--lr", "0.5"]) == 2
    assert "lr" in capsys.readouterr().err  # any other change is still a different configuration


def test_a_finished_run_is_re_evaluated_with_other_eval_samples(tmp_path, capsys):
    """The evaluation's size is not the optimisation: reopening a finished run with fewer --eval-samples
    re-scores the same patch on that many fresh draws of the same evaluation seed (and records it), instead of
    refusing."""
    out = tmp_path / "run"
    assert main(_argv(out, 3)) == 0
    _, patch, first = _final(out)
    argv = _argv(out, 3)
    argv[argv.index("--eval-samples") + 1] = "6"
    assert main(argv) == 0
    capsys.readouterr()
    _, again, second = _final(out)
    assert torch.equal(patch, again)  # no step was repeated or changed
    assert first["eval_samples"] == 12 and second["eval_samples"] == 6
    assert json.loads((out / "config.json").read_text())["eval_samples"] == 6
