"""MTCNN face detector: weights load, faces and landmarks found on the shipped photos, errors are clear."""
from __future__ import annotations

import pytest
import torch

from testbed.errors import AssetError, ConfigError, ImageError
from testbed.models.mtcnn import LANDMARK_NAMES, MTCNN, MTCNN_ENTRY, MTCNNConfig, ONet, RNet, _load_state
from testbed.photos import load_photo

# Measured with this implementation (facenet-pytorch 2.6.0's own pipeline gives box [181.1, 62.2, 267.7, 172.1]
# and landmarks within 1.6 px of these on the same image).
ASTRONAUT_BOX = (180.6, 60.0, 266.9, 174.1)
ASTRONAUT_LANDMARKS = ((203.4, 101.2), (246.9, 103.4), (224.5, 129.2), (202.0, 139.7), (245.2, 141.8))


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return MTCNN().to("cpu")


def test_astronaut_face_and_landmarks(mtcnn):
    (det,) = mtcnn.detect(load_photo("astronaut"))
    assert len(det) == 1
    assert det.boxes.shape == (1, 4) and det.landmarks.shape == (1, 5, 2) and det.probs.shape == (1,)
    assert float(det.probs[0]) > 0.99
    # The face of the 512x512 astronaut photo is around x 180..267, y 60..174 (forehead to chin).
    assert torch.allclose(det.boxes[0], torch.tensor(ASTRONAUT_BOX), atol=10.0), det.boxes[0].tolist()
    lm = {name: det.landmarks[0, k] for k, name in enumerate(LANDMARK_NAMES)}
    assert torch.allclose(det.landmarks[0], torch.tensor(ASTRONAUT_LANDMARKS), atol=6.0), det.landmarks[0].tolist()
    # Geometry of a frontal face: eyes left/right of the nose, eyes above nose above mouth, all inside the box.
    assert lm["left_eye"][0] < lm["nose"][0] < lm["right_eye"][0]
    assert lm["mouth_left"][0] < lm["nose"][0] < lm["mouth_right"][0]
    assert max(lm["left_eye"][1], lm["right_eye"][1]) < lm["nose"][1] < min(lm["mouth_left"][1], lm["mouth_right"][1])
    eye_distance = float(lm["right_eye"][0] - lm["left_eye"][0])
    assert 35 < eye_distance < 55  # plausible for a ~90 px wide face
    x1, y1, x2, y2 = det.boxes[0].tolist()
    assert ((det.landmarks[0, :, 0] > x1) & (det.landmarks[0, :, 0] < x2)).all()
    assert ((det.landmarks[0, :, 1] > y1) & (det.landmarks[0, :, 1] < y2)).all()


def test_grace_hopper_face(mtcnn):
    (det,) = mtcnn.detect(load_photo("grace_hopper"))  # 600 x 512
    assert len(det) == 1 and float(det.probs[0]) > 0.99
    assert torch.allclose(det.boxes[0], torch.tensor([169.0, 115.0, 349.0, 331.0]), atol=15.0), det.boxes[0].tolist()
    lm = det.landmarks[0]
    assert lm[0, 0] < lm[2, 0] < lm[1, 0]  # left eye < nose < right eye (x)


def test_no_face_on_textures_and_batching(mtcnn):
    # brick, grass, gravel and astronaut are all 512 x 512: one batched call, per-image results.
    names = ["brick", "grass", "gravel", "astronaut"]
    results = mtcnn.detect(torch.cat([load_photo(n) for n in names]))
    assert len(results) == 4
    for name, det in zip(names[:3], results[:3]):
        assert not (det.probs > 0.9).any(), (name, det.probs.tolist())
    single = mtcnn.detect(load_photo("astronaut"))[0]
    assert len(results[3]) == 1
    assert torch.allclose(results[3].boxes, single.boxes, atol=1e-3)
    assert torch.allclose(results[3].landmarks, single.landmarks, atol=1e-3)


def test_no_face_on_object_photos(mtcnn):
    for name in ("coffee", "chelsea"):
        (det,) = mtcnn.detect(load_photo(name))
        assert not (det.probs > 0.9).any(), (name, det.probs.tolist())


