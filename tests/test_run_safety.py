"""Run directories and caches under hostile or damaged files (issue 14, security 1 and the ``--out`` rule).

* nothing loaded from a run directory or cache can execute code: a planted pickle whose ``__reduce__`` would create
  a marker file is refused (raw pickle, ``torch.save`` zip, and one behind a forged-but-valid checksum header), from
  the ``testbed`` CLI with exit status 2, and the marker never appears;
* every checkpoint/cache carries a sha256 of its content, checked before unpickling: >= 1,000 single-bit flips of a
  real checkpoint are all refused (none loads);
* a damaged newest checkpoint is announced by name, so is the fallback, and the resumed run stays bit-exact;
* ``--out``: a non-empty foreign folder, a run directory of another kind, a path under a file, an unwritable
  place: refused with a message naming the folder, nothing written.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from testbed.runs import (
    CHECKED_MAGIC,
    RUN_MARKER,
    RunDir,
    check_plain_data,
    checked_bytes,
    claim_run_dir,
    load_checked,
    run_dir_kind,
    save_checked,
)
from killed_runs import run_until_killed
from test_patch import _patch, _register_tiny_cli_model, _scenes, _tiny_model
from testbed.errors import ConfigError, IntegrityError, TestbedError


class _Planted:
    """Unpickling this creates ``marker`` (what an attacker's payload would do, minus the harm)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _raw_pickle(marker: Path) -> bytes:
    return pickle.dumps({"step": 99, "w": _Planted(marker)})


def _torch_zip(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"step": 99, "w": _Planted(marker)}, buf)
    return buf.getvalue()


def _forged_header(marker: Path) -> bytes:
    """A valid checksum header over a malicious payload: the checksum is not a signature, weights_only must hold."""
    payload = _torch_zip(marker)
    return b"%s v1 sha256=%s bytes=%d\n" % (CHECKED_MAGIC, hashlib.sha256(payload).hexdigest().encode(), len(payload)) + payload


PLANTS = {"raw-pickle": _raw_pickle, "torch-zip": _torch_zip, "forged-header": _forged_header}


def test_the_planted_payload_really_runs_code_when_loaded_unsafely(tmp_path):
    """Control: the payloads used below do create their marker under an unsafe load."""
    for name, make in PLANTS.items():
        marker = tmp_path / f"ran-{name}"
        data = make(marker)
        if data.startswith(CHECKED_MAGIC):
            data = data[data.index(b"\n") + 1:]
        try:
            torch.load(io.BytesIO(data), weights_only=False)
        except RuntimeError:  # a raw pickle: torch's legacy loader runs it, then finds no magic number
            pass
        assert marker.exists(), name


@pytest.fixture(scope="module")
def tiny():
    scenes = _scenes()
    return _tiny_model(scenes), scenes


def _patch_argv(out: Path, model: str) -> list[str]:
    return ["patch", "--model", model, "--target", "two", "--scenes", "chelsea", "--area", "0.2", "--steps", "3",
            "--batch-size", "4", "--eval", "8", "--eot", "thys", "--out", str(out), "--no-progress",
            "--device", "cpu"]


