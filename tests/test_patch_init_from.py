"""`testbed patch --init-from RUN`: a patch run that starts from another run's patch (continuing it under another
EOT), and the API's ``UniversalPatch(...)(..., initial=colours)``."""
from __future__ import annotations

import json

import pytest
import torch

from test_experiment import TINY, register_tiny
from pipelines.main import main


def _argv(out, *extra) -> list[str]:
    return ["patch", "--model", TINY, "--target", "class1", "--scenes", "chelsea", "--steps", "2", "--batch-size", "2",
            "--eval-samples", "4", "--eot", "thys", "--device", "cpu", "--no-progress", "--allocator", "glibc",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    register_tiny()
    out = tmp_path_factory.mktemp("init") / "source"
    assert main(_argv(out)) == 0
    return out


def test_init_from_starts_at_the_source_patch_and_is_recorded(source_run, tmp_path):
    out = tmp_path / "continued"
    # lr 1e-9: Adam moves each logit by ~1e-9 a step, so the result is the starting patch (clamped at 1e-4)
    assert main(_argv(out, "--init-from", str(source_run), "--lr", "1e-9")) == 0
    src = torch.load(source_run / "perturbation.pt", weights_only=True)
    got = torch.load(out / "perturbation.pt", weights_only=True)
    assert got.shape == src.shape
    assert torch.allclose(got, src.clamp(1e-4, 1 - 1e-4), atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init_from"] == str(source_run.resolve())
    assert metrics["initial_success_rate"] == metrics["success_rate"]  # the same patch on the same fresh draws
    # and a plain random start differs from it
    fresh = tmp_path / "fresh"
    assert main(_argv(fresh, "--lr", "1e-9")) == 0
    assert not torch.allclose(torch.load(fresh / "perturbation.pt", weights_only=True), got, atol=1e-3)


@pytest.mark.parametrize("extra, words", [
    (["--shape", "square"], ["--init-from", "shape", "'circle'", "'square'"]),
    (["--patch-size", "5"], ["--init-from", "11 px", "--patch-size is 5"]),
])
def test_init_from_mismatch_is_one_line_exit_2(source_run, tmp_path, capsys, extra, words):
    assert main(_argv(tmp_path / "o", "--init-from", str(source_run), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "o").exists()


def test_init_from_a_missing_or_foreign_run_is_refused(tmp_path, capsys):
    register_tiny()
    assert main(_argv(tmp_path / "o", "--init-from", str(tmp_path / "nope"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_api_initial_shape_is_checked():
    from physical.universal import UniversalPatch
    from testbed.errors import ConfigError

    attack = UniversalPatch(patch_size=4, steps=1, batch_size=1, eval_samples=0)
    with pytest.raises(ConfigError, match=r"initial patch has shape \(1, 3, 5, 5\)"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        attack(net, torch.rand(1, 3, 16, 16), target=0,
               initial=torch.rand(1, 3, 5, 5))
