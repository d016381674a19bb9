"""Bad input through the ``testbed`` command line: for each kind, exit status 2, one line on stderr naming the
problem (the option or the file), no traceback, nothing half-written and nothing written outside ``--out``.

The commands are driven in-process (``pipelines.main.main``) with the working directory in the test's own folder,
which is snapshotted before and after; a few run as real subprocesses. Models are never loaded: every case must
fail in validation (``get_model`` and the face descriptor's loader are replaced by a tripwire), so the suite is fast.
Kinds already covered by tests/test_bad_inputs.py (the ``evaluate`` config keys and values, grayscale/RGBA/16-bit
images, an empty image folder, an unreadable video, disk full) are not repeated here.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from mjpeg_stream import mjpeg_stream
from test_experiment import TINY, register_tiny
from pipelines.main import main

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers
def _snapshot(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links; links are not followed)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The test's folder as the working directory, with the tiny model registered and model loading forbidden."""
    register_tiny()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TESTBED_DEVICE", raising=False)

    def tripwire(*a, **k):
        raise AssertionError("a model was loaded before the options were validated")

    import testbed.models.face_descriptor as fd
    import testbed.models.registry as reg

    # swap the functions' code, not the module attributes: modules that imported them by name (at import time,
    # possibly during this test) keep the real function object, so nothing leaks past the test
    monkeypatch.setattr(reg.get_model, "__code__", tripwire.__code__)
    monkeypatch.setattr(fd.load_face_descriptor, "__code__", tripwire.__code__)
    return tmp_path


def refused(capsys, root: Path, argv: list, words: list[str], *, out_allowed: str | None = None) -> str:
    """Run ``testbed ARGV`` and check the contract of a refused input; returns the one error line."""
    before = _snapshot(root)
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    after = _snapshot(root)
    assert rc == 2, (rc, cap.err)
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    line = lines[0]
    assert line.startswith("testbed ") and ": error: " in line, line
    for w in words:
        assert w in line, (w, line)
    assert not [p for p in after if p.endswith(".partial") or ".partial" in Path(p).name], after
    new = after - before
    if out_allowed is not None:
        new = {p for p in new if not (p == out_allowed or p.startswith(out_allowed + os.sep))}
    assert not new, f"written outside --out: {sorted(new)}"
    return line


def patch_argv(*extra: object, out: object = "out") -> list:
    """A `testbed patch` command line that would be valid (tiny model, 2 steps), plus ``extra`` (last wins)."""
    return ["patch", "--model", TINY, "--target", "class1", "--scenes", "chelsea", "--steps", "2",
            "--batch-size", "2", "--eval", "4", "--eot", "thys", "--device", "cpu", "--no-progress",
            "--allocator", "glibc", "--out", out, *extra]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A 100-byte PNG whose header claims ``w`` x ``h`` RGB pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


def good_png(path: Path, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def not_utf8(path: Path, text: str) -> Path:
    """``text`` with a Latin-1 byte in it (a file saved in the wrong encoding)."""
    path.write_bytes(text.encode() + b"\n# caf\xe9\n")
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def loop(path: Path) -> Path:
    os.symlink(path.name, path)  # a symlink pointing at itself
    return path


def printed_sheet(root: Path) -> Path:
    """A real printouts sidecar (+ PDF) of a small patch sheet; returns the sidecar path."""
    from printouts.sheets import patch_sheet

    files = patch_sheet(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), width_mm=40).write(
        root / "sheet", "patch", png=False)
    return files.sidecar


def sheet_without(root: Path, key: str) -> Path:
    side = printed_sheet(root)
    data = json.loads(side.read_text())
    del data[key]
    side.write_text(json.dumps(data))
    return side


def nested_json(depth: int = 100_000) -> str:
    return '{"colors": ' + "[" * depth + "]" * depth + "}"


# ------------------------------------------------------------------------------------------------ the cases
# (id, builder(root) -> argv, words the one error line must contain). Each builder makes the bad file it needs.
Case = tuple[str, Callable[[Path], list], list[str]]

