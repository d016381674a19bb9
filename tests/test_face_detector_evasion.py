"""Face-detector evasion with an eyeglass frame against MTCNN (physical/face_detector_attack.py,
``testbed evade-detector``): the differentiable face scores, the loss going down, detection on held-out chips,
success = not detected at IoU 0.5, and the detector's state bit-identical after the attack."""
from __future__ import annotations

import json

import pytest
import torch

from physical.eyeglass import align_wearer
from physical.face_detector_attack import (
    N_SCORES,
    FaceDetectorFrame,
    MTCNNFaceScores,
    detection_images,
    unpack,
)
from physical.loop import logit
from pipelines.face_detector_evasion import detection_report
from pipelines.main import main
from testbed.errors import ConfigError, ImageError
from testbed.models.mtcnn import build_mtcnn
from testbed.photos import load_photo


@pytest.fixture(scope="module")
def detector():
    return build_mtcnn()


@pytest.fixture(scope="module")
def chips(detector):
    c, _ = align_wearer([load_photo("astronaut"), load_photo("grace_hopper")], detector)
    return c


def test_scores_have_gradients_and_detections_are_mtcnns(detector, chips):
    scorer = MTCNNFaceScores(detector)
    x = chips[:1].clone().requires_grad_(True)
    out = scorer(x)
    scores, _, _ = unpack(out)
    assert torch.isfinite(scores).all() and (scores > 0).all()  # a clear face: every stage's log-odds > 0
    scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        _, boxes, probs = unpack(scorer(chips))
    ref = detector.detect(chips)
    for i, d in enumerate(ref):
        n = len(d)
        assert n >= 1 and torch.equal(boxes[i, :n], d.boxes[: scorer.max_detections])
        assert torch.equal(probs[i, :n], d.probs[: scorer.max_detections]) and (probs[i, n:] == -1).all()


def test_score_hook_counts_detection_at_iou_half():
    attack = FaceDetectorFrame(steps=1, batch_size=2, eval_samples=2)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    dets = torch.full((3, 5, 5), -1.0)
    dets[0, 0] = torch.tensor([0, 0, 10, 5, 0.95])  # IoU exactly 0.5: detected
    dets[1, 0] = torch.tensor([0, 0, 10, 4, 0.95])  # IoU 0.4: missed
    dets[2, 0] = torch.tensor([0, 0, 10, 10, 0.65])  # below the score threshold 0.7: missed
    out = torch.cat([torch.zeros(3, N_SCORES), dets.flatten(1)], dim=1)
    s = attack._score(None, out, gt)
    assert s["detected"].tolist() == [True, False, False] and s["success"].tolist() == [False, True, True]
    report = detection_report({"x": {"detections": s["detections"], "gt_box": s["gt_box"]}}, iou_threshold=0.5,
                              score_threshold=0.7)["x"]
    assert (report["recall"]["k"], report["recall"]["n"]) == (1, 3)
    assert [len(r[1]) for r in detection_images(s["detections"], s["gt_box"])] == [1, 1, 1]


def test_a_step_lowers_the_face_score_on_the_same_draws(detector, chips):
    attack = FaceDetectorFrame(steps=1, batch_size=2, eval_samples=2, lr=0.5)
    ctx = attack.detector_context(detector, chips[:1], chips[1:])
    draw = attack._sample(ctx, 2, torch.Generator().manual_seed(3))
    w = logit(attack.initial_texture(150))
    with torch.enable_grad():
        loss0, grad = attack.loss_and_grad(ctx.model, ctx, w, draw)
        loss1, _ = attack.loss_and_grad(ctx.model, ctx, w - 0.5 * grad.sign(), draw)
    assert float(loss0) > 0 and float(loss1) < float(loss0)


def test_attack_evaluates_held_out_faces_and_leaves_the_detector_bit_identical(detector, chips):
    detector.train()  # a mode the guard must restore; MTCNN's weights must come back bit for bit
    state = {k: v.clone() for k, v in detector.state_dict().items()}  # parameters and buffers
    flags = [p.requires_grad for p in detector.parameters()]
    try:
        attack = FaceDetectorFrame(steps=1, batch_size=2, eval_samples=3, eval_batch_size=3, seed=1)
        result = attack(detector, chips[:1], eval_chips=chips[1:])
    finally:
        modes = [m.training for m in detector.modules()]
        detector.eval()
    assert all(modes)
    assert [p.requires_grad for p in detector.parameters()] == flags
    after = detector.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    held_box = FaceDetectorFrame.ground_truth(detector, chips[1:])
    assert torch.equal(result.scores["gt_box"], held_box.expand(3, 4))  # evaluated on the held-out face
    assert result.success.shape == (3,) and result.clean_success is not None
    assert result.extras["held_out_chips"] == 1 and 0 <= result.extras["clean_recall"] <= 1
    assert result.eval_draws[0]["chip_index"].tolist() == [0, 0, 0]


def test_cli_refuses_a_held_out_face_that_is_also_trained_on(tmp_path, capsys):
    code = main(["evade-detector", "--train", "astronaut", "--held-out", "astronaut", "--out",
                 str(tmp_path / "r")])
    assert code == 2 and "must not repeat" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="reduce"):
        FaceDetectorFrame(reduce="mean")