def test_plain_image_gives_empty_detections(mtcnn):
    (det,) = mtcnn.detect(torch.full((1, 3, 64, 80), 0.5))
    assert len(det) == 0
    assert det.boxes.shape == (0, 4) and det.landmarks.shape == (0, 5, 2)
    assert det.as_dict()["boxes"] == []


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 64, 64), "B x 3 x H x W"),
        (torch.rand(1, 4, 64, 64), "B x 3 x H x W"),
        (torch.rand(1, 1, 64, 64), "B x 3 x H x W"),
        (torch.rand(1, 3, 8, 64), "at least 12"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
        (torch.rand(1, 3, 64, 64) * 255, r"\[0, 1\]"),
        (torch.rand(0, 3, 64, 64), "empty batch"),
    ],
)
def test_bad_inputs_raise_clear_errors(mtcnn, bad, match):
    with pytest.raises(ImageError, match=match):
        mtcnn.detect(bad)


def test_not_a_tensor_raises(mtcnn):
    with pytest.raises(ImageError, match="torch.Tensor"):
        mtcnn.detect([[0.0]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"thresholds": (0.6, 0.7)}, "3 numbers"),
        ({"thresholds": (0.6, 1.5, 0.7)}, "R-Net threshold"),
        ({"min_face_size": 5}, "min_face_size"),
        ({"factor": 1.2}, "factor"),
        ({"nms_onet": 0.0}, "nms_onet"),
        ({"batch_size": 0}, "batch_size"),
        ({"cascade": "bilinear"}, "cascade must be one of reference, roi_align"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MTCNNConfig(**kwargs)


def test_config_is_serialisable_and_changes_behaviour(mtcnn):
    cfg = MTCNNConfig(min_face_size=200)
    assert cfg.as_dict()["min_face_size"] == 200 and cfg.as_dict()["thresholds"] == [0.6, 0.7, 0.7]
    assert cfg.as_dict()["cascade"] == "roi_align"
    strict = MTCNN(cfg)
    # The astronaut's face (~90-115 px) is smaller than 200 px: a 200 px minimum face size misses it (the
    # "reference" cascade, like facenet-pytorch, still finds it at p = 0.991: its crops differ).
    assert len(strict.detect(load_photo("astronaut"))[0]) == 0


def test_weights_must_match_architecture(tmp_path):
    from testbed.assets import asset_path

    with pytest.raises(AssetError, match="do not match RNet"):
        _load_state(RNet(), asset_path("mtcnn_onet"))
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AssetError, match="cannot read"):
        _load_state(ONet(), bad)


def test_missing_asset_names_file_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(AssetError, match=r"pnet\.pt.*testbed assets fetch"):
        MTCNN()


def test_registry_entry():
    assert MTCNN_ENTRY.name == "mtcnn" and MTCNN_ENTRY.task == "detector"
    assert MTCNN_ENTRY.assets == ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")
    assert MTCNN_ENTRY.summary()["accuracy"][0]["n"] == 14


def test_mtcnn_follows_the_detector_contract(mtcnn):
    """detect gives DetectionSets (scores = probs, label 0 = face); candidate_scores are the O-Net probabilities of
    the final-stage windows, differentiable, and their maximum is the best detection's probability."""
    from testbed.models.detection import DetectionSet, Detector

    assert isinstance(mtcnn, Detector) and mtcnn.labels == ("face",) and mtcnn.score_threshold == 0.7
    x = load_photo("astronaut", 160).requires_grad_(True)
    (det,) = mtcnn.detect(x.detach())
    assert isinstance(det, DetectionSet) and len(det) == 1
    assert det.scores is det.probs and det.labels.tolist() == [0] and det.as_rows(mtcnn.labels)[0]["label"] == "face"
    assert len(mtcnn.detect(x.detach(), score_threshold=float(det.scores[0]))[0]) == 0  # strictly above, as O-Net
    scores = mtcnn.candidate_scores(x, "face")
    boxes = mtcnn.candidate_boxes(x.detach())
    assert scores.shape[0] == 1 and boxes.shape == (*scores.shape, 4)
    both = mtcnn.candidates(x.detach())
    assert torch.allclose(both[0], scores.detach()) and torch.equal(both[1], boxes)
    best = int(scores.detach()[0].argmax())
    assert abs(float(scores.detach()[0, best]) - float(det.scores[0])) < 1e-5
    assert torch.allclose(boxes[0, best], det.boxes[0], atol=1.0)
    scores.max().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