OPTION_CASES: list[Case] = [
    # --area: the square root used to be taken before validation
    ("area-negative", lambda r: patch_argv("--area", "-0.1"), ["--area", "-0.1"]),
    ("area-nan", lambda r: patch_argv("--area", "nan"), ["--area", "nan"]),
    ("area-inf", lambda r: patch_argv("--area", "inf"), ["--area", "finite"]),
    ("area-zero", lambda r: patch_argv("--area", "0"), ["--area", "> 0"]),
    ("area-negative-zero", lambda r: patch_argv("--area", "-0.0"), ["--area", "> 0"]),
    ("area-above-one", lambda r: patch_argv("--area", "1.5"), ["--area", "<= 1"]),
    ("area-not-a-number", lambda r: patch_argv("--area", "ten%"), ["--area", "expected a number"]),
    ("area-min-above-area", lambda r: patch_argv("--area-min", "0.5", "--area", "0.1"), ["--area-min", "--area"]),
    ("eval-zero", lambda r: patch_argv("--eval", "0"), ["--eval", ">= 1"]),  # used to write success_rate NaN
    ("steps-zero", lambda r: patch_argv("--steps", "0"), ["--steps", ">= 1"]),  # used to save the random start
    ("steps-negative", lambda r: patch_argv("--steps", "-5"), ["--steps"]),
    ("steps-huge", lambda r: patch_argv("--steps", "1" + "0" * 400), ["--steps", "too large"]),
    ("steps-float", lambda r: patch_argv("--steps", "1e3"), ["--steps", "whole number"]),
    ("batch-zero", lambda r: patch_argv("--batch-size", "0"), ["--batch-size"]),
    ("lr-1e308", lambda r: patch_argv("--lr", "1e308"), ["--lr", "1e+308"]),
    ("lr-overflow", lambda r: patch_argv("--lr", "1e400"), ["--lr", "finite"]),
    ("rotation-out-of-range", lambda r: patch_argv("--rotation", "720"), ["--rotation"]),
    ("seed-negative", lambda r: patch_argv("--seed", "-1"), ["--seed"]),
    ("seed-2-to-the-64", lambda r: patch_argv("--seed", str(2**64)), ["--seed"]),
    ("device-bogus", lambda r: patch_argv("--device", "bogus"), ["--device", "bogus"]),
    ("device-cuda-index", lambda r: patch_argv("--device", "cuda:-1"), ["--device", "cuda:-1"]),
    ("unknown-model", lambda r: patch_argv("--model", "alexnet-9000"), ["unknown model", "alexnet-9000"]),
    ("unknown-target", lambda r: patch_argv("--target", "giraffe"), ["--target", "giraffe"]),
    ("target-index-out-of-range", lambda r: patch_argv("--target", "99"), ["--target", "99"]),
    ("unknown-eot-preset", lambda r: patch_argv("--eot", "wobbly"), ["wobbly"]),
    ("missing-required-option", lambda r: ["patch", "--model", TINY], ["--out"]),
    ("unknown-option", lambda r: patch_argv("--colour", "red"), ["--colour"]),
    ("sticker-unknown-sign", lambda r: ["sticker", "--model", "sign-cnn", "--sign", "yield-to-cats", "--target",
                                        "no_entry", "--out", "o", "--device", "cpu"], ["--sign", "yield-to-cats"]),
    ("sticker-budget-nan", lambda r: ["sticker", "--budget", "nan", "--target", "no_entry", "--out", "o"],
     ["--budget", "nan"]),
    ("sticker-background-out-of-range", lambda r: ["sticker", "--model", "sign-cnn", "--target", "no_entry",
                                                   "--background", "1.5", "--out", "o", "--device", "cpu"],
     ["--background", "1.5"]),
    ("attack-unknown", lambda r: ["attack", "digital", "--attack", "teleport", "--model", TINY, "--image",
                                  "chelsea", "--out", "o"], ["unknown attack", "teleport"]),
    ("attack-eps-nan", lambda r: ["attack", "digital", "--attack", "pgd", "--eps", "nan", "--image", "chelsea",
                                  "--out", "o"], ["--eps", "nan"]),
    ("attack-eps-out-of-range", lambda r: ["attack", "digital", "--attack", "fgsm", "--eps", "300", "--model", TINY,
                                           "--image", "chelsea", "--out", "o"], ["eps"]),
    ("attack-param-deeply-nested", lambda r: ["attack", "digital", "--attack", "pgd", "--model", TINY, "--image",
                                              "chelsea", "--out", "o", "--param", "norm=" + "[" * 100_000],
     ["--param", "norm", "nests too deeply"]),
    ("attack-param-not-key-value", lambda r: ["attack", "digital", "--attack", "pgd", "--model", TINY, "--image",
                                              "chelsea", "--out", "o", "--param", "oops"], ["--param", "oops"]),
    ("attack-unknown-target", lambda r: ["attack", "digital", "--attack", "fgsm", "--model", TINY, "--image",
                                         "chelsea", "--target", "giraffe", "--out", "o"], ["--target", "giraffe"]),
    ("eyeglass-steps-zero", lambda r: ["eyeglass", "--wearer", "astronaut", "--steps", "0", "--out", "o"],
     ["--steps"]),
    ("eyeglass-margin-negative", lambda r: ["eyeglass", "--wearer", "astronaut", "--margin", "-1", "--out", "o"],
     ["--margin"]),
    ("print-dpi-zero", lambda r: ["print", "chart", "--dpi", "0", "--out", "o"], ["--dpi", "> 0"]),
    ("print-dpi-huge", lambda r: ["print", "chart", "--dpi", "1e308", "--out", "o"], ["--dpi"]),
    ("print-width-negative", lambda r: ["print", "patch", "--image", "x.png", "--width-mm", "-5", "--out", "o"],
     ["--width-mm", "-5"]),
    ("print-name-escapes-out", lambda r: ["print", "chart", "--name", "../../escape", "--out", "o"],
     ["--name", "escape"]),
    ("print-impossible-page", lambda r: ["print", "chart", "--page", "10x10", "--out", "o"], ["page", "10x10"]),
    ("print-levels-zero", lambda r: ["print", "chart", "--levels", "0", "--out", "o"], ["--levels"]),
    ("capture-every-s-negative", lambda r: ["capture", "cam", "--every-s", "-1", "--out", "o"], ["--every-s"]),
    ("capture-frames-negative", lambda r: ["capture", "cam", "--frames", "-3", "--out", "o"], ["--frames"]),
    ("capture-timeout-zero", lambda r: ["capture", "cam", "--timeout-s", "0", "--out", "o"], ["--timeout-s"]),
    ("rectify-min-markers", lambda r: ["rectify", "p.png", "--sheet", "s.json", "--min-markers", "9", "--out", "o"],
     ["--min-markers"]),
    ("rectify-palette-out-suffix", lambda r: ["rectify", "p.png", "--sheet", "s.json", "--palette-out", "pal.txt",
                                              "--out", "o"], ["--palette-out", ".json or .csv"]),
    ("live-width-zero", lambda r: ["live", "0", "--width", "0", "--out", "o"], ["--width"]),
    ("live-max-frames-zero", lambda r: ["live", "0", "--max-frames", "0", "--out", "o"], ["--max-frames"]),
    ("live-unknown-model", lambda r: ["live", "0", "--model", "alexnet-9000", "--out", "o"], ["alexnet-9000"]),
    ("secure-eval-frames-zero", lambda r: ["secure-eval", "--frames", "0", "--out", "o"], ["--frames"]),
    ("secure-eval-eps-out-of-range", lambda r: ["secure-eval", "--eps", "300", "--out", "o"], ["--eps"]),
    ("survival-photos-zero", lambda r: ["survival", "--photos", "0", "--out", "o"], ["--photos"]),
    ("survival-missing-run", lambda r: ["survival", "--patch", "no-such-run", "--out", "o"], ["no-such-run"]),
    ("survival-no-run", lambda r: ["survival", "--out", "o"], ["--patch"]),
    ("signs-render-size-zero", lambda r: ["signs", "render", "stop", "--size", "0", "--out", "s.png"], ["--size"]),
    ("signs-dataset-n-zero", lambda r: ["signs", "dataset", "--n", "0", "--out", "d.pt"], ["--n"]),
    ("signs-train-lr-nan", lambda r: ["signs", "train", "--lr", "nan", "--out", "w.pt"], ["--lr"]),
    ("defences-unknown-section", lambda r: ["defences", "evaluate", "--sections", "table,vibes", "--out", "o"],
     ["--sections", "vibes"]),
    ("defences-unknown-model", lambda r: ["defences", "train", "--only", "pgd_at,hope", "--cache", "c"],
     ["--only", "hope"]),
    ("defences-n-attack-zero", lambda r: ["defences", "evaluate", "--n-attack", "0", "--out", "o"], ["--n-attack"]),
    ("report-missing-run", lambda r: ["report", "no-such-run"], ["no-such-run"]),
    ("demo-unknown-eot", lambda r: ["demo", "--eot", "wobbly", "--out", "o"], ["wobbly"]),
    ("classify-unknown-model", lambda r: ["classify", "chelsea", "--model", "alexnet-9000"], ["alexnet-9000"]),
]


