"""The person-evasion patch kept below each person's face (``faces=`` / ``testbed evade-persons --avoid-faces``):
``face_floors`` assigns a face to a person box, the placement puts the rotated patch's top edge at or below that
face's bottom edge and its bottom edge inside the box, the face's pixels are never covered, persons without a face
keep the box-centre placement, and the command records the faces and refuses a detector without a face label.
Toy detectors defined in test_person_patch.py (red 32 x 64 "persons") and here (blue-ish 24 x 24 "faces")."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_person_patch import BOX_H, BOX_W, TOY_EOT, ToyPersonDetector

from physical.detector_patch import FACE_TOP, PersonPatch, face_floors, pad_floors
from testbed.models.detection import Detector, DetectionSet, check_images, select_detections

FACE = 24
FACE_RGB = (1.0, 0.0, 0.3)  # still "red" for the person detector (redness 0.85), "blue" for the face detector


class ToyFaceDetector(Detector):
    """Face score = sigmoid(25 (mean of B - G over a 24 x 24 window - 0.2)), stride 2: a FACE_RGB square scores
    0.92, grey and red score 0.007."""

    labels = ("face",)
    score_threshold = 0.5
    nms_iou = 0.3

    def detect(self, images: torch.Tensor, score_threshold: float | None = None) -> list[DetectionSet]:
        x = check_images(images)
        t = self.score_threshold if score_threshold is None else score_threshold
        heat = torch.sigmoid(25 * (F.avg_pool2d(x[:, 2:3] - x[:, 1:2], FACE, stride=2) - 0.2)).flatten(1)
        hh, ww = (x.shape[-2] - FACE) // 2 + 1, (x.shape[-1] - FACE) // 2 + 1
        y, xx = torch.meshgrid(torch.arange(hh) * 2, torch.arange(ww) * 2, indexing="ij")
        boxes = torch.stack([xx, y, xx + FACE, y + FACE], -1).float().view(-1, 4)
        return [select_detections(boxes, s, torch.zeros_like(s, dtype=torch.long), t, self.nms_iou) for s in heat]


def face_scene(persons: list[tuple[int, int, bool]], seed: int = 0) -> torch.Tensor:
    """A 128 x 128 grey scene; a red 32 x 64 person at each (x, y), with a FACE_RGB face 2 px below its top edge
    when the flag is set."""
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.02 * torch.randn(1, 3, 128, 128, generator=g)).clamp(0, 1)
    for px, py, face in persons:
        x[0, :, py : py + BOX_H, px : px + BOX_W] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
        if face:
            x[0, :, py + 2 : py + 2 + FACE, px + 4 : px + 4 + FACE] = torch.tensor(FACE_RGB).view(3, 1, 1)
    return x


def _attack(**kw) -> PersonPatch:
    base = dict(steps=2, batch_size=8, lr=0.3, eot=TOY_EOT, eval_samples=20, eval_batch_size=20, patch_size=16,
                checkpoint_every=10, channels_last=False)
    return PersonPatch(**{**base, **kw})


def test_face_floors_take_the_largest_face_in_the_top_of_each_box():
    boxes = torch.tensor([[0.0, 0, 40, 100], [50, 0, 90, 100], [100, 0, 140, 100]])
    faces = torch.tensor([[10.0, 5, 30, 25],  # box 0, centre y 15
                          [8, 4, 34, 32],  # box 0, larger: wins
                          [55, 55, 85, 75],  # box 1, centre y 65 > 60 = FACE_TOP * 100: a hand, not the head
                          [150, 5, 170, 25]])  # in no box
    assert FACE_TOP == 0.6
    out = face_floors(boxes, faces)
    assert out[0] == 32 and math.isnan(out[1]) and math.isnan(out[2])
    assert face_floors(boxes, torch.zeros(0, 4)).isnan().all()
    padded = pad_floors([boxes, boxes[:1]], [faces, faces[:1]])
    assert padded.shape == (2, 3) and padded[1, 0] == 25 and padded[1, 1:].isnan().all()
    assert pad_floors([boxes], None).isnan().all()


def test_the_patch_stays_below_the_face_and_inside_the_box():
    """200 draws: with a face the rotated patch's top edge is at or below the face's bottom and its bottom edge
    inside the box; a person without a face keeps the box-centre placement of a run given no faces; the face's
    pixels are never covered by the pasted patch."""
    scenes = torch.cat([face_scene([(8, 8, True), (72, 40, False)], seed=1), face_scene([(40, 56, True)], seed=2)])
    person, face = ToyPersonDetector(), ToyFaceDetector()
    attack = _attack(patch_fraction=0.18)
    boxes = attack.ground_truth(person, scenes)
    faces = [face.detect(scenes[i : i + 1])[0].boxes for i in range(len(scenes))]
    assert [len(f) for f in faces] == [1, 1]
    ctx = attack.context(person, scenes, scenes, boxes=boxes, eval_boxes=boxes, faces=faces, eval_faces=faces)
    plain = attack.context(person, scenes, scenes, boxes=boxes, eval_boxes=boxes)
    draw = attack._sample(ctx, 200, torch.Generator().manual_seed(0))
    b, floors = ctx.boxes[draw.scene_index], ctx.floors[draw.scene_index]
    side, centre, angle, valid = attack.placements(b, draw, floors)
    _, centre0, _, _ = attack.placements(b, draw)
    half = side / 2 * (torch.cos(torch.deg2rad(angle)).abs() + torch.sin(torch.deg2rad(angle)).abs())
    has_face = valid & ~floors.isnan()
    assert int(has_face.sum()) == 200 and int((valid & floors.isnan()).sum()) == int((draw.scene_index == 0).sum())
    top, bottom = centre[..., 1] - half, centre[..., 1] + half
    assert bool((top[has_face] >= floors[has_face] - 1e-4).all())
    assert bool((bottom[has_face] <= b[..., 3][has_face] + 1e-4).all())
    assert bool((centre[..., 1][has_face] > centre0[..., 1][has_face]).all())  # moved down from the box centre
    assert torch.equal(centre[~has_face & valid], centre0[~has_face & valid])
    assert torch.equal(plain.floors.isnan(), torch.ones_like(plain.floors, dtype=torch.bool))
    shown = attack.composite(ctx, torch.zeros(1, 3, 16, 16), draw, ctx.scenes, b)
    for i in range(200):
        s = int(draw.scene_index[i])
        x1, y1, x2, y2 = (int(v) for v in faces[s][0].tolist())
        assert torch.equal(shown[i, :, y1 : y2 - 1, x1:x2], scenes[s, :, y1 : y2 - 1, x1:x2])


def test_a_face_too_low_for_the_patch_leaves_the_box_bottom_in_charge():
    """When the patch cannot fit between the face and the box's bottom, it stays inside the box."""
    attack = _attack(patch_fraction=0.18, rotation=0.0, jitter=0.0, scale_min=1.0, scale_max=1.0)
    boxes = torch.tensor([[[0.0, 0, 32, 64]]])
    draw = attack.nominal_draw(attack.context(ToyPersonDetector(), face_scene([(0, 0, False)]),
                                              face_scene([(0, 0, False)])), torch.zeros(1, dtype=torch.long))
    side, centre, _, _ = attack.placements(boxes, draw, torch.tensor([[60.0]]))
    assert centre[0, 0, 1] == pytest.approx(64 - float(side[0, 0]) / 2)


