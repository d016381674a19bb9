"""The experiment-kind registry: a kind defined in this file runs through parse_config, run_experiment (resume
included) and write_report without any change to the runner; the registry's refusals; the built-in kinds' hooks."""
from __future__ import annotations

import json
import sys
import types

import pytest
import yaml

import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
from pipelines import experiment
from pipelines.experiment import Cell, RunDir, get_kind, list_kinds, parse_config, register_kind, run_experiment
from test_experiment import register_tiny
from testbed import runs
from testbed.errors import ConfigError


def _toy_kind() -> types.SimpleNamespace:
    """A kind counting, per attack and eps, a deterministic number; its report section is one table."""
    calls = {"built": 0}

    def check_config(config):
        if config.seed == 13:
            raise ConfigError("config seed: the toy kind refuses 13")

    def build_cells(config, run):
        calls["built"] += 1
        return [Cell(f"toy/{a.label}/eps{e:g}", lambda a=a, e=e: {"kind": "toy", "attack": a.label, "eps": e,
                                                                  "value": len(a.label) * e + config.seed})
                for a in config.attacks for e in config.eps]

    def summarise_run(config, cells):
        return {"total": sum(c["value"] for c in cells.values()), "n": len(cells)}

    def render_report(run_dir, config, cells, summary):
        return ["## Toy section", "", f"total {summary['total']:g} over {summary['n']} cells"], {"toy": summary}

    return types.SimpleNamespace(BASELINES=("toy_noise",), check_config=check_config, build_cells=build_cells,
                                 summarise_run=summarise_run, render_report=render_report, calls=calls)


@pytest.fixture(scope="module")
def toy():
    kind = _toy_kind()
    register_kind("toy", kind)
    yield kind
    experiment._KINDS.pop("toy", None)


def _cfg(**changes) -> dict:
    cfg = {"name": "toy-run", "kind": "toy", "seed": 1, "models": [register_tiny()], "attacks": ["fgsm", "toy_noise"],
           "eps": [2, 4], "channel": {"kind": "none"}}
    cfg.update(changes)
    return cfg


def test_a_toy_kind_runs_resumes_and_reports_through_the_registry(toy, tmp_path):
    assert "toy" in list_kinds() and {"kurakin", "transfer"} <= set(list_kinds())
    first = run_experiment(_cfg(), tmp_path / "run", progress=False)
    assert sorted(first.computed) == ["toy/fgsm/eps2", "toy/fgsm/eps4", "toy/toy_noise/eps2", "toy/toy_noise/eps4"]
    assert first.cells["toy/fgsm/eps4"]["value"] == 4 * 4 + 1
    again = run_experiment(_cfg(), tmp_path / "run", progress=False)  # resumed: every cell read back from disk
    assert again.computed == [] and len(again.skipped) == 4 and toy.calls["built"] == 2
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Kind: toy" in md and "## Toy section" in md and "total 82 over 4 cells" in md  # 9 + 17 + 19 + 37
    assert json.loads((tmp_path / "run" / "report.json").read_text())["toy"] == {"total": 82.0, "n": 4}
    assert "Machine: " in md and "None CPU cores" not in md  # the header reads testbed.machine


def test_the_kind_hooks_run_at_parse_time(toy):
    with pytest.raises(ConfigError, match="toy kind refuses 13"):
        parse_config(_cfg(seed=13))
    with pytest.raises(ConfigError, match=r"'toy_noise' is a baseline of kind toy \(no hyper-parameters\)"):
        parse_config(_cfg(attacks=[{"name": "toy_noise", "scale": 2}]))
    with pytest.raises(ConfigError, match="'toy_noise' is a baseline of kind toy"):
        parse_config(_cfg(kind="kurakin", attacks=["toy_noise"]))  # another kind's baseline is not an attack here
    with pytest.raises(ConfigError, match="'random_sign' is a baseline of kind transfer"):
        parse_config(_cfg(attacks=["random_sign"]))
    with pytest.raises(ConfigError, match=r"config kind must be one of \(.*'kurakin'.*'toy'.*\), got 'nope'"):
        parse_config(_cfg(kind="nope"))
    with pytest.raises(ConfigError, match="got \\['toy'\\]"):
        parse_config(_cfg(kind=["toy"]))  # not a name: refused, not a TypeError