def _scene(make: Callable[[Path], Path], name: str) -> Callable[[Path], list]:
    return lambda r: patch_argv("--scenes", make(r / name))


FILE_CASES: list[Case] = [
    # images
    ("image-bomb-header-20000x20000", _scene(lambda p: bomb_png(p), "bomb.png"), ["bomb.png", "pixels"]),
    ("image-corrupt", _scene(lambda p: (p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), p)[1], "bad.png"), ["bad.png"]),
    ("image-truncated", _scene(truncated_png, "half.png"), ["half.png"]),
    ("image-empty-file", _scene(lambda p: (p.write_bytes(b""), p)[1], "empty.png"), ["empty.png", "empty"]),
    ("image-is-a-folder", _scene(lambda p: (p.mkdir(), p)[1], "folder.png"), ["folder.png", "folder"]),
    ("image-symlink-loop", _scene(loop, "loop.png"), ["loop.png"]),
    ("image-fifo", _scene(fifo, "pipe.png"), ["pipe.png"]),
    ("image-missing", _scene(lambda p: p, "nowhere.png"), ["nowhere.png"]),
    ("image-unicode-path", _scene(lambda p: (p.write_bytes(b"not an image"), p)[1], "ünï 图.png"), ["ünï 图.png"]),
    ("image-text-file-named-png", _scene(lambda p: (p.write_text("hello"), p)[1], "note.png"), ["note.png"]),
    ("classify-bomb", lambda r: ["classify", bomb_png(r / "cbomb.png"), "--model", TINY], ["cbomb.png", "pixels"]),
    ("print-image-bomb", lambda r: ["print", "patch", "--image", bomb_png(r / "pbomb.png"), "--width-mm", "50",
                                    "--out", "o"], ["pbomb.png"]),
    ("print-perturbation-pt-corrupt", lambda r: ["print", "patch", "--image",
                                                 (r / "p.pt", (r / "p.pt").write_bytes(b"PK\x03\x04 junk"))[0],
                                                 "--width-mm", "50", "--out", "o"], ["p.pt"]),
    ("eyeglass-wearer-corrupt", lambda r: ["eyeglass", "--wearer", (r / "w.png", (r / "w.png").write_bytes(b"x"))[0],
                                           "--out", "o"], ["w.png"]),
    ("sticker-mask-bomb", lambda r: ["sticker", "--model", "sign-cnn", "--target", "no_entry", "--mask",
                                     bomb_png(r / "mask.png"), "--out", "o", "--device", "cpu"], ["mask.png"]),
    ("patch-shape-missing-file", lambda r: patch_argv("--shape", r / "nope-mask.png"), ["nope-mask.png"]),
    # palettes
    ("palette-not-utf8", lambda r: patch_argv("--palette", not_utf8(r / "pal.json", '{"colors": [[0, 0, 0]]}')),
     ["pal.json", "UTF-8"]),
    ("palette-malformed-colour", lambda r: patch_argv("--palette", (r / "pal.json", (r / "pal.json").write_text(
        '{"colors": [[0.1, "red", 0.3]]}'))[0]), ["pal.json"]),
    ("palette-colour-out-of-range", lambda r: patch_argv("--palette", (r / "pal.json", (r / "pal.json").write_text(
        '{"colors": [[300, 0, 0]]}'))[0]), ["pal.json"]),
    ("palette-deeply-nested", lambda r: patch_argv("--palette", (r / "pal.json", (r / "pal.json").write_text(
        nested_json()))[0]), ["pal.json", "nest"]),
    ("palette-empty-file", lambda r: patch_argv("--palette", (r / "pal.json", (r / "pal.json").write_text(""))[0]),
     ["pal.json", "empty"]),
    ("palette-is-a-folder", lambda r: patch_argv("--palette", (r / "pal", (r / "pal").mkdir())[0]), ["pal", "folder"]),
    ("palette-fifo", lambda r: patch_argv("--palette", fifo(r / "pal.json")), ["pal.json"]),
    # EOT configs
    ("eot-config-not-utf8", lambda r: patch_argv("--eot", not_utf8(r / "eot.yaml", "scale: [0.9, 1.1]")),
     ["eot.yaml", "UTF-8"]),
    ("eot-config-deeply-nested-yaml", lambda r: patch_argv("--eot", (r / "eot.yaml", (r / "eot.yaml").write_text(
        "scale: " + "[" * 5000 + "]" * 5000))[0]), ["eot.yaml", "nest"]),
    ("eot-config-symlink-loop", lambda r: patch_argv("--eot", loop(r / "eot.json")), ["eot.json"]),
    # experiment configs
    ("experiment-config-not-utf8", lambda r: ["evaluate", not_utf8(r / "exp.yaml", "name: x"), "--out", "o"],
     ["exp.yaml", "UTF-8"]),
    ("experiment-config-deeply-nested", lambda r: ["evaluate", (r / "exp.yaml", (r / "exp.yaml").write_text(
        "name: " + "[" * 5000 + "]" * 5000))[0], "--out", "o"], ["exp.yaml", "nest"]),
    ("experiment-config-empty", lambda r: ["evaluate", (r / "exp.yaml", (r / "exp.yaml").write_text(""))[0],
                                           "--out", "o"], ["exp.yaml"]),
    ("experiment-config-is-a-folder", lambda r: ["evaluate", (r / "exp", (r / "exp").mkdir())[0], "--out", "o"],
     ["exp", "folder"]),
    ("experiment-config-fifo", lambda r: ["evaluate", fifo(r / "exp.yaml"), "--out", "o"], ["exp.yaml"]),
    ("experiment-config-yaml-alias-bomb", lambda r: ["evaluate", (r / "exp.yaml", (r / "exp.yaml").write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))))[0],
        "--out", "o"], ["exp.yaml"]),
    # printout sidecars
    ("sheet-not-utf8", lambda r: ["capture", "--simulate", not_utf8(r / "s.json", '{"objects": []}'), "--out", "cap"],
     ["s.json", "UTF-8"]),
    ("sheet-malformed-json", lambda r: ["capture", "--simulate", (r / "s.json", (r / "s.json").write_text(
        '{"objects": [,]}'))[0], "--out", "cap"], ["s.json", "JSON"]),
    ("sheet-missing-page", lambda r: ["capture", "--simulate", sheet_without(r, "page"), "--out", "cap"],
     ["patch.json", "page"]),
    ("sheet-missing-objects", lambda r: ["capture", "--simulate", sheet_without(r, "objects"), "--out", "cap"],
     ["patch.json", "objects"]),
    ("sheet-deeply-nested", lambda r: ["rectify", good_png(r / "photo.png"), "--sheet", (r / "s.json", (
        r / "s.json").write_text(nested_json()))[0], "--out", "o"], ["s.json", "nest"]),
    ("live-rectify-sheet-fifo", lambda r: ["live", "0", "--rectify", fifo(r / "s.json"), "--out", "o"], ["s.json"]),
    # run directories
    ("run-marker-not-utf8", lambda r: patch_argv(out=(r / "run", (r / "run").mkdir(), not_utf8(
        r / "run" / "testbed-run.json", '{"kind": "patch"}'))[0]), ["testbed-run.json", "UTF-8"]),
    ("report-run-config-not-utf8", lambda r: ["report", (r / "run", (r / "run").mkdir(), not_utf8(
        r / "run" / "config.resolved.yaml", "config: {}"))[0]], ["config.resolved.yaml", "UTF-8"]),
    ("signs-evaluate-weights-fifo", lambda r: ["signs", "evaluate", "--weights", fifo(r / "w.pt")], ["w.pt"]),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_is_refused_before_any_work(work, capsys, case):
    _, build, words = case
    refused(capsys, work, build(work), words)
    assert not (work / "o").exists() and not (work / "out").exists()


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file_is_refused_by_name(work, capsys, case):
    _, build, words = case
    argv = build(work)  # the bad file is made before the snapshot: only what the command writes is compared
    refused(capsys, work, argv, words)


