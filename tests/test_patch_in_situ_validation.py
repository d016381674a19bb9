"""bench/patch_in_situ_validation.py: validation photos come only from the run's own training scenes and never from
the survival table's draws (issue 16: recipes are chosen without looking at the held-out scenes)."""
from __future__ import annotations

import json

import pytest

from bench.patch_in_situ_validation import main, training_scenes, validate_run
from testbed.errors import ConfigError


def _run_dir(tmp_path, scenes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"attack": "patch", "scenes": scenes}))
    (run / "metrics.json").write_text(json.dumps({}))
    return run


def test_validation_scenes_are_the_runs_shipped_training_scenes(tmp_path):
    run = _run_dir(tmp_path, ["chelsea", "motorcycle_left", str(tmp_path / "x.jpg"), "motorcycle_left"])
    assert training_scenes(run) == ["chelsea", "motorcycle_left"]  # image files cannot be photographed in situ


def test_held_out_scenes_and_the_survival_seed_are_refused(tmp_path, capsys):
    run = _run_dir(tmp_path, ["chelsea", "motorcycle_left"])
    with pytest.raises(ConfigError, match="motorcycle_right.*not among the run's training scenes"):
        validate_run(run, 6, 77, ["chelsea", "motorcycle_right"])
    with pytest.raises(ConfigError, match="2026 is the survival table's"):
        validate_run(run, 6, 2026)
    assert main([str(run), "--scenes", "moon"]) == 2
    assert "held-out scenes are for the survival table only" in capsys.readouterr().err