def test_the_builtin_kinds_check_their_own_keys():
    register_tiny()
    base = {"name": "k", "models": [register_tiny()], "attacks": ["fgsm"], "eps": [4], "channel": {"kind": "none"}}
    with pytest.raises(ConfigError, match="config surrogate is used by kind transfer only"):
        parse_config({**base, "kind": "kurakin", "surrogate": {"rounds": 1}})
    with pytest.raises(ConfigError, match="config targets is used by kind transfer only"):
        parse_config({**base, "kind": "kurakin", "targets": [register_tiny()]})
    with pytest.raises(ConfigError, match="surrogate: unknown key"):
        parse_config({**base, "kind": "transfer", "surrogate": {"depth": 3}})
    assert get_kind("transfer").BASELINES == ("random_sign",) and get_kind("kurakin").BASELINES == ()
    assert get_kind("kurakin") is sys.modules["pipelines.kurakin"]


def test_register_kind_refuses_programming_errors(toy):
    register_kind("toy", toy)  # the same object again: a no-op
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_kind("toy", _toy_kind())
    with pytest.raises(TypeError, match="lacks check_config, render_report"):
        register_kind("half", types.SimpleNamespace(BASELINES=(), build_cells=None, summarise_run=None))
    with pytest.raises(ValueError, match="must be an identifier"):
        register_kind("not a name", _toy_kind())
    assert "half" not in list_kinds()


def test_an_unregistered_kind_names_the_module_that_registers_the_builtins(monkeypatch):
    monkeypatch.setattr(experiment, "_KINDS", {})
    with pytest.raises(ConfigError, match="none registered: `import pipelines.kinds`"):
        get_kind("kurakin")


def test_the_experiment_run_dir_is_the_shared_run_dir(toy, tmp_path):
    cfg = parse_config(_cfg())
    run = RunDir(tmp_path / "r", cfg)
    assert isinstance(run, runs.RunDir) and run.kind == "experiment" and run.experiment is cfg
    assert runs.run_dir_kind(tmp_path / "r") == "experiment"
    stored = yaml.safe_load((tmp_path / "r" / "config.resolved.yaml").read_text())
    assert stored == {"sha256": cfg.sha256(), "config": cfg.to_dict()}
    with pytest.raises(experiment.RunDirError, match=r"different config; differing keys: eps \(\[2\.0, 4\.0\] -> "
                                                     r"\[8\.0\]\)"):
        RunDir(tmp_path / "r", parse_config(_cfg(eps=[8])))
    (tmp_path / "r" / "config.resolved.yaml").write_text(yaml.safe_dump({**stored, "sha256": "0" * 64}))
    with pytest.raises(experiment.RunDirError, match="differing keys: sha256"):  # edited by hand
        RunDir(tmp_path / "r", cfg)
    # a run directory written before an option existed (here channel.transform, null by default) resumes; a hand
    # edit of such a config is still caught, by the stored config's own digest
    older = {**cfg.to_dict()}
    older["channel"] = {k: v for k, v in older["channel"].items() if k != "transform"}
    stored_file = tmp_path / "r" / "config.resolved.yaml"
    stored_file.write_text(yaml.safe_dump({"sha256": experiment.config_digest(older), "config": older}))
    RunDir(tmp_path / "r", cfg)  # resumes
    stored_file.write_text(yaml.safe_dump({"sha256": experiment.config_digest(older), "config": {**older, "seed": 5}}))
    with pytest.raises(experiment.RunDirError, match=r"differing keys: seed"):
        RunDir(tmp_path / "r", cfg)
    stored_file.write_text(yaml.safe_dump({"sha256": "0" * 64, "config": older}))
    with pytest.raises(experiment.RunDirError, match="differing keys: sha256"):
        RunDir(tmp_path / "r", cfg)
    path = run.save_cell("toy/x", {"value": 1})
    assert path.parent == tmp_path / "r" / "cells" and run.load_cell("toy/x") == {"key": "toy/x", "value": 1}
    assert list(run.cells()) == ["toy/x"] and not list(path.parent.glob("*.partial"))