@pytest.fixture
def face_toys(tmp_path):
    from testbed.models.base import _REGISTRY
    from testbed.models.registry import ModelEntry, register_model
    from testbed.runs import save_image

    register_model(ModelEntry(name="toy-person-detector-f", task="detector", builder=ToyPersonDetector,
                              input_size=(128, 128), labels=ToyPersonDetector.labels))
    register_model(ModelEntry(name="toy-face-detector", task="detector", builder=ToyFaceDetector,
                              input_size=(128, 128), labels=ToyFaceDetector.labels))
    files = {}
    for name, x in (("t1", face_scene([(8, 8, True), (72, 40, False)], seed=1)),
                    ("h1", face_scene([(16, 48, True), (80, 12, True)], seed=3)),
                    ("h2", face_scene([(52, 32, False)], seed=4))):
        files[name] = str(save_image(x, tmp_path / f"{name}.png"))
    try:
        yield files
    finally:
        _REGISTRY.pop("toy-person-detector-f", None)
        _REGISTRY.pop("toy-face-detector", None)


def _cli(files, tmp_path, *extra):
    from pipelines.main import main

    return main(["evade-persons", "--model", "toy-person-detector-f", "--train", files["t1"], "--held-out",
                 files["h1"], files["h2"], "--scene-size", "128", "--steps", "2", "--batch-size", "4", "--lr", "0.3",
                 "--patch-size", "16", "--score-threshold", "0.5", "--gt-score", "0.5", "--eot", "secure-eval-patch",
                 "--eval-samples", "10", "--eval-batch-size", "10", "--no-progress", "--allocator", "glibc",
                 "--out", str(tmp_path / "cli"), *extra])


def test_evade_persons_avoid_faces_records_the_faces(face_toys, tmp_path, capsys):
    assert _cli(face_toys, tmp_path, "--avoid-faces", "toy-face-detector", "--print-photos", "1") == 0
    rep = json.loads((tmp_path / "cli" / "detection.json").read_text())
    assert rep["avoid_faces"] == "toy-face-detector"
    assert (rep["train_persons_with_face"], rep["train_persons"]) == (1, 2)
    assert (rep["held_out_persons_with_face"], rep["held_out_persons"]) == (2, 3)
    assert [len(f) for f in rep["held_out_faces"].values()] == [2, 0]
    assert "toy-face-detector" in (tmp_path / "cli" / "config.json").read_text()


def test_evade_persons_avoid_faces_refuses_a_detector_without_faces(face_toys, tmp_path, capsys):
    assert _cli(face_toys, tmp_path, "--avoid-faces", "toy-person-detector-f") == 2
    err = capsys.readouterr().err
    assert "--avoid-faces needs a face detector" in err and "toy-person-detector-f" in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


def test_evade_persons_avoid_faces_reaches_every_placement(face_toys, tmp_path, monkeypatch):
    """The optimisation, the held-out evaluation, the random controls and the print-photo loop each build their
    context with the faces: no stage places the patch without them."""
    calls = []
    original = PersonPatch.context

    def spy(self, *args, **kwargs):
        calls.append((kwargs.get("faces") is not None, kwargs.get("eval_faces") is not None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PersonPatch, "context", spy)
    assert _cli(face_toys, tmp_path, "--avoid-faces", "toy-face-detector", "--print-photos", "1") == 0
    assert len(calls) == 3 and all(f and e for f, e in calls)  # optimisation, controls, print + photo