def test_every_kind_is_distinct_and_there_are_at_least_40():
    ids = [c[0] for c in OPTION_CASES + FILE_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


# ------------------------------------------------------------------------------------------------ --out
@pytest.mark.parametrize("argv", [
    lambda o: patch_argv(out=o),
    lambda o: ["attack", "digital", "--attack", "fgsm", "--model", TINY, "--image", "chelsea", "--out", o],
    lambda o: ["print", "chart", "--out", o],
    lambda o: ["capture", "cam", "--out", o],
    lambda o: ["rectify", "p.png", "--sheet", "s.json", "--out", o],
    lambda o: ["evaluate", "exp.yaml", "--out", o],
    lambda o: ["eyeglass", "--wearer", "astronaut", "--out", o],
    lambda o: ["signs", "render", "stop", "--out", Path(o) / "stop.png"],
], ids=["patch", "attack", "print", "capture", "rectify", "evaluate", "eyeglass", "signs-render"])
def test_out_whose_parent_is_a_file(work, capsys, argv):
    (work / "notes.txt").write_text("the user's file")
    line = refused(capsys, work, argv(str(work / "notes.txt" / "out")), ["notes.txt", "is a file"])
    assert "--out" in line
    assert (work / "notes.txt").read_text() == "the user's file"


def test_out_that_is_a_file_or_a_symlink_loop(work, capsys):
    (work / "f").write_text("x")
    refused(capsys, work, patch_argv(out=work / "f"), ["--out", "not a folder"])
    loop(work / "l")
    refused(capsys, work, ["print", "chart", "--out", work / "l"], ["--out", "symlink loop"])


def test_out_in_a_folder_that_cannot_be_written(work, capsys, monkeypatch):
    locked = work / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real_access(p, mode, **k))
    refused(capsys, work, ["print", "chart", "--out", locked / "sheet"], ["--out", "not writable", "locked"])
    refused(capsys, work, patch_argv(out=locked / "run"), ["--out", "not writable"])


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys")
def test_out_where_the_os_refuses_to_create_it(work, capsys):
    """Even where the permission bits say yes (root), a refused mkdir is exit 2 naming the path."""
    target = Path("/sys/testbed-out-test")
    if target.exists():
        pytest.skip("unexpected /sys entry")
    rc = main(["print", "chart", "--out", str(target)])
    err = capsys.readouterr().err
    if rc == 0:  # a writable /sys: nothing to test here
        pytest.skip("/sys is writable here")
    assert rc == 2 and len(err.splitlines()) == 1 and str(target) in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["patch", "attack"])
