"""Experiment runner: config validation, run directories, atomic writes, resume after an interrupted or killed run.

A tiny 10-class CNN on 32x32 inputs (registered here as ``tiny-harness-cnn``) keeps every run to seconds.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
from pipelines.experiment import RunDir, load_config, parse_config, run_experiment
from testbed.runs import WriteError as ResultsWriteError, write_atomic
from testbed.errors import ConfigError, ModelNotFoundError

TINY = "tiny-harness-cnn"
TESTS = Path(__file__).parent


def _tiny_net(seed: int = 1234) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.1))
    return net


def register_tiny() -> str:
    """Register the tiny classifier once per process; returns its name."""
    from testbed.models.registry import ModelEntry, NormalizedModel, list_models, register_model

    if TINY not in list_models():
        register_model(ModelEntry(
            name=TINY, task="classification", input_size=(32, 32), labels=tuple(f"class{i}" for i in range(10)),
            builder=lambda: NormalizedModel(_tiny_net(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), TINY),
            description="random 10-class CNN for harness tests"))
        register_model(ModelEntry(
            name=TINY + "-b", task="classification", input_size=(32, 32), labels=tuple(f"class{i}" for i in range(10)),
            builder=lambda: NormalizedModel(_tiny_net(99), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), TINY + "-b"),
            description="a second random 10-class CNN (transfer tests)"))
    return TINY


# camera.simulated at a small frame and page raster: the full print -> photo -> rectify loop, ~4x cheaper
FAST_SIM = {"frame_size": [640, 480], "dpi": 150, "width_mm": 30}


def tiny_config(**changes) -> dict:
    cfg = {"name": "tiny", "kind": "kurakin", "seed": 0, "models": [register_tiny()],
           "attacks": ["fgsm", "bim", "iter_ll"], "eps": [4, 16],
           "images": {"names": ["chelsea", "coffee"], "crops_per_photo": 2},
           "channel": {"kind": "simulated", "repetitions": 2, "simulator": FAST_SIM}, "batch_size": 4,
           "examples": 1}
    cfg.update(changes)
    return cfg


def _strip(cells: dict) -> dict:
    return {k: {f: v for f, v in c.items() if f != "seconds"} for k, c in cells.items()}


# ------------------------------------------------------------------------------------------------ config
def test_config_defaults_and_roundtrip(tmp_path):
    cfg = parse_config(tiny_config())
    assert cfg.eps == (4.0, 16.0) and cfg.channel.repetitions == 2
    assert [a.name for a in cfg.attacks] == ["fgsm", "bim", "iter_ll"]
    assert parse_config(cfg.to_dict()).sha256() == cfg.sha256()
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config()))
    assert load_config(tmp_path / "c.yaml").sha256() == cfg.sha256()


@pytest.mark.parametrize("change, words", [
    ({"colour": 1}, ["unknown key", "colour"]),
    ({"channel": {"kind": "fax"}}, ["channel.kind", "fax"]),
    ({"channel": {"kind": "simulated", "zoom": 2}}, ["channel", "zoom"]),
    ({"images": {"names": ["nope"]}}, ["unknown photo", "nope"]),
    ({"eps": [300]}, ["eps", "300", "(0, 255]"]),
    ({"eps": [0]}, ["eps", "out of range"]),
    ({"attacks": ["fgsm", "teleport"]}, ["unknown attack", "teleport"]),
    ({"attacks": [{"name": "bim", "stepz": 3}]}, ["stepz"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"prefilter_confidence": 2}, ["prefilter_confidence"]),
    ({"kind": "magic"}, ["kind", "magic"]),
    ({"channel": {"kind": "folder"}}, ["channel.folder"]),
    ({"channel": {"kind": "simulated", "preset": "foggy"}}, ["preset", "foggy", "mild"]),
    ({"channel": {"kind": "simulated", "simulator": {"zoom": 2}}}, ["channel.simulator", "zoom", "width_mm"]),
    ({"channel": {"kind": "simulated", "simulator": {"width_mm": 2}}}, ["width_mm", "[5, 1000]"]),
    ({"channel": {"kind": "simulated", "simulator": {"frame_size": [10, 10]}}}, ["frame_size"]),
    ({"channel": {"kind": "simulated", "simulator": {"printer_dpi": 1e6}}}, ["printer dpi"]),
])
def test_config_errors_name_the_problem(change, words):
    with pytest.raises(ConfigError) as exc:
        parse_config(tiny_config(**change))
    for w in words:
        assert w in str(exc.value)


def test_unknown_model_is_named():
    with pytest.raises(ModelNotFoundError, match="resnet9000"):
        parse_config(tiny_config(models=["resnet9000"]))


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


# ------------------------------------------------------------------------------------------------ files
def test_write_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "cells" / "a.json"
    write_atomic(target, "old")

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(ResultsWriteError, match="disk full") as exc:
        write_atomic(target, "new contents")
    assert str(target) in str(exc.value)
    assert target.read_text() == "old"  # untouched
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temp file left


def test_permission_error_names_file(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(ResultsWriteError, match="permission denied"):
        write_atomic(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_run_dir_from_other_config_is_refused(tmp_path):
    RunDir(tmp_path / "run", parse_config(tiny_config()))
    RunDir(tmp_path / "run", parse_config(tiny_config()))  # same config: fine (resume)
    with pytest.raises(ConfigError, match=r"different config.*eps"):
        RunDir(tmp_path / "run", parse_config(tiny_config(eps=[8])))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an experiment run directory"):
        RunDir(tmp_path / "other", parse_config(tiny_config()))


# ------------------------------------------------------------------------------------------------ running
def test_tiny_experiment_end_to_end_and_resume(tmp_path):
    cfg = tiny_config()
    full = run_experiment(cfg, tmp_path / "full", progress=False)
    assert len(full.computed) == 1 + 3 * 2 and not full.skipped
    for f in ("report.md", "report.html", "report.json", "config.resolved.yaml", "run.json",
              "plots/accuracy_vs_eps.png", "plots/destruction.png"):
        assert (tmp_path / "full" / f).is_file(), f

    # interrupted after 3 cells: those are complete on disk, the rest resume, results identical
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "part", progress=False, stop_after=3)
    assert len(list((tmp_path / "part" / "cells").glob("*.json"))) == 3
    resumed = run_experiment(cfg, tmp_path / "part", progress=False)
    assert len(resumed.skipped) == 3 and len(resumed.computed) == 4
    assert _strip(resumed.cells) == _strip(full.cells)  # deterministic: same seed, same numbers


def test_disk_full_mid_run_then_resume(tmp_path, monkeypatch):
    import pipelines.experiment as ex

    cfg = tiny_config(attacks=["fgsm"], eps=[4, 8])
    real = ex.write_atomic
    calls = {"n": 0}

    def flaky(path, data):
        if "cells" in str(path):
            calls["n"] += 1
            if calls["n"] == 2:
                raise ResultsWriteError(errno.ENOSPC, f"could not write results file {path}: disk full")
        return real(path, data)

    monkeypatch.setattr(ex, "write_atomic", flaky)
    with pytest.raises(ResultsWriteError, match="disk full"):
        run_experiment(cfg, tmp_path / "r", progress=False)
    files = sorted(p.name for p in (tmp_path / "r" / "cells").iterdir())
    assert files == [f"{TINY}__clean.json"]  # one whole cell, nothing half-written
    monkeypatch.setattr(ex, "write_atomic", real)
    s = run_experiment(cfg, tmp_path / "r", progress=False)
    assert s.skipped == [f"{TINY}/clean"] and len(s.computed) == 2


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_experiment import register_tiny, tiny_config
import pipelines.kurakin as k
orig = k.build_cells
def slow(config, run):
    cells = orig(config, run)
    for c in cells:
        f = c.compute
        c.compute = (lambda f=f: (time.sleep(0.4), f())[1])
    return cells
k.build_cells = slow
from pipelines.experiment import run_experiment
run_experiment(tiny_config(), {out!r}, progress=False)
"""


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT.format(tests=str(TESTS), out=str(out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cells = out / "cells"
    deadline = time.time() + 90
    while time.time() < deadline and len(list(cells.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = list(cells.glob("*.json"))
    assert 2 <= len(done) < 7, proc.stderr.read().decode()[-2000:]
    for p in done:  # every file on disk is a whole cell
        assert json.loads(p.read_text())["key"]
    s = run_experiment(tiny_config(), out, progress=False)
    assert len(s.skipped) == len(done) and len(s.computed) == 7 - len(done)
    assert (out / "report.md").is_file()