def test_live_with_mtcnn_logs_and_draws_face_boxes_on_a_loopback_stream(tmp_path):
    import numpy as np
    from mjpeg_stream import mjpeg_stream

    from pipelines.live import LiveConfig, _draw_boxes, run_live

    photo = load_photo("grace_hopper")  # 1 x 3 x 600 x 512
    small = torch.nn.functional.interpolate(photo, size=(300, 256), mode="area")
    bgr = np.ascontiguousarray((small[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8))
    expected = build_mtcnn().detect(small)[0].boxes[0]

    def frames():
        for _ in range(3):
            yield bgr

    with mjpeg_stream(frames, path="faces.mjpg") as url:
        s = run_live(LiveConfig(source=url, model="mtcnn", out=tmp_path, max_frames=3, width=256, height=300))
    assert s.frames == 3
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()][:-1]
    assert len(rows) == 3
    for r in rows:
        assert r["top5"] == [] and len(r["boxes"]) >= 1 and set(r["labels"]) == {"face"}
        x1, y1, x2, y2, p = r["boxes"][0]
        assert p > 0.9  # the face, through JPEG, within a few pixels of the detection on the clean frame
        assert max(abs(a - b) for a, b in zip((x1, y1, x2, y2), expected.tolist())) < 8
    drawn = _draw_boxes(torch.zeros(1, 3, 20, 20), torch.tensor([[2.0, 3.0, 12.0, 15.0]]))
    assert drawn[0, 1, 3, 2:12].eq(1).all() and drawn[0, 1, 3:15, 11].eq(1).all() and drawn[0, 1, 8, 6] == 0
    assert drawn[0, 0].eq(0).all()


def test_every_face_of_a_group_photo_becomes_an_aligned_chip(detector):
    """``align_all_faces`` on a two-face photo (astronaut | grace_hopper side by side) gives both faces, each
    aligned as ``align_wearer`` aligns one: MTCNN's landmarks on the chip sit on the chip template."""
    from physical.face_detector_attack import align_all_faces
    from testbed.photos import resize
    from worlds.faces import DEFAULT_PADDING, chip_template

    group = torch.cat([load_photo("astronaut"), resize(load_photo("grace_hopper"), (512, 390))], dim=-1)
    found = align_all_faces(group, detector)
    assert found.shape == (2, 3, 150, 150) and float(found.min()) >= 0 and float(found.max()) <= 1
    template = chip_template(150, DEFAULT_PADDING)
    for d in detector.detect(found):
        assert len(d) >= 1 and (d.landmarks[0] - template).norm(dim=-1).max() < 8  # pixels of the chip
    with pytest.raises(ImageError, match="no face"):
        align_all_faces(torch.full((1, 3, 96, 96), 0.5), detector)


def test_group_photo_items_resolve_to_pinned_assets_and_recall_is_split_by_item(tmp_path, monkeypatch):
    from pipelines.face_detector_evasion import recall_by_item
    from testbed.photos import resolve_images
    from testbed.assets import ASSETS
    from testbed.errors import AssetError

    assert [ASSETS[f"faceapi_sample{i}"].package for i in range(1, 7)] == ["@vladmandic/face-api@1.7.15"] * 6
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))  # an empty cache: never fetched at test time
    with pytest.raises(AssetError, match=r"faceapi-sample5\.jpg.*testbed assets fetch"):
        resolve_images(["faceapi_sample5"], what="face photo")
    assert resolve_images(["astronaut"], what="face photo") == ["astronaut"]
    faces = [{"item": "p1", "faces": 2}, {"item": "p2", "faces": 1}]
    detected = torch.tensor([True, False, True, True, False])
    assert recall_by_item(detected, torch.tensor([0, 1, 2, 1, 2]), faces) == {"p1": "2/3", "p2": "1/2"}


def test_cli_refuses_the_same_photo_file_on_both_sides(tmp_path, capsys):
    from testbed.photos import photo_path

    code = main(["evade-detector", "--train", "astronaut", str(photo_path("grace_hopper")), "--held-out",
                 "grace_hopper", "--out", str(tmp_path / "r")])
    assert code == 2 and "must not repeat" in capsys.readouterr().err


def test_stage_loss_min_hinges_only_the_stage_nearest_to_failing():
    from types import SimpleNamespace

    ctx = SimpleNamespace(model=SimpleNamespace(detector=SimpleNamespace(
        config=SimpleNamespace(thresholds=(0.5, 0.5, 0.5)))))  # logit(0.5) = 0: the hinge is relu(z + margin)
    outputs = torch.tensor([[3.0, 1.0, 2.0], [-2.0, 4.0, 4.0]])  # draw 2: P-Net already fails by the margin
    total = FaceDetectorFrame(logit_margin=1.0)._attack_loss(ctx, outputs, None)
    least = FaceDetectorFrame(logit_margin=1.0, stage_loss="min")._attack_loss(ctx, outputs, None)
    assert torch.isclose(total, torch.tensor((4 + 2 + 3 + 0 + 5 + 5) / 2))
    assert torch.isclose(least, torch.tensor((2 + 0) / 2))
    with pytest.raises(ConfigError, match="stage_loss"):
        FaceDetectorFrame(stage_loss="max")


def test_print_photo_scores_pairs_the_draws_and_finds_the_clean_printed_face(detector, chips, capsys):
    from pipelines.face_detector_evasion import print_photo_scores

    attack = FaceDetectorFrame(steps=1, batch_size=1)
    mask = torch.zeros(1, 1, 150, 150)
    scores, index = print_photo_scores(attack, detector, chips[1:], {"a": None, "b": None}, mask, photos=1,
                                       seed=7, preset="default", face_width_mm=150.0, progress=True)
    assert index.tolist() == [0] and scores["a"]["detected"].tolist() == [True]
    assert torch.equal(scores["a"]["detections"], scores["b"]["detections"])  # the same printer and camera draw
    out, err = capsys.readouterr()  # the progress bar counts the photos (1 face x 1 photo x 2 textures) on stderr
    assert "print + photo:" in err and "2/2" in err and out == ""