def test_out_is_a_foreign_non_empty_folder(work, capsys, command):
    mine = work / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    argv = patch_argv(out=mine) if command == "patch" else [
        "attack", "digital", "--attack", "fgsm", "--model", TINY, "--image", "chelsea", "--out", mine]
    refused(capsys, work, argv, ["my-photos", "not empty"])
    assert sorted(p.name for p in mine.iterdir()) == ["holiday.jpg"]


# ------------------------------------------------------------------------------------------------ devices
def test_device_cuda_without_cuda(work, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(capsys, work, patch_argv("--device", "cuda"), ["--device", "cuda", "not available"])


@pytest.mark.parametrize("value", ["gpu", "cuda:abc", "meta"])
def test_testbed_device_variable_is_validated_and_named(work, capsys, monkeypatch, value):
    monkeypatch.setenv("TESTBED_DEVICE", value)
    line = refused(capsys, work, patch_argv("--device", "cpu"), ["$TESTBED_DEVICE", value])
    assert "testbed patch" in line


def test_testbed_device_cuda_without_cuda(work, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TESTBED_DEVICE", "cuda")
    refused(capsys, work, ["classify", "chelsea", "--model", TINY], ["$TESTBED_DEVICE", "CUDA"])


def test_parse_device():
    from testbed.device import parse_device
    from testbed.errors import ConfigError

    assert parse_device("cpu").type == "cpu"
    for bad in ("", "gpu", "cuda:x", "tpu", "meta"):
        with pytest.raises(ConfigError):
            parse_device(bad)


# ------------------------------------------------------------------------------------------------ capture
@pytest.fixture
def dying_stream():
    """An MJPEG stream that sends 12 frames about 10 ms apart and then drops the connection."""
    with mjpeg_stream(lambda: (np.full((48, 64, 3), (i * 20) % 255, np.uint8) for i in range(12))) as url:
        yield url


def test_capture_from_a_stream_that_dies_keeps_frames_and_lists_them(work, capsys, dying_stream):
    before = _snapshot(work)
    rc = main(["capture", dying_stream, "--frames", "20", "--timeout-s", "3", "--out", "cap"])
    cap = capsys.readouterr()
    assert rc == 2 and "Traceback" not in cap.err
    lines = cap.err.splitlines()
    assert len(lines) == 1 and "stopped delivering frames after 12" in lines[0] and "frames.json" in lines[0]
    assert "saved 12 frame(s)" in cap.out
    index = json.loads((work / "cap" / "frames.json").read_text())
    assert index["complete"] is False and "stopped delivering" in index["error"]
    files = sorted(p.name for p in (work / "cap").iterdir())
    assert files == sorted([f["file"] for f in index["frames"]] + ["frames.json"]) and len(index["frames"]) == 12
    assert all(p.startswith("cap") for p in _snapshot(work) - before)


def test_capture_frames_counts_frames_saved_not_read(work, capsys, dying_stream):
    """--frames 3 --every-s 0.02 saves 3 frames (reading more than 3 from the stream), then stops cleanly."""
    rc = main(["capture", dying_stream, "--frames", "3", "--every-s", "0.02", "--timeout-s", "3", "--out", "cap"])
    out = capsys.readouterr().out
    index = json.loads((work / "cap" / "frames.json").read_text())
    assert rc == 0 and index["complete"] is True and "saved 3 frame(s)" in out
    assert len(index["frames"]) == 3 and index["frames"][-1]["seq"] > 2  # some frames were skipped
    stamps = [f["timestamp"] for f in index["frames"]]
    assert all(b - a >= 0.02 for a, b in zip(stamps, stamps[1:]))


def test_capture_interrupted_keeps_frames_and_exits_130(work, capsys, monkeypatch):
    folder = work / "imgs"
    folder.mkdir()
    for i in range(5):
        good_png(folder / f"img{i}.png", 16)
    import testbed.runs as runs

    real_save, calls = runs.save_image, {"n": 0}

    def save(x, path, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(x, path, **k)

    monkeypatch.setattr(runs, "save_image", save)
    rc = main(["capture", str(folder), "--frames", "0", "--out", "cap"])
    cap = capsys.readouterr()
    assert rc == 130 and len(cap.err.splitlines()) == 1 and "interrupted" in cap.err
    index = json.loads((work / "cap" / "frames.json").read_text())
    assert [f["file"] for f in index["frames"]] == ["frame_000000.png", "frame_000001.png"]
    assert index["complete"] is False and index["error"] == "interrupted"
    assert sorted(p.name for p in (work / "cap").iterdir()) == ["frame_000000.png", "frame_000001.png", "frames.json"]


def test_capture_rejects_a_sheet_whose_pdf_was_swapped(work, capsys):
    side = printed_sheet(work)
    pdf = side.with_suffix(".pdf")
    pdf.write_bytes(pdf.read_bytes() + b"\n% a different printout\n")
    refused(capsys, work, ["capture", "--simulate", side, "--out", "cap"], ["patch.pdf"])


# ------------------------------------------------------------------------------------------------ exit codes
def test_unexpected_error_is_exit_1_one_line_asking_for_a_report(work, capsys, monkeypatch):
    import testbed.models.registry as reg

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero in the registry")

    monkeypatch.setattr(reg, "list_models", broken)
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "ZeroDivisionError" in err and "division by zero in the registry" in err and "bug" in err
    assert "--debug" in err
    assert main(["--debug", "models", "list"]) == 1  # the traceback only on request
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "bug" in err.splitlines()[-1]


def test_keyboard_interrupt_is_exit_130(work, capsys, monkeypatch):
    import testbed.models.registry as reg

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(reg, "list_models", interrupted)
    assert main(["models", "list"]) == 130
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "interrupted" in err


def test_os_error_on_a_named_file_is_exit_2(work, capsys, monkeypatch):
    import errno

    import testbed.models.registry as reg

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/secret.json")

    monkeypatch.setattr(reg, "list_models", denied)
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/data/secret.json" in err and "Permission denied" in err


def test_help_still_exits_0_with_usage(capsys):
    assert main(["patch", "--help"]) == 0
    assert "usage: testbed patch" in capsys.readouterr().out


def test_part_commands_share_the_contract(work, capsys):
    assert main(["eyeglass", "--wearer", "astronaut", "--steps", "0", "--out", "o"]) == 2
    assert main(["secure-eval", "--frames", "0"]) == 2
    assert main(["defences", "evaluate", "--n-attack", "0", "--out", "o"]) == 2
    errs = capsys.readouterr().err.splitlines()
    assert len(errs) == 3 and all(": error: " in e for e in errs)


# ------------------------------------------------------------------------------------------------ subprocess
def _testbed(*argv: str, cwd: Path, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.main", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_real_process_exit_status_and_one_line(tmp_path):
    fifo(tmp_path / "pipe.yaml")
    for argv, env, words in [
        (["patch", "--area", "nan", "--target", "toaster", "--out", "o"], None, ["--area", "nan"]),
        (["evaluate", "pipe.yaml", "--out", "o"], None, ["pipe.yaml"]),  # a FIFO: refused, never opened
        (["classify", "chelsea"], {"TESTBED_DEVICE": "gpu"}, ["$TESTBED_DEVICE", "gpu"]),
    ]:
        r = _testbed(*argv, cwd=tmp_path, env=env)
        assert r.returncode == 2, (argv, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert all(w in lines[0] for w in words), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.yaml"]