# ------------------------------------------------------------------------------------------------ planted files
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_checkpoint_is_refused_by_the_cli_and_never_runs(tmp_path, capsys, plant):
    from pipelines.main import main

    model = _register_tiny_cli_model()
    out = tmp_path / "run"
    argv = _patch_argv(out, model)
    assert main(argv) == 0
    capsys.readouterr()
    marker = tmp_path / "PWNED"
    planted = out / "checkpoints" / "step_00000099.pt"
    planted.write_bytes(PLANTS[plant](marker))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "step_00000099.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    words = "tensors and plain data" if plant == "forged-header" else "no testbed checksum header"
    assert words in err


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_defence_cache_is_refused_and_never_runs(tmp_path, capsys, plant):
    from pipelines.defences.training import DefenceTrainConfig, load_defence, train_defence
    from pipelines.main import main

    marker = tmp_path / "PWNED"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fgsm_at.pt").write_bytes(PLANTS[plant](marker))
    assert main(["defences", "train", "--only", "fgsm_at", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "fgsm_at.pt" in err and "Delete it" in err and "Traceback" not in err
    with pytest.raises(IntegrityError, match="fgsm_at.pt"):
        load_defence("fgsm_at", cache)
    with pytest.raises(IntegrityError, match="fgsm_at.pt"):
        train_defence("fgsm_at", DefenceTrainConfig("fgsm_at", n_train=8), cache_dir=cache)
    (cache / "data_train_n8_s0.pt").write_bytes(PLANTS[plant](marker))
    from pipelines.defences.training import training_data

    with pytest.raises(IntegrityError, match="data_train_n8_s0.pt"):
        training_data(8, 0, cache)
    assert not marker.exists()


def test_planted_defence_cache_is_refused_by_the_report(tmp_path):
    """evaluate.py's two cache reads go through the same check."""
    from pipelines.defences.evaluate import EvalConfig, run_report

    marker = tmp_path / "PWNED"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fgsm_at.pt").write_bytes(_torch_zip(marker))
    with pytest.raises(IntegrityError, match="fgsm_at.pt"):
        run_report(EvalConfig(), tmp_path / "report", cache_dir=cache, log=lambda s: None)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ bit flips
def _real_checkpoint(tiny, tmp_path) -> tuple[Path, dict]:
    model, scenes = tiny
    out = tmp_path / "real"
    _patch(steps=4, eval_samples=8, checkpoint_every=2)(model, scenes, target=4, run_dir=out)
    run = RunDir(out, json.loads((out / "config.json").read_text()))
    newest = run.checkpoints()[-1]
    return newest, load_checked(newest, what="checkpoint")


def test_every_single_bit_flip_of_a_real_checkpoint_is_refused(tiny, tmp_path):
    newest, original = _real_checkpoint(tiny, tmp_path)
    data = newest.read_bytes()
    header_bits = (data.index(b"\n") + 1) * 8
    rng = random.Random(14)
    # every bit of the header, then random bits of the payload: >= 1,000 flips in all
    positions = list(range(header_bits)) + rng.sample(range(header_bits, len(data) * 8), 1000)
    target = tmp_path / "flipped.pt"
    refused, damaged, loaded_different, loaded_same = 0, 0, 0, 0
    for bit in positions:
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(b))
        try:
            got = load_checked(target, what="checkpoint")
        except IntegrityError as exc:
            refused += 1
            damaged += exc.damaged
            assert str(target) in str(exc)
            continue
        same = torch.equal(got["w"], original["w"]) and got["history"] == original["history"]
        loaded_same += same
        loaded_different += not same
    assert len(positions) >= 1000
    assert loaded_different == 0 and loaded_same == 0 and refused == len(positions)
    # a flip in the payload, the length or the checksum is "damaged" (a resume falls back); a flip in the magic
    # makes it a file that is not ours (refused outright)
    assert damaged >= len(positions) - len(CHECKED_MAGIC) * 8


def test_truncated_and_oversized_and_headerless_files(tmp_path):
    p = save_checked({"a": torch.arange(100), "b": [1, 2.5, "x", None, True]}, tmp_path / "c.pt")
    assert load_checked(p)["b"] == [1, 2.5, "x", None, True]
    data = p.read_bytes()
    for cut in (0, 5, len(CHECKED_MAGIC) + 3, data.index(b"\n") + 1, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(IntegrityError, match="c.pt"):
            load_checked(p)
    p.write_bytes(data + b"\0")
    with pytest.raises(IntegrityError, match="longer than written"):
        load_checked(p)
    plain = io.BytesIO()
    torch.save({"a": 1}, plain)  # an older testbed's checkpoint: plain torch.save, no checksum
    p.write_bytes(plain.getvalue())
    with pytest.raises(IntegrityError, match="no testbed checksum header") as info:
        load_checked(p)
    assert not info.value.damaged
    with pytest.raises(IntegrityError, match="expected a list"):
        load_checked(save_checked({"a": 1}, tmp_path / "d.pt"), expect=list)


def test_only_plain_data_is_written():
    check_plain_data({"w": torch.zeros(2), "opt": {"state": {0: {"step": torch.tensor(1.0)}},
                                                   "param_groups": [{"betas": (0.9, 0.99), "foreach": None}]}})
    for bad in ({"v": torch.__version__}, {"p": Path("x")}, {"n": __import__("numpy").float32(1)},
                {"f": len}, {(1, 2): 3}, {"s": {1, 2}}):
        with pytest.raises(TypeError):
            checked_bytes(bad)


# ------------------------------------------------------------------------------------------------ fallback
def test_truncated_newest_checkpoint_fallback_is_announced_and_resume_is_exact(tiny, tmp_path, capsys):
    model, scenes = tiny
    attack = _patch(steps=6, eval_samples=20, checkpoint_every=2)
    full = attack(model, scenes, target=4, run_dir=tmp_path / "full")
    run_until_killed(functools.partial(attack, model, scenes, target=4, run_dir=tmp_path / "cut"), step=5)
    ckpts = tmp_path / "cut" / "checkpoints"
    newest = ckpts / "step_00000004.pt"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["step_00000002.pt", "step_00000004.pt"]
    newest.write_bytes(newest.read_bytes()[:-100])
    capsys.readouterr()
    resumed = attack(model, scenes, target=4, run_dir=tmp_path / "cut")
    err = capsys.readouterr().err
    assert "step_00000004.pt" in err and "truncated" in err
    assert "resuming" in err and "from step_00000002.pt (step 2)" in err
    assert torch.equal(resumed.perturbation, full.perturbation)
    assert resumed.loss_history == full.loss_history


def test_bit_flipped_newest_falls_back_and_no_intact_checkpoint_is_an_error(tiny, tmp_path):
    model, scenes = tiny
    out = tmp_path / "r"
    _patch(steps=4, eval_samples=8, checkpoint_every=2)(model, scenes, target=4, run_dir=out)
    run = RunDir(out, json.loads((out / "config.json").read_text()))
    old, new = run.checkpoints()
    b = bytearray(new.read_bytes())
    b[-50] ^= 0x10
    new.write_bytes(bytes(b))
    said: list[str] = []
    state = run.latest_checkpoint(announce=said.append)
    assert state["step"] == 2 and len(said) == 2
    assert "step_00000004.pt" in said[0] and "sha256 mismatch" in said[0]
    assert "step_00000002.pt" in said[1] and "instead of the damaged step_00000004.pt" in said[1]
    old.write_bytes(old.read_bytes()[:10])
    with pytest.raises(IntegrityError, match="no intact checkpoint.*step_00000004.*step_00000002"):
        run.latest_checkpoint(announce=lambda s: None)
    save_checked({"step": 4}, new.with_name("step_00000007.pt"))  # checksum fine, name and content disagree
    with pytest.raises(IntegrityError, match="does not match its name"):
        run.latest_checkpoint(announce=lambda s: None)


# ------------------------------------------------------------------------------------------------ --out rule
def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def test_out_refuses_a_foreign_non_empty_folder_from_the_cli(tmp_path, capsys):
    from pipelines.main import main

    model = _register_tiny_cli_model()
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not really a jpeg")
    (mine / "config.json").write_text('{"camera": "mine"}')  # someone else's config.json is not ours
    before = _tree(mine)
    assert main(_patch_argv(mine, model)) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "not empty" in err and "new or empty folder" in err
    assert _tree(mine) == before and not (mine / "checkpoints").exists()


def test_out_refuses_a_run_directory_of_another_kind(tmp_path, capsys):
    from pipelines.main import main

    model = _register_tiny_cli_model()
    out = tmp_path / "stk"
    RunDir(out, {"attack": "sticker", "steps": 3})
    before = _tree(out)
    assert main(_patch_argv(out, model)) == 2
    err = capsys.readouterr().err
    assert "is a sticker run directory, not a patch one" in err and str(out) in err
    assert _tree(out) == before
    with pytest.raises(ConfigError, match="is a sticker run directory, not an eyeglass one"):
        RunDir(out, {"attack": "eyeglass"})
    with pytest.raises(ConfigError, match="is a sticker run directory, not an experiment one"):
        claim_run_dir(out, "experiment")


def test_experiment_and_physical_run_directories_refuse_each_other(tmp_path):
    from pipelines.experiment import RunDir as ExperimentRunDir, RunDirError

    exp = tmp_path / "exp"
    claim_run_dir(exp, "experiment")
    (exp / "config.resolved.yaml").write_text("sha256: x\n")
    with pytest.raises(ConfigError, match="is an experiment run directory, not a patch one"):
        RunDir(exp, {"attack": "patch"})
    legacy = tmp_path / "legacy-exp"  # written before markers existed: recognised by its config file
    legacy.mkdir()
    (legacy / "config.resolved.yaml").write_text("sha256: x\n")
    assert run_dir_kind(legacy) == "experiment"
    with pytest.raises(ConfigError, match="not a patch one"):
        RunDir(legacy, {"attack": "patch"})
    patch = tmp_path / "patch"
    RunDir(patch, {"attack": "patch"})
    with pytest.raises(RunDirError, match="is a patch run directory, not an experiment one"):
        ExperimentRunDir(patch, object())  # refused before the config is looked at


def test_out_under_a_file_or_unwritable_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    from pipelines.main import main

    model = _register_tiny_cli_model()
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(_patch_argv(f / "sub" / "run", model)) == 2  # (the CLI's --out check may see it first)
    err = capsys.readouterr().err
    assert f"{f} is a file, not a folder" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match=f"cannot create run directory .*: {f} is a file, not a folder; nothing "
                                          "was written"):
        RunDir(f / "sub" / "run", {"attack": "patch"})
    with pytest.raises(ConfigError, match=f"--out {f} exists and is a file"):
        RunDir(f, {"attack": "patch"})
    assert main(_patch_argv(f, model)) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "not a folder" in err
    assert f.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile"]
    if os.geteuid() == 0:
        return  # root ignores permissions: the unwritable case cannot be made here
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="permission denied.*nothing was written"):
            RunDir(ro / "run", {"attack": "patch"})
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_new_empty_resumed_and_legacy_run_directories(tmp_path):
    cfg = {"attack": "patch", "steps": 3}
    assert claim_run_dir(tmp_path / "new" / "deep", "patch") is False
    assert json.loads((tmp_path / "new" / "deep" / RUN_MARKER).read_text())["kind"] == "patch"
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir(empty, cfg)
    assert run_dir_kind(empty) == "patch" and (empty / "config.json").is_file()
    assert claim_run_dir(empty, "patch") is True
    legacy = tmp_path / "legacy"  # a run directory written before the marker: adopted, marker added
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(cfg))
    RunDir(legacy, cfg)
    assert json.loads((legacy / RUN_MARKER).read_text())["kind"] == "patch"
    with pytest.raises(ConfigError, match="different config; differing keys: steps"):
        RunDir(legacy, {**cfg, "steps": 4})


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nest|not valid JSON"),
    (b"{", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
])
def test_bad_config_or_marker_files_are_config_errors(tmp_path, content, words):
    run = tmp_path / "r"
    RunDir(run, {"attack": "patch"})
    (run / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        RunDir(run, {"attack": "patch"})
    (run / RUN_MARKER).write_bytes(content)
    with pytest.raises(TestbedError):
        RunDir(run, {"attack": "patch"})
