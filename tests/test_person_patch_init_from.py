"""`testbed evade-persons --init-from RUN`: a person-evasion run that starts from another run's patch (to continue it
under another --eot or --patch-fraction), and the API's ``PersonPatch(...)(..., initial=colours)``; on the toy
detector of test_person_patch."""
from __future__ import annotations

import json

import pytest
import torch

from test_person_patch import _cli, data, toy_registered  # noqa: F401  (fixtures)
from physical.detector_patch import PersonPatch
from testbed.errors import ConfigError


def test_init_from_starts_at_the_source_patch_and_is_recorded(toy_registered, tmp_path):  # noqa: F811
    assert _cli(toy_registered, tmp_path, "--steps", "20") == 0
    source = tmp_path / "source"
    (tmp_path / "cli").rename(source)
    # lr 1e-9: Adam moves each logit by ~1e-9 a step, so the result is the source patch (clamped at 1e-4)
    assert _cli(toy_registered, tmp_path, "--steps", "2", "--lr", "1e-9", "--eot", "thys-person-print-aware",
                "--init-from", str(source)) == 0
    src = torch.load(source / "texture.pt", weights_only=True)
    got = torch.load(tmp_path / "cli" / "texture.pt", weights_only=True)
    assert torch.allclose(got, src.clamp(1e-4, 1 - 1e-4), atol=1e-5)
    rep = json.loads((tmp_path / "cli" / "detection.json").read_text())
    assert rep["init_from"] == str(source.resolve())
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["init_from"] == str(source.resolve())
    v = rep["variants"]  # the "initial" variant is the source patch: the same recall as the (unchanged) final one
    assert v["initial"]["recall"]["k"] == v["final"]["recall"]["k"] < v["random"]["recall"]["k"]


def test_init_from_mismatch_or_foreign_run_is_one_line_exit_2(toy_registered, tmp_path, capsys):  # noqa: F811
    assert _cli(toy_registered, tmp_path, "--steps", "1") == 0
    source = tmp_path / "source"
    (tmp_path / "cli").rename(source)
    assert _cli(toy_registered, tmp_path, "--steps", "1", "--patch-size", "8", "--init-from", str(source)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-from" in err[0] and "16 px, --patch-size is 8" in err[0], err
    assert _cli(toy_registered, tmp_path, "--steps", "1", "--init-from", str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_initial_of_the_wrong_shape_is_refused(data):  # noqa: F811
    from test_person_patch import ToyPersonDetector

    train, held = data
    attack = PersonPatch(patch_size=16, steps=1, batch_size=2, eval_samples=2, score_threshold=0.5, gt_score=0.5)
    with pytest.raises(ConfigError, match=r"initial patch has shape \(1, 3, 8, 8\)"):
        attack(ToyPersonDetector().eval(), train, eval_scenes=held, initial=torch.rand(1, 3, 8, 8))
