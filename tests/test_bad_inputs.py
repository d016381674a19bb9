"""Bad inputs through the harness and its CLI: each gives a clear error naming the problem (exit status 2).

Kinds covered (the issue's list): corrupt image, grayscale / RGBA / 16-bit images, empty image folder, unreadable
video, invalid config key, invalid config value, eps out of range, unknown attack / model / target class, mask size
mismatch, markers not found, impossible DPI / page size, run directory of a different config, disk full and
permission errors while writing results, plus invalid YAML and a missing photo of a printout.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from test_experiment import TINY, register_tiny, tiny_config
from pipelines.main import main


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _write_cfg(tmp_path, **changes):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(tiny_config(**changes)))
    return p


def _folder_cfg(tmp_path, folder, **images):
    return _write_cfg(tmp_path, attacks=["fgsm"], eps=[4], channel={"kind": "none"},
                      images={"source": "folder", "folder": str(folder), **images})


def _good_png(path):
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(path)


@pytest.mark.parametrize("kind, make, words", [
    ("corrupt", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), ["could not be decoded"]),
    ("grayscale", lambda p: Image.fromarray(np.zeros((40, 40), np.uint8)).save(p), ["grayscale"]),
    ("rgba", lambda p: Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(p), ["RGBA"]),
    ("16-bit", lambda p: Image.fromarray(np.zeros((40, 40), np.uint16)).save(p), ["16-bit"]),
])
def test_bad_image_files(tmp_path, capsys, kind, make, words):
    register_tiny()
    folder = tmp_path / "imgs"
    folder.mkdir()
    _good_png(folder / "a_good.png")
    make(folder / "b_bad.png")
    rc, err = _cli(capsys, "evaluate", _folder_cfg(tmp_path, folder), "--out", tmp_path / "run", "--no-progress")
    assert rc == 2 and "b_bad.png" in err
    for w in words:
        assert w in err


def test_empty_image_folder(tmp_path, capsys):
    register_tiny()
    (tmp_path / "empty").mkdir()
    rc, err = _cli(capsys, "evaluate", _folder_cfg(tmp_path, tmp_path / "empty"), "--out", tmp_path / "r",
                   "--no-progress")
    assert rc == 2 and "empty" in err and str(tmp_path / "empty") in err


def test_unreadable_video(tmp_path, capsys):
    register_tiny()
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(os.urandom(4096))
    rc, err = _cli(capsys, "live", bad, "--model", TINY, "--out", tmp_path / "live", "--max-frames", "2")
    assert rc == 2 and "clip.mp4" in err
    assert not (tmp_path / "live" / "annotated.mp4").exists()


@pytest.mark.parametrize("changes, words", [
    ({"learning_rate": 0.1}, ["unknown key", "learning_rate"]),                    # invalid key
    ({"channel": {"kind": "simulated", "repetitions": -1}}, ["repetitions", "-1"]),  # invalid value
    ({"eps": [2, 512]}, ["eps", "512", "(0, 255]"]),                                # eps out of range
    ({"attacks": ["fgsm", "deepfreeze"]}, ["unknown attack", "deepfreeze", "known attacks"]),
    ({"models": ["alexnet-9000"]}, ["unknown model", "alexnet-9000", "known models"]),
    ({"channel": {"kind": "simulated", "simulator": {"dpi": 100000}}}, ["dpi", "impossible"]),
    ({"channel": {"kind": "simulated", "backend": "torch"}}, ["channel", "backend"]),  # the removed torch simulator
])
def test_bad_config(tmp_path, capsys, changes, words):
    register_tiny()
    rc, err = _cli(capsys, "evaluate", _write_cfg(tmp_path, **changes), "--out", tmp_path / "r", "--no-progress")
    assert rc == 2
    for w in words:
        assert w in err, err


def test_invalid_yaml(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nattacks: [fgsm\n")
    rc, err = _cli(capsys, "evaluate", p, "--out", tmp_path / "r")
    assert rc == 2 and "not valid YAML" in err and "broken.yaml" in err


def test_unknown_target_class(tmp_path, capsys):
    register_tiny()
    folder = tmp_path / "imgs"
    folder.mkdir()
    _good_png(folder / "a.png")
    (tmp_path / "labels.json").write_text(json.dumps({"a.png": "giraffe"}))
    cfg = _folder_cfg(tmp_path, folder, labels=str(tmp_path / "labels.json"))
    rc, err = _cli(capsys, "evaluate", cfg, "--out", tmp_path / "r", "--no-progress")
    assert rc == 2 and "giraffe" in err and TINY in err


def test_impossible_page_size():
    from pipelines.channels import SimulatedChannel
    from testbed.errors import ConfigError

    with pytest.raises(ConfigError, match="dpi"):
        SimulatedChannel(0, dpi=0)
    from printouts.sheets import page_size_mm

    with pytest.raises(ConfigError, match="impossible"):
        page_size_mm("10x10")


def test_mask_size_mismatch():
    from printouts.sheets import sticker_sheet
    from testbed.errors import ImageError

    with pytest.raises(ImageError, match="mask is 10x10 but the image is 32x32"):
        sticker_sheet(torch.rand(1, 3, 32, 32), torch.ones(10, 10), sign_width_mm=300)


def test_markers_not_found_in_a_photo_of_a_printout(tmp_path):
    from camera.rectify import MarkersNotFoundError, ObjectSpec, rectify
    from pipelines.channels import FolderChannel
    from printouts.sheets import patch_sheet

    sheet = patch_sheet(torch.rand(1, 3, 32, 32), width_mm=40)
    spec = ObjectSpec.from_record(sheet.objects[0])
    d = tmp_path / "photos" / "clean" / "rep0"
    d.mkdir(parents=True)
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(d / "img0.png")  # a photo with no markers in it
    ch = FolderChannel(tmp_path / "photos", rectify=lambda photo, iid: rectify(photo, spec, source=iid).image)
    with pytest.raises(MarkersNotFoundError, match=r"found 0 of the 4 fiducial markers"):
        ch.transmit(torch.rand(1, 3, 32, 32), ["img0"], tag="clean")


def test_missing_photo_of_a_printout(tmp_path):
    from pipelines.channels import FolderChannel
    from testbed.errors import SourceError

    (tmp_path / "p" / "x").mkdir(parents=True)
    (tmp_path / "p" / "x" / "note.txt").write_text("")
    with pytest.raises(SourceError, match=r"no photo for image 'img7'.*rep0"):
        FolderChannel(tmp_path / "p").transmit(torch.rand(1, 3, 8, 8), ["img7"], tag="m/fgsm/eps8")
    (tmp_path / "e").mkdir()
    with pytest.raises(SourceError, match="is empty"):
        FolderChannel(tmp_path / "e")


def test_run_dir_of_a_different_config(tmp_path, capsys):
    register_tiny()
    out = tmp_path / "run"
    cfg = _write_cfg(tmp_path, attacks=["fgsm"], eps=[4], channel={"kind": "none"},
                     images={"names": ["coffee"], "crops_per_photo": 1})
    assert _cli(capsys, "evaluate", cfg, "--out", out, "--no-progress")[0] == 0
    cfg2 = _write_cfg(tmp_path, attacks=["fgsm"], eps=[8], channel={"kind": "none"},
                      images={"names": ["coffee"], "crops_per_photo": 1})
    rc, err = _cli(capsys, "evaluate", cfg2, "--out", out, "--no-progress")
    assert rc == 2 and "different config" in err and "eps" in err


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EACCES, "permission denied")])
def test_write_errors_leave_nothing_half_written(tmp_path, capsys, monkeypatch, code, words):
    register_tiny()
    cfg = _write_cfg(tmp_path, attacks=["fgsm"], eps=[4], channel={"kind": "none"}, examples=0,
                     images={"names": ["coffee"], "crops_per_photo": 1})
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] >= 3:  # the run-directory marker and the resolved config are written; the first cell fails
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    rc, err = _cli(capsys, "evaluate", cfg, "--out", tmp_path / "r", "--no-progress")
    assert rc == 2 and words in err and "cells" in err
    leftovers = [p.name for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert sorted(leftovers) == ["config.resolved.yaml", "testbed-run.json"]  # no partial cell, no report
