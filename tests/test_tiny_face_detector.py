"""face-api's Tiny Face Detector port: matches face-api (tfjs) fixtures, the detector contract, clear failures."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testbed.errors import AssetError, ConfigError, ImageError
from testbed.models.detection import Detector
from testbed.models.tfjs_graph import tf_resize_bilinear
from testbed.models.tiny_face_detector import TinyFaceDetector, load_tiny_face_detector

FIXTURES = Path(__file__).parent / "fixtures" / "tiny_face_detector"
BOX_TOLERANCE_PX = 1.0  # the tolerance to the reference runtime
SCORE_TOLERANCE = 1e-3
ASSETS = ("tiny_face_detector_manifest", "tiny_face_detector_weights")


@pytest.fixture(scope="module")
def net() -> TinyFaceDetector:
    from testbed.assets import check

    if any(check(name) != "ok" for name in ASSETS):
        pytest.skip("the tiny face detector's weights are not fetched (run `testbed assets fetch`)")
    return load_tiny_face_detector(device="cpu")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((FIXTURES / "detections.json").read_text())


def _fixture_image(item: dict) -> torch.Tensor:
    """A fixture PNG as the port's input (pixels / 255), checked to be the pixels node fed to tfjs."""
    pixels = np.asarray(Image.open(FIXTURES / item["file"]).convert("RGB"), dtype=np.uint8)
    assert pixels.shape == (item["height"], item["width"], 3)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == item["pixels_sha256"], item["file"]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255.0


# --- the port matches the original implementation ----------------------------------------------------------------


def test_port_matches_tfjs_reference_on_every_fixture(net, reference):
    assert reference["face_api_version"] == "1.7.15" and reference["input_size"] == net.input_size
    assert len(reference["inputs"]) >= 5
    assert sum(len(item["detections"]) for item in reference["inputs"]) >= 5  # not a degenerate reference
    assert any(not item["detections"] for item in reference["inputs"])  # and one image without a face
    threshold = reference["score_threshold"]
    for item in reference["inputs"]:
        x = _fixture_image(item)
        with torch.no_grad():
            raw = net.raw_output(x)  # B, anchor, 5, n, n -> face-api's NHWC [1, n, n, anchor * 5]
        ours = raw.permute(0, 3, 4, 1, 2).reshape(-1)
        assert list(raw.shape[-2:]) == item["raw_shape"][1:3]
        assert (ours - torch.tensor(item["raw"])).abs().max().item() < 1e-3, item["name"]
        found = net.detect(x, score_threshold=threshold)[0]
        for key in ("detections", "detections_wasm"):  # pure-JS cpu (the reference) and wasm
            expected = item[key]
            assert len(found.scores) == len(expected), (item["name"], key)
            if expected:
                boxes = torch.tensor([d["box"] for d in expected])
                scores = torch.tensor([d["score"] for d in expected])
                assert (found.boxes - boxes).abs().max().item() < BOX_TOLERANCE_PX, (item["name"], key)
                assert (found.scores - scores).abs().max().item() < SCORE_TOLERANCE, (item["name"], key)
        assert (found.labels == 0).all()


def test_resize_is_tfjs_bilinear_without_half_pixel_centres():
    # 1 x 1 x 2 x 2 -> 4 x 4: source coordinate dst * 2 / 4 = 0, 0.5, 1, 1.5 (the last clamped to row / column 1)
    x = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)
    row0 = [0.0, 2.0, 4.0, 4.0]
    expected = torch.tensor([row0, [4.0, 6.0, 8.0, 8.0], [8.0, 10.0, 12.0, 12.0], [8.0, 10.0, 12.0, 12.0]])
    assert torch.equal(tf_resize_bilinear(x, (4, 4))[0, 0], expected)
    # 3 -> 2 (downsampling): source 0 and 1.5
    y = torch.arange(9.0).view(1, 1, 3, 3)
    assert torch.equal(tf_resize_bilinear(y, (2, 2))[0, 0], torch.tensor([[0.0, 1.5], [4.5, 6.0]]))


# --- the detector contract -----------------------------------------------------------------------------------------


def test_registry_entry_is_a_face_detector():
    from testbed.models.registry import get_entry, list_models

    entry = get_entry("tiny-face-detector")
    assert entry.task == "detector" and tuple(entry.labels) == ("face",)
    assert entry.assets == ASSETS and entry.accuracy and entry.accuracy[0].n == 14
    assert "tiny-face-detector" in list_models(task="detector")


