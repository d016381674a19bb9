"""`testbed evade-persons --train-augment mirror[,scale]`: more training scenes from the --train photos (mirrored,
shrunk copies) whose person boxes are the detector's own clean detections on them; on the toy detector of
test_person_patch (a red 32 x 64 rectangle is a person)."""
from __future__ import annotations

import json

import pytest
import torch

from test_person_patch import ToyPersonDetector, _cli, data, scene, toy_registered  # noqa: F401  (fixtures)
from physical.detector_patch import PersonPatch
from pipelines.person_evasion import AUGMENT_SCALE, augment_scenes, train_augment


def test_mirrored_scene_boxes_are_the_mirrored_scenes_own_detections():
    x = torch.cat([scene([(8, 8), (72, 40)], seed=1), scene([(40, 56)], seed=2)])
    extra, names = augment_scenes(x, ["a", "b"], ("mirror",))
    assert names == ["a (mirrored)", "b (mirrored)"] and torch.equal(extra, x.flip(-1))
    attack = PersonPatch(gt_score=0.5)
    det = ToyPersonDetector().eval()
    for clean, mirrored in zip(attack.ground_truth(det, x), attack.ground_truth(det, extra)):
        flipped = torch.stack([128 - clean[:, 2], clean[:, 1], 128 - clean[:, 0], clean[:, 3]], 1)
        key = lambda b: sorted(b.round().tolist())  # noqa: E731
        assert key(mirrored) == key(flipped)


def test_scaled_copies_are_centred_and_smaller_and_an_empty_copy_gives_no_boxes():
    x = scene([(8, 8)], seed=1)
    extra, names = augment_scenes(x, ["a"], ("mirror", "scale"))
    assert names == ["a (mirrored)", f"a (scaled {AUGMENT_SCALE})", f"a (mirrored) (scaled {AUGMENT_SCALE})"]
    side = round(128 * AUGMENT_SCALE)
    lo = (128 - side) // 2
    assert extra.shape == (3, 3, 128, 128) and float(extra[1:, :, :lo].abs().max()) == 0.0  # black border
    assert float(extra[1:, :, lo : lo + side, lo : lo + side].mean()) > 0.3
    # the toy's 32 x 64 window does not fire on a 24 x 48 person: no box, not an error
    boxes = PersonPatch(gt_score=0.5).ground_truth(ToyPersonDetector().eval(), extra[1:], require=False)
    assert [tuple(b.shape) for b in boxes] == [(0, 4), (0, 4)]


def test_train_augment_values():
    assert train_augment("none") == () and train_augment("scale,mirror") == ("mirror", "scale")
    for bad in ("flip", "mirror,mirror", "", "mirror,"):
        with pytest.raises(Exception, match="subset of mirror, scale"):
            train_augment(bad)


def test_command_adds_mirrored_scenes_drops_empty_ones_and_records_it(toy_registered, tmp_path):  # noqa: F811
    assert _cli(toy_registered, tmp_path, "--steps", "2", "--train-augment", "mirror,scale") == 0
    rep = json.loads((tmp_path / "cli" / "detection.json").read_text())
    t1, t2 = toy_registered["t1"], toy_registered["t2"]
    assert rep["train_augment"]["kinds"] == ["mirror", "scale"] and rep["train_augment"]["scale"] == AUGMENT_SCALE
    assert rep["persons"]["train"] == {t1: 2, t2: 1, f"{t1} (mirrored)": 2, f"{t2} (mirrored)": 1}
    assert len(rep["train_augment"]["dropped"]) == 4  # the shrunk copies: the toy finds no one there
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["train_augment"] == rep["train_augment"]


def test_bad_train_augment_is_one_line_and_exit_2(toy_registered, tmp_path, capsys):  # noqa: F811
    assert _cli(toy_registered, tmp_path, "--train-augment", "rotate") == 2
    err = capsys.readouterr().err
    assert "--train-augment" in err and "subset of mirror, scale" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "cli").exists()