def test_candidate_scores_are_differentiable_and_agree_with_detect(net, reference):
    item = next(i for i in reference["inputs"] if i["name"] == "astronaut")
    x = _fixture_image(item).requires_grad_(True)
    scores = net.candidate_scores(x, "face")
    n = item["raw_shape"][1]
    assert scores.shape == (1, n * n * 5)
    scores.max().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    boxes = net.candidate_boxes(x.detach())
    assert boxes.shape == (1, n * n * 5, 4)
    both = net.candidates(x.detach(), "face")  # one pass for both (what the person-evasion loss calls)
    assert torch.equal(both[0], scores.detach()) and torch.equal(both[1], boxes)
    found = net.detect(x.detach())[0]
    best = scores.detach()[0].argmax()
    assert abs(float(scores.detach()[0, best]) - float(found.scores[0])) < 1e-6
    assert torch.allclose(boxes[0, best], found.boxes[0], atol=1e-4)
    # a batch of two equals two single images; a lower threshold only adds detections
    batch = torch.cat([x.detach(), x.detach().flip(-1)])
    both = net.detect(batch)
    assert torch.allclose(both[0].boxes, found.boxes, atol=1e-4)
    assert len(net.detect(x.detach(), score_threshold=0.05)[0].scores) >= len(found.scores)
    with pytest.raises(ConfigError, match="unknown label"):
        net.candidate_scores(x, "person")
    assert isinstance(net, Detector)


def test_bad_inputs_are_named(net):
    with pytest.raises(ImageError, match="B x 3 x H x W"):
        net.detect(torch.zeros(3, 64, 64))
    with pytest.raises(ImageError, match="float"):
        net.detect(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="multiple of 32"):
        TinyFaceDetector(input_size=100)


def test_missing_weights_name_the_file_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(AssetError) as info:
        load_tiny_face_detector(device="cpu")
    message = str(info.value)
    assert "tiny_face_detector_model-weights_manifest.json" in message and "testbed assets fetch" in message


# --- live mode with a detector -------------------------------------------------------------------------------------


def test_live_with_the_tiny_face_detector_logs_and_draws_boxes_on_a_loopback_stream(net, tmp_path):
    from mjpeg_stream import mjpeg_stream

    from pipelines.live import LiveConfig, _overlay, run_live
    from testbed.photos import load_photo

    small = torch.nn.functional.interpolate(load_photo("grace_hopper"), size=(300, 256), mode="area")
    bgr = np.ascontiguousarray((small[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8))
    expected = net.detect(small)[0]
    assert len(expected.scores) == 1

    def frames():
        for _ in range(3):
            yield bgr

    with mjpeg_stream(frames, path="faces.mjpg") as url:
        summary = run_live(LiveConfig(source=url, model="tiny-face-detector", out=tmp_path, max_frames=3,
                                      width=256, height=300))
    assert summary.frames == 3
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()][:-1]
    assert len(rows) == 3
    for r in rows:  # the face in every frame, through JPEG, within a few pixels of the clean frame's detection
        assert r["top5"] == [] and len(r["boxes"]) == len(r["labels"]) == 1 and r["labels"] == ["face"]
        *box, score = r["boxes"][0]
        assert score > 0.5 and abs(score - float(expected.scores[0])) < 0.05
        assert max(abs(a - b) for a, b in zip(box, expected.boxes[0].tolist())) < 6
    # the label and score are written above the box, in green, inside the letterboxed frame
    plain = _overlay(torch.zeros(1, 3, 100, 200), [], 200, 100)
    tagged = _overlay(torch.zeros(1, 3, 100, 200), [], 200, 100, [(120.0, 60.0, "face 0.91")])
    changed = np.argwhere((tagged != plain).any(axis=2))
    assert len(changed) > 0 and (tagged[..., 1] >= tagged[..., 2]).all()
    assert changed[:, 0].max() <= 60 and changed[:, 0].min() >= 40 and changed[:, 1].min() >= 120
    # a box under the text panel (or at the top edge) gets its tag just below its corner, never under the panel
    panel = _overlay(torch.zeros(1, 3, 100, 200), ["line"], 200, 100)
    below = _overlay(torch.zeros(1, 3, 100, 200), ["line"], 200, 100, [(20.0, 10.0, "face 0.91")])
    changed = np.argwhere((below != panel).any(axis=2))
    assert len(changed) > 0 and changed[:, 0].min() >= 14 and changed[:, 0].max() <= 30
